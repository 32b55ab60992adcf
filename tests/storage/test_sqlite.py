"""SQLite specifics: pragmas, the :memory: mode, placeholder rewriting, script splitting, other writers."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from phx.storage import SqliteDatabase, open_database
from phx.storage import sqlite as backend
from phx.storage.sqlite import split_script, translate_placeholders


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT $1, $2, $1", "SELECT ?1, ?2, ?1"),
        ("SELECT $10 + $2", "SELECT ?10 + ?2"),
        ("SELECT '$1', \"$2\" FROM t WHERE a = $3", "SELECT '$1', \"$2\" FROM t WHERE a = ?3"),
        ("SELECT 'it''s $1' || $1", "SELECT 'it''s $1' || ?1"),
        ("SELECT $1 -- $2\n, /* $3 */ $4", "SELECT ?1 -- $2\n, /* $3 */ ?4"),
        ("SELECT [$1], `$2`, $3", "SELECT [$1], `$2`, ?3"),
        ("SELECT price$ FROM t", "SELECT price$ FROM t"),
    ],
)
def test_translate_placeholders(sql: str, expected: str) -> None:
    assert translate_placeholders(sql) == expected


def test_split_script_keeps_triggers_and_literals_whole() -> None:
    script = """
        -- a comment; with a semicolon
        CREATE TABLE a (x TEXT DEFAULT 'x;y');
        CREATE TRIGGER tr AFTER INSERT ON a BEGIN
            UPDATE a SET x = 'z;' WHERE rowid = new.rowid;
        END;
        /* trailing ; comment */
    """
    statements = split_script(script)
    assert len(statements) == 2
    assert statements[0].endswith("DEFAULT 'x;y');")
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")


def test_split_script_rejects_incomplete_tail() -> None:
    with pytest.raises(ValueError, match="incomplete"):
        split_script("CREATE TABLE a (x TEXT); CREATE TRIGGER tr AFTER INSERT ON a BEGIN SELECT 1;")


def test_split_script_last_statement_needs_no_semicolon() -> None:
    assert split_script("SELECT 1; SELECT 2") == ["SELECT 1;", "SELECT 2;"]


async def test_pragmas_wal_full_sync(sqlite_url: str) -> None:
    db = await open_database(sqlite_url)
    try:
        async with db.transaction() as conn:
            assert await conn.fetchval("PRAGMA journal_mode") == "wal"
            assert await conn.fetchval("PRAGMA synchronous") == 2  # FULL
            assert await conn.fetchval("PRAGMA foreign_keys") == 1
            # The writer's is 0: its BEGIN falls back to waiting on the worker thread (next tests).
            assert await conn.fetchval("PRAGMA busy_timeout") == 0
        async with db.transaction(readonly=True) as conn:
            assert await conn.fetchval("PRAGMA busy_timeout") >= 1000
    finally:
        await db.close()


async def test_memory_database(tmp_path: Path) -> None:
    db = await open_database("sqlite://:memory:")
    assert isinstance(db, SqliteDatabase) and db.memory
    try:
        async with db.transaction() as conn:
            await conn.execute_script("CREATE TABLE t (n INTEGER)")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            async with db.transaction(readonly=True) as conn:
                await conn.execute("INSERT INTO t VALUES ($1)", 1)

        async def add(i: int) -> None:
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO t VALUES ($1)", i)

        await asyncio.gather(*(add(i) for i in range(20)))
        async with db.transaction(readonly=True) as conn:
            assert await conn.fetchval("SELECT COUNT(*) FROM t") == 20
    finally:
        await db.close()


async def test_reader_sees_committed_snapshot_while_writer_runs(sqlite_url: str) -> None:
    db = await open_database(sqlite_url)
    try:
        async with db.transaction() as conn:
            await conn.execute_script("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1);")
        async with db.transaction() as writer:
            await writer.execute("UPDATE t SET n = 2")

            # The write transaction is open and holds the writer lock; a reader (another task) is not
            # blocked by it and does not see its uncommitted change.
            async def read() -> int:
                async with db.transaction(readonly=True) as reader:
                    return int(await reader.fetchval("SELECT n FROM t"))

            assert await asyncio.wait_for(asyncio.create_task(read()), 5) == 1
        async with db.transaction(readonly=True) as reader:
            assert await reader.fetchval("SELECT n FROM t") == 2
    finally:
        await db.close()


async def test_two_handles_on_one_file_do_not_fail(sqlite_url: str) -> None:
    """A second handle (like a CLI tool in another process) writes concurrently: busy_timeout makes them wait
    for each other instead of failing with SQLITE_BUSY."""
    a = await open_database(sqlite_url)
    b = await open_database(sqlite_url)
    try:
        async with a.transaction() as conn:
            await conn.execute_script("CREATE TABLE t (n INTEGER)")

        async def add(db: SqliteDatabase | object, i: int) -> None:
            assert isinstance(db, SqliteDatabase)
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO t VALUES ($1)", i)
                await asyncio.sleep(0.001)

        await asyncio.gather(*(add(a if i % 2 else b, i) for i in range(20)))
        async with a.transaction(readonly=True) as conn:
            assert await conn.fetchval("SELECT COUNT(*) FROM t") == 20
    finally:
        await a.close()
        await b.close()


async def test_commits_are_visible_to_a_fresh_handle(sqlite_url: str) -> None:
    db = await open_database(sqlite_url)
    async with db.transaction() as conn:
        await conn.execute_script("CREATE TABLE t (v BLOB); INSERT INTO t VALUES (x'01');")
    await db.close()
    db = await open_database(sqlite_url)
    try:
        async with db.transaction(readonly=True) as conn:
            assert await conn.fetchval("SELECT v FROM t") == b"\x01"
    finally:
        await db.close()


async def test_cancel_while_waiting_for_begin_leaves_writer_clean(sqlite_url: str) -> None:
    """A task cancelled while its BEGIN IMMEDIATE still waits (busy_timeout) on another process's write lock:
    the BEGIN runs later on aiosqlite's thread, and must not leave our writer stuck inside a transaction."""
    a = await open_database(sqlite_url)
    b = await open_database(sqlite_url)
    try:
        async with a.transaction() as conn:
            await conn.execute_script("CREATE TABLE t (n INTEGER)")
        release = asyncio.Event()
        holding = asyncio.Event()

        async def hold_b() -> None:
            async with b.transaction() as conn:
                await conn.execute("INSERT INTO t VALUES ($1)", 0)
                holding.set()
                await release.wait()

        async def write_a() -> None:
            async with a.transaction() as conn:
                await conn.execute("INSERT INTO t VALUES ($1)", 1)

        holder = asyncio.create_task(hold_b())
        await holding.wait()
        blocked = asyncio.create_task(write_a())
        await asyncio.sleep(0.3)  # a's BEGIN IMMEDIATE is now waiting inside SQLite
        assert not blocked.done()
        blocked.cancel()
        # b commits while a's cancelled BEGIN is still pending, so that BEGIN then succeeds on a's thread.
        release.set()
        await holder
        with pytest.raises(asyncio.CancelledError):
            await blocked
        async with a.transaction() as conn:
            await conn.execute("INSERT INTO t VALUES ($1)", 2)
        async with a.transaction(readonly=True) as conn:
            assert [r[0] for r in await conn.fetch("SELECT n FROM t ORDER BY n")] == [0, 2]
    finally:
        await a.close()
        await b.close()


async def test_a_cancelled_commit_still_running_keeps_the_next_transaction_out(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task cancelled while its COMMIT (and then its ROLLBACK) still wait on aiosqlite's thread leaves the
    write lock to the next transaction before they ran; that transaction's BEGIN must queue behind them
    instead of running at once on the loop's thread, where the pending ROLLBACK would end it."""
    db = await open_database(sqlite_url)
    try:
        async with db.transaction() as conn:
            await conn.execute_script("CREATE TABLE t (n INTEGER)")
        real = backend._statement

        def slow(raw: sqlite3.Connection, statement: str) -> None:
            if statement == "COMMIT":
                time.sleep(0.3)
            real(raw, statement)

        monkeypatch.setattr(backend, "_statement", slow)

        async def first() -> None:
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO t VALUES ($1)", 1)

        task = asyncio.create_task(first())
        await asyncio.sleep(0.1)  # its COMMIT sleeps on the worker thread
        task.cancel()
        await asyncio.sleep(0.01)
        task.cancel()  # and again while it waits for its ROLLBACK
        with pytest.raises(asyncio.CancelledError):
            await task
        monkeypatch.setattr(backend, "_statement", real)
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO t VALUES ($1)", 2)
        async with db.transaction(readonly=True) as conn:
            assert [r[0] for r in await conn.fetch("SELECT n FROM t ORDER BY n")] == [1, 2]
    finally:
        await db.close()
