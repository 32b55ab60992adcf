"""QS-to-QS delivery between two homeservers in one process (ASGI transport, both engines)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import httpx
import pytest

from phx.config import OutboxConfig
from phx.errors import PolicyDenied
from phx.identifiers import Fqdn
from phx.queuing.messages import ClientQueueConfig, FanOutMessage

from .conftest import DbFactory
from .helpers import Homeserver, HostRouter, fan_out, fast_config, make_homeserver, new_group

A, B = Fqdn("a.test"), Fqdn("b.test")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def pair(db_factory: DbFactory) -> AsyncIterator[tuple[Homeserver, Homeserver, HostRouter]]:
    router = HostRouter()
    async with AsyncExitStack() as stack:
        servers = []
        for domain in ("a.test", "b.test"):
            db, url = await stack.enter_async_context(db_factory(domain))
            hs = await make_homeserver(fast_config(domain), db, router, database_url=url)
            router.add(hs.domain, httpx.ASGITransport(app=hs.app()))
            servers.append(hs)
        for hs in servers:
            await hs.fed.start()
            stack.push_async_callback(hs.fed.stop)
        yield servers[0], servers[1], router


async def test_fan_out_reaches_remote_queues_in_order(
    pair: tuple[Homeserver, Homeserver, HostRouter],
) -> None:
    a, b, _ = pair
    local = await a.register()
    remote1, remote2 = await b.register(), await b.register()
    group = new_group(A)
    configs = [local.queue_config(), remote1.queue_config(), remote2.queue_config()]
    for i in range(20):
        assert await a.qs.enqueue_fan_out(fan_out(configs, group, b"m%d" % i)) == []
    expected = [b"m%d" % i for i in range(20)]

    async def arrived() -> bool:
        return len(await remote2.bodies()) >= 20 and len(await remote1.bodies()) >= 20

    await eventually(arrived)
    assert await local.bodies() == expected
    assert await remote1.bodies() == expected
    assert await remote2.bodies() == expected
    async with a.db.transaction() as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM fed_outbox") == 0
        rows = await a.fed.store.destinations(conn)
    assert [(r.destination, r.backlog, r.sent_total, r.failures) for r in rows] == [(B, 0, 20, 0)]
    async with b.db.transaction() as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM fed_received") == 20
    # The same figures at /metrics (gauges refreshed by the sender's poll).
    a.fed.sender.poll_soon()  # type: ignore[union-attr]
    await asyncio.sleep(0.1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=a.app()), base_url="http://a") as http:
        text = (await http.get("/metrics")).text
    assert 'phx_federation_outbox_backlog{destination="b.test"} 0' in text
    assert 'phx_federation_sent_total{destination="b.test"} 20' in text
    assert 'phx_federation_destination_failures{destination="b.test"} 0' in text


async def test_blocked_destination_fails_the_fan_out_loudly(db_factory: DbFactory) -> None:
    router = HostRouter()
    async with db_factory("a.test") as (db, url):
        a = await make_homeserver(
            fast_config("a.test", blocklist=frozenset({B})), db, router, database_url=url
        )
        b_cfg = (await a.register()).queue_config()
        remote = ClientQueueConfig(B, b_cfg.sealed_config)
        local = await a.register()
        with pytest.raises(PolicyDenied):
            await a.qs.enqueue_fan_out(fan_out([local.queue_config(), remote], new_group(A), b"x"))
        assert await local.bodies() == []  # rolled back with it
        async with db.transaction() as conn:
            assert await conn.fetchval("SELECT COUNT(*) FROM fed_outbox") == 0


async def test_forward_many_checks_every_destination_first(db_factory: DbFactory) -> None:
    router = HostRouter()
    async with db_factory("a.test") as (db, url):
        a = await make_homeserver(fast_config("a.test", blocklist=frozenset({Fqdn("c.test")})), db, router)
        local = await a.register()
        content = fan_out([], new_group(A), b"x").message_content
        ok = ClientQueueConfig(B, local.queue_config().sealed_config)
        bad = ClientQueueConfig(Fqdn("c.test"), local.queue_config().sealed_config)
        with pytest.raises(PolicyDenied):
            async with db.transaction() as conn:
                await a.fed.forwarder.forward_many(
                    conn, [(B, [ok], content, None), (Fqdn("c.test"), [bad], content, None)]
                )
        async with db.transaction() as conn:
            await a.fed.forwarder.forward_many(
                conn, [(B, [ok], content, None), (B, [ok, ok], content, content.encode())]
            )
            heads = await a.fed.store.head(conn, B, 10)
        # With or without the content's encoding given, the row is the fan-out's encoding.
        assert [m.payload for m in heads] == [
            FanOutMessage((ok,), content).encode(),
            FanOutMessage((ok, ok), content).encode(),
        ]


@pytest.mark.parametrize("reuse", [True, False])
async def test_a_backlog_flows_in_order_once_with_heads_read_at_completion(
    db_factory: DbFactory, reuse: bool
) -> None:
    """A backlog of several batches: each completing transaction reads the next head (reuse), or the head
    is too old to stand in and every attempt claims afresh; either way every message arrives once, in
    order."""
    router = HostRouter()
    outbox = OutboxConfig(backoff_base=0.02, backoff_max=0.2, batch_size=4)
    async with AsyncExitStack() as stack:
        servers = []
        for domain in ("a.test", "b.test"):
            db, url = await stack.enter_async_context(db_factory(domain))
            hs = await make_homeserver(fast_config(domain, outbox=outbox), db, router, database_url=url)
            router.add(hs.domain, httpx.ASGITransport(app=hs.app()))
            servers.append(hs)
        a, b = servers
        remote = await b.register()
        group = new_group(A)
        for i in range(23):  # queued before a's sender runs: a backlog of six batches
            assert await a.qs.enqueue_fan_out(fan_out([remote.queue_config()], group, b"m%d" % i)) == []
        for hs in servers:
            await hs.fed.start()
            stack.push_async_callback(hs.fed.stop)
        sender = a.fed.sender
        assert sender is not None
        if not reuse:
            sender.head_reuse = 0.0
        expected = [b"m%d" % i for i in range(23)]

        async def arrived() -> bool:
            return len(await remote.bodies()) >= 23

        await eventually(arrived)
        await asyncio.sleep(0.1)
        assert await remote.bodies() == expected
        # Full heads (5 rows for batches of 4) are read at completion while 19, 15, 11 and 7 rows are left.
        assert (sender.continued >= 1) if reuse else (sender.continued == 0)
        async with a.db.transaction() as conn:
            assert await conn.fetchval("SELECT COUNT(*) FROM fed_outbox") == 0
        async with b.db.transaction() as conn:
            assert await conn.fetchval("SELECT COUNT(*) FROM fed_received") == 23
