"""Local enqueue (fan-out), dequeue, live listeners, push and expiry — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from collections.abc import Sequence

import pytest

from phx.config import QsConfig
from phx.errors import DecodeError, Unavailable, ValidationError
from phx.identifiers import Fqdn, GroupId, QsCid
from phx.mls.messages import MLSMessage, PrivateMessage
from phx.mls.messages.common import ContentType
from phx.queues import QueueItemType, QueueReader
from phx.queuing import core
from phx.queuing import messages as qm
from phx.queuing.messages import (
    ClientQueueConfig,
    DequeueMessagesParams,
    DequeueMessagesResponse,
    FanOutQueuePayload,
    LocalEnqueueResponse,
    MessageContent,
    Operation,
    QueueConfig,
    UpdateBlocklistParams,
    seal_queue_config,
)
from phx.storage import Connection, Database

from .helpers import (
    DOMAIN,
    T0,
    FakeClock,
    RecordingNotifier,
    cs,
    fan_out,
    group_message,
    make_service,
    register,
)

DAY = 86400


def body_of(payload: FanOutQueuePayload) -> bytes:
    body = payload.content.body
    assert isinstance(body, MLSMessage) and body.private_message is not None
    return body.private_message.ciphertext


async def test_fan_out_delivers_to_every_local_queue(db: Database) -> None:
    service = await make_service(db)
    a, b = await register(service), await register(service)
    group = GroupId(uuid.uuid4(), DOMAIN)
    deleted = await service.enqueue_fan_out(fan_out([a.queue_config(), b.queue_config()], group, b"hello"))
    assert deleted == []
    for c in (a, b):
        [payload] = await c.read_queue()
        assert payload.timestamp == service.clock()
        assert payload.content == group_message(group, b"hello")
        assert payload.content.group_id() == group


async def test_missing_records_and_unusable_configs_are_reported(db: Database) -> None:
    service = await make_service(db)
    a = await register(service)
    ghost_config = seal_queue_config(
        service.queue_config_encryption_key, DOMAIN, QueueConfig(None, QsCid(a.qs_uid, uuid.uuid4()))
    )
    junk = seal_queue_config(cs.generate_hpke_key_pair()[1], DOMAIN, QueueConfig(None, a.cid))
    group = GroupId(uuid.uuid4(), DOMAIN)
    body = fan_out([a.queue_config(), ghost_config, junk], group).encode()
    resp = LocalEnqueueResponse.decode(await service.local_enqueue(body))
    assert [(d.client_queue_config, d.group_id) for d in resp.queue_deleted] == [
        (ghost_config, group),
        (junk, group),
    ]
    assert len(await a.read_queue()) == 1


async def test_blocklist_skips_silently(db: Database) -> None:
    service = await make_service(db)
    a = await register(service)
    blocked, other = GroupId(uuid.uuid4(), DOMAIN), GroupId(uuid.uuid4(), DOMAIN)
    await a.call(Operation.UPDATE_BLOCKLIST, UpdateBlocklistParams(a.cid, (blocked,), ()))
    assert await service.enqueue_fan_out(fan_out([a.queue_config()], blocked)) == []
    await service.enqueue_fan_out(fan_out([a.queue_config()], other))
    assert [p.content.group_id() for p in await a.read_queue()] == [other]
    # The blocklist stores only salted hashes, never the group id.
    async with db.transaction() as conn:
        blob = await conn.fetchval("SELECT blocklist FROM qs_client_records")
    assert blocked.encode() not in bytes(blob) and len(bytes(blob)) == 32
    await a.call(Operation.UPDATE_BLOCKLIST, UpdateBlocklistParams(a.cid, (), (blocked,)))
    await service.enqueue_fan_out(fan_out([a.queue_config()], blocked))
    assert [p.content.group_id() for p in await a.read_queue()] == [blocked]


async def test_remote_configs_without_federation_fail_the_whole_fan_out(db: Database) -> None:
    service = await make_service(db)
    a = await register(service)
    remote = ClientQueueConfig(Fqdn("remote.test"), a.queue_config().sealed_config)
    with pytest.raises(Unavailable):
        await service.enqueue_fan_out(fan_out([a.queue_config(), remote]))
    assert await a.read_queue() == []  # rolled back with it: a DS retry cannot duplicate


class RecordingForwarder:
    def __init__(self) -> None:
        self.calls: list[tuple[Fqdn, list[ClientQueueConfig], MessageContent]] = []

    async def forward(
        self, conn: Connection, domain: Fqdn, configs: Sequence[ClientQueueConfig], content: MessageContent
    ) -> None:
        assert await conn.fetchval("SELECT 1") == 1  # inside the fan-out's transaction
        self.calls.append((domain, list(configs), content))


async def test_remote_configs_go_to_the_forwarder_by_domain(db: Database) -> None:
    forwarder = RecordingForwarder()
    service = await make_service(db, forwarder=forwarder)
    a = await register(service)
    sealed = a.queue_config().sealed_config
    r1, r2, r3 = (ClientQueueConfig(Fqdn(d), sealed) for d in ("b.test", "c.test", "b.test"))
    msg = fan_out([r1, a.queue_config(), r2, r3])
    assert await service.enqueue_fan_out(msg) == []
    assert [(d, cfgs) for d, cfgs, _ in forwarder.calls] == [
        (Fqdn("b.test"), [r1, r3]),
        (Fqdn("c.test"), [r2]),
    ]
    assert all(content == msg.message_content for _, _, content in forwarder.calls)
    assert len(await a.read_queue()) == 1


async def test_same_client_twice_gets_one_copy(db: Database) -> None:
    service = await make_service(db)
    a = await register(service)
    await service.enqueue_fan_out(fan_out([a.queue_config(), a.queue_config()]))
    assert len(await a.read_queue()) == 1


async def test_bad_fan_outs(db: Database) -> None:
    service = await make_service(db)
    with pytest.raises(DecodeError):
        await service.local_enqueue(b"\x00\x05junk")
    # Content whose group id is not a Phoenix GroupId.
    pm = MLSMessage(PrivateMessage(b"raw", 1, ContentType.COMMIT, b"", b"", b""))
    content = MessageContent(qm.MessageContentType.COMMIT, pm)
    with pytest.raises(DecodeError):
        await service.enqueue_fan_out(qm.FanOutMessage((), content))
    with pytest.raises(ValueError):
        MessageContent(qm.MessageContentType.WELCOME_BUNDLE, pm)


async def test_ratchet_rotation_with_the_clock(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock, config=QsConfig(ratchet_key_rotation_interval=DAY))
    a = await register(service)
    cfg = a.queue_config()
    await service.enqueue_fan_out(fan_out([cfg], body=b"1"))
    clock.now += DAY
    await service.enqueue_fan_out(fan_out([cfg], body=b"2"))
    await service.enqueue_fan_out(fan_out([cfg], body=b"3"))
    items = await service.queue_items(a.cid)
    assert [i.item_type for i in items] == [
        QueueItemType.INITIAL_KEY,
        QueueItemType.MESSAGE,
        QueueItemType.KEY_UPDATE,
        QueueItemType.MESSAGE,
        QueueItemType.MESSAGE,
    ]
    assert [i.sequence_number for i in items] == [0, 1, 2, 3, 4]
    reader = QueueReader(cs, [a.queue_sk])
    payloads = [FanOutQueuePayload.decode(p) for p in reader.read_all(items)]
    assert [body_of(p) for p in payloads] == [b"1", b"2", b"3"]


async def test_dequeue_semantics(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock, config=QsConfig(max_messages_per_dequeue=3))
    a = await register(service)
    for i in range(6):
        await service.enqueue_fan_out(fan_out([a.queue_config()], body=bytes([i])))
    # Queue: 0 = initial key, 1..6 = messages.

    async def dequeue(start: int, asked: int) -> DequeueMessagesResponse:
        body = await a.call(
            Operation.DEQUEUE_MESSAGES, DequeueMessagesParams(a.cid, start, asked), token=None
        )
        return DequeueMessagesResponse.decode(body)

    r = await dequeue(0, 100)  # configured max wins
    assert [m.sequence_number for m in r.messages] == [0, 1, 2] and r.remaining_messages_number == 4
    r = await dequeue(0, 2)  # nothing deleted yet (start 0), asked wins
    assert [m.sequence_number for m in r.messages] == [0, 1] and r.remaining_messages_number == 5
    r = await dequeue(3, 100)  # deletes 0..2
    assert [m.sequence_number for m in r.messages] == [3, 4, 5] and r.remaining_messages_number == 1
    r = await dequeue(0, 100)  # older ones are gone
    assert [m.sequence_number for m in r.messages] == [3, 4, 5]
    r = await dequeue(6, 100)  # remaining wins
    assert [m.sequence_number for m in r.messages] == [6] and r.remaining_messages_number == 0
    assert (await dequeue(7, 100)).messages == ()
    with pytest.raises(ValidationError, match="past the queue's end"):
        await dequeue(8, 100)
    assert (await dequeue(7, 0)).messages == ()
    # Activity time moves on dequeue.
    clock.now += 50
    await dequeue(7, 1)
    async with db.transaction() as conn:
        record = await service.store.get_client(conn, a.cid)
    assert record is not None and record.activity_time == clock.now


async def test_dequeue_then_decrypt_everything(db: Database) -> None:
    service = await make_service(db)
    a = await register(service)
    for i in range(5):
        await service.enqueue_fan_out(fan_out([a.queue_config()], body=bytes([i])))
    reader = QueueReader(cs, [a.queue_sk])
    start, got = 0, []
    while True:
        body = await a.call(Operation.DEQUEUE_MESSAGES, DequeueMessagesParams(a.cid, start, 2), token=None)
        r = DequeueMessagesResponse.decode(body)
        got += [FanOutQueuePayload.decode(p) for p in reader.read_all(r.messages)]
        start = reader.next_sequence
        if not r.remaining_messages_number:
            break
    assert [body_of(p) for p in got] == [bytes([i]) for i in range(5)]


async def test_push_when_nobody_listens(db: Database) -> None:
    notifier = RecordingNotifier()
    service = await make_service(db, notifier=notifier)
    a = await register(service, push=True)
    silent = await register(service)  # no push token: nothing to push
    await service.enqueue_fan_out(fan_out([a.queue_config(), silent.queue_config()]))
    assert [t.token for t in notifier.sent] == [b"device-token"]

    sub = service.listeners.subscribe(a.cid.client_id.bytes)
    await service.enqueue_fan_out(fan_out([a.queue_config()]))
    assert len(notifier.sent) == 1  # a live listener is woken instead
    assert await asyncio.wait_for(sub.wait(), 1) == 3
    sub.close()
    await service.enqueue_fan_out(fan_out([a.queue_config()]))
    assert len(notifier.sent) == 2


async def test_push_failure_does_not_fail_delivery(db: Database) -> None:
    service = await make_service(db, notifier=RecordingNotifier(fail=True))
    a = await register(service, push=True)
    assert await service.enqueue_fan_out(fan_out([a.queue_config()])) == []
    assert len(await a.read_queue()) == 1


async def test_expiry_of_inactive_client_records(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock, config=QsConfig(max_client_record_age=90 * DAY))
    old = await register(service)
    old_cfg = old.queue_config()
    clock.now += 60 * DAY
    fresh = await register(service)
    await service.enqueue_fan_out(fan_out([old_cfg]))  # enqueueing is not activity
    assert await service.expire(T0 + 90 * DAY) == (0, 0)
    assert await service.expire(T0 + 90 * DAY + 1) == (1, 1)
    with pytest.raises(Exception, match="no such queue"):
        await service.queue_items(old.cid)
    assert len(await fresh.read_queue()) == 0
    # Its records are gone: later fan-outs report the queue deleted.
    [deleted] = await service.enqueue_fan_out(fan_out([old_cfg]))
    assert deleted.client_queue_config == old_cfg
    async with db.transaction() as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM qs_queue_messages") == 1  # fresh's initial key


async def test_unsealed_configs_are_cached_and_bounded(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    service = await make_service(db, config_cache_size=2)
    clients = [await register(service) for _ in range(3)]
    configs = [c.queue_config() for c in clients]
    calls = 0
    real = qm.unseal_queue_config

    def counting(*args: object, **kwargs: object) -> QueueConfig:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("phx.queuing.fanout.unseal_queue_config", counting)
    await service.enqueue_fan_out(fan_out(configs[:2]))
    await service.enqueue_fan_out(fan_out(configs[:2]))
    assert calls == 2
    await service.enqueue_fan_out(fan_out(configs[2:]))  # evicts the least recently used
    assert calls == 3 and service.fan_out.cache_len == 2
    await service.enqueue_fan_out(fan_out(configs[:1]))
    assert calls == 4


@pytest.mark.parametrize("n", [50])
async def test_concurrent_enqueues_keep_sequence_numbers_contiguous(db: Database, n: int) -> None:
    service = await make_service(db)
    a, b = await register(service), await register(service)
    cfg_a, cfg_b = a.queue_config(), b.queue_config()
    await asyncio.gather(
        *(
            service.enqueue_fan_out(
                fan_out([cfg_a, cfg_b] if i % 2 else [cfg_b, cfg_a], body=str(i).encode())
            )
            for i in range(n)
        )
    )
    for c in (a, b):
        items = await service.queue_items(c.cid)
        assert [i.sequence_number for i in items] == list(range(n + 1))
        payloads = await c.read_queue()
        bodies = sorted(int(body_of(p)) for p in payloads)
        assert bodies == list(range(n))


async def test_a_failing_fan_out_does_not_fail_others_sharing_its_transaction(db: Database) -> None:
    service = await make_service(db)
    a, b = await register(service), await register(service)
    remote = ClientQueueConfig(Fqdn("remote.test"), a.queue_config().sealed_config)
    good = [fan_out([a.queue_config(), b.queue_config()], body=str(i).encode()) for i in range(8)]
    bad = fan_out([b.queue_config(), remote], body=b"bad")
    results = await asyncio.gather(
        *(service.enqueue_fan_out(m) for m in [*good[:4], bad, *good[4:]]), return_exceptions=True
    )
    assert isinstance(results[4], Unavailable)
    assert [r for i, r in enumerate(results) if i != 4] == [[]] * 8
    for c in (a, b):
        assert sorted(body_of(p) for p in await c.read_queue()) == sorted(str(i).encode() for i in range(8))
        items = await service.queue_items(c.cid)
        assert [i.sequence_number for i in items] == list(range(len(items)))


async def test_a_failure_in_the_middle_of_a_batch_rolls_back_only_that_batch(db: Database) -> None:
    """A fan-out failing after another one of its batch was encrypted: nothing of the batch stays, the
    others are retried alone, and the connection is fine afterwards."""
    loop_errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: loop_errors.append(context))
    entropy = FlakyRandom()
    clock = FakeClock()
    service = await make_service(
        db, clock, config=QsConfig(ratchet_key_rotation_interval=DAY), random=entropy
    )
    b = await register(service)
    clock.now += DAY - 10
    a = await register(service)
    clock.now += 10  # b's key update is due, a's is not
    entropy.fail = True  # the key update needs fresh randomness
    results = await asyncio.gather(
        service.enqueue_fan_out(fan_out([a.queue_config()], body=b"first")),
        service.enqueue_fan_out(fan_out([b.queue_config()], body=b"second")),
        return_exceptions=True,
    )
    assert results[0] == [] and isinstance(results[1], RuntimeError)
    assert [i.sequence_number for i in await service.queue_items(a.cid)] == [0, 1]
    assert [i.item_type for i in await service.queue_items(b.cid)] == [QueueItemType.INITIAL_KEY]
    entropy.fail = False
    await service.enqueue_fan_out(fan_out([a.queue_config(), b.queue_config()], body=b"third"))
    assert [body_of(p) for p in await a.read_queue()] == [b"first", b"third"]
    assert [body_of(p) for p in await b.read_queue()] == [b"third"]
    gc.collect()  # a task whose failure nobody awaited reports it when collected
    assert loop_errors == []


class FlakyRandom:
    def __init__(self) -> None:
        self.fail = False

    def __call__(self, n: int) -> bytes:
        if self.fail:
            raise RuntimeError("no entropy")
        return os.urandom(n)


async def test_the_config_cache_tells_sealed_configs_apart_by_both_fields(db: Database) -> None:
    """A config whose kem_output and ciphertext concatenate to a cached config's bytes, split elsewhere, is
    another config (it does not open): it must not reach the cached config's queue."""
    service = await make_service(db)
    a = await register(service)
    real = a.queue_config()
    kem, ct = real.sealed_config.kem_output, real.sealed_config.ciphertext
    forged = ClientQueueConfig(DOMAIN, qm.SealedQueueConfig(kem[:-1], kem[-1:] + ct))
    assert await service.enqueue_fan_out(fan_out([real], body=b"1")) == []
    [deleted] = await service.enqueue_fan_out(fan_out([forged], body=b"2"))
    assert deleted.client_queue_config == forged
    assert [body_of(p) for p in await a.read_queue()] == [b"1"]


async def test_prepared_payload_is_the_encoded_fan_out_queue_payload(db: Database) -> None:
    service = await make_service(db)
    a = await register(service)
    message = fan_out([a.queue_config(), ClientQueueConfig(Fqdn("far.test"), a.queue_config().sealed_config)])
    prepared = service.fan_out.prepare(message, T0 + 5)
    assert prepared.payload == FanOutQueuePayload(T0 + 5, message.message_content).encode()
    assert prepared.group_id == message.message_content.group_id()
    reference = core.classify_configs(message.client_queue_configs, DOMAIN, service.fan_out.unseal)
    assert prepared.classified == reference
    assert [p.timestamp for p in await a.read_queue()] == []
    await service.enqueue_fan_out(fan_out([a.queue_config()]))
    assert [p.timestamp for p in await a.read_queue()] == [T0]
