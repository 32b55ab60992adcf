"""Application messages on the unlocked path (phx.delivery.express): checked against the cached state,
delivered in the QS's shared transactions under a guard on the group's row, else the locked path."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from phx.delivery.fanout import LocalQsSink
from phx.delivery.messages import Operation, SendMessageParams
from phx.delivery.service import DsService
from phx.delivery.store import GroupRow
from phx.errors import TokenError, WrongEpoch
from phx.mls.messages import MLSMessage
from phx.queuing.fanout import EnqueueResult, PreparedFanOut
from phx.queuing.messages import MessageContentType
from phx.queuing.service import QsService
from phx.storage import Connection, Database
from tests.auth.helpers import Client as AsClient
from tests.delivery.helpers import DOMAIN, Client, FakeClock, Harness, Redeeming
from tests.delivery.test_token_classes import as_service
from tests.queuing import helpers as qs_helpers


async def members(db: Database, n: int) -> tuple[Harness, QsService, list[Client], list[qs_helpers.Client]]:
    """A group of ``n`` clients, each with a real queue on the in-process QS."""
    qs = await qs_helpers.make_service(db)
    h = await Harness.start(db)
    h.service.sink = LocalQsSink(qs)
    queues = [await qs_helpers.register(qs) for _ in range(n)]
    clients = [Client.new(f"c{i}", q.queue_config()) for i, q in enumerate(queues)]
    await h.create(clients[0])
    await h.add(clients[0], *([c] for c in clients[1:]))
    return h, qs, clients, queues


def ciphertext(message: MLSMessage) -> bytes:
    assert message.private_message is not None
    return message.private_message.ciphertext


def texts(payloads: Sequence[object]) -> list[bytes]:
    """The application messages' ciphertexts, in queue order."""
    out = []
    for p in payloads:
        content = p.content  # type: ignore[attr-defined]
        if content.content_type == MessageContentType.APPLICATION:
            assert isinstance(content.body, MLSMessage) and content.body.private_message is not None
            out.append(content.body.private_message.ciphertext)
    return out


def count_locks(service: DsService) -> list[bytes]:
    calls: list[bytes] = []
    real = service.store.lock_group

    async def spy(conn: Connection, group_id: bytes) -> GroupRow | None:
        calls.append(group_id)
        return await real(conn, group_id)

    service.store.lock_group = spy  # type: ignore[method-assign]
    return calls


async def send(h: Harness, client: Client, text: bytes) -> MLSMessage:
    msg = client.g.send(text)
    await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(msg, h.ear_key), client)
    return msg


async def test_concurrent_application_messages_skip_the_group_lock(db: Database) -> None:
    h, qs, clients, queues = await members(db, 4)
    locks = count_locks(h.service)
    msgs = [(c, c.g.send(b"%d" % i)) for i in range(10) for c in clients]
    await asyncio.gather(
        *(h.as_member(Operation.SEND_MESSAGE, SendMessageParams(m, h.ear_key), c) for c, m in msgs)
    )
    assert locks == []
    for c, q in zip(clients, queues, strict=True):
        got = texts(await q.read_queue())
        assert sorted(got) == sorted(ciphertext(m) for s, m in msgs if s is not c)
        # each sender's messages arrive in the order it sent them
        for s in clients:
            mine = [ciphertext(m) for x, m in msgs if x is s]
            assert [t for t in got if t in mine] == ([] if s is c else mine)
        items = await qs.queue_items(q.cid)
        assert [i.sequence_number for i in items] == list(range(len(items)))


async def test_a_state_changed_elsewhere_takes_the_locked_path(db: Database) -> None:
    """Another DS instance commits: this instance's cached state is behind, its message for the old epoch is
    refused (the guard sees the row's new version), nothing is delivered."""
    h, qs, (alice, bob), (_, q_bob) = await members(db, 2)
    before = await send(h, alice, b"before")
    main = h.service
    other = await DsService.open(db, main.config, DOMAIN, sink=main.sink, redeemer=h.redeemer, clock=h.clock)
    h.service = other
    await h.update(bob)  # alice has not processed it: her next message is for the old epoch
    h.service = main
    locks = count_locks(main)
    stale = alice.g.send(b"stale")
    try:
        await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(stale, h.ear_key), alice)
        raise AssertionError("a message for the old epoch was accepted")
    except WrongEpoch:
        pass
    assert len(locks) == 1
    assert texts(await q_bob.read_queue()) == [ciphertext(before)]


async def test_a_pending_outbox_is_delivered_first(db: Database) -> None:
    """A commit whose hand-over to the QS failed waits in the DS outbox: the next application message must
    not overtake it."""
    h, qs, (alice, bob), (_, q_bob) = await members(db, 2)
    d = qs.fan_out
    real = d.enqueue_in
    fail = [True]

    async def flaky(conn: Connection, fan_outs: Sequence[PreparedFanOut]) -> EnqueueResult:
        if fail[0]:
            fail[0] = False
            raise RuntimeError("QS down")
        return await real(conn, fan_outs)

    d.enqueue_in = flaky  # type: ignore[method-assign]
    await h.update(alice, [bob])  # accepted; its fan-out stays in the outbox
    async with db.transaction() as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM ds_outbox") == 1
    await send(h, alice, b"after the commit")
    kinds = [p.content.content_type for p in await q_bob.read_queue()]
    assert kinds == [
        MessageContentType.WELCOME_BUNDLE,
        MessageContentType.COMMIT,
        MessageContentType.APPLICATION,
    ]


async def test_deleted_queues_reported_on_the_unlocked_path_become_removals(db: Database) -> None:
    h, qs, (alice, bob, _), (q_alice, _, q_carol) = await members(db, 3)
    async with db.transaction() as conn:
        await conn.execute("DELETE FROM qs_client_records WHERE client_id = $1", q_carol.cid.client_id.bytes)
    locks = count_locks(h.service)
    await send(h, alice, b"one")
    assert locks == []
    async with db.transaction() as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM ds_deleted_queues") == 1
    two = await send(h, bob, b"two")  # the locked path: the DS proposes carol's removal first
    assert len(locks) == 1
    payloads = await q_alice.read_queue()
    assert [p.content.content_type for p in payloads][-2:] == [
        MessageContentType.COMMIT,
        MessageContentType.APPLICATION,
    ]
    assert texts(payloads)[-1] == ciphertext(two)


async def test_a_message_behind_a_locked_request_waits_for_it_then_skips_the_lock(db: Database) -> None:
    """While a locked request has the group's state out of the cache, an application message waits for
    that request to end and then takes the unlocked path with the state it put back."""
    h, qs, (alice, bob), (_, q_bob) = await members(db, 2)
    service = h.service
    key = h.group_id.encode()
    locks = count_locks(service)
    msg = alice.g.send(b"behind")
    async with service._locks.hold(key):  # what a locked request does: take the state, work, put it back
        entry = service.cache.take(key, service.cache._items[key][0].version)
        assert entry is not None
        task = asyncio.ensure_future(
            h.as_member(Operation.SEND_MESSAGE, SendMessageParams(msg, h.ear_key), alice)
        )
        await asyncio.sleep(0.05)
        assert not task.done()
        service.cache.put(key, *entry)
    await task
    assert locks == []
    assert texts(await q_bob.read_queue()) == [ciphertext(msg)]


async def paying_members(db: Database, n: int) -> tuple[Harness, list[Client], list[qs_helpers.Client]]:
    """:func:`members` with the AS's real redeemer: every request spends a real Privacy Pass token."""
    auth = await as_service(db, DOMAIN, FakeClock())
    payer = await AsClient.new(auth).register(tokens=60)
    qs = await qs_helpers.make_service(db)
    h = await Harness.start(db, redeemer=Redeeming(auth.redeemer))
    h.tokens = lambda federated: payer.token()
    h.service.sink = LocalQsSink(qs)
    queues = [await qs_helpers.register(qs) for _ in range(n)]
    clients = [Client.new(f"c{i}", q.queue_config()) for i, q in enumerate(queues)]
    await h.create(clients[0])
    await h.add(clients[0], *([c] for c in clients[1:]))
    return h, clients, queues


async def spent_tokens(db: Database) -> int:
    async with db.transaction(readonly=True) as conn:
        return int(await conn.fetchval("SELECT COUNT(*) FROM pp_spent_tokens"))


async def test_the_token_is_spent_in_the_delivering_transaction_once(db: Database) -> None:
    """The unlocked path writes the request's token with the fan-out: it is spent, and a replay of the same
    request (alone, or twice at once) is refused and delivers nothing more."""
    h, (alice, bob), (_, q_bob) = await paying_members(db, 2)
    locks = count_locks(h.service)
    spent = await spent_tokens(db)
    assert h.tokens is not None
    msg = alice.g.send(b"once")
    token = h.tokens(False)
    params = SendMessageParams(msg, h.ear_key)
    await h.as_member(Operation.SEND_MESSAGE, params, alice, token=token)
    assert locks == []  # the unlocked path took it
    assert await spent_tokens(db) == spent + 1
    with pytest.raises(TokenError, match="already been spent"):
        await h.as_member(Operation.SEND_MESSAGE, params, alice, token=token)
    twice = SendMessageParams(alice.g.send(b"twice"), h.ear_key)
    token = h.tokens(False)
    results = await asyncio.gather(
        *(h.as_member(Operation.SEND_MESSAGE, twice, alice, token=token) for _ in range(2)),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["TokenError", "bytes"], results
    assert await spent_tokens(db) == spent + 2
    assert texts(await q_bob.read_queue()) == [ciphertext(msg), ciphertext(twice.application_message)]


async def test_a_message_that_fails_the_guard_spends_its_token_on_the_locked_path(db: Database) -> None:
    """The guard refuses a message checked against a state that changed since: its token is not written
    with the (refused) fan-out, so the locked path can spend it, once, and answer."""
    h, (alice, bob), (_, q_bob) = await paying_members(db, 2)
    main = h.service
    other = await DsService.open(db, main.config, DOMAIN, sink=main.sink, redeemer=h.redeemer, clock=h.clock)
    h.service = other
    update = await h.update(bob)  # another instance commits; main's cached state is one version behind
    h.service = main
    spent = await spent_tokens(db)
    locks = count_locks(main)
    with pytest.raises(WrongEpoch):
        await send(h, alice, b"stale")
    assert len(locks) == 1
    assert await spent_tokens(db) == spent + 1  # spent by the locked path, not twice
    alice.g.process(update.commit, now=h.now)
    after = await send(h, alice, b"after")
    assert await spent_tokens(db) == spent + 2
    assert texts(await q_bob.read_queue())[-1:] == [ciphertext(after)]
