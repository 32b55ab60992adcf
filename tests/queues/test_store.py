"""phx.queues.store on both engines, through a throwaway migration built from queue_schema_sql."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from phx.crypto import SUITE_1
from phx.queues import QueueItemType, QueueReader, QueueState, enqueue, new_queue, rotate
from phx.queues.ratchet import stepper
from phx.queues.store import QueueStore, queue_schema_sql
from phx.storage import Database, Engine, migrate

ROOT = Path(__file__).resolve().parents[2] / "src" / "phx" / "storage" / "migrations"
cs = SUITE_1


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_qs_migration_carries_the_queue_ddl_verbatim(engine: Engine) -> None:
    text = (ROOT / "qs" / engine / "0001_qs.sql").read_text()
    assert queue_schema_sql(engine, "qs", references="qs_client_records (client_id)") in text


def test_schema_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        queue_schema_sql("sqlite", "bad-prefix")
    with pytest.raises(ValueError):
        queue_schema_sql("sqlite", "ok", references="users; DROP TABLE x")
    with pytest.raises(ValueError):
        QueueStore("Bad")


async def make(db: Database, tmp_path: Path) -> QueueStore:
    directory = tmp_path / db.engine
    directory.mkdir()
    (directory / "0001_queues.sql").write_text(queue_schema_sql(db.engine, "qtest"))
    await migrate(db, "qtest", source=directory)
    return QueueStore("qtest")


async def test_create_lock_save_dequeue_delete(db: Database, tmp_path: Path) -> None:
    store = await make(db, tmp_path)
    sk, pk = cs.generate_hpke_key_pair()
    state, init = new_queue(cs, pk, 10)
    async with db.transaction() as conn:
        await store.create(conn, b"q1", state, init)
        await store.create(conn, b"q2", *new_queue(cs, pk, 10, ratchet_key=bytes(32)))
    async with db.transaction() as conn:
        states = await store.lock(conn, [b"q1", b"q2", b"missing", b"q1"])
        assert set(states) == {b"q1", b"q2"} and states[b"q1"] == state
        new_state, items = enqueue(cs, states[b"q1"], [b"a", b"b", b"c"], 11)
        await store.save(conn, {b"q1": new_state}, [(b"q1", i) for i in items])
    async with db.transaction() as conn:
        assert await store.get(conn, b"q1") == new_state
        got, remaining = await store.dequeue(conn, b"q1", 0, 2)
        assert [i.sequence_number for i in got] == [0, 1] and remaining == 2
        assert got[0].item_type == QueueItemType.INITIAL_KEY
        got2, remaining = await store.dequeue(conn, b"q1", 2, 10)
        assert [i.sequence_number for i in got2] == [2, 3] and remaining == 0
        got3, _ = await store.dequeue(conn, b"q1", 0, 10)
        assert [i.sequence_number for i in got3] == [2, 3]  # 0 and 1 were deleted
    reader = QueueReader(cs, [sk])
    assert reader.read_all([*got, *got2]) == [b"a", b"b", b"c"]
    async with db.transaction() as conn:
        assert await store.delete(conn, [b"q1", b"nope"]) == 1
        assert await store.get(conn, b"q1") is None
        assert await conn.fetchval("SELECT COUNT(*) FROM qtest_queue_messages") == 0  # cascade
        assert await store.lock(conn, []) == {} and await store.delete(conn, []) == 0


async def test_concurrent_read_modify_write_is_serialized(db: Database, tmp_path: Path) -> None:
    store = await make(db, tmp_path)
    _, pk = cs.generate_hpke_key_pair()
    async with db.transaction() as conn:
        await store.create(conn, b"q", *new_queue(cs, pk, 0, ratchet_key=bytes(32)))

    async def one(i: int) -> None:
        async with db.transaction() as conn:
            state = (await store.lock(conn, [b"q"]))[b"q"]
            await asyncio.sleep(0)  # give the others a chance to interleave
            new, items = enqueue(cs, state, [str(i).encode()], 1)
            await store.save(conn, {b"q": new}, [(b"q", it) for it in items])

    await asyncio.gather(*(one(i) for i in range(30)))
    async with db.transaction() as conn:
        items, _ = await store.dequeue(conn, b"q", 0, 100)
    assert [i.sequence_number for i in items] == list(range(30))


@pytest.mark.parametrize("n", [0, 1, 3, 300])
async def test_save_advances_stores_every_item_and_state(db: Database, tmp_path: Path, n: int) -> None:
    store = await make(db, tmp_path)
    sk, pk = cs.generate_hpke_key_pair()
    qids = [b"qa", b"qb", b"qc"]
    async with db.transaction() as conn:
        for i, qid in enumerate(qids):
            await store.create(conn, qid, *new_queue(cs, pk, 0, ratchet_key=bytes([i]) * 32))
    step = stepper(cs)
    states = {q: QueueState(pk, bytes([i]) * 32, 0, 0) for i, q in enumerate(qids)}
    messages, rows = [], []
    for i in range(n):
        qid = qids[(i * 7) % 3]  # interleaved, so the store has to order them itself
        state = states[qid]
        if i == n // 2:  # one key update in the middle, stored as a full row
            state, update = rotate(cs, state, 9)
            rows.append(
                (qid, update.sequence_number, int(update.item_type), update.kem_output, update.ciphertext)
            )
        ct, rk = step(state.ratchet_key, state.next_sequence, b"m%d" % i)
        messages.append((qid, state.next_sequence, ct))
        states[qid] = replace(state, ratchet_key=rk, next_sequence=state.next_sequence + 1)
    advances = [
        (q, s.ratchet_key, s.next_sequence, s.last_rotation) for q, s in states.items() if s.next_sequence
    ]
    async with db.transaction() as conn:
        await store.save_advances(conn, advances, messages, rows)
    async with db.transaction() as conn:
        for i, qid in enumerate(qids):
            assert await store.get(conn, qid) == states[qid]
            items, _ = await store.dequeue(conn, qid, 0, 1000)
            reader = QueueReader(cs, [sk], ratchet_key=bytes([i]) * 32)
            assert reader.read_all(items) == [b"m%d" % j for j in range(n) if qids[(j * 7) % 3] == qid]
        assert await conn.fetchval("SELECT COUNT(*) FROM qtest_queue_messages") == n + len(rows)


async def test_insert_messages_and_rows_alone(db: Database, tmp_path: Path) -> None:
    store = await make(db, tmp_path)
    _, pk = cs.generate_hpke_key_pair()
    async with db.transaction() as conn:
        await store.create(conn, b"q", *new_queue(cs, pk, 0, ratchet_key=bytes(32)))
        await store.insert_messages(conn, [(b"q", s, b"c%d" % s) for s in range(5)])
        await store.insert_rows(conn, [(b"q", 5, int(QueueItemType.KEY_UPDATE), b"kem", b"ct")])
        await store.insert_messages(conn, [])
        await store.insert_rows(conn, [])
        await store.save_advances(conn, [], [])
    async with db.transaction() as conn:
        items, _ = await store.dequeue(conn, b"q", 0, 100)
    assert [(i.sequence_number, i.item_type, i.kem_output, i.ciphertext) for i in items] == [
        *((s, QueueItemType.MESSAGE, b"", b"c%d" % s) for s in range(5)),
        (5, QueueItemType.KEY_UPDATE, b"kem", b"ct"),
    ]
