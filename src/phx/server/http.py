"""HTTP plumbing shared by every service: error responses, bounded bodies, request metrics.

Error bodies are JSON ``{"error": <code>, "message": <text>}`` with the status of the
:mod:`phx.errors` class (``RateLimited`` adds ``Retry-After``). Anything else that escapes an endpoint is a
bug: it is logged with its traceback and answered 500 ``internal_error`` without details.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from phx.errors import BadRequest, PayloadTooLarge, PhxError, RateLimited

from .metrics import Counter, Gauge, Registry

log = logging.getLogger("phx.server")

DEFAULT_MAX_BODY = 1 << 20
_SCOPE_MAX_BODY = "phx.max_body_size"

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


def error_body(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}


def error_response(exc: BaseException, *, path: str = "") -> JSONResponse:
    """The response a peer sees for ``exc``; logs internal errors."""
    if isinstance(exc, PhxError) and exc.status != 500:
        if exc.status >= 500:
            log.warning("%s: %s: %s", path or "request", exc.code, exc)
        headers: dict[str, str] = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(0, math.ceil(exc.retry_after)))
        return JSONResponse(
            error_body(exc.code, str(exc) or exc.code), status_code=exc.status, headers=headers
        )
    # PhxError with status 500 (ConfigError, the bare root) or any other exception: our bug, not the
    # peer's. Keep the details in the log, not in the response.
    log.error("internal error while handling %s", path or "a request", exc_info=exc)
    return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)


def http_error_response(exc: HTTPException) -> JSONResponse:
    """Starlette's own HTTPExceptions (unknown route, wrong method) in our JSON shape."""
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = dict(exc.headers) if exc.headers else None
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers)


class HttpMiddleware:
    """The one phx layer around every HTTP request, outermost: counts it (method, route, status), refuses
    bodies over ``max_body_size`` bytes (413, declared by Content-Length or streamed), and answers every
    exception that escapes the app as a JSON error (Starlette's HTTPExceptions — unknown route, wrong
    method — in the same shape). One layer instead of three, and without Starlette's own error and
    exception layers around it (:func:`http_stack`): each layer cost a coroutine and a wrapped ``send``
    per request. Other scopes (websocket, lifespan) go to ``other``."""

    def __init__(self, app: ASGIApp, other: ASGIApp, metrics: HttpMetrics, max_body_size: int) -> None:
        self.app = app
        self.other = other
        self.metrics = metrics
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.other(scope, receive, send)
            return
        status = 0  # 0 until the response starts

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        metrics = self.metrics
        metrics.in_progress.inc()
        try:
            try:
                await self.app(scope, self._limited(scope, receive), tracking_send)
            except Exception as exc:
                if status:
                    # Too late for an error response; let the server drop the connection.
                    log.error("error after the response started (%s)", scope.get("path"), exc_info=exc)
                    raise
                if isinstance(exc, HTTPException):
                    response = http_error_response(exc)
                else:
                    response = error_response(exc, path=str(scope.get("path", "")))
                await response(scope, receive, tracking_send)
        finally:
            metrics.in_progress.dec()
            metrics.requests.inc(
                method=str(scope["method"]), route=_route_label(scope), status=str(status or 500)
            )

    def _limited(self, scope: Scope, receive: Receive) -> Receive:
        limit = self.max_body_size
        scope[_SCOPE_MAX_BODY] = limit
        declared = _content_length(scope)
        if declared is not None:
            if declared > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
            return receive  # the server delivers no more than Content-Length says
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        return limited_receive


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise BadRequest("invalid Content-Length") from None
            if length < 0:
                raise BadRequest("invalid Content-Length")
            return length
    return None


async def read_body(request: Request, limit: int | None = None) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes (default: the app-wide limit) without
    buffering past it."""
    if limit is None:
        limit = int(request.scope.get(_SCOPE_MAX_BODY, DEFAULT_MAX_BODY))
    return await receive_body(request.scope, request.receive, limit)


async def receive_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """:func:`read_body` on the bare ASGI interface."""
    declared = _content_length(scope)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_OCTET_HEADER = (b"content-type", b"application/octet-stream")


class OctetEndpoint:
    """A ``POST`` endpoint taking and answering ``application/octet-stream``, as a bare ASGI app for a
    Starlette ``Route``. Service endpoints are bytes in, bytes out; Starlette's Request and Response objects
    and its per-route exception wrapper cost more per request than the DS's work on a small application
    message. Errors are raised as :class:`~phx.errors.PhxError`, which :class:`ErrorMiddleware` answers as
    for any other route."""

    def __init__(self, handler: Callable[[bytes], Awaitable[bytes]], limit: int) -> None:
        self.handler = handler
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = await self.handler(await receive_body(scope, receive, self.limit))
        length = (b"content-length", str(len(answer)).encode("ascii"))
        await send({"type": "http.response.start", "status": 200, "headers": [_OCTET_HEADER, length]})
        await send({"type": "http.response.body", "body": answer})


class HttpMetrics:
    """The request counters every app exports."""

    def __init__(self, registry: Registry) -> None:
        self.requests: Counter = registry.counter(
            "phx_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
        )
        self.in_progress: Gauge = registry.gauge(
            "phx_http_requests_in_progress", "HTTP requests being handled"
        )


def _route_label(scope: Scope) -> str:
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return "unmatched"
    if scope.get("path_params"):
        return str(getattr(endpoint, "__qualname__", "parametrized"))
    return str(scope.get("path", "unmatched"))
