"""Two instances of a.test on one PostgreSQL database behind one address (a round-robin proxy), talking
to b.test both ways: every guarantee holds, and an instance dying hands its destinations over."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from phx.identifiers import Fqdn
from tests.federation.helpers import fan_out, new_group
from tests.fixtures.db import POSTGRES_URL, require_postgres, with_search_path

from .harness import Net, wait_for
from .scenario import Traffic

pytestmark = pytest.mark.postgres

FED: dict[str, Any] = {"probe_interval": 0.3, "lease": 1.0}


@pytest.fixture
async def pg_urls() -> AsyncIterator[list[str]]:
    await require_postgres()
    schemas = [f"test_inst_{secrets.token_hex(4)}" for _ in range(2)]
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        for s in schemas:
            await admin.execute(f'CREATE SCHEMA "{s}"')
    finally:
        await admin.close()
    yield [with_search_path(POSTGRES_URL, s) for s in schemas]
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        for s in schemas:
            await admin.execute(f'DROP SCHEMA "{s}" CASCADE')
    finally:
        await admin.close()


async def test_two_instances_of_one_homeserver(pg_urls: list[str], net: Net) -> None:
    a1, a2 = await net.add("a.test", pg_urls[0], instances=2, **FED)
    (b,) = await net.add("b.test", pg_urls[1], **FED)
    proxy = await net.proxy("a.test")  # one address for a.test, requests spread over both instances
    a_members = [await a1.register(), await a2.register(), await a1.register()]
    b_members = [await b.register() for _ in range(2)]
    # A live listener connected to a2 is woken by a delivery that a1 made (LISTEN/NOTIFY).
    assert a1.listeners is not None and a2.listeners is not None
    listener = await a2.register()
    queue_id = listener.qs_cid.client_id.bytes
    sub = a2.listeners.subscribe(queue_id)
    await wait_for(async_true(lambda: a1.listeners.is_listening(queue_id)), 5)  # type: ignore[union-attr]
    await a1.hs.qs.enqueue_fan_out(fan_out([listener.queue_config()], new_group(Fqdn("a.test")), b"hi"))
    assert await asyncio.wait_for(sub.wait(), 5) == 2  # the queue's key item, then this message
    sub.close()
    # a -> b: groups on a.test, fan-outs submitted to both instances in turn. (PostgreSQL commits cost
    # ~10 ms here; many groups in parallel let the QS share commits.)
    out = Traffic(Fqdn("a.test"), [[a_members[g % 3], *b_members[: 1 + g % 2]] for g in range(8)])
    # b -> a: groups on b.test whose a.test members are reached through the proxy.
    back = Traffic(Fqdn("b.test"), [[b_members[g % 2], *a_members[: 1 + g % 3]] for g in range(8)])
    await asyncio.gather(out.send([a1.hs.qs, a2.hs.qs], 60), back.send([b.hs.qs], 60))
    # One instance dies while deliveries are under way; the other takes over once the lease lapses.
    await a1.crash()
    for m in a_members:
        m.qs = a2.hs.qs
    await asyncio.gather(out.send([a2.hs.qs], 25, start=60), back.send([b.hs.qs], 25, start=60))
    everyone = [*a_members, *b_members]
    await wait_for(lambda: out.complete(everyone, back), 60)
    await out.check(everyone, back)
    assert out.expected_count(b_members[0]) == 8 * 85 and back.expected_count(a_members[0]) == 8 * 85
    assert proxy.counts["upstream0"] > 0 and proxy.counts["upstream1"] > 0
    async with a2.fed.db.transaction() as conn:
        (row,) = await a2.fed.store.destinations(conn)
        assert await conn.fetchval("SELECT COUNT(*) FROM fed_outbox") == 0
    assert row.dropped_total == 0 and row.lease_owner in (None, a2.fed.sender.owner)  # type: ignore[union-attr]


def async_true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()

    return wrapped
