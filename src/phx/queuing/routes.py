"""Thin Starlette routes for the QS (docs/decisions.md, "One HTTP convention for every service endpoint").

``POST /qs/v1/<operation>`` with an encoded :class:`~.messages.QsClientRequest` body answers with the
encoded response struct (``application/octet-stream``; empty for operations without one). Errors are
raised as :class:`~phx.errors.PhxError` and turned into JSON by the app's exception handler.

``POST /qs/v1/verifying_key`` takes an empty body (public, no token). ``/qs/v1/listen`` is a websocket: the
client's first binary frame is a ``QsClientRequest`` with :class:`~.messages.WsParams`; the server answers
with a :class:`~.messages.QsQueueUpdate` at once and again whenever the queue grows, and closes with code
4000 + HTTP status (reason: the error code) when the opening frame is refused.

:func:`qs_local_routes` (``POST /qs/v1/local_enqueue``) has no authentication (book: "Local homeserver
endpoints"); mount it only on a listener the local DS alone can reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from phx.errors import BadRequest, PayloadTooLarge, PhxError
from phx.server.http import read_body

from .messages import Operation, QsQueueUpdate
from .service import QsService

__all__ = ["BODY_LIMITS", "DEFAULT_BODY_LIMIT", "QsHttp", "qs_local_routes", "qs_routes"]

log = logging.getLogger("phx.queuing")

OCTETS = "application/octet-stream"
#: How often the expiry task looks for inactive client records.
EXPIRY_INTERVAL = 3600.0
DEFAULT_BODY_LIMIT = 64 * 1024
#: Operations whose requests may be larger than the default.
BODY_LIMITS: dict[str, int] = {
    Operation.PUBLISH_KEY_PACKAGES.value: 4 * 1024 * 1024,
}
LOCAL_ENQUEUE_LIMIT = 16 * 1024 * 1024
LISTEN_FIRST_FRAME_TIMEOUT = 10.0
LISTEN_FRAME_LIMIT = 4096


def _operation_endpoint(service: QsService, op: Operation) -> Callable[[Request], Awaitable[Response]]:
    limit = BODY_LIMITS.get(op.value, DEFAULT_BODY_LIMIT)

    async def endpoint(request: Request) -> Response:
        body = await read_body(request, limit)
        return Response(await service.handle(op, body), media_type=OCTETS)

    return endpoint


def qs_routes(service: QsService) -> list[BaseRoute]:
    """Every public QS route."""

    async def verifying_key(request: Request) -> Response:
        if await read_body(request, DEFAULT_BODY_LIMIT):
            raise BadRequest("verifying_key takes an empty body")
        return Response(service.verifying_key_response().encode(), media_type=OCTETS)

    async def listen(websocket: WebSocket) -> None:
        await _listen(service, websocket)

    routes: list[BaseRoute] = [
        Route(f"/qs/v1/{op.value}", _operation_endpoint(service, op), methods=["POST"])
        for op in Operation
        if op not in (Operation.LISTEN, Operation.VERIFYING_KEY)
    ]
    routes.append(Route(f"/qs/v1/{Operation.VERIFYING_KEY.value}", verifying_key, methods=["POST"]))
    routes.append(WebSocketRoute(f"/qs/v1/{Operation.LISTEN.value}", listen))
    return routes


def qs_local_routes(service: QsService) -> list[BaseRoute]:
    """The unauthenticated local-DS enqueue endpoint (internal listener only)."""

    async def local_enqueue(request: Request) -> Response:
        body = await read_body(request, LOCAL_ENQUEUE_LIMIT)
        return Response(await service.local_enqueue(body), media_type=OCTETS)

    return [Route("/qs/v1/local_enqueue", local_enqueue, methods=["POST"])]


async def _listen(service: QsService, websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        first = await asyncio.wait_for(websocket.receive_bytes(), LISTEN_FIRST_FRAME_TIMEOUT)
        if len(first) > LISTEN_FRAME_LIMIT:
            raise PayloadTooLarge("opening frame too large")
        qs_cid, next_sequence = await service.authenticate_listen(first)
    except WebSocketDisconnect:
        return
    except TimeoutError:
        await websocket.close(code=4408, reason="timeout")
        return
    except (PhxError, KeyError, RuntimeError) as e:
        # KeyError/RuntimeError: a text frame or a disconnect message where bytes were expected.
        status, code = (e.status, e.code) if isinstance(e, PhxError) else (400, "bad_request")
        await websocket.close(code=4000 + status, reason=code)
        return
    queue_id = qs_cid.client_id.bytes
    sub = service.listeners.subscribe(queue_id)
    receiver = asyncio.ensure_future(_drain(websocket))
    try:
        await websocket.send_bytes(QsQueueUpdate(next_sequence).encode())
        while True:
            waiter = asyncio.ensure_future(sub.wait())
            done, _ = await asyncio.wait({waiter, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done:
                waiter.cancel()
                return
            await websocket.send_bytes(QsQueueUpdate(waiter.result()).encode())
    except WebSocketDisconnect:
        return
    finally:
        sub.close()
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await receiver


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) client frames until the client goes away."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


class QsHttp:
    """The QS as a :class:`phx.server.app.Service`: its public routes (plus the local enqueue route when
    ``local_enqueue`` is set) and the expiry task, which deletes inactive client records hourly."""

    name = "qs"

    def __init__(
        self, service: QsService, *, local_enqueue: bool = False, expiry_interval: float = EXPIRY_INTERVAL
    ) -> None:
        self.service = service
        self.local_enqueue = local_enqueue
        self.expiry_interval = expiry_interval
        self._task: asyncio.Task[None] | None = None

    def routes(self) -> Sequence[BaseRoute]:
        routes = qs_routes(self.service)
        if self.local_enqueue:
            routes += qs_local_routes(self.service)
        return routes

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._expiry_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _expiry_loop(self) -> None:
        while True:
            try:
                clients, users = await self.service.expire(self.service.clock())
                if clients or users:
                    log.info("expired %d QS client records and %d user records", clients, users)
            except PhxError as e:
                log.warning("QS expiry failed: %s", e)
            await asyncio.sleep(self.expiry_interval)
