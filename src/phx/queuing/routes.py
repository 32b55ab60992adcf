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
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from phx.errors import BadRequest, PayloadTooLarge, PhxError

from .messages import Operation, QsQueueUpdate
from .service import QsService

__all__ = ["BODY_LIMITS", "DEFAULT_BODY_LIMIT", "qs_local_routes", "qs_routes", "read_body"]

OCTETS = "application/octet-stream"
DEFAULT_BODY_LIMIT = 64 * 1024
#: Operations whose requests may be larger than the default.
BODY_LIMITS: dict[str, int] = {
    Operation.PUBLISH_KEY_PACKAGES.value: 4 * 1024 * 1024,
}
LOCAL_ENQUEUE_LIMIT = 16 * 1024 * 1024
LISTEN_FIRST_FRAME_TIMEOUT = 10.0
LISTEN_FRAME_LIMIT = 4096


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest("malformed Content-Length") from None
        if size > limit:
            raise PayloadTooLarge(f"body of {size} bytes exceeds {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
    return bytes(body)


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
