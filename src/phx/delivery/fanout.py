"""Where the DS hands its FanOutMessages: the local QS, in process or over HTTP.

:class:`FanOutSink` is all the DS needs; it answers with the :class:`QueueDeleted` reports of queues that
do not exist (book: "Message distribution"). Any failure to hand over raises
:class:`~phx.errors.Unavailable` (or another :class:`~phx.errors.PhxError`); the DS keeps the fan-out in
its outbox and retries with the group's next request.
"""

from __future__ import annotations

from typing import Protocol

import httpx

from phx.errors import DecodeError, Unavailable
from phx.queuing.fanout import FanOutDeliverer
from phx.queuing.messages import FanOutMessage, LocalEnqueueResponse, QueueDeleted
from phx.storage import Database

__all__ = ["FanOutSink", "HttpQsSink", "LocalQs", "LocalQsSink", "LOCAL_ENQUEUE_PATH"]

#: The QS's local enqueue route (phx.queuing.routes.qs_local_routes).
LOCAL_ENQUEUE_PATH = "/qs/v1/local_enqueue"


class FanOutSink(Protocol):
    async def fan_out(self, message: FanOutMessage, now: int) -> list[QueueDeleted]:
        """Enqueue ``message`` for every queue config in it (or forward it); returns the configs whose
        queue does not exist."""
        ...


class LocalQs(Protocol):
    """The part of :class:`phx.queuing.service.QsService` the in-process sink uses."""

    async def enqueue_fan_out(self, fan_out: FanOutMessage) -> list[QueueDeleted]: ...


class LocalQsSink:
    """The QS in the same process: a direct call (the QS reads its own clock)."""

    def __init__(self, qs: LocalQs) -> None:
        self.qs = qs

    async def fan_out(self, message: FanOutMessage, now: int) -> list[QueueDeleted]:
        return await self.qs.enqueue_fan_out(message)

    def shared_deliverer(self, db: Database) -> FanOutDeliverer | None:
        """The QS's fan-out deliverer if it writes to ``db``: the DS may then deliver application messages
        in the QS's transactions, with a guard on its own rows (:mod:`phx.delivery.express`)."""
        deliverer = getattr(self.qs, "fan_out", None)
        return deliverer if isinstance(deliverer, FanOutDeliverer) and deliverer.db is db else None


class HttpQsSink:
    """The local QS in another process: ``POST <base_url>/qs/v1/local_enqueue`` with the encoded
    FanOutMessage, answered by a LocalEnqueueResponse. The caller owns ``client`` if it passes one."""

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        path: str = LOCAL_ENQUEUE_PATH,
        timeout: float = 10.0,
    ) -> None:
        self.url = base_url.rstrip("/") + path
        self._own = client is None
        self.client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    async def fan_out(self, message: FanOutMessage, now: int) -> list[QueueDeleted]:
        try:
            resp = await self.client.post(
                self.url, content=message.encode(), headers={"content-type": "application/octet-stream"}
            )
        except httpx.HTTPError as e:
            raise Unavailable(f"local QS unreachable: {e}") from e
        if resp.status_code != 200:
            raise Unavailable(f"local QS answered {resp.status_code}: {resp.text[:200]}")
        try:
            return list(LocalEnqueueResponse.decode(resp.content).queue_deleted)
        except DecodeError as e:
            raise Unavailable(f"local QS answered with a malformed response: {e}") from e

    async def aclose(self) -> None:
        if self._own:
            await self.client.aclose()
