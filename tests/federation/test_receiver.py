"""The inbound endpoint against attackers and misbehaving peers (in process, ASGI, both engines)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace

import httpx
import pytest

from phx.config import RateLimitConfig
from phx.federation.messages import (
    MessageStatus,
    QsToQsBatch,
    QsToQsBatchResponse,
    QsToQsMessage,
)
from phx.identifiers import Fqdn
from phx.mls.messages import MLSMessage
from phx.queuing.messages import ClientQueueConfig, FanOutMessage

from .conftest import DbFactory
from .helpers import Client, Homeserver, HostRouter, fan_out, fast_config, make_homeserver, new_group

A, B, C = Fqdn("a.test"), Fqdn("b.test"), Fqdn("c.test")
PATH = "/qs/v1/federated_enqueue"


class Peer:
    """b.test receiving; a.test (and c.test) as the senders, whose frames tests forge at will."""

    def __init__(self, a: Homeserver, b: Homeserver, c: Homeserver, http: httpx.AsyncClient) -> None:
        self.a, self.b, self.c, self.http = a, b, c, http

    def frame(
        self,
        payload: FanOutMessage,
        *,
        source: Fqdn = A,
        destination: Fqdn = B,
        key: bytes | None = None,
        message_id: bytes | None = None,
        created_at: int | None = None,
    ) -> bytes:
        signer = {A: self.a, C: self.c}.get(source, self.a)
        return QsToQsMessage.sign_encoded(
            message_id or os.urandom(16),
            int(time.time()) if created_at is None else created_at,
            source,
            destination,
            payload.encode(),
            key if key is not None else signer.qs._signing_key,
        )

    async def post(self, frames: list[bytes], source: Fqdn = A) -> httpx.Response:
        return await self.http.post(PATH, content=QsToQsBatch(source, tuple(frames)).encode())

    async def results(self, frames: list[bytes], source: Fqdn = A) -> QsToQsBatchResponse:
        r = await self.post(frames, source)
        assert r.status_code == 200, r.text
        return QsToQsBatchResponse.decode(r.content)


async def setup(db_factory: DbFactory, stack: AsyncExitStack, **b_federation: object) -> Peer:
    router = HostRouter()
    servers = {}
    for domain in ("a.test", "b.test", "c.test"):
        db, url = await stack.enter_async_context(db_factory(domain))
        config = fast_config(domain, **(b_federation if domain == "b.test" else {}))
        hs = await make_homeserver(config, db, router, database_url=url)
        router.add(hs.domain, httpx.ASGITransport(app=hs.app()))
        servers[domain] = hs
    http = httpx.AsyncClient(transport=router, base_url="https://qs.b.test")
    stack.push_async_callback(http.aclose)
    return Peer(servers["a.test"], servers["b.test"], servers["c.test"], http)


@pytest.fixture
async def peer(db_factory: DbFactory) -> AsyncIterator[Peer]:
    async with AsyncExitStack() as stack:
        yield await setup(db_factory, stack)


async def target(p: Peer) -> tuple[Client, FanOutMessage]:
    client = await p.b.register()
    return client, fan_out([client.queue_config()], new_group(A), b"hello")


async def test_valid_frame_is_accepted_once_and_a_replay_is_a_duplicate(peer: Peer) -> None:
    client, payload = await target(peer)
    frame = peer.frame(payload)
    first = await peer.results([frame])
    assert [r.status for r in first.results] == [MessageStatus.ACCEPTED]
    again = await peer.results([frame, frame])
    assert [r.status for r in again.results] == [MessageStatus.DUPLICATE, MessageStatus.DUPLICATE]
    assert await client.bodies() == [b"hello"]


async def test_forged_signature_is_refused_without_a_fetch_per_frame(peer: Peer) -> None:
    client, payload = await target(peer)
    forger_key, _ = peer.a.qs.cs.generate_signature_key_pair()
    for _ in range(3):
        res = await peer.results([peer.frame(payload, key=forger_key)])
        assert [(r.status, r.error) for r in res.results] == [(MessageStatus.REJECTED, "bad_signature")]
    assert await client.bodies() == []
    # The key was fetched once; a refresh right after a fetch is refused, so a flood of forgeries does not
    # become a flood of key fetches (the keyring tests cover the refresh after its interval).
    assert peer.b.fed.keyring.fetches == 1
    assert peer.b.fed.metrics.refused.get(reason="bad_signature") == 3


async def test_replayed_id_with_altered_payload_is_a_conflict(peer: Peer) -> None:
    client, payload = await target(peer)
    message_id = os.urandom(16)
    await peer.results([peer.frame(payload, message_id=message_id)])
    altered = fan_out([client.queue_config()], new_group(A), b"evil")
    res = await peer.results([peer.frame(altered, message_id=message_id)])
    assert [(r.status, r.error) for r in res.results] == [(MessageStatus.REJECTED, "conflict")]
    assert await client.bodies() == [b"hello"]


async def test_wrong_destination_and_wrong_source_are_refused(peer: Peer) -> None:
    client, payload = await target(peer)
    res = await peer.results(
        [
            peer.frame(payload, destination=C),
            peer.frame(payload, source=C),  # signed by c, inside a batch claiming to be from a
            b"\x00garbage",
        ]
    )
    assert [(r.status, r.error) for r in res.results] == [
        (MessageStatus.REJECTED, "wrong_destination"),
        (MessageStatus.REJECTED, "wrong_source"),
        (MessageStatus.REJECTED, "decode_error"),
    ]
    assert await client.bodies() == []


async def test_relaying_to_a_third_homeserver_is_refused(peer: Peer) -> None:
    client, _ = await target(peer)
    elsewhere = ClientQueueConfig(C, client.queue_config().sealed_config)
    res = await peer.results([peer.frame(fan_out([client.queue_config(), elsewhere], new_group(A), b"x"))])
    assert [(r.status, r.error) for r in res.results] == [(MessageStatus.REJECTED, "relay_refused")]
    assert await client.bodies() == []
    async with peer.b.db.transaction() as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM fed_outbox") == 0


async def test_stale_and_future_frames_are_refused(peer: Peer) -> None:
    client, payload = await target(peer)
    now = int(time.time())
    retention = peer.b.config.federation.dedup_retention
    res = await peer.results(
        [peer.frame(payload, created_at=now - retention), peer.frame(payload, created_at=now + 3600)]
    )
    assert [r.error for r in res.results] == ["expired", "from_the_future"]
    assert await client.bodies() == []


async def test_unknown_source_cannot_be_verified_and_nothing_is_accepted(peer: Peer) -> None:
    client, payload = await target(peer)
    stranger = Fqdn("stranger.test")  # no route: its key cannot be fetched
    for _ in range(3):
        r = await peer.post([peer.frame(payload, source=stranger)], source=stranger)
        assert r.status_code == 503 and r.json()["error"] == "unavailable"
    assert peer.b.fed.keyring.fetches == 1  # failures are remembered: no fetch per request
    assert await client.bodies() == []


async def test_oversized_and_malformed_bodies(peer: Peer) -> None:
    _, payload = await target(peer)
    limit = peer.b.config.server.max_request_size
    big = await peer.http.post(PATH, content=b"\x00" * (limit + 1))
    assert big.status_code == 413
    bad = await peer.http.post(PATH, content=b"not a batch")
    assert bad.status_code == 400 and bad.json()["error"] == "decode_error"
    empty = await peer.results([])
    assert empty.results == ()


async def test_blocked_source_is_refused(db_factory: DbFactory) -> None:
    async with AsyncExitStack() as stack:
        p = await setup(db_factory, stack, blocklist=frozenset({A}))
        client, payload = await target(p)
        r = await p.post([p.frame(payload)])
        assert r.status_code == 403 and r.json()["error"] == "policy_denied"
        assert await client.bodies() == []


async def test_per_domain_rate_limit_answers_429(db_factory: DbFactory) -> None:
    async with AsyncExitStack() as stack:
        limits = RateLimitConfig(per_domain_rate=0.001, per_domain_burst=2, per_queue_rate=0)
        p = await setup(db_factory, stack, rate_limit=limits)
        client, payload = await target(p)
        statuses = [(await p.post([p.frame(payload)])).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        r = await p.post([p.frame(payload)])
        assert int(r.headers["retry-after"]) > 0
        assert len(await client.bodies()) == 2


async def test_per_queue_rate_limit_cuts_the_batch_in_order(db_factory: DbFactory) -> None:
    async with AsyncExitStack() as stack:
        limits = RateLimitConfig(per_domain_rate=0, per_queue_rate=1, per_queue_burst=3)
        p = await setup(db_factory, stack, rate_limit=limits)
        client, _ = await target(p)
        other = await p.b.register()
        group = new_group(A)
        frames = [p.frame(fan_out([client.queue_config()], group, b"m%d" % i)) for i in range(5)]
        frames.append(p.frame(fan_out([other.queue_config()], group, b"other")))
        res = await p.results(frames)
        # Three fit the bucket; the fourth waits, and so does everything after it (order is kept).
        assert [r.status for r in res.results] == [MessageStatus.ACCEPTED] * 3
        assert 0 < res.retry_after_ms <= 1001
        assert await client.bodies() == [b"m0", b"m1", b"m2"]
        assert await other.bodies() == []


def test_rate_limit_config_is_what_the_receiver_uses() -> None:
    config = fast_config("b.test", rate_limit=RateLimitConfig(per_domain_rate=7, per_domain_burst=9))
    assert replace(config.federation.rate_limit).per_domain_burst == 9


async def test_a_frame_naming_no_phoenix_group_is_refused_every_time(peer: Peer) -> None:
    client, payload = await target(peer)
    content = payload.message_content
    body = content.body
    assert isinstance(body, MLSMessage) and body.private_message is not None
    bogus = replace(body.private_message, group_id=b"not a group id")
    no_group = FanOutMessage(payload.client_queue_configs, replace(content, body=MLSMessage(bogus)))
    for _ in range(2):  # the group-id cache must not remember a refusal as a group
        res = await peer.results([peer.frame(payload), peer.frame(no_group)])
        assert [(r.status, r.error) for r in res.results] == [
            (MessageStatus.ACCEPTED, ""),
            (MessageStatus.REJECTED, "no_group_id"),
        ]
    assert await client.bodies() == [b"hello", b"hello"]
