"""Inbound rate limits in the database: shared by every instance of a homeserver (both engines)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from phx.config import RateLimitConfig
from phx.federation.messages import MessageStatus, QsToQsBatch, QsToQsBatchResponse, QsToQsMessage
from phx.federation.ratelimit_store import CONFIG, DOMAIN, QUEUE, Admission, InboundLimits, MessageKeys
from phx.identifiers import Fqdn
from phx.storage import Database, migrate, open_database

from .conftest import DbFactory
from .helpers import Client, HostRouter, fan_out, fast_config, make_homeserver, new_group

A, C = Fqdn("a.test"), Fqdn("c.test")
T0 = 1_000_000.0
DOMAIN_ONLY = RateLimitConfig(per_domain_rate=1, per_domain_burst=2, per_queue_rate=0)
QUEUES_ONLY = RateLimitConfig(per_domain_rate=0, per_queue_rate=1, per_queue_burst=2)


@pytest.fixture
async def two(db_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """Two handles (two instances' pools) on one fresh database."""
    one = await open_database(db_url)
    await migrate(one, "federation")
    other = await open_database(db_url)
    try:
        yield one, other
    finally:
        await other.close()
        await one.close()


async def charge(
    db: Database, limits: InboundLimits, messages: Sequence[MessageKeys], now: float, source: Fqdn = A
) -> Admission:
    async with db.transaction() as conn:
        return await limits.charge(conn, source, messages, now)


async def stored(db: Database) -> dict[tuple[int, bytes], float]:
    async with db.transaction(readonly=True) as conn:
        rows = await conn.fetch("SELECT scope, bucket_key, full_at FROM fed_rate_buckets")
    return {(int(r[0]), bytes(r[1])): float(r[2]) for r in rows}


async def test_the_domain_bucket_is_shared_and_a_refusal_charges_nothing(
    two: tuple[Database, Database],
) -> None:
    db1, db2 = two
    one, other = InboundLimits(DOMAIN_ONLY), InboundLimits(DOMAIN_ONLY)
    assert await charge(db1, one, [], T0) == Admission(0.0, 0, 0.0)
    assert await charge(db2, other, [([b"c"], [b"q"])], T0) == Admission(0.0, 1, 0.0)
    before = await stored(db1)
    assert before == {(DOMAIN, b"a.test"): pytest.approx(T0 + 2)}  # queues unlimited: no rows for them
    refused = await charge(db1, one, [], T0 + 0.25)
    assert refused.domain_wait == pytest.approx(0.75) and refused.admitted == 0
    assert await stored(db1) == before
    # The instance that saw the refusal answers the next ones itself, until the wait is over; the other
    # asks the database, which says the same.
    assert one.blocked(A, T0 + 0.5) == pytest.approx(0.5)
    assert other.blocked(A, T0 + 0.5) == 0
    assert (await charge(db2, other, [], T0 + 0.5)).domain_wait == pytest.approx(0.5)
    assert one.blocked(A, T0 + 1) == 0
    assert await charge(db1, one, [], T0 + 1) == Admission(0.0, 0, 0.0)
    assert (await charge(db2, other, [], T0 + 1)).domain_wait == pytest.approx(1.0)
    # Another source has its own bucket.
    assert await charge(db2, other, [], T0 + 1, source=C) == Admission(0.0, 0, 0.0)


async def test_queue_buckets_cut_the_batch_in_order_and_all_or_nothing(
    two: tuple[Database, Database],
) -> None:
    db1, db2 = two
    one, other = InboundLimits(QUEUES_ONLY), InboundLimits(QUEUES_ONLY)
    batch: list[MessageKeys] = [
        ([b"c1"], [b"q1"]),
        ([b"c1", b"c1"], [b"q1"]),  # a config listed twice is one message into it
        ([b"c2"], [b"q1"]),  # q1 is empty now: refused, so c2 is not charged
        ([b"c3"], [b"q3"]),  # could pay, but comes after a refusal
    ]
    first = await charge(db1, one, batch, T0)
    assert first.domain_wait == 0 and first.admitted == 2 and first.wait == pytest.approx(1.0)
    rows = await stored(db1)
    assert rows[(CONFIG, b"c1")] == pytest.approx(T0 + 2)
    assert rows[(QUEUE, b"q1")] == pytest.approx(T0 + 2)
    assert rows.get((CONFIG, b"c2"), 0.0) <= T0 and rows.get((QUEUE, b"q3"), 0.0) <= T0  # still full
    assert (DOMAIN, b"a.test") not in rows
    # The other instance sees q1 empty as well, and the frames it refused did not spend c2 or q3.
    again = await charge(db2, other, batch[2:], T0 + 0.5)
    assert again.admitted == 0 and again.wait == pytest.approx(0.5)
    assert await charge(db2, other, [([b"c2"], [b"q3"])] * 2, T0 + 0.5) == Admission(0.0, 2, 0.0)


async def test_unlimited_costs_no_database_work() -> None:
    class NoDatabase:
        engine = "postgres"

        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"unlimited limits used the database ({name})")

    off = InboundLimits(RateLimitConfig(per_domain_rate=0, per_queue_rate=0))
    assert off.unlimited and off.queues_unlimited
    conn: Any = NoDatabase()
    for _ in range(3):
        assert await off.charge(conn, A, [([b"c"], [b"q"])] * 5, T0) == Admission(0.0, 5, 0.0)
    # Domain limit only, a batch without frames keys: only the domain's bucket would be touched.
    assert InboundLimits(DOMAIN_ONLY).queues_unlimited


async def test_expiry_deletes_exactly_the_buckets_that_are_full_again(db: Database) -> None:
    await migrate(db, "federation")
    limits = InboundLimits(RateLimitConfig(per_domain_rate=1, per_domain_burst=2, per_queue_rate=2))
    await charge(db, limits, [([b"c"], [b"q"])], T0)  # domain full at T0+2, c and q at T0+0.5
    assert len(await stored(db)) == 3
    async with db.transaction() as conn:
        assert await limits.expire(conn, T0 + 0.4) == 0
        assert await limits.expire(conn, T0 + 0.5) == 2
    assert list(await stored(db)) == [(DOMAIN, b"a.test")]
    async with db.transaction() as conn:
        assert await limits.expire(conn, T0 + 2) == 1
    assert await stored(db) == {}
    # A limit turned off later still lets maintenance clear what it left behind.
    await charge(db, limits, [], T0 + 10)
    async with db.transaction() as conn:
        off = InboundLimits(RateLimitConfig(per_domain_rate=0, per_queue_rate=0))
        assert await off.expire(conn, T0 + 100) == 1


def test_blocked_domains_are_bounded_in_memory() -> None:
    limits = InboundLimits(DOMAIN_ONLY, max_blocked=3)
    for i in range(10):
        limits._block(Fqdn(f"d{i}.test"), T0 + 5, T0)
    assert len(limits._blocked) <= 3
    assert limits.blocked(Fqdn("d9.test"), T0) == 5
    assert limits.blocked(Fqdn("d9.test"), T0 + 5) == 0 and Fqdn("d9.test") not in limits._blocked


async def test_concurrent_charges_from_two_instances_admit_the_burst_once(
    two: tuple[Database, Database],
) -> None:
    """Many overlapping batches at once, keys in every order, from two pools: exactly the burst of each
    bucket is admitted (no double spending between instances), and nothing deadlocks."""
    config = RateLimitConfig(per_domain_rate=0, per_queue_rate=0.001, per_queue_burst=5)
    instances = [(db, InboundLimits(config)) for db in two]
    rng = random.Random(7)
    queues = [b"q%d" % i for i in range(4)]

    async def one_batch(i: int) -> int:
        db, limits = instances[i % 2]
        keys = rng.sample(queues, 2)
        admission = await charge(db, limits, [([b"c%d" % i], keys)], T0)
        return admission.admitted

    admitted = await asyncio.gather(*(one_batch(i) for i in range(40)))
    # Every batch takes 2 of the 4 queues' 5 tokens each: at most 10 batches fit in 20 tokens.
    total = sum(admitted)
    assert 0 < total <= 10
    rows = await stored(two[0])
    spent = sum(round((rows[(QUEUE, q)] - T0) * 0.001) for q in queues if (QUEUE, q) in rows)
    assert spent == 2 * total


# --- two receivers of one homeserver ----------------------------------------------------------------


class TwoInstances:
    """b.test served by two FederationService+QS instances on one database; a.test sends."""

    def __init__(self, a: Any, b1: Any, b2: Any, http: list[httpx.AsyncClient], now: list[float]) -> None:
        self.a, self.b1, self.b2, self.http, self.now = a, b1, b2, http, now

    def frame(self, payload: bytes) -> bytes:
        return QsToQsMessage.sign_encoded(
            os.urandom(16), int(time.time()), A, Fqdn("b.test"), payload, self.a.qs._signing_key
        )

    async def post(self, instance: int, frames: list[bytes]) -> httpx.Response:
        body = QsToQsBatch(A, tuple(frames)).encode()
        return await self.http[instance].post("/qs/v1/federated_enqueue", content=body)


async def two_instances(
    db_factory: DbFactory, stack: AsyncExitStack, limits: RateLimitConfig
) -> TwoInstances:
    router = HostRouter()
    db_a, url_a = await stack.enter_async_context(db_factory("a.test"))
    a = await make_homeserver(fast_config("a.test"), db_a, router, database_url=url_a)
    router.add(a.domain, httpx.ASGITransport(app=a.app()))
    db_b, url_b = await stack.enter_async_context(db_factory("b.test"))
    db_b2 = await open_database(url_b)
    stack.push_async_callback(db_b2.close)
    # A clock the test steps (whole seconds, so the bucket arithmetic is exact).
    now = [float(int(time.time()))]
    config = fast_config("b.test", rate_limit=limits)
    instances = []
    http = []
    for db in (db_b, db_b2):
        hs = await make_homeserver(config, db, router, database_url=url_b, clock=lambda: now[0])
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=hs.app()), base_url="https://qs.b.test")
        stack.push_async_callback(client.aclose)
        instances.append(hs)
        http.append(client)
    return TwoInstances(a, instances[0], instances[1], http, now)


async def rounds_over_both(hs: TwoInstances, client: Client) -> AsyncIterator[list[httpx.Response]]:
    """Eight rounds a second apart, each sending six one-frame batches at once, three to each instance."""
    group = new_group(A)
    for step in range(8):
        if step:
            hs.now[0] += 1.0
        frames = [hs.frame(fan_out([client.queue_config()], group, b"s%d" % step).encode()) for _ in range(6)]
        yield list(await asyncio.gather(*(hs.post(i % 2, [f]) for i, f in enumerate(frames))))


async def test_two_receivers_admit_the_configured_domain_rate_together(db_factory: DbFactory) -> None:
    async with AsyncExitStack() as stack:
        hs = await two_instances(
            db_factory, stack, RateLimitConfig(per_domain_rate=1, per_domain_burst=2, per_queue_rate=0)
        )
        client = await hs.b1.register()
        admitted = 0
        async for responses in rounds_over_both(hs, client):
            assert {r.status_code for r in responses} <= {200, 429}
            admitted += sum(r.status_code == 200 for r in responses)
        # The burst at the start, then one per second: 2 + 7, not twice that.
        assert admitted == 9
        assert len(await client.bodies()) == 9
        # Maintenance forgets the buckets once they are full again (and not before).
        await hs.b2.fed.maintain()
        assert list(await stored(hs.b1.db)) == [(DOMAIN, b"a.test")]
        hs.now[0] += 2.0
        await hs.b2.fed.maintain()
        assert await stored(hs.b1.db) == {}


async def test_two_receivers_admit_the_configured_queue_rate_together(db_factory: DbFactory) -> None:
    async with AsyncExitStack() as stack:
        hs = await two_instances(
            db_factory, stack, RateLimitConfig(per_domain_rate=0, per_queue_rate=1, per_queue_burst=2)
        )
        client = await hs.b1.register()
        accepted = 0
        async for responses in rounds_over_both(hs, client):
            for r in responses:
                assert r.status_code == 200, r.text
                res = QsToQsBatchResponse.decode(r.content)
                accepted += sum(x.status == MessageStatus.ACCEPTED for x in res.results)
                assert res.results or res.retry_after_ms > 0
        assert accepted == 9
        assert len(await client.bodies()) == 9


async def test_empty_batches_count_against_the_shared_domain_bucket(db_factory: DbFactory) -> None:
    async with AsyncExitStack() as stack:
        hs = await two_instances(db_factory, stack, DOMAIN_ONLY)
        statuses = [(await hs.post(i, [])).status_code for i in (0, 1, 1)]
        assert statuses == [200, 200, 429]
        b1, b2 = hs.b1.fed.receiver, hs.b2.fed.receiver
        assert b1 is not None and b2 is not None
        # The instance that was refused remembers it; the other learns it from the database.
        assert b2.limits.blocked(A, hs.now[0]) == 1.0 and b1.limits.blocked(A, hs.now[0]) == 0
        for instance in (1, 0):
            refused = await hs.post(instance, [])
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert b1.limits.blocked(A, hs.now[0]) == 1.0
        assert hs.b2.fed.metrics.refused.get(reason="rate_limit_domain") == 2
        assert hs.b1.fed.metrics.refused.get(reason="rate_limit_domain") == 1
        hs.now[0] += 1.0
        assert (await hs.post(0, [])).status_code == 200
        assert (await hs.post(1, [])).status_code == 429
