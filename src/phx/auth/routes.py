"""Thin Starlette routes for the AS (docs/decisions.md, "One HTTP convention for every service endpoint").

``POST /as/v1/<operation>`` for every operation of :data:`phx.auth.core.OPERATIONS`; the body is an
encoded :class:`~phx.auth.messages.AsRequest`, the answer the encoded response struct
(``application/octet-stream``, empty for operations without one). Errors are raised as
:class:`~phx.errors.PhxError` and turned into JSON by the app's error middleware.

Bodies are limited per operation (uploads of connection packages may be larger than the rest); the app's
own limit (``server.max_request_size``) applies on top.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from phx.server.http import read_body

from .core import OPERATIONS

if TYPE_CHECKING:
    from .service import AsService

__all__ = ["BODY_LIMITS", "DEFAULT_BODY_LIMIT", "as_routes"]

OCTETS = "application/octet-stream"
DEFAULT_BODY_LIMIT = 128 * 1024
BODY_LIMITS: dict[str, int] = {
    "finish_user_registration": 1 << 20,
    "upload_user_id_connection_packages": 1 << 20,
    "upload_alias_connection_packages": 1 << 20,
}


def _endpoint(service: AsService, operation: str) -> Callable[[Request], Awaitable[Response]]:
    limit = BODY_LIMITS.get(operation, DEFAULT_BODY_LIMIT)

    async def endpoint(request: Request) -> Response:
        body = await read_body(request, limit)
        return Response(await service.handle(operation, body), media_type=OCTETS)

    return endpoint


def as_routes(service: AsService) -> list[BaseRoute]:
    return [Route(f"/as/v1/{name}", _endpoint(service, name), methods=["POST"]) for name in OPERATIONS]
