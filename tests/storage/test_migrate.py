"""Versioned migrations on both engines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from phx.errors import ConfigError
from phx.storage import (
    Database,
    available_services,
    current_version,
    load_migrations,
    migrate,
    migrate_all,
    open_database,
)
from phx.storage.kv import kv_delete, kv_get, kv_put


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


async def tables(db: Database) -> set[str]:
    sql = {
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
        "postgres": "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()",
    }[db.engine]
    async with db.transaction(readonly=True) as conn:
        return {str(r[0]) for r in await conn.fetch(sql)}


async def test_core_applies_once_and_is_idempotent(db: Database) -> None:
    assert await current_version(db, "core") == 0
    assert await migrate(db, "core") == [1]
    assert await migrate(db, "core") == []
    assert await current_version(db, "core") == len(load_migrations("core", db.engine))
    assert {"kv", "schema_migrations"} <= await tables(db)
    async with db.transaction(readonly=True) as conn:
        rows = await conn.fetch("SELECT service, version, name FROM schema_migrations")
    assert [tuple(r) for r in rows] == [("core", 1, "kv")]


async def test_kv_on_migrated_core(db: Database) -> None:
    await migrate(db, "core")
    async with db.transaction() as conn:
        assert await kv_get(conn, "server.signing_key") is None
        await kv_put(conn, "server.signing_key", b"\x01\x02", now=100)
        await kv_put(conn, "server.signing_key", b"\x03", now=200)
    async with db.transaction(readonly=True) as conn:
        assert await kv_get(conn, "server.signing_key") == b"\x03"
        assert await conn.fetchval("SELECT updated_at FROM kv WHERE key = $1", "server.signing_key") == 200
    async with db.transaction() as conn:
        assert await kv_delete(conn, "server.signing_key")
        assert not await kv_delete(conn, "server.signing_key")


async def test_pending_migrations_apply_in_order(db: Database, tmp_path: Path) -> None:
    src = write(tmp_path / "svc", {"0001_a.sql": "CREATE TABLE a (x INTEGER);"})
    assert await migrate(db, "svc", source=src) == [1]
    write(
        src,
        {
            # 0003 depends on 0002: out-of-order application would fail.
            "0003_c.sql": "INSERT INTO b (y) VALUES (3);",
            "0002_b.sql": "CREATE TABLE b (y INTEGER); INSERT INTO b (y) VALUES (2);",
        },
    )
    assert await migrate(db, "svc", source=src) == [2, 3]
    assert await current_version(db, "svc") == 3
    async with db.transaction(readonly=True) as conn:
        assert [r[0] for r in await conn.fetch("SELECT y FROM b ORDER BY y")] == [2, 3]


async def test_services_are_versioned_independently(db: Database, tmp_path: Path) -> None:
    a = write(tmp_path / "a", {"0001_x.sql": "CREATE TABLE ax (x INTEGER);"})
    b = write(tmp_path / "b", {"0001_x.sql": "CREATE TABLE bx (x INTEGER);", "0002_y.sql": "SELECT 1;"})
    assert await migrate(db, "alpha", source=a) == [1]
    assert await migrate(db, "beta", source=b) == [1, 2]
    assert await current_version(db, "alpha") == 1
    assert await current_version(db, "beta") == 2


async def test_failing_migration_rolls_back_entirely(db: Database, tmp_path: Path) -> None:
    src = write(
        tmp_path / "svc",
        {
            "0001_ok.sql": "CREATE TABLE ok (x INTEGER);",
            "0002_bad.sql": "CREATE TABLE half (x INTEGER); INSERT INTO no_such_table VALUES (1);",
        },
    )
    with pytest.raises(Exception, match="no_such_table"):
        await migrate(db, "svc", source=src)
    assert await current_version(db, "svc") == 1
    names = await tables(db)
    assert "ok" in names and "half" not in names
    # Fixed file: the migration now goes through.
    write(src, {"0002_bad.sql": "CREATE TABLE half (x INTEGER);"})
    assert await migrate(db, "svc", source=src) == [2]


async def test_refuses_database_newer_than_code(db: Database, tmp_path: Path) -> None:
    src = write(tmp_path / "svc", {"0001_a.sql": "SELECT 1;", "0002_b.sql": "SELECT 2;"})
    await migrate(db, "svc", source=src)
    (src / "0002_b.sql").unlink()
    with pytest.raises(ConfigError, match="newer release"):
        await migrate(db, "svc", source=src)


async def test_refuses_edited_migration(db: Database, tmp_path: Path) -> None:
    src = write(tmp_path / "svc", {"0001_a.sql": "CREATE TABLE a (x INTEGER);"})
    await migrate(db, "svc", source=src)
    write(src, {"0001_a.sql": "CREATE TABLE a (x INTEGER, y INTEGER);"})
    with pytest.raises(ConfigError, match="differs"):
        await migrate(db, "svc", source=src)


async def test_concurrent_migrators_apply_each_file_once(db_url: str, tmp_path: Path) -> None:
    """Two handles (as two server processes) migrating at once: each file applied exactly once."""
    src = write(
        tmp_path / "svc",
        {f"{i:04d}_m.sql": f"CREATE TABLE m{i} (x INTEGER);" for i in range(1, 6)},
    )
    a = await open_database(db_url)
    b = await open_database(db_url)
    try:
        done_a, done_b = await asyncio.gather(migrate(a, "svc", source=src), migrate(b, "svc", source=src))
        assert sorted(done_a + done_b) == [1, 2, 3, 4, 5]
        assert await current_version(a, "svc") == 5
    finally:
        await a.close()
        await b.close()


async def test_migrate_all_runs_core_first(db: Database) -> None:
    assert await migrate_all(db, ["core"]) == {"core": [1]}
    assert await migrate_all(db, ["core"]) == {"core": []}


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"0001_a.sql": "", "0003_c.sql": ""}, "skip version 2"),
        ({"0002_b.sql": ""}, "skip version 1"),
        ({"1_a.sql": ""}, "not NNNN_name"),
        ({"0001_A.sql": ""}, "not NNNN_name"),
        ({"0001_a.sql": "", "0001_b.sql": ""}, "two migrations"),
    ],
)
def test_bad_migration_sets_are_rejected(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_migrations("svc", "sqlite", source=write(tmp_path / "svc", files))


def test_unknown_service_is_rejected() -> None:
    with pytest.raises(ConfigError):
        load_migrations("no_such_service", "sqlite")
    with pytest.raises(ConfigError):
        load_migrations("../core", "sqlite")


def test_shipped_migrations_match_across_engines() -> None:
    """Every service ships the same versions and names for both engines."""
    services = available_services()
    assert "core" in services
    for service in services:
        sqlite = [(m.version, m.name) for m in load_migrations(service, "sqlite")]
        postgres = [(m.version, m.name) for m in load_migrations(service, "postgres")]
        assert sqlite == postgres, service
        assert sqlite, service


async def test_every_shipped_migration_set_applies(db: Database) -> None:
    """Each service's shipped migrations run on this engine (core first, as phx serve does)."""
    services = ["core", *(s for s in available_services() if s != "core")]
    applied = await migrate_all(db, services)
    for service in services:
        assert applied[service] == [m.version for m in load_migrations(service, db.engine)], service
    assert all(v == [] for v in (await migrate_all(db, services)).values())
