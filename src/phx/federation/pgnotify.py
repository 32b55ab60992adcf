"""PostgreSQL ``LISTEN`` for several instances of one homeserver sharing a database.

A notification is delivered when the notifying transaction commits, to every listening session, so it is
the right signal for "a row you may want to read now exists". :class:`PgListener` keeps one dedicated
connection (outside the pool: a listening session must stay open), filters payloads of the form
``<schema> <text>`` by its own ``current_schema()``, and reconnects after losing the connection — calling
``on_reconnect`` then, since notifications sent meanwhile are lost and the caller must re-read the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

__all__ = ["PgListener"]

log = logging.getLogger("phx.federation.pgnotify")


class PgListener:
    def __init__(
        self,
        url: str,
        handlers: Mapping[str, Callable[[str], None]],
        *,
        on_reconnect: Callable[[], None] | None = None,
        retry_delay: float = 1.0,
    ) -> None:
        self.url = url
        self.handlers = dict(handlers)
        self.on_reconnect = on_reconnect
        self.retry_delay = retry_delay
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.schema = ""

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="phx-pg-listener")
            # Listening before the first request is served: no early notification is lost.
            waiter = asyncio.create_task(self.ready.wait())
            await asyncio.wait({waiter, self._task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _dispatch(self, channel: str, payload: str) -> None:
        schema, _, text = payload.partition(" ")
        if schema != self.schema:
            return
        handler = self.handlers.get(channel)
        if handler is not None:
            handler(text)

    async def _run(self) -> None:
        first = True
        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(self.url, timeout=10)
                self.schema = str(await conn.fetchval("SELECT current_schema()"))
                lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                for channel in self.handlers:
                    await conn.add_listener(
                        channel, lambda _c, _pid, ch, payload: self._dispatch(str(ch), str(payload))
                    )
                self.ready.set()
                if not first and self.on_reconnect is not None:
                    self.on_reconnect()
                first = False
                while not lost.is_set():
                    # Termination is not always reported (a silently dead peer): check now and then.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 15)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
                log.warning("LISTEN connection lost: %s; reconnecting", e)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 5)
            await asyncio.sleep(self.retry_delay)


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    return lambda _conn: event.set()
