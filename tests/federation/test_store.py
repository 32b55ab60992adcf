"""The durable outbox, leases and de-duplication records on both engines."""

from __future__ import annotations

import asyncio
import os

import pytest

from phx.federation.outbox_store import OUTBOX_CHANNEL, FederationStore
from phx.federation.pgnotify import PgListener
from phx.identifiers import Fqdn
from phx.storage import Database, migrate, open_database

B, C = Fqdn("b.test"), Fqdn("c.test")


async def store(db: Database) -> FederationStore:
    await migrate(db, "federation")
    return FederationStore()


async def test_outbox_keeps_order_per_destination(db: Database) -> None:
    s = await store(db)
    async with db.transaction() as conn:
        for i in range(5):
            await s.enqueue(conn, B if i % 2 == 0 else C, os.urandom(16), 100 + i, b"p%d" % i)
    async with db.transaction() as conn:
        head = await s.head(conn, B, 10)
        assert [m.payload for m in head] == [b"p0", b"p2", b"p4"]
        assert [m.created_at for m in await s.head(conn, C, 1)] == [101]
        assert await s.delete(conn, [head[0].id, head[1].id]) == 2
        assert [m.payload for m in await s.head(conn, B, 10)] == [b"p4"]
        rows = {r.destination: r for r in await s.destinations(conn)}
    assert (rows[B].backlog, rows[B].oldest_created_at) == (1, 104)
    assert (rows[C].backlog, rows[C].oldest_created_at) == (2, 101)


async def test_a_rolled_back_fan_out_leaves_no_outbox_row(db: Database) -> None:
    s = await store(db)
    try:
        async with db.transaction() as conn:
            await s.enqueue(conn, B, os.urandom(16), 1, b"x")
            raise RuntimeError("the fan-out failed")
    except RuntimeError:
        pass
    async with db.transaction() as conn:
        assert await s.head(conn, B, 10) == []


async def test_one_lease_holder_at_a_time_and_lapsed_leases_are_taken_over(db: Database) -> None:
    s = await store(db)
    async with db.transaction() as conn:
        await s.enqueue(conn, B, os.urandom(16), 1, b"x")
        first = await s.claim(conn, B, "one", 10_000, 5_000, probe=False)
        second = await s.claim(conn, B, "two", 11_000, 5_000, probe=False)
        again = await s.claim(conn, B, "one", 12_000, 5_000, probe=False)  # renewal
        lapsed = await s.claim(conn, B, "two", 17_001, 5_000, probe=False)
    assert first.ok and again.ok and lapsed.ok
    assert not second.ok and not second.backing_off and second.lease_until_ms == 15_000


async def test_claim_respects_the_persisted_backoff_except_for_probes(db: Database) -> None:
    s = await store(db)
    async with db.transaction() as conn:
        await s.claim(conn, B, "one", 0, 1000, probe=False)
        await s.complete(
            conn,
            B,
            "one",
            delete_ids=[],
            sent=0,
            dropped=0,
            failures=3,
            retry_at_ms=60_000,
            last_error="503",
            now=0,
            release=True,
        )
        early = await s.claim(conn, B, "two", 1_000, 1000, probe=False)
        probe = await s.claim(conn, B, "two", 1_000, 1000, probe=True)
    assert not early.ok and early.backing_off and (early.failures, early.retry_at_ms) == (3, 60_000)
    assert probe.ok


async def test_contact_and_reset_end_the_backoff(db: Database) -> None:
    s = await store(db)
    async with db.transaction() as conn:
        await s.claim(conn, B, "one", 0, 1000, probe=False)
        await s.complete(
            conn,
            B,
            "one",
            delete_ids=[],
            sent=0,
            dropped=0,
            failures=2,
            retry_at_ms=60_000,
            last_error="reset",
            now=0,
            release=False,
        )
        assert await s.contacted(conn, B, 5_000)
        assert not await s.contacted(conn, B, 5_000)  # already over
        assert await s.reset(conn, B)
        (row,) = await s.destinations(conn)
    assert (row.failures, row.retry_at_ms, row.lease_owner, row.last_error) == (0, 0, None, "")


async def test_complete_counts_and_releases(db: Database) -> None:
    s = await store(db)
    async with db.transaction() as conn:
        for _ in range(3):
            await s.enqueue(conn, B, os.urandom(16), 1, b"x")
        ids = [m.id for m in await s.head(conn, B, 10)]
        await s.claim(conn, B, "one", 0, 1000, probe=False)
        await s.complete(
            conn,
            B,
            "one",
            delete_ids=ids[:2],
            sent=1,
            dropped=1,
            failures=0,
            retry_at_ms=0,
            last_error="",
            now=1234,
            release=True,
        )
        (row,) = await s.destinations(conn)
        pending = await s.pending(conn)
    assert (row.backlog, row.sent_total, row.dropped_total, row.last_success, row.lease_owner) == (
        1,
        1,
        1,
        1234,
        None,
    )
    assert pending == [(B, True, 0, 0)]


async def test_expiry_drops_old_messages_and_counts_them(db: Database) -> None:
    s = await store(db)
    async with db.transaction() as conn:
        await s.enqueue(conn, B, os.urandom(16), 100, b"old")
        await s.enqueue(conn, B, os.urandom(16), 200, b"new")
        assert await s.expire(conn, 150) == {B: 1}
        assert [m.payload for m in await s.head(conn, B, 10)] == [b"new"]
        (row,) = await s.destinations(conn)
    assert row.dropped_total == 1


async def test_received_ids_are_remembered_once_and_forgotten_after_retention(db: Database) -> None:
    s = await store(db)
    a = Fqdn("a.test")
    ids = [os.urandom(16) for _ in range(3)]
    async with db.transaction() as conn:
        assert await s.remember(conn, a, ids[0], b"d0", 100, b"")
        assert not await s.remember(conn, a, ids[0], b"other", 100, b"")
        assert await s.remember(conn, Fqdn("c.test"), ids[0], b"dc", 100, b"")  # ids are per source
        assert await s.remember(conn, a, ids[1], b"d1", 200, b"r")
        seen = await s.received(conn, a, ids)
        assert {k: (v.digest, v.result) for k, v in seen.items()} == {
            ids[0]: (b"d0", b""),
            ids[1]: (b"d1", b"r"),
        }
        assert await s.forget_received(conn, 150) == 2
        assert set(await s.received(conn, a, ids)) == {ids[1]}


async def test_remember_many_records_new_ids_only(db: Database) -> None:
    s = await store(db)
    a = Fqdn("a.test")
    ids = [os.urandom(16) for _ in range(700)]  # more than one statement's worth
    async with db.transaction() as conn:
        assert await s.remember(conn, a, ids[3], b"d3", 1, b"r3")
        recorded = await s.remember_many(conn, a, [(i, b"d") for i in ids], 5)
        assert recorded == set(ids) - {ids[3]}
        assert await s.remember_many(conn, a, [(ids[0], b"d")], 6) == set()
        await s.set_result(conn, a, ids[0], b"result")
        seen = await s.received(conn, a, [ids[0], ids[3]])
    assert (seen[ids[0]].result, seen[ids[3]].digest, seen[ids[3]].result) == (b"result", b"d3", b"r3")


@pytest.mark.postgres
async def test_queueing_notifies_every_instance_at_commit(postgres_url: str) -> None:
    db = await open_database(postgres_url)
    got: list[str] = []
    listener = PgListener(postgres_url, {OUTBOX_CHANNEL: got.append})
    try:
        s = await store(db)
        await listener.start()
        async with db.transaction() as conn:
            await s.enqueue(conn, B, os.urandom(16), 1, b"x")
            await asyncio.sleep(0.2)
            assert got == []  # not before the commit
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
        assert got == ["b.test"]
    finally:
        await listener.stop()
        await db.close()


async def test_enqueue_many_keeps_order_across_destinations(db: Database) -> None:
    s = await store(db)
    rows = [(B if i % 3 else C, os.urandom(16), i, b"p%d" % i) for i in range(450)]
    async with db.transaction() as conn:
        await s.enqueue_many(conn, rows)
        got_b = [m.payload for m in await s.head(conn, B, 1000)]
        got_c = [m.payload for m in await s.head(conn, C, 1000)]
    assert got_b == [p for d, _, _, p in rows if d == B]
    assert got_c == [p for d, _, _, p in rows if d == C]
