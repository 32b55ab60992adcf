"""Batch features of the fan-out deliverer: guards and order keys (what the DS's application messages use),
one forwarding call for a batch's remote fan-outs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Collection, Hashable, Sequence

import pytest

from phx.identifiers import Fqdn, GroupId
from phx.mls.messages import MLSMessage
from phx.queuing.fanout import EnqueueResult, GuardFailed, PreparedFanOut
from phx.queuing.messages import ClientQueueConfig, FanOutQueuePayload, MessageContent, QueueDeleted
from phx.storage import Connection, Database

from .helpers import DOMAIN, fan_out, make_service, register


def body_of(payload: FanOutQueuePayload) -> bytes:
    body = payload.content.body
    assert isinstance(body, MLSMessage) and body.private_message is not None
    return body.private_message.ciphertext


class KeyGuard:
    """Holds for the keys in ``ok``; records what it was asked, and checks it runs inside a transaction."""

    def __init__(self, ok: set[str]) -> None:
        self.ok = ok
        self.calls: list[set[Hashable]] = []

    async def hold(self, conn: Connection, keys: Collection[Hashable]) -> Collection[Hashable]:
        assert await conn.fetchval("SELECT 1") == 1
        self.calls.append(set(keys))
        return [k for k in keys if k in self.ok]


async def test_a_guard_decides_per_key_once_per_batch(db: Database) -> None:
    service = await make_service(db)
    a = await register(service)
    d = service.fan_out
    guard = KeyGuard({"yes"})

    def job(body: bytes, key: str | None) -> Awaitable[list[list[QueueDeleted]]]:
        prepared = [d.prepare(fan_out([a.queue_config()], body=body), d.clock())]
        if key is None:
            return d.deliver_prepared(prepared)
        return d.deliver_prepared(prepared, guard=guard, key=key)

    results = await asyncio.gather(
        *(job(b, k) for b, k in [(b"1", "yes"), (b"2", "no"), (b"3", "yes"), (b"4", None)]),
        return_exceptions=True,
    )
    assert results[0] == [[]] and results[2] == [[]] and results[3] == [[]]
    assert isinstance(results[1], GuardFailed)
    assert guard.calls == [{"yes", "no"}]
    assert [body_of(p) for p in await a.read_queue()] == [b"1", b"3", b"4"]
    assert [i.sequence_number for i in await service.queue_items(a.cid)] == [0, 1, 2, 3]


async def test_a_guard_is_asked_again_when_a_failed_batch_is_split(db: Database) -> None:
    service = await make_service(db)
    a = await register(service)
    d = service.fan_out
    guard = KeyGuard({"k"})
    bad = fan_out([a.queue_config()], body=b"bad")
    real = d.enqueue_in

    async def failing(conn: Connection, fan_outs: Sequence[PreparedFanOut]) -> EnqueueResult:
        if any(f.content == bad.message_content for f in fan_outs):
            raise RuntimeError("broken")
        return await real(conn, fan_outs)

    d.enqueue_in = failing  # type: ignore[method-assign]
    results = await asyncio.gather(
        d.deliver_prepared([d.prepare(fan_out([a.queue_config()], body=b"ok"), 0)], guard=guard, key="k"),
        d.deliver_prepared([d.prepare(bad, 0)]),
        return_exceptions=True,
    )
    assert results[0] == [[]] and isinstance(results[1], RuntimeError)
    assert guard.calls == [{"k"}, {"k"}]
    assert [body_of(p) for p in await a.read_queue()] == [b"ok"]


@pytest.mark.parametrize("groups", [3])
async def test_one_transaction_in_flight_per_order_key(db: Database, groups: int) -> None:
    """With several transactions in flight (PostgreSQL runs two), fan-outs of one order key never run in
    two at once, and each queue gets every key's fan-outs in submission order."""
    service = await make_service(db, fan_out_batch=2)
    a = await register(service)
    d = service.fan_out
    gids = [GroupId(uuid.uuid4(), DOMAIN) for _ in range(groups)]
    running: set[GroupId] = set()
    overlaps: list[set[GroupId]] = []
    peak = 0
    real = d.enqueue_in

    async def slow(conn: Connection, fan_outs: Sequence[PreparedFanOut]) -> EnqueueResult:
        nonlocal peak
        mine = {f.group_id for f in fan_outs}
        if running & mine:
            overlaps.append(running & mine)
        running.update(mine)
        peak = max(peak, len(running))
        try:
            await asyncio.sleep(0.005)
            return await real(conn, fan_outs)
        finally:
            running.difference_update(mine)

    d.enqueue_in = slow  # type: ignore[method-assign]
    n = 24
    jobs = []
    for i in range(n):
        gid = gids[i % groups]
        p = d.prepare(fan_out([a.queue_config()], gid, body=b"%d" % i), d.clock())
        jobs.append(asyncio.ensure_future(d.deliver_prepared([p], order=gid)))
    await asyncio.gather(*jobs)
    assert overlaps == []
    if db.engine == "postgres":
        assert peak > 2  # two batches (of other keys) did run at once
    bodies = [int(body_of(p)) for p in await a.read_queue()]
    assert sorted(bodies) == list(range(n))
    for g in range(groups):
        mine = [b for b in bodies if b % groups == g]
        assert mine == sorted(mine)


class BatchForwarder:
    def __init__(self) -> None:
        self.calls: list[list[tuple[Fqdn, list[ClientQueueConfig], MessageContent, bytes | None]]] = []

    async def forward(
        self, conn: Connection, domain: Fqdn, configs: Sequence[ClientQueueConfig], content: MessageContent
    ) -> None:
        raise AssertionError("forward_many is there")

    async def forward_many(
        self,
        conn: Connection,
        items: Sequence[tuple[Fqdn, Sequence[ClientQueueConfig], MessageContent, bytes | None]],
    ) -> None:
        assert await conn.fetchval("SELECT 1") == 1  # inside the fan-outs' transaction
        self.calls.append([(d, list(c), m, e) for d, c, m, e in items])


async def test_a_batch_forwards_its_remote_fan_outs_in_one_call(db: Database) -> None:
    forwarder = BatchForwarder()
    service = await make_service(db, forwarder=forwarder)
    a = await register(service)
    sealed = a.queue_config().sealed_config
    rb, rc = ClientQueueConfig(Fqdn("b.test"), sealed), ClientQueueConfig(Fqdn("c.test"), sealed)
    messages = [fan_out([rb, a.queue_config(), rc], body=b"1"), fan_out([a.queue_config()], body=b"2")]
    messages.append(fan_out([rb], body=b"3"))
    assert await asyncio.gather(*(service.enqueue_fan_out(m) for m in messages)) == [[], [], []]
    [call] = forwarder.calls
    assert [(d, c, m) for d, c, m, _ in call] == [
        (Fqdn("b.test"), [rb], messages[0].message_content),
        (Fqdn("c.test"), [rc], messages[0].message_content),
        (Fqdn("b.test"), [rb], messages[2].message_content),
    ]
    assert all(e == m.encode() for _, _, m, e in call)
    assert [body_of(p) for p in await a.read_queue()] == [b"1", b"2"]
