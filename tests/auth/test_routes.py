"""The AS over HTTP in the real app: the convention, error mapping, body limits, fuzzed bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phx.auth import AsService
from phx.auth.client import plain_request
from phx.auth.core import OPERATIONS
from phx.auth.messages import (
    AsCredentialsResponse,
    Empty,
    RequestToken,
    TokenKeysResponse,
    UpdateUserProfileParams,
)
from phx.config import Config
from phx.privacypass import phoenix_challenge, request_tokens
from phx.server import create_app
from phx.storage import Database
from tests.auth.helpers import DOMAIN, Client, FakeClock, make_service, short_config

OCTETS = {"content-type": "application/octet-stream"}


@pytest.fixture
async def http(db: Database) -> AsyncIterator[tuple[AsService, httpx.AsyncClient]]:
    clock = FakeClock()
    service = await make_service(db, clock, config=short_config(token_allowance=3, max_tokens_per_request=3))
    app = create_app(Config.default(DOMAIN), [service])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://as.example.com") as client:
        yield service, client


async def test_get_as_credentials_over_http(http: tuple[AsService, httpx.AsyncClient]) -> None:
    _, client = http
    resp = await client.post(
        "/as/v1/get_as_credentials", content=plain_request(Empty()).encode(), headers=OCTETS
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/octet-stream"
    creds = AsCredentialsResponse.decode(resp.content)
    assert creds.as_credentials[0].domain == DOMAIN


async def test_errors_are_json_with_stable_codes(http: tuple[AsService, httpx.AsyncClient]) -> None:
    service, client = http
    alice = await Client.new(service).register(tokens=0)
    profile = alice.request("update_user_profile", UpdateUserProfileParams(b"p"), token=False)
    resp = await client.post("/as/v1/update_user_profile", content=profile.encode())
    assert resp.status_code == 401 and resp.json()["error"] == "bad_token"
    resp = await client.post("/as/v1/get_as_credentials", content=b"\xff")
    assert resp.status_code == 400 and resp.json()["error"] == "decode_error"
    resp = await client.post("/as/v1/nope", content=b"")
    assert resp.status_code == 404
    resp = await client.get("/as/v1/get_as_credentials")
    assert resp.status_code == 405
    # The allowance of 3 is used up by three tokens; the fourth request is 429 with Retry-After.
    keys = TokenKeysResponse.decode(
        (await client.post("/as/v1/get_token_keys", content=plain_request(Empty()).encode())).content
    )
    for expected in (200, 429):
        pending = request_tokens(keys.public_key, phoenix_challenge(DOMAIN), 3)
        body = alice.request("request_tokens", RequestToken(pending.request), token=False).encode()
        resp = await client.post("/as/v1/request_tokens", content=body)
        assert resp.status_code == expected
    assert resp.json()["error"] == "rate_limited"
    assert int(resp.headers["retry-after"]) > 0


async def test_oversized_bodies_are_refused(http: tuple[AsService, httpx.AsyncClient]) -> None:
    _, client = http
    resp = await client.post("/as/v1/enqueue_message", content=b"\x00" * (128 * 1024 + 1))
    assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large"

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield b"\x00" * 1024

    resp = await client.post("/as/v1/enqueue_message", content=stream())
    assert resp.status_code == 413
    # Larger limits where uploads need them, bounded by the app-wide limit.
    resp = await client.post("/as/v1/upload_user_id_connection_packages", content=b"\x00" * (2 << 20))
    assert resp.status_code == 413


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(OPERATIONS)), st.binary(max_size=200))
async def test_any_body_is_a_4xx_never_a_500(
    http: tuple[AsService, httpx.AsyncClient], operation: str, body: bytes
) -> None:
    _, client = http
    resp = await client.post(f"/as/v1/{operation}", content=body)
    assert resp.status_code < 500, resp.text
