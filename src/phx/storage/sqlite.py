"""SQLite backend (aiosqlite): WAL, one serialized writer, a small pool of read-only readers.

Durability: ``synchronous=FULL`` even in WAL mode. With ``NORMAL`` a WAL commit is not fsynced, so a power
loss can drop the last transactions although the client already got its 2xx — and the DS/QS acknowledge
messages on commit. FULL costs one fsync of the WAL per commit.

Concurrency inside one process: every write transaction goes through one connection behind an
``asyncio.Lock`` and starts with ``BEGIN IMMEDIATE``, so tasks queue on the lock instead of failing with
``SQLITE_BUSY``. ``busy_timeout`` covers writers from *other* processes (a CLI tool on the same file).
Read-only transactions use separate ``query_only`` connections and see a WAL snapshot concurrently with
the writer. ``:memory:`` databases are private to one connection, so there every transaction shares the
writer (readonly ones switch ``query_only`` on for their duration).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from functools import lru_cache
from typing import Any, TypeVar, cast

import aiosqlite

from phx.errors import ConfigError, Conflict, Unavailable

from .base import Connection, Database, Engine, Row, TransactionAborted

MIN_SQLITE_VERSION = (3, 37, 0)  # STRICT tables (3.37), RETURNING (3.35), UPSERT (3.24)
BUSY_TIMEOUT_MS = 5000

_T = TypeVar("_T")

# Tokens that may contain a "$n" which is not a placeholder: string literals, quoted identifiers, comments.
_SQL_TOKEN = re.compile(
    r"""
      '(?:[^']|'')*'            # string literal
    | "(?:[^"]|"")*"            # quoted identifier
    | `[^`]*`                   # MySQL-style quoted identifier (SQLite accepts it)
    | \[[^\]]*\]                # [bracketed] identifier
    | --[^\n]*                  # line comment
    | /\*.*?\*/                 # block comment
    | \$(\d+)                   # placeholder
    """,
    re.VERBOSE | re.DOTALL,
)

_UNIQUE_CODES = {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}


@lru_cache(maxsize=1024)
def translate_placeholders(sql: str) -> str:
    """Rewrite PostgreSQL ``$n`` placeholders to SQLite ``?n``, leaving literals and comments alone."""

    def sub(m: re.Match[str]) -> str:
        return "?" + m.group(1) if m.group(1) is not None else m.group(0)

    return _SQL_TOKEN.sub(sub, sql)


def split_script(script: str) -> list[str]:
    """Split a script into complete statements (``sqlite3.complete_statement`` knows triggers and quotes)."""
    statements: list[str] = []
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if _has_code(buf):
                statements.append(buf.strip())
            buf = ""
    if _has_code(buf[:-1]):
        raise ValueError("incomplete SQL statement at end of script")
    return statements


def _has_code(sql: str) -> bool:
    stripped = re.sub(r"--[^\n]*|/\*.*?\*/", "", sql, flags=re.DOTALL)
    return stripped.strip(" \t\r\n;") != ""


class _Worker:
    """An aiosqlite connection and its worker thread, counting what the thread still has to run.

    Statements run on the loop's thread only while the worker has nothing left to run on the same
    connection: an operation whose caller was cancelled (a COMMIT, a ROLLBACK queued behind it) still runs
    there later, and a BEGIN on the loop's thread before it would start a transaction that ROLLBACK ends.
    Each counter is written by one thread only."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self.raw: sqlite3.Connection = cast(Any, conn)._conn
        self.submitted = 0  # the loop's thread
        self.finished = 0  # the worker thread

    @property
    def idle(self) -> bool:
        return self.finished == self.submitted

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the worker thread, after everything queued there before (FIFO)."""

        def tracked() -> _T:
            try:
                return fn(*args)
            finally:
                self.finished += 1

        self.submitted += 1
        return cast(_T, await cast(Any, self.conn)._execute(tracked))

    async def sql(self, statement: str) -> None:
        await self.run(_statement, self.raw, statement)


class SqliteConnection(Connection):
    engine: Engine = "sqlite"

    def __init__(self, worker: _Worker) -> None:
        self._worker = worker
        self._raw = worker.raw
        self._state = "open"  # open | failed | closed

    def _step(self, fn: Callable[[sqlite3.Connection, str, Any], _T], sql: str, args: Any) -> _T:
        # Runs on the event loop's thread, not aiosqlite's: inside a transaction a statement neither waits
        # for a lock (BEGIN IMMEDIATE took the write lock; WAL readers do not block) nor syncs to disk (COMMIT
        # does, on the worker thread), so a hand-over to the thread and back cost more than the statement.
        if self._state != "open":
            raise TransactionAborted(f"transaction is {self._state}")
        try:
            return fn(self._raw, translate_placeholders(sql), args)
        except sqlite3.IntegrityError as e:
            self._state = "failed"
            if getattr(e, "sqlite_errorname", "") in _UNIQUE_CODES:
                raise Conflict("already exists") from e
            raise
        except BaseException:
            self._state = "failed"
            raise

    async def execute(self, sql: str, *args: Any) -> int:
        return self._step(_execute, sql, args)

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        self._step(_executemany, sql, list(args))

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return self._step(_fetch, sql, args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return self._step(_fetchrow, sql, args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]

    async def execute_script(self, sql: str) -> None:
        # Not executescript(): it COMMITs the open transaction first, which would break migrations' atomicity.
        # On the worker thread, as a whole: a migration may run for a while.
        if self._state != "open":
            raise TransactionAborted(f"transaction is {self._state}")
        try:
            await self._worker.run(_script, self._raw, split_script(sql))
        except BaseException:
            self._state = "failed"
            raise

    def _close(self) -> None:
        self._state = "closed"


class SqliteDatabase(Database):
    engine: Engine = "sqlite"

    def __init__(self, path: str, *, readers: int = 4, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = path
        self.memory = path == ":memory:"
        self._n_readers = 0 if self.memory else max(1, readers)
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._writer_worker: _Worker | None = None
        self._readers: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []
        self._write_lock = asyncio.Lock()
        self._closed = False

    async def open(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise ConfigError(
                f"server.database_url: SQLite {sqlite3.sqlite_version} is too old, need "
                + ".".join(map(str, MIN_SQLITE_VERSION))
            )
        try:
            if not self.memory:
                # Open once synchronously first: when aiosqlite's connect fails it leaves its worker thread
                # to report to the event loop later, which breaks if the loop is gone by then.
                await asyncio.to_thread(_probe, self.path)
            self._writer = await self._connect(readonly=False)
            self._writer_worker = _Worker(self._writer)
            for _ in range(self._n_readers):
                reader = await self._connect(readonly=True)
                self._all_readers.append(reader)
                self._readers.put_nowait(_Worker(reader))
        except sqlite3.Error as e:
            await self.close()
            raise Unavailable(f"cannot open SQLite database {self.path!r}: {e}") from e

    async def _connect(self, *, readonly: bool) -> aiosqlite.Connection:
        # isolation_level=None: no implicit BEGINs from the sqlite3 module; we issue BEGIN/COMMIT ourselves.
        # check_same_thread=False: statements inside a transaction run on the event loop's thread
        # (SqliteConnection._step), never at the same time as the worker thread's BEGIN/COMMIT.
        conn = await aiosqlite.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        try:
            # The writer waits for other processes' locks only in _begin's fallback, on the worker thread.
            busy = self._busy_timeout_ms if readonly else 0
            await conn.execute(f"PRAGMA busy_timeout = {int(busy)}")
            if not self.memory and not readonly:
                mode = await (await conn.execute("PRAGMA journal_mode = WAL")).fetchone()
                if mode is None or str(mode[0]).lower() != "wal":
                    raise sqlite3.OperationalError(f"cannot enable WAL (journal_mode={mode!r})")
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.execute("PRAGMA foreign_keys = ON")
            if readonly:
                await conn.execute("PRAGMA query_only = ON")
        except BaseException:
            await conn.close()
            raise
        return conn

    def transaction(self, *, readonly: bool = False) -> AbstractAsyncContextManager[Connection]:
        return self._transaction(readonly)

    @asynccontextmanager
    async def _transaction(self, readonly: bool) -> AsyncIterator[Connection]:
        if self._closed or self._writer_worker is None:
            raise TransactionAborted("database is closed")
        token = self._enter_tx()
        try:
            if readonly and not self.memory:
                reader = await self._readers.get()
                if not reader.idle:
                    await reader.run(_nothing)  # whatever a cancelled caller left queued runs first
                try:
                    with _read_transaction(reader) as conn:
                        yield conn
                finally:
                    self._readers.put_nowait(reader)
            else:
                async with self._write_lock:
                    begin = "BEGIN" if readonly else "BEGIN IMMEDIATE"
                    async with self._run(self._writer_worker, begin, query_only=readonly) as conn:
                        yield conn
        finally:
            self._leave_tx(token)

    @asynccontextmanager
    async def _run(self, worker: _Worker, begin: str, *, query_only: bool) -> AsyncIterator[Connection]:
        # COMMIT (fsync, checkpoints) runs on aiosqlite's thread; the statements before it on the loop's
        # (SqliteConnection._step); BEGIN too unless it has to wait (_begin).
        if query_only:
            await worker.sql("PRAGMA query_only = ON")
        try:
            try:
                await self._begin(worker, begin)
            except BaseException:
                await _rollback(worker)
                raise
            conn = SqliteConnection(worker)
            try:
                yield conn
            except BaseException:
                conn._close()
                await _rollback(worker)
                raise
            conn._close()
            try:
                await worker.sql("COMMIT")
            except BaseException:
                await _rollback(worker)
                raise
        finally:
            if query_only:
                await worker.sql("PRAGMA query_only = OFF")

    async def _begin(self, worker: _Worker, begin: str) -> None:
        """BEGIN on the loop's thread when the worker thread has nothing left to run on the connection and
        no other process holds the write lock (the writer's busy_timeout is 0, so SQLite answers at once);
        else on the worker thread, after what it still has to run, waiting up to busy_timeout for the
        lock."""
        conn = worker.raw
        if worker.idle:
            try:
                conn.execute(begin).close()
                return
            except sqlite3.OperationalError as e:
                if getattr(e, "sqlite_errorname", "") != "SQLITE_BUSY" or conn.in_transaction:
                    raise
        await worker.run(_begin_waiting, conn, begin, self._busy_timeout_ms)

    async def ping(self) -> None:
        try:
            async with self.transaction(readonly=True) as conn:
                await conn.fetchval("SELECT 1")
        except (sqlite3.Error, ValueError) as e:
            raise Unavailable(f"SQLite database does not answer: {e}") from e

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for reader in self._all_readers:
            await reader.close()
        self._all_readers.clear()
        if self._writer is not None:
            # Take the lock so a running write transaction finishes before the connection goes away.
            async with self._write_lock:
                await self._writer.close()


def _execute(raw: sqlite3.Connection, sql: str, args: Any) -> int:
    cur = raw.execute(sql, args)
    try:
        return max(cur.rowcount, 0)
    finally:
        cur.close()


def _executemany(raw: sqlite3.Connection, sql: str, args: Any) -> None:
    raw.executemany(sql, args).close()


def _fetch(raw: sqlite3.Connection, sql: str, args: Any) -> list[Row]:
    cur = raw.execute(sql, args)
    try:
        return cast(list[Row], cur.fetchall())
    finally:
        cur.close()


def _fetchrow(raw: sqlite3.Connection, sql: str, args: Any) -> Row | None:
    cur = raw.execute(sql, args)
    try:
        return cast(Row | None, cur.fetchone())
    finally:
        cur.close()


@contextmanager
def _read_transaction(reader: _Worker) -> Iterator[SqliteConnection]:
    """A read-only transaction wholly on the loop's thread: in WAL mode a deferred BEGIN, a reader's
    statements and its COMMIT take no lock to wait for and write nothing to sync."""
    conn = SqliteConnection(reader)
    raw = conn._raw
    raw.execute("BEGIN").close()
    try:
        yield conn
    except BaseException:
        conn._close()
        if raw.in_transaction:
            raw.execute("ROLLBACK").close()
        raise
    conn._close()
    raw.execute("COMMIT").close()


def _begin_waiting(raw: sqlite3.Connection, begin: str, busy_timeout_ms: int) -> None:
    raw.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}").close()
    try:
        raw.execute(begin).close()
    finally:
        raw.execute("PRAGMA busy_timeout = 0").close()


def _nothing() -> None:
    return None


def _statement(raw: sqlite3.Connection, statement: str) -> None:
    raw.execute(statement).close()


def _script(raw: sqlite3.Connection, statements: list[str]) -> None:
    for statement in statements:
        raw.execute(statement).close()


def _probe(path: str) -> None:
    sqlite3.connect(path).close()


async def _rollback(worker: _Worker) -> None:
    # Unconditional and ordered: aiosqlite runs operations FIFO on its thread, so this ROLLBACK lands after a
    # BEGIN/statement/COMMIT whose await was cancelled but which still runs. Checking in_transaction here
    # instead would race with that pending BEGIN and could leave the writer inside a transaction.
    try:
        await asyncio.shield(worker.sql("ROLLBACK"))
    except sqlite3.OperationalError as e:
        if "no transaction is active" not in str(e):
            raise
