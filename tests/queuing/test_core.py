"""The QS's pure rules, without a database."""

from __future__ import annotations

import itertools
import uuid

import pytest

from phx.crypto import SUITE_1
from phx.errors import AuthError, ExpiredError, SignatureError, ValidationError
from phx.identifiers import Fqdn, GroupId, QsCid, QsUid
from phx.queues import QueueItemType, QueueReader, Random, enqueue, new_queue
from phx.queuing import core
from phx.queuing.messages import (
    ClientQueueConfig,
    QsClientRequest,
    QueueConfig,
    SealedQueueConfig,
    UserRecordParams,
    blocklist_hash,
    seal_queue_config,
    unseal_queue_config,
)

cs = SUITE_1
DOMAIN = Fqdn("home.test")
NOW = 1_700_000_000


def counter_random() -> Random:
    counter = itertools.count()
    return lambda n: bytes([next(counter) % 256]) * n


def test_check_auth_accepts_exactly_the_signed_request() -> None:
    sk, pk = cs.generate_signature_key_pair()
    uid = QsUid.random()
    params = UserRecordParams(uid)
    req = QsClientRequest.signed("get_user_record", params, uid, sk, NOW)
    core.check_auth(cs, req, "get_user_record", uid, pk, NOW + 3600, 3600)
    with pytest.raises(ExpiredError):
        core.check_auth(cs, req, "get_user_record", uid, pk, NOW + 3601, 3600)
    with pytest.raises(ExpiredError):
        core.check_auth(cs, req, "get_user_record", uid, pk, NOW - core.CLOCK_SKEW - 1, 3600)
    with pytest.raises(SignatureError):
        core.check_auth(cs, req, "delete_user_record", uid, pk, NOW, 3600)
    with pytest.raises(AuthError):
        core.check_auth(cs, req, "get_user_record", QsUid.random(), pk, NOW, 3600)
    with pytest.raises(SignatureError):
        core.check_auth(cs, req, "get_user_record", uid, cs.generate_signature_key_pair()[1], NOW, 3600)
    other = QsClientRequest(UserRecordParams(QsUid.random()).encode(), req.auth_token, None)
    with pytest.raises(SignatureError):
        core.check_auth(cs, other, "get_user_record", uid, pk, NOW, 3600)


def test_blocklist_update_and_limit() -> None:
    record = core.ClientRecord(QsCid.random(QsUid.random()), b"k" * 32, None, NOW, b"s" * 32)
    g1, g2 = GroupId(uuid.uuid4(), DOMAIN), GroupId(uuid.uuid4(), DOMAIN)
    r = core.update_blocklist(record, [g1, g2], [], max_entries=2)
    assert r.blocklist == {blocklist_hash(b"s" * 32, g1), blocklist_hash(b"s" * 32, g2)}
    assert core.update_blocklist(r, [], [g1], max_entries=2).blocklist == {blocklist_hash(b"s" * 32, g2)}
    with pytest.raises(ValidationError):
        core.update_blocklist(r, [GroupId(uuid.uuid4(), DOMAIN)], [], max_entries=2)
    # Another salt gives other hashes: the stored values do not link queues.
    assert blocklist_hash(b"t" * 32, g1) != blocklist_hash(b"s" * 32, g1)


def test_dequeue_limit_and_start() -> None:
    assert core.dequeue_limit(10, 500) == 10
    assert core.dequeue_limit(10_000, 500) == 500
    assert core.dequeue_limit(0, 500) == 0
    _, pk = cs.generate_hpke_key_pair()
    state, _ = new_queue(cs, pk, NOW)
    core.check_dequeue_start(1, state)
    with pytest.raises(ValidationError):
        core.check_dequeue_start(2, state)
    assert core.expiry_cutoff(NOW, 90) == NOW - 90


def test_classify_and_plan() -> None:
    qc_sk, qc_pk = cs.generate_hpke_key_pair()
    owner_sk, owner_pk = cs.generate_hpke_key_pair()
    uid = QsUid.random()
    cid, ghost = QsCid.random(uid), QsCid.random(uid)
    local = seal_queue_config(qc_pk, DOMAIN, QueueConfig(None, cid))
    missing = seal_queue_config(qc_pk, DOMAIN, QueueConfig(None, ghost))
    junk = seal_queue_config(cs.generate_hpke_key_pair()[1], DOMAIN, QueueConfig(None, cid))
    remote = ClientQueueConfig(Fqdn("far.test"), local.sealed_config)

    def unseal(c: ClientQueueConfig) -> core.Unsealed | None:
        try:
            return core.Unsealed.of(unseal_queue_config(qc_sk, DOMAIN, c.sealed_config))
        except ValidationError:
            return None

    classified = core.classify_configs([local, remote, missing, junk, local], DOMAIN, unseal)
    assert classified.remote == {Fqdn("far.test"): [remote]}
    assert classified.unusable == [junk]
    assert [r.config for r in classified.local] == [local, missing, local]

    state, init = new_queue(cs, owner_pk, NOW)
    qid = cid.client_id.bytes
    target = core.DeliveryTarget(b"s" * 32, frozenset(), None)
    group = GroupId(uuid.uuid4(), DOMAIN)
    plan = core.plan_deliveries(
        cs,
        classified.local,
        {qid: target},
        {qid: state},
        group,
        b"payload",
        NOW,
        rotation_interval=86400,
        random=counter_random(),
    )
    assert plan.deleted == [missing]
    assert [q for q, _ in plan.items] == [qid]
    assert plan.states[qid].next_sequence == 2 and plan.delivered[0].next_sequence == 2
    reader = QueueReader(cs, [owner_sk])
    assert reader.read_all([*init, *(i for _, i in plan.items)]) == [b"payload"]

    blocked = core.DeliveryTarget(b"s" * 32, frozenset({blocklist_hash(b"s" * 32, group)}), None)
    plan = core.plan_deliveries(
        cs, classified.local, {qid: blocked}, {qid: state}, group, b"p", NOW, rotation_interval=86400
    )
    assert plan.items == [] and plan.deleted == [missing] and plan.delivered == []


def test_update_client_record_rotates_only_for_a_new_queue_key() -> None:
    _, pk1 = cs.generate_hpke_key_pair()
    sk2, pk2 = cs.generate_hpke_key_pair()
    record, state, _ = core.new_client_record(cs, QsCid.random(QsUid.random()), b"a" * 32, pk1, None, NOW)
    same, s1, items = core.update_client_record(cs, record, state, b"b" * 32, pk1, b"tok", NOW)
    assert items == [] and s1 == state and same.auth_key == b"b" * 32 and same.encrypted_push_token == b"tok"
    _, s2, items = core.update_client_record(cs, record, state, b"b" * 32, pk2, None, NOW)
    assert [i.item_type for i in items] == [QueueItemType.KEY_UPDATE] and s2.encryption_key == pk2
    with pytest.raises(ValidationError):
        core.update_client_record(cs, record, state, b"short", pk2, None, NOW)
    with pytest.raises(ValidationError):
        core.new_user_record(QsUid.random(), b"a" * 32, b"too short", NOW)


def test_plan_batch_equals_one_enqueue_per_delivery() -> None:
    """The batch planner against the generic ratchet, fan-out by fan-out: missing queues, a blocklist, a
    client named twice, and a clock that makes one queue's rotation due in the middle of the batch."""
    day = 86400
    owners = [cs.generate_hpke_key_pair() for _ in range(3)]
    qids = [bytes([i]) * 16 for i in range(3)]
    ghost = b"\xee" * 16
    init_states = {
        qids[0]: new_queue(cs, owners[0][1], NOW, ratchet_key=b"\x01" * 32)[0],
        qids[1]: new_queue(cs, owners[1][1], NOW - day + 5, ratchet_key=b"\x02" * 32)[0],  # due at NOW + 5
        qids[2]: new_queue(cs, owners[2][1], NOW, ratchet_key=b"\x03" * 32)[0],
    }
    group, blocked_group = GroupId(uuid.uuid4(), DOMAIN), GroupId(uuid.uuid4(), DOMAIN)
    targets = {
        qids[0]: core.DeliveryTarget(b"s" * 32, frozenset(), b"token"),
        qids[1]: core.DeliveryTarget(b"t" * 32, frozenset({blocklist_hash(b"t" * 32, blocked_group)}), None),
        qids[2]: core.DeliveryTarget(b"u" * 32, frozenset(), None),
    }
    uid = QsUid.random()

    def rcpt(qid: bytes, push_key: bytes | None = None) -> core.LocalRecipient:
        qc = QueueConfig(push_key, QsCid(uid, uuid.UUID(bytes=qid)))
        return core.LocalRecipient(
            ClientQueueConfig(DOMAIN, SealedQueueConfig(qid, b"")), core.Unsealed.of(qc)
        )

    fan_outs = [
        ([rcpt(qids[0]), rcpt(qids[1]), rcpt(ghost)], group, b"m0", NOW),
        ([rcpt(qids[1]), rcpt(qids[0]), rcpt(qids[1])], blocked_group, b"m1", NOW + 1),
        ([rcpt(qids[2]), rcpt(qids[1])], group, b"m2", NOW + 5),  # qids[1] rotates here
        ([rcpt(ghost), rcpt(qids[1]), rcpt(qids[0], b"k" * 16)], group, b"m3", NOW + 6),
    ]
    plan = core.plan_batch(cs, fan_outs, targets, init_states, rotation_interval=day, random=counter_random())

    # Reference: the generic enqueue, one delivery at a time.
    rnd = counter_random()
    states = dict(init_states)
    rows: list[tuple[bytes, int, int, bytes, bytes]] = []
    deleted: list[list[ClientQueueConfig]] = []
    for recipients, gid, payload, now in fan_outs:
        dead, seen = [], set()
        for r in recipients:
            qid = r.unsealed.queue_id
            if qid not in targets:
                dead.append(r.config)
                continue
            if qid in seen:
                continue
            seen.add(qid)
            if blocklist_hash(targets[qid].blocklist_salt, gid) in targets[qid].blocklist:
                continue
            states[qid], items = enqueue(cs, states[qid], [payload], now, rotation_interval=day, random=rnd)
            rows += [(qid, i.sequence_number, int(i.item_type), i.kem_output, i.ciphertext) for i in items]
        deleted.append(dead)

    def comparable(r: tuple[bytes, int, int, bytes, bytes]) -> tuple[object, ...]:
        return r if r[2] == QueueItemType.MESSAGE else r[:3]  # HPKE-sealed updates use fresh randomness

    got = [(q, i.sequence_number, int(i.item_type), i.kem_output, i.ciphertext) for q, i in plan.items()]
    # Per queue in sequence order (the planner encrypts queue by queue).
    assert sorted(comparable(r) for r in got) == sorted(comparable(r) for r in rows)
    assert [r[2] for r in plan.rows] == [QueueItemType.KEY_UPDATE]
    assert plan.states(init_states) == {q: s for q, s in states.items() if s != init_states[q]}
    assert plan.deleted == deleted and [len(d) for d in deleted] == [1, 0, 0, 1]
    assert {
        (d.queue_id, d.next_sequence, d.push_token_key, d.encrypted_push_token) for d in plan.delivered
    } == {
        (qids[0], 3, b"k" * 16, b"token"),
        (qids[1], 4, None, None),
        (qids[2], 1, None, None),
    }
    for i, qid in enumerate(qids):
        reader = QueueReader(cs, [owners[i][0]], ratchet_key=init_states[qid].ratchet_key)
        mine = [item for q, item in plan.items() if q == qid]
        assert reader.read_all(mine) == [
            p
            for rs, g, p, _ in fan_outs
            if any(x.unsealed.queue_id == qid for x in rs) and not (qid == qids[1] and g == blocked_group)
        ]
