"""Live-listener wake-ups across several instances of one homeserver sharing a PostgreSQL database.

The QS wakes a client's live listener (websocket) through its :class:`~phx.queuing.listeners.ListenerRegistry`
after a delivery commits. With several instances behind one address, the listener may be connected to
another instance than the one that delivered. :class:`PgListenerRegistry` keeps the local registry for
this instance's subscribers and adds two ``NOTIFY`` channels:

* ``phx_qs_queue`` — queue growth (``queue id:next sequence``, batched per event-loop turn, one
  ``NOTIFY`` for many queues); every other instance wakes its own subscribers of those queues;
* ``phx_qs_presence`` — which queues have a listener somewhere (``+``/``-`` as subscriptions come and go,
  everything re-announced periodically and on request), so :meth:`is_listening` — which decides between a
  wake-up and a push notification — answers for every instance, not just this one. Presence of an
  instance that stopped announcing lapses after ``presence_ttl``.

Presence is eventually consistent (milliseconds): a delivery racing a brand-new subscription on another
instance may send a push instead of a wake-up; the client then learns of the message by push.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from phx.queuing.listeners import LocalListenerRegistry, Subscription

from .pgnotify import PgListener

__all__ = ["PRESENCE_CHANNEL", "QUEUE_CHANNEL", "PgListenerRegistry"]

log = logging.getLogger("phx.federation.instances")

QUEUE_CHANNEL = "phx_qs_queue"
PRESENCE_CHANNEL = "phx_qs_presence"
#: NOTIFY payloads must stay under 8000 bytes.
_MAX_PAYLOAD = 7000


class _Sub:
    def __init__(self, registry: PgListenerRegistry, queue_id: bytes, inner: Subscription) -> None:
        self._registry = registry
        self._queue_id = queue_id
        self._inner = inner
        self._closed = False

    async def wait(self) -> int:
        return await self._inner.wait()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._inner.close()
            self._registry._unsubscribed(self._queue_id)


class PgListenerRegistry:
    def __init__(
        self,
        url: str,
        *,
        local: LocalListenerRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        announce_interval: float = 30.0,
        presence_ttl: float = 90.0,
    ) -> None:
        self.url = url
        self.local = local if local is not None else LocalListenerRegistry()
        self.clock = clock
        self.announce_interval = announce_interval
        self.presence_ttl = presence_ttl
        self.instance = os.urandom(6).hex()
        self._counts: dict[bytes, int] = {}
        self._remote: dict[bytes, dict[str, float]] = {}
        self._outgoing: list[tuple[str, str]] = []
        self._flush: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._schema = ""
        self._listener = PgListener(
            url,
            {QUEUE_CHANNEL: self._on_queue, PRESENCE_CHANNEL: self._on_presence},
            on_reconnect=self._request_presence,
        )
        self._announcer: asyncio.Task[None] | None = None

    # --- life cycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._conn = await asyncpg.connect(self.url, timeout=10)
        self._schema = str(await self._conn.fetchval("SELECT current_schema()"))
        await self._listener.start()
        self._request_presence()
        self._announcer = asyncio.create_task(self._announce_loop(), name="phx-qs-presence")

    async def stop(self) -> None:
        if self._announcer is not None:
            self._announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._announcer
        if self._flush is not None:
            with contextlib.suppress(Exception):
                await self._flush
        await self._listener.stop()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    # --- ListenerRegistry -------------------------------------------------------------------------------

    def subscribe(self, queue_id: bytes) -> Subscription:
        inner = self.local.subscribe(queue_id)
        n = self._counts.get(queue_id, 0)
        self._counts[queue_id] = n + 1
        if n == 0:
            self._send(PRESENCE_CHANNEL, "+" + queue_id.hex())
        return _Sub(self, queue_id, inner)

    def _unsubscribed(self, queue_id: bytes) -> None:
        n = self._counts.get(queue_id, 0) - 1
        if n <= 0:
            self._counts.pop(queue_id, None)
            self._send(PRESENCE_CHANNEL, "-" + queue_id.hex())
        else:
            self._counts[queue_id] = n

    def is_listening(self, queue_id: bytes) -> bool:
        if self.local.is_listening(queue_id):
            return True
        seen = self._remote.get(queue_id)
        if not seen:
            return False
        cutoff = self.clock() - self.presence_ttl
        for instance, at in list(seen.items()):
            if at < cutoff:
                del seen[instance]
        if not seen:
            del self._remote[queue_id]
        return bool(seen)

    def notify(self, queue_id: bytes, next_sequence: int) -> None:
        self.local.notify(queue_id, next_sequence)
        self._send(QUEUE_CHANNEL, f"{queue_id.hex()}:{next_sequence}")

    # --- wire -------------------------------------------------------------------------------------------

    def _send(self, channel: str, item: str) -> None:
        self._outgoing.append((channel, item))
        if self._flush is None or self._flush.done():
            self._flush = asyncio.ensure_future(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(0)  # gather everything this turn of the loop produced
        while self._outgoing:
            items, self._outgoing = self._outgoing, []
            by_channel: dict[str, list[str]] = {}
            for channel, item in items:
                by_channel.setdefault(channel, []).append(item)
            for channel, values in by_channel.items():
                for payload in _chunks(values):
                    await self._notify(channel, f"{self._schema} {self.instance} {payload}")

    async def _notify(self, channel: str, payload: str) -> None:
        if self._conn is None:
            return
        try:
            await self._conn.execute("SELECT pg_notify($1, $2)", channel, payload)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            log.warning("NOTIFY failed (%s); reconnecting", e)
            with contextlib.suppress(Exception):
                await self._conn.close()
            try:
                self._conn = await asyncpg.connect(self.url, timeout=10)
            except (OSError, asyncpg.PostgresError, TimeoutError) as e2:
                log.warning("cannot reconnect for NOTIFY: %s", e2)
                self._conn = None

    def _split(self, text: str) -> tuple[str, str] | None:
        instance, _, data = text.partition(" ")
        if instance == self.instance or not data:
            return None
        return instance, data

    def _on_queue(self, text: str) -> None:
        parsed = self._split(text)
        if parsed is None:
            return
        for item in parsed[1].split(","):
            qid_hex, _, seq = item.partition(":")
            with contextlib.suppress(ValueError):
                self.local.notify(bytes.fromhex(qid_hex), int(seq))

    def _on_presence(self, text: str) -> None:
        parsed = self._split(text)
        if parsed is None:
            return
        instance, data = parsed
        now = self.clock()
        for item in data.split(","):
            if item == "?":
                self._announce_all()
                continue
            with contextlib.suppress(ValueError):
                qid = bytes.fromhex(item[1:])
                if item[0] == "+":
                    self._remote.setdefault(qid, {})[instance] = now
                elif item[0] == "-":
                    seen = self._remote.get(qid)
                    if seen is not None:
                        seen.pop(instance, None)
                        if not seen:
                            del self._remote[qid]

    def _announce_all(self) -> None:
        for qid in self._counts:
            self._send(PRESENCE_CHANNEL, "+" + qid.hex())

    def _request_presence(self) -> None:
        self._send(PRESENCE_CHANNEL, "?")
        self._announce_all()

    async def _announce_loop(self) -> None:
        while True:
            await asyncio.sleep(self.announce_interval)
            self._announce_all()


def _chunks(values: list[str]) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    size = 0
    for v in values:
        if current and size + len(v) + 1 > _MAX_PAYLOAD:
            out.append(",".join(current))
            current, size = [], 0
        current.append(v)
        size += len(v) + 1
    if current:
        out.append(",".join(current))
    return out
