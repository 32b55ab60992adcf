"""Thin Starlette routes for the DS (docs/decisions.md, "One HTTP convention for every service endpoint").

``POST /ds/v1/<operation>`` with an encoded :class:`~.messages.DsRequest` body (params, auth token,
Privacy Pass token); the answer is the encoded response struct
(``application/octet-stream``; empty for operations without one). ``POST /ds/v1/verifying_key`` (empty
body, no token) returns the DS's external-sender key. Errors are raised as :class:`~phx.errors.PhxError`
and turned into JSON by the app's error middleware. Clients of other homeservers use the same routes; the
DS tells them apart by the class of their Privacy Pass token, not by anything about the connection.

:func:`ds_local_routes` (``POST /ds/v1/queue_deleted``: a LocalEnqueueResponse listing QueueDeleted
reports from federated QSs) has no authentication; mount it only where the local QS alone can reach it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from phx.errors import BadRequest
from phx.queuing.messages import LocalEnqueueResponse
from phx.server.http import OctetEndpoint, read_body

from .messages import Operation
from .service import DsService

__all__ = ["BODY_LIMITS", "DEFAULT_BODY_LIMIT", "ds_local_routes", "ds_routes"]

OCTETS = "application/octet-stream"
DEFAULT_BODY_LIMIT = 256 * 1024
#: Commits that carry KeyPackages or UpdatePaths of large groups.
BODY_LIMITS: dict[Operation, int] = {
    Operation.CREATE_GROUP: 1 << 20,
    Operation.ADD_USERS: 16 << 20,
    Operation.REMOVE_USERS: 4 << 20,
    Operation.UPDATE_CLIENT: 4 << 20,
    Operation.JOIN_CONNECTION_GROUP: 1 << 20,
    Operation.RESYNC_CLIENT: 4 << 20,
    Operation.DELETE_GROUP: 4 << 20,
}
LOCAL_LIMIT = 4 << 20


def _endpoint(service: DsService, op: Operation) -> OctetEndpoint:
    async def handle(body: bytes) -> bytes:
        return await service.handle(op.value, body)

    return OctetEndpoint(handle, BODY_LIMITS.get(op, DEFAULT_BODY_LIMIT))


def ds_routes(service: DsService) -> list[BaseRoute]:
    """Every public DS route, for clients of this and of other homeservers alike."""

    async def verifying_key(request: Request) -> Response:
        if await read_body(request, 1024):
            raise BadRequest("verifying_key takes an empty body")
        return Response(service.verifying_key_response().encode(), media_type=OCTETS)

    routes: list[BaseRoute] = [
        Route(f"/ds/v1/{op.value}", _endpoint(service, op), methods=["POST"]) for op in Operation
    ]
    routes.append(Route("/ds/v1/verifying_key", verifying_key, methods=["POST"]))
    return routes


def ds_local_routes(service: DsService) -> list[BaseRoute]:
    """The route the local QS reports QueueDeleted answers of federated QSs to."""

    async def queue_deleted(request: Request) -> Response:
        reports = LocalEnqueueResponse.decode(await read_body(request, LOCAL_LIMIT))
        await service.queue_deleted(reports.queue_deleted)
        return Response(b"", media_type=OCTETS)

    return [Route("/ds/v1/queue_deleted", queue_deleted, methods=["POST"])]
