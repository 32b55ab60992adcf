"""The Database interface, run identically on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from phx.errors import Conflict
from phx.storage import Database, NestedTransaction, TransactionAborted

DDL = {
    "sqlite": "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, data BLOB, n INTEGER)",
    "postgres": "CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT NOT NULL UNIQUE, data BYTEA, n BIGINT)",
}


async def make_table(db: Database) -> None:
    async with db.transaction() as conn:
        await conn.execute_script(DDL[db.engine])


async def count(db: Database) -> int:
    async with db.transaction(readonly=True) as conn:
        return int(await conn.fetchval("SELECT COUNT(*) FROM t"))


async def test_roundtrip_types_and_accessors(db: Database) -> None:
    await make_table(db)
    big = 2**63 - 1
    async with db.transaction() as conn:
        inserted = await conn.execute(
            "INSERT INTO t (id, name, data, n) VALUES ($1, $2, $3, $4)", 1, "a", b"\x00\xff", big
        )
        assert inserted == 1
        await conn.executemany(
            "INSERT INTO t (id, name, data, n) VALUES ($1, $2, $3, $4)",
            [(2, "b", None, -1), (3, "c", b"", 0)],
        )
    async with db.transaction(readonly=True) as conn:
        rows = await conn.fetch("SELECT id, name, data, n FROM t ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, "a", b"\x00\xff", big), (2, "b", None, -1), (3, "c", b"", 0)]
        row = await conn.fetchrow("SELECT id, name FROM t WHERE name = $1", "b")
        assert row is not None
        assert row["id"] == 2 and row[1] == "b" and len(row) == 2 and dict(row) == {"id": 2, "name": "b"}
        assert await conn.fetchrow("SELECT id FROM t WHERE name = $1", "zz") is None
        assert await conn.fetchval("SELECT data FROM t WHERE id = $1", 1) == b"\x00\xff"
        assert await conn.fetchval("SELECT id FROM t WHERE id = $1", 99) is None
        # A placeholder used twice binds the same argument on both engines.
        assert await conn.fetchval("SELECT COUNT(*) FROM t WHERE id = $1 OR n = $1", 0) == 1
        # "$1" inside a string literal is text, not a placeholder.
        assert await conn.fetchval("SELECT '$1' || name FROM t WHERE id = $1", 1) == "$1a"


async def test_execute_returns_rowcount(db: Database) -> None:
    await make_table(db)
    async with db.transaction() as conn:
        await conn.executemany("INSERT INTO t (id, name) VALUES ($1, $2)", [(i, f"n{i}") for i in range(5)])
        assert await conn.execute("UPDATE t SET n = 1 WHERE id < $1", 3) == 3
        assert await conn.execute("DELETE FROM t WHERE id = $1", 42) == 0
        assert await conn.execute("DELETE FROM t WHERE id >= $1", 3) == 2


async def test_rollback_on_exception_leaves_nothing(db: Database) -> None:
    await make_table(db)
    with pytest.raises(RuntimeError, match="boom"):
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO t (id, name) VALUES ($1, $2)", 1, "a")
            await conn.execute("INSERT INTO t (id, name) VALUES ($1, $2)", 2, "b")
            raise RuntimeError("boom")
    assert await count(db) == 0
    # The database is usable afterwards.
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO t (id, name) VALUES ($1, $2)", 1, "a")
    assert await count(db) == 1


async def test_rollback_on_cancellation(db: Database) -> None:
    await make_table(db)
    inside = asyncio.Event()

    async def writer() -> None:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO t (id, name) VALUES ($1, $2)", 1, "a")
            inside.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(writer())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await count(db) == 0


async def test_unique_violation_is_conflict_and_rolls_back(db: Database) -> None:
    await make_table(db)
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO t (id, name) VALUES ($1, $2)", 1, "a")
    with pytest.raises(Conflict):
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO t (id, name) VALUES ($1, $2)", 2, "b")
            await conn.execute("INSERT INTO t (id, name) VALUES ($1, $2)", 3, "a")
    assert await count(db) == 1


async def test_failed_statement_poisons_transaction(db: Database) -> None:
    await make_table(db)
    with pytest.raises(TransactionAborted):
        async with db.transaction() as conn:
            with pytest.raises(Exception):  # noqa: B017 - the engines raise different driver errors
                await conn.execute("INSERT INTO no_such_table VALUES ($1)", 1)
            await conn.execute("INSERT INTO t (id, name) VALUES ($1, $2)", 1, "a")
    assert await count(db) == 0


async def test_connection_unusable_after_block(db: Database) -> None:
    await make_table(db)
    async with db.transaction() as conn:
        pass
    with pytest.raises(TransactionAborted):
        await conn.execute("INSERT INTO t (id, name) VALUES ($1, $2)", 1, "a")


async def test_readonly_transaction_rejects_writes(db: Database) -> None:
    await make_table(db)
    with pytest.raises(Exception) as info:  # noqa: B017 - sqlite3.OperationalError / asyncpg error
        async with db.transaction(readonly=True) as conn:
            await conn.execute("INSERT INTO t (id, name) VALUES ($1, $2)", 1, "a")
    assert "read" in str(info.value).lower()
    assert await count(db) == 0
    # A write transaction afterwards is not stuck in read-only mode.
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO t (id, name) VALUES ($1, $2)", 1, "a")
    assert await count(db) == 1


async def test_nested_transaction_is_refused(db: Database) -> None:
    async with db.transaction():
        with pytest.raises(NestedTransaction):
            async with db.transaction():
                pass


async def test_child_task_may_open_its_own_transaction(db: Database) -> None:
    await make_table(db)

    async def child() -> int:
        async with db.transaction(readonly=True) as conn:
            return int(await conn.fetchval("SELECT COUNT(*) FROM t"))

    async with db.transaction(readonly=True) as conn:
        await conn.fetchval("SELECT 1")
        # A child task inherits the context but is a different task: not a nested transaction.
        assert await asyncio.create_task(child()) == 0


async def test_concurrent_read_modify_write_loses_no_update(db: Database) -> None:
    """Many tasks increment one counter; with the engine's write lock no increment is lost or fails."""
    await make_table(db)
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO t (id, name, n) VALUES ($1, $2, $3)", 1, "counter", 0)
    select = {
        "sqlite": "SELECT n FROM t WHERE id = $1",
        "postgres": "SELECT n FROM t WHERE id = $1 FOR UPDATE",
    }[db.engine]

    async def bump() -> None:
        async with db.transaction() as conn:
            n = await conn.fetchval(select, 1)
            await asyncio.sleep(0)  # let other tasks interleave inside the read-modify-write
            await conn.execute("UPDATE t SET n = $1 WHERE id = $2", n + 1, 1)

    await asyncio.gather(*(bump() for _ in range(40)))
    async with db.transaction(readonly=True) as conn:
        assert await conn.fetchval("SELECT n FROM t WHERE id = $1", 1) == 40


async def test_concurrent_inserts_and_reads(db: Database) -> None:
    await make_table(db)

    async def insert(i: int) -> None:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO t (id, name) VALUES ($1, $2)", i, f"n{i}")

    async def read() -> int:
        return await count(db)

    results = await asyncio.gather(*(insert(i) for i in range(30)), *(read() for _ in range(30)))
    assert all(isinstance(r, int) and 0 <= r <= 30 for r in results[30:])
    assert await count(db) == 30


async def test_ping(db: Database) -> None:
    await db.ping()


async def test_closed_database_refuses_transactions(db: Database) -> None:
    await db.close()
    with pytest.raises(TransactionAborted):
        async with db.transaction():
            pass
