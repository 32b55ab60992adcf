"""Storage ground for the services' stores: one async interface over SQLite and PostgreSQL.

::

    db = await open_database("sqlite:///var/lib/phx/phx.db")     # or "postgresql://user@host/db"
    await migrate(db, "core")
    async with db.transaction() as conn:                          # write transaction
        await conn.execute("INSERT INTO kv (key, value, updated_at) VALUES ($1, $2, $3)", k, v, now)
    async with db.transaction(readonly=True) as conn:
        row = await conn.fetchrow("SELECT value FROM kv WHERE key = $1", k)
    await db.close()

URLs: ``sqlite:///abs/path.db`` (everything after ``sqlite://`` is the path, so ``sqlite://rel.db`` is
relative to the working directory), ``sqlite://:memory:``, ``postgresql://…`` / ``postgres://…`` (any
libpq-style query parameter that asyncpg does not know, e.g. ``?search_path=myschema``, becomes a server
setting).
"""

from __future__ import annotations

from urllib.parse import unquote

from phx.errors import ConfigError

from .base import Connection, Database, Engine, NestedTransaction, Row, TransactionAborted
from .migrate import Migration, available_services, current_version, load_migrations, migrate, migrate_all
from .postgres import PostgresDatabase
from .sqlite import SqliteDatabase

__all__ = [
    "Connection",
    "Database",
    "Engine",
    "Migration",
    "NestedTransaction",
    "PostgresDatabase",
    "Row",
    "SqliteDatabase",
    "TransactionAborted",
    "available_services",
    "current_version",
    "engine_of",
    "load_migrations",
    "migrate",
    "migrate_all",
    "open_database",
    "sqlite_path",
]


def engine_of(url: str) -> Engine:
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        return "postgres"
    raise ConfigError(f"server.database_url: unsupported scheme {scheme!r} (use sqlite:// or postgresql://)")


def sqlite_path(url: str) -> str:
    if not url.lower().startswith("sqlite://"):
        raise ConfigError(f"server.database_url: not a sqlite:// URL: {url!r}")
    path = unquote(url[len("sqlite://") :])
    if path in (":memory:", "/:memory:"):
        return ":memory:"
    if not path:
        raise ConfigError("server.database_url: sqlite:// URL without a path")
    return path


async def open_database(
    url: str,
    *,
    sqlite_readers: int = 4,
    pg_min_size: int = 1,
    pg_max_size: int = 10,
) -> Database:
    """Open (and connect) the database named by ``url``; raises ConfigError for a bad URL and
    Unavailable when the database cannot be reached."""
    db: SqliteDatabase | PostgresDatabase
    if engine_of(url) == "sqlite":
        db = SqliteDatabase(sqlite_path(url), readers=sqlite_readers)
    else:
        db = PostgresDatabase(url, min_size=pg_min_size, max_size=pg_max_size)
    await db.open()
    return db
