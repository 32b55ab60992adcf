"""What the DS's tables hold: nothing of a group but ciphertexts, its id, month-only times and public keys."""

from __future__ import annotations

import pytest

from phx.delivery.state import COLD, ROSTER, month_start, padding_unit
from phx.delivery.store import DsStore
from phx.storage import Database, migrate
from tests.delivery.helpers import Client, Harness

OVERHEAD = 1 + 32 + 16  # version, salt, GCM tag


async def dump(db: Database) -> dict[str, list[dict[str, object]]]:
    out = {}
    async with db.transaction(readonly=True) as conn:
        for table in ("ds_groups", "ds_deleted_queues", "ds_outbox", "ds_keys"):
            out[table] = [dict(r) for r in await conn.fetch(f"SELECT * FROM {table}")]
    return out


def as_bytes(value: object) -> bytes:
    assert isinstance(value, bytes | bytearray | memoryview)
    return bytes(value)


def blobs(rows: list[dict[str, object]]) -> list[bytes]:
    return [bytes(v) for r in rows for v in r.values() if isinstance(v, bytes | bytearray | memoryview)]


@pytest.fixture
async def h(db: Database) -> Harness:
    return await Harness.start(db)


async def test_nothing_but_ciphertexts_at_rest(h: Harness) -> None:
    alice, bob, carol = Client.new("alice"), Client.new("bob"), Client.new("carol")
    await h.create(alice)
    h.clock.now += 17 * 86400 + 3600  # mid-month
    await h.add(alice, [bob], [carol])
    await h.update(bob, [alice, carol])
    h.sink.fail = True
    await h.update(carol, [alice, bob])  # leaves an outbox row
    h.sink.fail = False
    h.sink.deleted.add(alice.qc.encode())
    await h.service.queue_deleted([])  # no-op
    tables = await dump(h.db)
    stored = blobs([r for rows in tables.values() for r in rows])
    secrets = [h.ear_key, b"cred:alice", b"cred:bob", b"wai:bob", b"alice", b"carol"]
    for c in (alice, bob, carol):
        secrets += [
            c.qc.sealed_config.ciphertext,
            c.qc.sealed_config.kem_output,
            c.credential.identity or b"",
        ]
        secrets.append(c.g.own_leaf.signature_key)
        secrets.append(c.g.own_leaf.encryption_key)
    secrets.append(alice.g.tree.tree_hash())
    for secret in secrets:
        assert secret and not any(secret in blob for blob in stored), secret
    (group,) = tables["ds_groups"]
    assert group["last_used"] == month_start(h.now) and group["reserved_until"] is None
    target = h.service.padding.target()
    for column, section in (("roster", ROSTER), ("cold", COLD)):
        size = len(as_bytes(group[column])) - OVERHEAD
        assert size % padding_unit(target, section) == 0, column
    (outbox,) = tables["ds_outbox"]
    assert (len(as_bytes(outbox["fan_out"])) - OVERHEAD) % padding_unit(target, ROSTER) == 0


async def test_padding_target_is_persisted_and_applied(db: Database) -> None:
    await migrate(db, "ds")
    async with db.transaction() as conn:
        await DsStore().put_key(conn, "padding_target", (64).to_bytes(8, "big"), 0, replace=True)
    h = await Harness.start(db)
    assert h.service.padding.target() == 64
    alice = Client.new("alice")
    await h.create(alice)
    await h.update(alice)
    async with h.db.transaction(readonly=True) as conn:
        row = await conn.fetchrow("SELECT roster, cold FROM ds_groups WHERE roster IS NOT NULL")
    assert row is not None
    # a one-member group looks like a group of 64
    assert len(bytes(row["roster"])) - OVERHEAD == padding_unit(64, ROSTER)
    assert len(bytes(row["cold"])) - OVERHEAD == padding_unit(64, COLD)
    await h.service.expire(h.now)  # maintenance persists the current target
    async with h.db.transaction(readonly=True) as conn:
        value = await conn.fetchval("SELECT value FROM ds_keys WHERE name = 'padding_target'")
    assert int.from_bytes(bytes(value), "big") == 64
