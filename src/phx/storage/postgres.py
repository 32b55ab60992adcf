"""PostgreSQL backend on an asyncpg pool.

Transactions run at READ COMMITTED (PostgreSQL's default); a store that reads, decides and writes takes
row locks with ``SELECT … FOR UPDATE`` in its PostgreSQL SQL. ``readonly=True`` maps to ``BEGIN READ ONLY``.
Connection-level failures surface as :class:`phx.errors.Unavailable` so a request fails with 503, not 500.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar, cast

import asyncpg

from phx.errors import Conflict, Unavailable

from .base import Connection, Database, Engine, Row, TransactionAborted, rowcount_from_status

_T = TypeVar("_T")

CLOSE_TIMEOUT = 10.0

# Errors that mean "the database is not there", as opposed to "this SQL is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.InterfaceError,
)


class PostgresConnection(Connection):
    engine: Engine = "postgres"

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._state = "open"

    async def _guard(self, op: Callable[[], Awaitable[_T]]) -> _T:
        if self._state != "open":
            raise TransactionAborted(f"transaction is {self._state}")
        try:
            return await op()
        except asyncpg.exceptions.UniqueViolationError as e:
            self._state = "failed"
            raise Conflict("already exists") from e
        except BaseException:
            self._state = "failed"
            raise

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self._guard(lambda: self._conn.execute(sql, *args))
        return rowcount_from_status(cast(str, status))

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        await self._guard(lambda: self._conn.executemany(sql, list(args)))

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return cast(list[Row], await self._guard(lambda: self._conn.fetch(sql, *args)))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return cast(Row | None, await self._guard(lambda: self._conn.fetchrow(sql, *args)))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._guard(lambda: self._conn.fetchval(sql, *args))

    async def execute_script(self, sql: str) -> None:
        # Without arguments asyncpg uses the simple query protocol, which accepts several statements.
        await self._guard(lambda: self._conn.execute(sql))

    def _close(self) -> None:
        self._state = "closed"


class PostgresDatabase(Database):
    engine: Engine = "postgres"

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 10.0
    ) -> None:
        self.url = url
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = connect_timeout
        self._pool: Any = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=self._min_size, max_size=self._max_size, timeout=self._timeout
            )
        except _UNAVAILABLE as e:
            raise Unavailable(f"cannot connect to PostgreSQL: {e}") from e

    def transaction(self, *, readonly: bool = False) -> AbstractAsyncContextManager[Connection]:
        return self._transaction(readonly)

    @asynccontextmanager
    async def _transaction(self, readonly: bool) -> AsyncIterator[Connection]:
        if self._pool is None:
            raise TransactionAborted("database is closed")
        token = self._enter_tx()
        try:
            try:
                raw = await self._pool.acquire(timeout=self._timeout)
            except _UNAVAILABLE as e:
                raise Unavailable(f"PostgreSQL unavailable: {e}") from e
            try:
                tx = raw.transaction(readonly=readonly)
                try:
                    await tx.start()
                except _UNAVAILABLE as e:
                    raise Unavailable(f"PostgreSQL unavailable: {e}") from e
                conn = PostgresConnection(raw)
                try:
                    yield conn
                except BaseException:
                    conn._close()
                    # A broken connection cannot roll back; the pool resets (or drops) it on release, and
                    # the caller must see the original error.
                    with contextlib.suppress(Exception):
                        await tx.rollback()
                    raise
                conn._close()
                await tx.commit()
            finally:
                await self._pool.release(raw)
        finally:
            self._leave_tx(token)

    async def ping(self) -> None:
        async with self.transaction(readonly=True) as conn:
            try:
                await conn.fetchval("SELECT 1")
            except _UNAVAILABLE as e:
                raise Unavailable(f"PostgreSQL does not answer: {e}") from e

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            # pool.close() waits for every acquired connection to come back; a task stuck in a transaction
            # must not hang shutdown forever.
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except TimeoutError:
                pool.terminate()
