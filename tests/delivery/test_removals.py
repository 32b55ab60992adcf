"""DS-induced removals (deleted queues, inactive clients), group expiry, and the outbox when the QS fails."""

from __future__ import annotations

import pytest

from phx.config import DsConfig
from phx.delivery.core import PendingProposals
from phx.delivery.messages import Operation, SendMessageParams
from phx.delivery.state import month_start, next_month
from phx.errors import NotFound, Unavailable, WrongEpoch
from phx.identifiers import Fqdn
from phx.mls.group_state import ProposalReceived
from phx.mls.messages import MLSMessage, Remove, SenderType
from phx.queuing.messages import MessageContentType, QueueDeleted
from phx.storage import Database
from tests.delivery.helpers import DOMAIN, Client, Harness, fan_out_targets

DAY = 86400


@pytest.fixture
async def h(db: Database) -> Harness:
    return await Harness.start(db)


async def three(h: Harness) -> tuple[Client, Client, Client]:
    alice, bob, carol = Client.new("alice"), Client.new("bob"), Client.new("carol")
    await h.create(alice)
    await h.add(alice, [bob], [carol])
    h.sink.take()
    return alice, bob, carol


def removal_of(message: MLSMessage) -> int:
    """The leaf an external (DS) Remove proposal removes."""
    pm = message.public_message
    assert pm is not None and pm.content.sender.sender_type == SenderType.EXTERNAL
    proposal = pm.content.proposal
    assert proposal is not None and isinstance(proposal.value, Remove)
    return proposal.value.removed


async def send(h: Harness, client: Client, text: bytes = b"m") -> None:
    await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(client.g.send(text), h.ear_key), client)


async def count(h: Harness, table: str) -> int:
    async with h.db.transaction(readonly=True) as conn:
        return int(await conn.fetchval(f"SELECT COUNT(*) FROM {table}"))


async def test_deleted_queue_becomes_a_removal_proposal(h: Harness) -> None:
    alice, bob, carol = await three(h)
    h.sink.deleted.add(carol.qc.encode())
    await send(h, alice)  # the QS answers: carol's queue is gone
    h.sink.take()
    async with h.db.transaction(readonly=True) as conn:
        (sealed,) = [bytes(r[0]) for r in await conn.fetch("SELECT sealed FROM ds_deleted_queues")]
    assert carol.qc.sealed_config.ciphertext not in sealed  # sealed under the QueueIdEncryptionKey
    h.sink.deleted.clear()
    # the next request decrypts the state: the DS proposes carol's removal to everybody, then relays bob's
    await send(h, bob, b"after")
    removal, message = h.sink.take()
    assert removal.message_content.content_type == MessageContentType.COMMIT
    assert fan_out_targets(removal) == {alice.qc.encode(), bob.qc.encode(), carol.qc.encode()}
    proposal = removal.message_content.body
    assert isinstance(proposal, MLSMessage) and removal_of(proposal) == carol.leaf
    assert message.message_content.content_type == MessageContentType.APPLICATION
    assert await count(h, "ds_deleted_queues") == 0
    for c in (alice, bob):
        assert isinstance(c.g.process(proposal, now=h.now), ProposalReceived)
    # the next commit must be an update that includes it
    with pytest.raises(PendingProposals):
        await h.as_member(Operation.ADD_USERS, h.add_params(alice, [[Client.new("dave")]]), alice)
    alice.g.clear_pending_commit()
    await h.update(bob, [alice])
    assert alice.g.member(carol.leaf) is None and alice.g.member_count == 2


async def test_queue_deleted_reports_from_federation(h: Harness) -> None:
    alice, bob, carol = await three(h)
    # a homeserver may only report its own queues gone
    await h.service.queue_deleted([QueueDeleted(carol.qc, h.group_id)], source=Fqdn("other.example"))
    assert await count(h, "ds_deleted_queues") == 0
    await h.service.queue_deleted([QueueDeleted(bob.qc, h.group_id)], source=DOMAIN)
    await send(h, carol)
    removal, _ = h.sink.take()
    assert isinstance(removal.message_content.body, MLSMessage)
    assert removal_of(removal.message_content.body) == bob.leaf


async def test_inactive_clients_are_proposed_for_removal(h: Harness) -> None:
    alice, bob, carol = await three(h)
    config = DsConfig()
    h.clock.now += 60 * DAY
    await h.update(alice, [bob, carol])
    await h.update(bob, [alice, carol])
    h.sink.take()
    # carol was added in January and never committed: due after the end of January + 90 days
    due = next_month(month_start(h.now - 60 * DAY)) + config.max_client_inactivity
    h.clock.now = due - 1
    await send(h, alice)
    assert len(h.sink.take()) == 1  # nobody is due yet
    h.clock.now = due
    # the removal is stored even though this request (an add) is refused because of it
    with pytest.raises(PendingProposals):
        await h.as_member(Operation.ADD_USERS, h.add_params(alice, [[Client.new("dave")]]), alice)
    alice.g.clear_pending_commit()
    (removal,) = h.sink.take()
    proposal = removal.message_content.body
    assert isinstance(proposal, MLSMessage) and removal_of(proposal) == carol.leaf
    await send(h, bob)
    assert len(h.sink.take()) == 1  # proposed once per epoch, not on every request
    for c in (alice, bob):
        c.g.process(proposal, now=h.now)
    await h.update(alice, [bob])
    assert alice.g.member(carol.leaf) is None


async def test_unused_groups_and_lapsed_reservations_expire(h: Harness) -> None:
    alice = Client.new("alice")
    await h.create(alice)
    expiry = DsConfig().group_expiry
    await h.call(Operation.REQUEST_GROUP_ID, None)  # a reservation nobody uses
    last_use = month_start(h.now)
    h.clock.now = next_month(last_use) + expiry - 1
    assert await h.service.expire(h.now) == (0, 1)
    await send(h, alice)  # messages do not count as use
    h.clock.now += 1
    assert await h.service.expire(h.now) == (1, 0)
    with pytest.raises(NotFound):
        await send(h, alice)


async def test_outbox_keeps_commits_when_the_qs_is_down(h: Harness) -> None:
    alice, bob, carol = await three(h)
    h.sink.fail = True
    params = await h.update(alice)  # accepted and stored, but not handed to the QS yet
    assert await count(h, "ds_outbox") == 1
    with pytest.raises(Unavailable):  # an application message cannot overtake it
        await send(h, alice)
    h.sink.fail = False
    # bob, who missed the commit, is refused, but his request hands the commit over
    with pytest.raises(WrongEpoch):
        await send(h, bob)
    (commit,) = h.sink.take()
    assert commit.message_content.body == params.commit
    assert fan_out_targets(commit) == {bob.qc.encode(), carol.qc.encode()}
    assert await count(h, "ds_outbox") == 0
    for c in (bob, carol):
        c.g.process(params.commit, now=h.now)
    await send(h, bob, b"now")
    (message,) = h.sink.take()
    assert message.message_content.content_type == MessageContentType.APPLICATION
