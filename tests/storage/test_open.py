"""URL handling of open_database."""

from __future__ import annotations

import pytest

from phx.errors import ConfigError, Unavailable
from phx.storage import PostgresDatabase, SqliteDatabase, engine_of, open_database, sqlite_path


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///var/lib/phx/phx.db", "/var/lib/phx/phx.db"),
        ("sqlite://relative/phx.db", "relative/phx.db"),
        ("sqlite://:memory:", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite:///with%20space.db", "/with space.db"),
    ],
)
def test_sqlite_path(url: str, path: str) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite3:///a.db", "nonsense", ""])
def test_unsupported_scheme(url: str) -> None:
    with pytest.raises(ConfigError, match="database_url"):
        engine_of(url)


def test_engine_of() -> None:
    assert engine_of("SQLITE:///a.db") == "sqlite"
    assert engine_of("postgresql://u@h/d") == "postgres"
    assert engine_of("postgres://u@h/d") == "postgres"


async def test_sqlite_without_path() -> None:
    with pytest.raises(ConfigError):
        await open_database("sqlite://")


async def test_unreachable_postgres_is_unavailable() -> None:
    # Port 1 on loopback: nothing listens, connection refused immediately.
    with pytest.raises(Unavailable):
        await open_database("postgresql://postgres@127.0.0.1:1/test")


async def test_unopenable_sqlite_is_unavailable(tmp_path: object) -> None:
    with pytest.raises(Unavailable):
        await open_database(f"sqlite://{tmp_path}/missing-dir/phx.db")


async def test_open_returns_engine_classes(db_url: str) -> None:
    db = await open_database(db_url)
    try:
        assert isinstance(db, SqliteDatabase if db_url.startswith("sqlite") else PostgresDatabase)
        assert db.engine == engine_of(db_url)
    finally:
        await db.close()
