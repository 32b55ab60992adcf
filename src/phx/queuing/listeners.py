"""Live listeners (websockets) waiting for their queue to grow, and push notifications.

:class:`ListenerRegistry` is the seam: the in-process :class:`LocalListenerRegistry` wakes subscribers of
this process; a PostgreSQL LISTEN/NOTIFY implementation can replace it when several QS processes share a
database (``notify`` would then ``NOTIFY`` after commit and every process would wake its own subscribers).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from .messages import PushToken

__all__ = [
    "ListenerRegistry",
    "LocalListenerRegistry",
    "LoggingPushNotifier",
    "PushNotifier",
    "Subscription",
]

log = logging.getLogger("phx.queuing.push")


class Subscription(Protocol):
    async def wait(self) -> int:
        """Block until the queue grew since the last call; return its next sequence number."""
        ...

    def close(self) -> None: ...


class ListenerRegistry(Protocol):
    def subscribe(self, queue_id: bytes) -> Subscription: ...

    def is_listening(self, queue_id: bytes) -> bool:
        """Whether a live listener would see a notification (then no push is sent)."""
        ...

    def notify(self, queue_id: bytes, next_sequence: int) -> None:
        """Called after a transaction that enqueued into ``queue_id`` committed."""
        ...


class _LocalSubscription:
    __slots__ = ("_registry", "_queue_id", "_event", "_latest", "_closed")

    def __init__(self, registry: LocalListenerRegistry, queue_id: bytes) -> None:
        self._registry = registry
        self._queue_id = queue_id
        self._event = asyncio.Event()
        self._latest = 0
        self._closed = False

    def _wake(self, next_sequence: int) -> None:
        # Wake-ups coalesce: a slow listener sees the latest value once, never a backlog.
        self._latest = max(self._latest, next_sequence)
        self._event.set()

    async def wait(self) -> int:
        await self._event.wait()
        self._event.clear()
        return self._latest

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._registry._remove(self._queue_id, self)


class LocalListenerRegistry:
    """Subscribers of this process, by queue id."""

    def __init__(self) -> None:
        self._subs: dict[bytes, set[_LocalSubscription]] = {}

    def subscribe(self, queue_id: bytes) -> Subscription:
        sub = _LocalSubscription(self, queue_id)
        self._subs.setdefault(queue_id, set()).add(sub)
        return sub

    def _remove(self, queue_id: bytes, sub: _LocalSubscription) -> None:
        subs = self._subs.get(queue_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[queue_id]

    def is_listening(self, queue_id: bytes) -> bool:
        return queue_id in self._subs

    def notify(self, queue_id: bytes, next_sequence: int) -> None:
        for sub in tuple(self._subs.get(queue_id, ())):
            sub._wake(next_sequence)

    def count(self) -> int:
        return sum(len(s) for s in self._subs.values())


class PushNotifier(Protocol):
    async def notify(self, push_token: PushToken) -> None:
        """Send a content-free push to the device; errors are logged by the caller, never fatal."""
        ...


class LoggingPushNotifier:
    """Logs instead of pushing (development, and servers without a push provider)."""

    def __init__(self) -> None:
        self.sent = 0

    async def notify(self, push_token: PushToken) -> None:
        self.sent += 1
        log.info(
            "push notification via %s (token of %d bytes)", push_token.operator.name, len(push_token.token)
        )
