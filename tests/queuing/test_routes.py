"""The QS over HTTP and the websocket, through the real app factory — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import ASGIApp, Message

from phx.codec import Struct
from phx.config import Config
from phx.queuing.messages import (
    CreateUserRecordParams,
    CreateUserRecordResponse,
    DeleteClientRecordParams,
    DequeueMessagesParams,
    DequeueMessagesResponse,
    LocalEnqueueResponse,
    Operation,
    QsClientRequest,
    QsQueueUpdate,
    QueueConfigEncryptionKeyResponse,
    UserRecordParams,
    VerifyingKeyResponse,
    WsParams,
)
from phx.queuing.routes import BODY_LIMITS, DEFAULT_BODY_LIMIT, QsHttp
from phx.queuing.service import QsService
from phx.server.app import create_app
from phx.storage import Database

from .helpers import DOMAIN, Client, cs, fan_out, make_service, register

OPS = [op for op in Operation if op is not Operation.LISTEN]
# Operations that need a Privacy Pass token.
NEEDS_TOKEN = set(OPS) - {Operation.DEQUEUE_MESSAGES, Operation.VERIFYING_KEY}


def app_for(service: QsService) -> ASGIApp:
    return create_app(Config.default(str(DOMAIN)), [QsHttp(service, local_enqueue=True)])


@pytest.fixture
async def setup(db: Database) -> AsyncIterator[tuple[QsService, ASGIApp, httpx.AsyncClient]]:
    service = await make_service(db)
    app = app_for(service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://qs.test") as http:
        yield service, app, http


async def post(http: httpx.AsyncClient, op: str, body: bytes) -> httpx.Response:
    return await http.post(f"/qs/v1/{op}", content=body, headers={"content-type": "application/octet-stream"})


def error_of(r: httpx.Response) -> str:
    return str(r.json()["error"])


async def test_round_trips_over_http(setup: tuple[QsService, ASGIApp, httpx.AsyncClient]) -> None:
    service, _, http = setup
    r = await post(http, "verifying_key", b"")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert VerifyingKeyResponse.decode(r.content).verifying_key == service.verifying_key
    r = await post(http, "queue_config_encryption_key", QsClientRequest(b"", None, b"t").encode())
    assert (
        QueueConfigEncryptionKeyResponse.decode(r.content).encryption_key
        == service.queue_config_encryption_key
    )

    sig_sk, sig_pk = cs.generate_signature_key_pair()
    params = CreateUserRecordParams(sig_pk, os.urandom(32), sig_pk, cs.generate_hpke_key_pair()[1])
    r = await post(http, "create_user_record", QsClientRequest(params.encode(), None, b"t").encode())
    assert r.status_code == 200
    created = CreateUserRecordResponse.decode(r.content)
    body = QsClientRequest.signed(
        "get_user_record",
        UserRecordParams(created.qs_uid),
        created.qs_uid,
        sig_sk,
        service.clock(),
        privacy_pass_token=b"t",
    ).encode()
    assert (await post(http, "get_user_record", body)).status_code == 200
    body = QsClientRequest.signed(
        "dequeue_messages",
        DequeueMessagesParams(created.qs_cid, 0, 10),
        created.qs_cid,
        sig_sk,
        service.clock(),
    ).encode()
    r = await post(http, "dequeue_messages", body)
    assert len(DequeueMessagesResponse.decode(r.content).messages) == 1
    r = await post(http, "delete_user_record", b"")
    assert r.status_code == 400 and error_of(r) == "decode_error"


async def test_local_enqueue_route(setup: tuple[QsService, ASGIApp, httpx.AsyncClient]) -> None:
    service, _, http = setup
    c = await register(service)
    r = await http.post("/qs/v1/local_enqueue", content=fan_out([c.queue_config()]).encode())
    assert r.status_code == 200 and LocalEnqueueResponse.decode(r.content).queue_deleted == ()
    assert len(await c.read_queue()) == 1
    r = await http.post("/qs/v1/local_enqueue", content=b"\xff" * 10)
    assert r.status_code == 400 and error_of(r) == "decode_error"


async def test_local_enqueue_is_not_public(db: Database) -> None:
    service = await make_service(db)
    app = create_app(Config.default(str(DOMAIN)), [QsHttp(service)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://qs.test") as http:
        r = await http.post("/qs/v1/local_enqueue", content=fan_out([]).encode())
    assert r.status_code == 404


async def test_every_endpoint_rejects_bad_requests(
    setup: tuple[QsService, ASGIApp, httpx.AsyncClient],
) -> None:
    service, _, http = setup
    c = await register(service)
    for op in OPS:
        name = op.value
        # Wrong method.
        assert (await http.get(f"/qs/v1/{name}")).status_code == 405
        # Oversized (declared and streamed).
        limit = BODY_LIMITS.get(name, DEFAULT_BODY_LIMIT)
        r = await post(http, name, b"\x00" * (limit + 1))
        assert r.status_code == 413 and error_of(r) == "payload_too_large", name

        async def stream() -> AsyncIterator[bytes]:
            for _ in range(limit // 4096 + 2):  # noqa: B023
                yield b"\x00" * 4096

        r = await http.post(f"/qs/v1/{name}", content=stream())
        assert r.status_code == 413, name
        if op is Operation.VERIFYING_KEY:
            r = await post(http, name, b"x")
            assert r.status_code == 400
            continue
        # Malformed.
        for junk in (b"", b"\x00", b"\x05abc", os.urandom(64)):
            r = await post(http, name, junk)
            assert r.status_code == 400 and error_of(r) == "decode_error", (name, junk)
        # Well-framed but params of another shape.
        r = await post(http, name, QsClientRequest(b"\x01\x02\x03", None, b"t").encode())
        assert r.status_code == 400, name
    # Unauthenticated: the right params but no token (or no Privacy Pass token).
    params: dict[Operation, Struct] = {
        Operation.GET_USER_RECORD: UserRecordParams(c.qs_uid),
        Operation.DELETE_USER_RECORD: UserRecordParams(c.qs_uid),
        Operation.DEQUEUE_MESSAGES: DequeueMessagesParams(c.cid, 0, 1),
        Operation.DELETE_CLIENT_RECORD: DeleteClientRecordParams(c.cid),
    }
    for auth_op, p in params.items():
        r = await post(http, auth_op.value, QsClientRequest(p.encode(), None, b"t").encode())
        assert r.status_code == 401 and error_of(r) == "unauthenticated", auth_op
    r = await post(
        http,
        "get_user_record",
        c.request(Operation.GET_USER_RECORD, params[Operation.GET_USER_RECORD], as_user=True, token=None),
    )
    assert r.status_code == 401 and error_of(r) == "bad_token"
    r = await post(
        http,
        "get_user_record",
        c.request(
            Operation.GET_USER_RECORD, params[Operation.GET_USER_RECORD], as_user=True, key=c.client_sk
        ),
    )
    assert r.status_code == 401 and error_of(r) == "bad_signature"
    r = await post(
        http,
        "get_user_record",
        c.request(
            Operation.GET_USER_RECORD,
            params[Operation.GET_USER_RECORD],
            as_user=True,
            now=service.clock() - 7200,
        ),
    )
    assert r.status_code == 401 and error_of(r) == "expired"
    for op in NEEDS_TOKEN:
        r = await post(http, op.value, QsClientRequest(b"", None, None).encode())
        assert r.status_code in (400, 401), op
        if r.status_code == 401:
            assert error_of(r) == "bad_token", op


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(OPS + ["local_enqueue"]), body=st.binary(max_size=300))
async def test_fuzzed_bodies_never_cause_a_server_error(sqlite_url: str, op: object, body: bytes) -> None:
    # One SQLite database for the whole property (fixtures are not re-created per example).
    from phx.storage import open_database

    db = await open_database(sqlite_url)
    try:
        service = await make_service(db)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app_for(service)), base_url="http://t"
        ) as http:
            name = op.value if isinstance(op, Operation) else str(op)
            r = await post(http, name, body)
        assert r.status_code < 500 or (r.status_code == 503 and name == "local_enqueue"), (name, r.text)
    finally:
        await db.close()


# --- websocket -----------------------------------------------------------------------------------------


class WsSession:
    """Drives a websocket route of an ASGI app in this event loop (httpx has no websocket support)."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.to_app: asyncio.Queue[Message] = asyncio.Queue()
        self.from_app: asyncio.Queue[Message] = asyncio.Queue()
        scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "scheme": "ws",
            "query_string": b"",
            "headers": [],
            "client": ("127.0.0.1", 1),
            "server": ("qs.test", 443),
            "subprotocols": [],
            "state": {},
        }
        self.task = asyncio.ensure_future(app(scope, self.to_app.get, self.from_app.put))

    async def connect(self) -> Message:
        await self.to_app.put({"type": "websocket.connect"})
        return await self.receive()

    async def send_bytes(self, data: bytes) -> None:
        await self.to_app.put({"type": "websocket.receive", "bytes": data})

    async def send_text(self, text: str) -> None:
        await self.to_app.put({"type": "websocket.receive", "text": text})

    async def receive(self) -> Message:
        return await asyncio.wait_for(self.from_app.get(), 5)

    async def close(self) -> None:
        await self.to_app.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(self.task, 5)


def listen_frame(c: Client, **kw: Any) -> bytes:
    return c.request(Operation.LISTEN, WsParams(c.cid), token=None, **kw)


async def test_websocket_is_woken_on_enqueue(setup: tuple[QsService, ASGIApp, httpx.AsyncClient]) -> None:
    service, app, _ = setup
    c = await register(service, push=True)
    ws = WsSession(app, "/qs/v1/listen")
    assert (await ws.connect())["type"] == "websocket.accept"
    await ws.send_bytes(listen_frame(c))
    first = await ws.receive()
    assert QsQueueUpdate.decode(first["bytes"]).next_sequence_number == 1
    cfg = c.queue_config()
    await service.enqueue_fan_out(fan_out([cfg]))
    assert QsQueueUpdate.decode((await ws.receive())["bytes"]).next_sequence_number == 2
    await service.enqueue_fan_out(fan_out([cfg]))
    await service.enqueue_fan_out(fan_out([cfg]))
    seen = QsQueueUpdate.decode((await ws.receive())["bytes"]).next_sequence_number
    if seen == 3:
        seen = QsQueueUpdate.decode((await ws.receive())["bytes"]).next_sequence_number
    assert seen == 4
    assert service.notifier.sent == []  # type: ignore[attr-defined]  # listening: no push
    await ws.close()
    await asyncio.sleep(0)
    assert not service.listeners.is_listening(c.cid.client_id.bytes)
    await service.enqueue_fan_out(fan_out([cfg]))
    assert len(service.notifier.sent) == 1  # type: ignore[attr-defined]


async def test_websocket_refuses_bad_opening_frames(
    setup: tuple[QsService, ASGIApp, httpx.AsyncClient],
) -> None:
    service, app, _ = setup
    c = await register(service)
    other = await register(service)
    cases: list[tuple[str, bytes | str, int, str]] = [
        ("garbage", b"\x00\x01", 4400, "decode_error"),
        ("wrong key", listen_frame(c, key=other.client_sk), 4401, "bad_signature"),
        ("expired", listen_frame(c, now=service.clock() - 7200), 4401, "expired"),
        ("no token", QsClientRequest(WsParams(c.cid).encode(), None, None).encode(), 4401, "unauthenticated"),
        ("text frame", "hello", 4400, "bad_request"),
        ("too large", b"\x00" * 5000, 4413, "payload_too_large"),
    ]
    for name, frame, code, reason in cases:
        ws = WsSession(app, "/qs/v1/listen")
        await ws.connect()
        if isinstance(frame, str):
            await ws.send_text(frame)
        else:
            await ws.send_bytes(frame)
        msg = await ws.receive()
        assert msg["type"] == "websocket.close" and (msg["code"], msg["reason"]) == (code, reason), name
        await asyncio.wait_for(ws.task, 5)
    assert not service.listeners.is_listening(c.cid.client_id.bytes)
