"""Versioned schema migrations, one set per service and engine.

Files live at ``phx/storage/migrations/<service>/<engine>/NNNN_name.sql`` (package data). Versions start at
1 and have no gaps; both engines of a service carry the same versions and names (a test checks it). Each
pending file runs in its own write transaction together with its ``schema_migrations`` row, so a failing
file leaves neither half its DDL nor a record behind (both engines have transactional DDL).

Applied files are pinned by SHA-256: editing a migration after it shipped is refused at start-up, as is a
database that has versions this code does not know (it was migrated by a newer release).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from phx.errors import ConfigError

from .base import Connection, Database, Engine

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SERVICE = re.compile(r"^[a-z][a-z0-9_]*$")
# Any constant works; it only has to be the same in every phx process sharing the database.
_PG_LOCK_KEY = 0x7068785F6D696772  # "phx_migr"

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    service    TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    name       TEXT    NOT NULL,
    checksum   TEXT    NOT NULL,
    applied_at BIGINT  NOT NULL,
    PRIMARY KEY (service, version)
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_root() -> Traversable:
    return resources.files("phx.storage").joinpath("migrations")


def available_services() -> list[str]:
    """Services that ship migrations in the package."""
    root = migrations_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _SERVICE.match(p.name))


def load_migrations(
    service: str, engine: Engine, *, source: Traversable | Path | None = None
) -> list[Migration]:
    """The migrations of ``service`` for ``engine``, ordered; ``source`` overrides the package directory
    (it is the ``<engine>`` directory itself)."""
    if not _SERVICE.match(service):
        raise ConfigError(f"bad migration service name {service!r}")
    directory = source if source is not None else migrations_root().joinpath(service, engine)
    if not directory.is_dir():
        raise ConfigError(f"no migrations for service {service!r} on {engine}")
    found: dict[int, Migration] = {}
    for entry in directory.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        m = _FILE.match(entry.name)
        if m is None:
            raise ConfigError(f"migration file name {entry.name!r} is not NNNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise ConfigError(f"two migrations with version {version} for {service!r} on {engine}")
        found[version] = Migration(version, m.group(2), entry.read_text(encoding="utf-8"))
    ordered = [found[v] for v in sorted(found)]
    for expected, mig in enumerate(ordered, start=1):
        if mig.version != expected:
            raise ConfigError(f"migrations for {service!r} on {engine} skip version {expected}")
    return ordered


async def _lock(conn: Connection) -> None:
    # SQLite's BEGIN IMMEDIATE already excludes other writers; PostgreSQL needs an explicit lock so two
    # processes starting at once do not both apply a file (or race on CREATE TABLE IF NOT EXISTS).
    if conn.engine == "postgres":
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _PG_LOCK_KEY)


async def _applied(conn: Connection, service: str) -> dict[int, tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT version, name, checksum FROM schema_migrations WHERE service = $1 ORDER BY version", service
    )
    return {int(r[0]): (str(r[1]), str(r[2])) for r in rows}


def _check(service: str, migrations: list[Migration], applied: dict[int, tuple[str, str]]) -> None:
    known = {m.version: m for m in migrations}
    newer = sorted(v for v in applied if v not in known)
    if newer:
        raise ConfigError(
            f"server.database_url: the {service!r} schema is at version {max(applied)} but this phx knows "
            f"only up to {len(migrations)}; the database was migrated by a newer release"
        )
    for version, (name, checksum) in applied.items():
        mig = known[version]
        if (name, checksum) != (mig.name, mig.checksum):
            raise ConfigError(
                f"server.database_url: applied migration {service}/{version:04d}_{name} differs from the "
                f"shipped {version:04d}_{mig.name}.sql (edited after release?)"
            )


async def current_version(db: Database, service: str) -> int:
    """The highest applied version of ``service`` (0 when none or when the table does not exist yet)."""
    async with db.transaction() as conn:
        await conn.execute_script(_CREATE_TABLE)
        value = await conn.fetchval("SELECT MAX(version) FROM schema_migrations WHERE service = $1", service)
    return int(value) if value is not None else 0


async def migrate(db: Database, service: str, *, source: Traversable | Path | None = None) -> list[int]:
    """Apply the pending migrations of ``service``; returns the versions applied now (empty if none)."""
    migrations = load_migrations(service, db.engine, source=source)
    async with db.transaction() as conn:
        await _lock(conn)
        await conn.execute_script(_CREATE_TABLE)
        _check(service, migrations, await _applied(conn, service))

    done: list[int] = []
    for mig in migrations:
        async with db.transaction() as conn:
            await _lock(conn)
            applied = await _applied(conn, service)
            # Re-checked under the lock: another process may have migrated since the first look.
            _check(service, migrations, applied)
            if mig.version in applied:
                continue
            await conn.execute_script(mig.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (service, version, name, checksum, applied_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                service,
                mig.version,
                mig.name,
                mig.checksum,
                int(time.time()),
            )
        done.append(mig.version)
    return done


async def migrate_all(db: Database, services: list[str]) -> dict[str, list[int]]:
    """Migrate several services in order (``core`` first by convention)."""
    return {service: await migrate(db, service) for service in services}
