"""The engine-neutral database interface the service stores build on.

SQL is written once with PostgreSQL's numbered placeholders (``$1``, ``$2``, …, reusable within a
statement); the SQLite backend rewrites them to SQLite's own numbered form (``?1``, ``?2``) so both engines
bind by position with the same semantics. Statements whose *text* must differ between engines (``SELECT …
FOR UPDATE``, DDL types) are chosen by the store from :attr:`Connection.engine`.

Rows come back as the engine's native row objects; both support ``row["column"]``, ``row[0]``, ``len(row)``
and ``dict(row)``.
"""

from __future__ import annotations

import asyncio
import contextvars
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Literal, Protocol

Engine = Literal["sqlite", "postgres"]


class Row(Protocol):
    def __getitem__(self, key: int | str, /) -> Any: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...

    def keys(self) -> Iterable[str]: ...


class Connection(ABC):
    """A connection inside one transaction; valid only inside its ``async with db.transaction()`` block.

    After any statement raises, the transaction is poisoned: every further call raises
    :class:`TransactionAborted`, on both engines (PostgreSQL refuses statements after an error anyway; SQLite
    would not, and a store that kept going there would behave differently in production).
    """

    engine: Engine

    @abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; returns the number of rows it changed (0 for DDL)."""

    @abstractmethod
    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per argument tuple."""

    @abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """All rows of a query."""

    @abstractmethod
    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """The first row of a query, or None."""

    @abstractmethod
    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row, or None when there is no row."""

    @abstractmethod
    async def execute_script(self, sql: str) -> None:
        """Run several ``;``-separated statements (no placeholders) inside the current transaction."""


class TransactionAborted(RuntimeError):
    """A statement was issued on a transaction that already failed, or outside its block.

    A programming error, not a peer's fault, hence not a :class:`phx.errors.PhxError`.
    """


class NestedTransaction(RuntimeError):
    """``db.transaction()`` was entered again by a task already inside one on the same database.

    On SQLite that would deadlock on the writer lock; on PostgreSQL it would silently use a second
    connection with its own snapshot. Pass the connection down instead.
    """


# The task (and database) currently inside a transaction; a copy of the context is inherited by child tasks,
# so the check compares the owning task too.
_current_tx: contextvars.ContextVar[tuple[int, asyncio.Task[Any] | None] | None] = contextvars.ContextVar(
    "phx_storage_current_tx", default=None
)


class Database(ABC):
    """A database handle: a writer/reader pool (SQLite) or a connection pool (PostgreSQL)."""

    engine: Engine

    @abstractmethod
    def transaction(self, *, readonly: bool = False) -> AbstractAsyncContextManager[Connection]:
        """A transaction: committed when the block exits normally, rolled back on any exception.

        Write transactions (the default) take the engine's write lock up front: on SQLite one writer at a
        time (``BEGIN IMMEDIATE`` behind an asyncio lock), on PostgreSQL a plain ``BEGIN`` — stores take row
        locks with ``SELECT … FOR UPDATE`` where they read-modify-write. ``readonly=True`` transactions see
        one consistent snapshot, run concurrently with writers and reject writes.
        """

    @abstractmethod
    async def ping(self) -> None:
        """Raise :class:`phx.errors.Unavailable` when the database does not answer."""

    @abstractmethod
    async def close(self) -> None:
        """Close every connection; the handle is unusable afterwards."""

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _enter_tx(self) -> contextvars.Token[tuple[int, asyncio.Task[Any] | None] | None]:
        task = asyncio.current_task()
        current = _current_tx.get()
        if current is not None and current == (id(self), task):
            raise NestedTransaction("this task is already inside a transaction on this database")
        return _current_tx.set((id(self), task))

    @staticmethod
    def _leave_tx(token: contextvars.Token[tuple[int, asyncio.Task[Any] | None] | None]) -> None:
        _current_tx.reset(token)


def rowcount_from_status(status: str) -> int:
    """The row count at the end of a PostgreSQL command tag (``"UPDATE 3"``, ``"INSERT 0 1"``)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0
