"""Live-listener wake-ups between two instances sharing one PostgreSQL database."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from phx.federation.instances import PgListenerRegistry, _chunks

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pair(postgres_url: str) -> AsyncIterator[tuple[PgListenerRegistry, PgListenerRegistry]]:
    one, two = PgListenerRegistry(postgres_url), PgListenerRegistry(postgres_url)
    await one.start()
    await two.start()
    try:
        yield one, two
    finally:
        await one.stop()
        await two.stop()


async def until(check: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "not reached"
        await asyncio.sleep(0.01)


async def test_a_delivery_on_one_instance_wakes_a_listener_on_the_other(
    pair: tuple[PgListenerRegistry, PgListenerRegistry],
) -> None:
    one, two = pair
    qid = os.urandom(16)
    assert not one.is_listening(qid)
    sub = two.subscribe(qid)
    await until(lambda: one.is_listening(qid))  # presence travels: no push is sent for this queue
    one.notify(qid, 7)
    assert await asyncio.wait_for(sub.wait(), 5) == 7
    sub.close()
    await until(lambda: not one.is_listening(qid))


async def test_presence_is_learnt_by_a_late_instance_and_lapses(postgres_url: str) -> None:
    one = PgListenerRegistry(postgres_url)
    await one.start()
    qid = os.urandom(16)
    sub = one.subscribe(qid)
    now = [1000.0]
    late = PgListenerRegistry(postgres_url, clock=lambda: now[0], presence_ttl=60)
    await late.start()  # asks everyone to announce
    try:
        await until(lambda: late.is_listening(qid))
        now[0] += 61  # one stopped announcing (say it died): its presence lapses
        assert not late.is_listening(qid)
    finally:
        sub.close()
        await late.stop()
        await one.stop()


async def test_many_notifications_are_batched_into_few_notifies(
    pair: tuple[PgListenerRegistry, PgListenerRegistry],
) -> None:
    one, two = pair
    qids = [os.urandom(16) for _ in range(300)]
    subs = [two.subscribe(q) for q in qids]
    for i, q in enumerate(qids):
        one.notify(q, i + 1)
    results = await asyncio.wait_for(asyncio.gather(*(s.wait() for s in subs)), 5)
    assert results == [i + 1 for i in range(300)]
    for s in subs:
        s.close()


def test_payload_chunks_stay_under_the_limit() -> None:
    values = ["x" * 40] * 1000
    chunks = _chunks(values)
    assert all(len(c) < 8000 for c in chunks) and sum(c.count("x" * 40) for c in chunks) == 1000
