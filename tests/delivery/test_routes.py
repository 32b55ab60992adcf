"""The DS over HTTP: the convention's paths, octet-stream bodies and JSON errors."""

from __future__ import annotations

import os

import httpx
import pytest

from phx.config import Config
from phx.delivery.messages import (
    DsRequest,
    DsSenderId,
    DsVerifyingKeyResponse,
    Operation,
    RequestGroupIdResponse,
    SendMessageParams,
)
from phx.delivery.routes import ds_local_routes
from phx.queuing.messages import LocalEnqueueResponse, QueueDeleted
from phx.server import create_app
from phx.storage import Database
from tests.delivery.helpers import DOMAIN, Client, Harness


@pytest.fixture
async def h(db: Database) -> Harness:
    return await Harness.start(db)


def client_for(h: Harness) -> httpx.AsyncClient:
    app = create_app(Config.default(str(DOMAIN)), [h.service])
    for route in ds_local_routes(h.service):
        app.router.routes.append(route)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ds.example.com")


async def test_endpoints_over_http(h: Harness) -> None:
    async with client_for(h) as http:
        r = await http.post("/ds/v1/verifying_key", content=b"")
        assert r.status_code == 200
        assert (
            DsVerifyingKeyResponse.decode(r.content).external_sender.signature_key
            == h.service.ctx.verifying_key
        )
        body = DsRequest.unsigned(privacy_pass_token=b"pp").encode()
        r = await http.post("/ds/v1/request_group_id", content=body)
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        assert RequestGroupIdResponse.decode(r.content).group_id.ds_domain == DOMAIN
        r = await http.post("/ds/v1/send_message", content=b"\xff\x00garbage")
        assert r.status_code == 400 and r.json()["error"] == "decode_error"
        r = await http.post("/ds/v1/no_such_operation", content=b"")
        assert r.status_code == 404
        r = await http.get("/ds/v1/send_message")
        assert r.status_code == 405
        r = await http.post("/ds/v1/send_message", content=os.urandom(300 * 1024))
        assert r.status_code == 413


async def test_errors_map_to_their_codes(h: Harness) -> None:
    alice, bob = Client.new("alice"), Client.new("bob")
    await h.create(alice)
    await h.add(alice, [bob])
    async with client_for(h) as http:
        wrong = SendMessageParams(bob.g.send(b"x"), os.urandom(32))
        sender = DsSenderId.leaf(bob.leaf)
        req = DsRequest.signed(
            Operation.SEND_MESSAGE.value,
            wrong,
            h.group_id,
            sender,
            bob.sig_priv,
            h.now,
            privacy_pass_token=b"pp",
        )
        r = await http.post("/ds/v1/send_message", content=req.encode())
        assert (r.status_code, r.json()["error"]) == (401, "wrong_ear_key")
        r = await http.post(
            "/ds/v1/send_message", content=DsRequest(req.params, req.auth_token, None).encode()
        )
        assert (r.status_code, r.json()["error"]) == (401, "bad_token")
        # QueueDeleted reports from the local QS
        report = LocalEnqueueResponse((QueueDeleted(bob.qc, h.group_id),)).encode()
        r = await http.post("/ds/v1/queue_deleted", content=report)
        assert r.status_code == 200
    async with h.db.transaction(readonly=True) as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM ds_deleted_queues") == 1


async def test_remote_clients_cannot_create_groups(h: Harness) -> None:
    """Clients of other homeservers reach the DS on the same routes; their tokens' class gives them away."""
    h.redeemer.federated.update({b"remote 1", b"remote 2"})
    async with client_for(h) as http:
        body = DsRequest.unsigned(privacy_pass_token=b"remote 1").encode()
        r = await http.post("/ds/v1/request_group_id", content=body)
        assert (r.status_code, r.json()["error"]) == (403, "local_clients_only")
        body = DsRequest(b"\x00", None, b"remote 2").encode()  # refused before the params are read
        r = await http.post("/ds/v1/create_group", content=body)
        assert (r.status_code, r.json()["error"]) == (403, "local_clients_only")
        body = DsRequest.unsigned(privacy_pass_token=b"local").encode()
        r = await http.post("/ds/v1/request_group_id", content=body)
        assert r.status_code == 200
