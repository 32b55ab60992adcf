"""Every DS endpoint in a group's life, against real client groups, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from phx.delivery.messages import (
    DeleteGroupParams,
    DsSenderId,
    ExternalCommitInfoParams,
    ExternalCommitInfoResponse,
    JoinConnectionGroupParams,
    JoinConnectionGroupParamsAad,
    MemberCredential,
    Operation,
    RemoveUsersParams,
    ResyncClientParams,
    SelfRemoveUserParams,
    SendMessageParams,
    UpdateQueueInfoParams,
    WelcomeInfoParams,
    WelcomeInfoResponse,
    decrypt_ear_key,
)
from phx.errors import AuthError, NotFound
from phx.mls.group import Group
from phx.mls.group_state import ApplicationMessage, CommitApplied, ProposalReceived
from phx.mls.messages import MLSMessage
from phx.queuing.messages import MessageContentType, WelcomeBundle
from phx.storage import Database
from tests.delivery.helpers import (
    CAPS,
    Client,
    Harness,
    fan_out_targets,
    pending_gi_update,
    random_queue_config,
)


@pytest.fixture
async def h(db: Database) -> Harness:
    return await Harness.start(db)


def creds(*items: tuple[int, str]) -> tuple[MemberCredential, ...]:
    return tuple(MemberCredential(leaf, f"cred:{name}".encode()) for leaf, name in items)


async def external_info(h: Harness, client: Client) -> ExternalCommitInfoResponse:
    params = ExternalCommitInfoParams(h.group_id, h.ear_key)
    return ExternalCommitInfoResponse.decode(
        await h.as_member(Operation.EXTERNAL_COMMIT_INFO, params, client)
    )


async def test_create_add_message_update(h: Harness) -> None:
    alice, bob, carol = Client.new("alice"), Client.new("bob"), Client.new("carol")
    await h.create(alice)
    params = await h.add(alice, [bob], [carol])
    out = h.sink.take()
    # the commit had no one to go to (alice is the only old member); one WelcomeBundle per joiner
    assert [m.message_content.content_type for m in out] == [MessageContentType.WELCOME_BUNDLE] * 2
    for msg, joiner in zip(out, (bob, carol), strict=True):
        assert fan_out_targets(msg) == {joiner.qc.encode()}
        bundle = msg.message_content.body
        assert isinstance(bundle, WelcomeBundle) and bundle.group_id == h.group_id
        assert bundle.encrypted_welcome_attribution_info == f"wai:{joiner.name}".encode()
        assert joiner.bundle is not None
        ear = decrypt_ear_key(
            joiner.bundle.init_private_key, h.group_id, bundle.encrypted_group_state_ear_key
        )
        assert ear == h.ear_key
    # welcome information for the joiner, authenticated by its KeyPackage
    wi = WelcomeInfoResponse.decode(
        await h.call(
            Operation.WELCOME_INFO, WelcomeInfoParams(h.group_id, h.ear_key, 1), bob.sig_priv,
            DsSenderId.key_package(bob.kp_ref()),
        )
    )  # fmt: skip
    assert wi.public_tree == alice.g.tree.encode()
    assert wi.credential_chains == creds((0, "alice"), (1, "bob"), (2, "carol"))
    assert params.welcome.welcome is not None
    # an application message goes to everybody but its sender
    hello = bob.g.send(b"hello")
    await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(hello, h.ear_key), bob)
    (fan,) = h.sink.take()
    assert fan.message_content.content_type == MessageContentType.APPLICATION
    assert fan_out_targets(fan) == {alice.qc.encode(), carol.qc.encode()}
    got = carol.g.process(fan.message_content.body, now=h.now)  # type: ignore[arg-type]
    assert isinstance(got, ApplicationMessage) and got.data == b"hello"
    # bob updates: the commit reaches alice and carol; bob's pending join is done
    await h.update(bob, [alice, carol])
    (fan,) = h.sink.take()
    assert fan_out_targets(fan) == {alice.qc.encode(), carol.qc.encode()}
    with pytest.raises(Exception, match="not added|no pending join"):
        await h.call(
            Operation.WELCOME_INFO, WelcomeInfoParams(h.group_id, h.ear_key, 1), bob.sig_priv,
            DsSenderId.key_package(bob.kp_ref()),
        )  # fmt: skip
    # carol can still fetch hers
    await h.call(
        Operation.WELCOME_INFO, WelcomeInfoParams(h.group_id, h.ear_key, 1), carol.sig_priv,
        DsSenderId.key_package(carol.kp_ref()),
    )  # fmt: skip
    assert alice.g.epoch == bob.g.epoch == carol.g.epoch == 2
    assert await past_states(h) == [1]
    await h.update(carol, [alice, bob])  # the last joiner of epoch 1 updated: its past state goes
    assert await past_states(h) == []
    with pytest.raises(AuthError):
        await h.call(
            Operation.WELCOME_INFO, WelcomeInfoParams(h.group_id, h.ear_key, 1), carol.sig_priv,
            DsSenderId.key_package(carol.kp_ref()),
        )  # fmt: skip


async def past_states(h: Harness) -> list[int]:
    async with h.db.transaction(readonly=True) as conn:
        return [int(r[0]) for r in await conn.fetch("SELECT epoch FROM ds_past_states ORDER BY epoch")]


async def test_past_states_expire_with_the_key_packages(h: Harness) -> None:
    alice, bob, carol = Client.new("alice"), Client.new("bob"), Client.new("carol")
    await h.create(alice)
    await h.add(alice, [bob])
    await h.add(alice, [carol])
    assert await past_states(h) == [1, 2]
    ends = [c.bundle.key_package.leaf_node.lifetime for c in (bob, carol) if c.bundle is not None]
    h.clock.now = max(lt.not_after for lt in ends if lt is not None) + 1
    await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(alice.g.send(b"x"), h.ear_key), alice)
    assert await past_states(h) == []


async def test_queue_info_remove_and_delete(h: Harness) -> None:
    alice, bob, carol, dave = (Client.new(n) for n in ("alice", "bob", "carol", "dave"))
    await h.create(alice)
    await h.add(alice, [bob], [carol, dave])  # carol and dave: two clients of one user
    h.sink.take()
    new_qc = random_queue_config()
    await h.as_member(Operation.UPDATE_QUEUE_INFO, UpdateQueueInfoParams(h.group_id, h.ear_key, new_qc), bob)
    msg = alice.g.send(b"x")
    await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(msg, h.ear_key), alice)
    (fan,) = h.sink.take()
    assert new_qc.encode() in fan_out_targets(fan) and bob.qc.encode() not in fan_out_targets(fan)
    # alice removes the user of carol and dave
    res = alice.g.commit(now=h.now, remove=[carol.leaf, dave.leaf])
    params = RemoveUsersParams(res.commit, h.ear_key, pending_gi_update(alice.g))
    await h.as_member(Operation.REMOVE_USERS, params, alice)
    alice.g.merge_pending_commit()
    (fan,) = h.sink.take()
    assert fan_out_targets(fan) == {new_qc.encode(), carol.qc.encode(), dave.qc.encode()}  # removed ones too
    bob.g.process(res.commit, now=h.now)
    # delete: alice removes bob, then the group is gone
    res = alice.g.commit(now=h.now, remove=[bob.leaf])
    await h.as_member(Operation.DELETE_GROUP, DeleteGroupParams(res.commit, h.ear_key), alice)
    (fan,) = h.sink.take()
    assert fan_out_targets(fan) == {new_qc.encode()}
    with pytest.raises(NotFound):
        await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(alice.g.send(b"?"), h.ear_key), alice)


async def test_self_remove_then_update_commits_it(h: Harness) -> None:
    alice, bob, bob2 = Client.new("alice"), Client.new("bob"), Client.new("bob2")
    await h.create(alice)
    await h.add(alice, [bob, bob2])
    h.sink.take()
    prop = bob.g.propose_remove(bob2.leaf, now=h.now)
    await h.as_member(Operation.SELF_REMOVE_USER, SelfRemoveUserParams(prop.message, h.ear_key), bob)
    (fan,) = h.sink.take()
    assert fan_out_targets(fan) == {alice.qc.encode(), bob2.qc.encode()}
    got = alice.g.process(prop.message, now=h.now)
    assert isinstance(got, ProposalReceived)
    # alice's update commits the stored Remove
    await h.update(alice, [bob])
    assert alice.g.member(bob2.leaf) is None and bob.g.member(bob2.leaf) is None


async def test_external_commit_info_connection_group_and_resync(h: Harness) -> None:
    alice, bob, carol = Client.new("alice"), Client.new("bob"), Client.new("carol")
    await h.create(alice)
    info = ExternalCommitInfoResponse.decode(
        await h.as_member(
            Operation.EXTERNAL_COMMIT_INFO, ExternalCommitInfoParams(h.group_id, h.ear_key), alice
        )
    )
    assert info.public_tree == alice.g.tree.encode()
    assert info.credential_chains == (MemberCredential(0, b"cred:alice"),)
    # bob joins the connection group by external commit, knowing only the EAR key
    aad = JoinConnectionGroupParamsAad(b"cred:bob").encode()
    bob.group, commit = Group.join_external(
        info.group_info, bob.credential, bob.sig_priv, now=h.now, ratchet_tree=info.public_tree,
        capabilities=CAPS, authenticated_data=aad,
    )  # fmt: skip
    params = JoinConnectionGroupParams(commit, h.ear_key, pending_gi_update(bob.g), bob.qc)
    await h.call(Operation.JOIN_CONNECTION_GROUP, params)
    bob.g.merge_pending_commit()
    (fan,) = h.sink.take()
    assert fan_out_targets(fan) == {alice.qc.encode()}
    assert isinstance(alice.g.process(commit, now=h.now), CommitApplied)
    # with two users, nobody else can join
    info = ExternalCommitInfoResponse.decode(
        await h.as_member(
            Operation.EXTERNAL_COMMIT_INFO, ExternalCommitInfoParams(h.group_id, h.ear_key), bob
        )
    )
    assert info.credential_chains == creds((0, "alice"), (1, "bob"))
    carol.group, commit = Group.join_external(
        info.group_info, carol.credential, carol.sig_priv, now=h.now, ratchet_tree=info.public_tree,
        capabilities=CAPS, authenticated_data=JoinConnectionGroupParamsAad(b"c").encode(),
    )  # fmt: skip
    with pytest.raises(Exception, match="single user"):
        await h.call(
            Operation.JOIN_CONNECTION_GROUP,
            JoinConnectionGroupParams(commit, h.ear_key, pending_gi_update(carol.g), carol.qc),
        )
    # bob lost its state and resyncs: same credential, a new leaf, the same queue and credential info
    old_leaf = bob.leaf
    bob.group, commit = Group.join_external(
        info.group_info, bob.credential, bob.sig_priv, now=h.now, ratchet_tree=info.public_tree,
        capabilities=CAPS, remove=old_leaf,
    )  # fmt: skip
    params2 = ResyncClientParams(commit, h.ear_key, pending_gi_update(bob.g))
    await h.call(Operation.RESYNC_CLIENT, params2, bob.sig_priv, DsSenderId.leaf(old_leaf))
    bob.g.merge_pending_commit()
    (fan,) = h.sink.take()
    assert fan_out_targets(fan) == {alice.qc.encode()}
    alice.g.process(commit, now=h.now)
    msg = alice.g.send(b"after resync")
    await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(msg, h.ear_key), alice)
    (fan,) = h.sink.take()
    assert fan_out_targets(fan) == {bob.qc.encode()}
    assert isinstance(bob.g.process(MLSMessage.decode(msg.encode()), now=h.now), ApplicationMessage)
    info = ExternalCommitInfoResponse.decode(
        await h.as_member(
            Operation.EXTERNAL_COMMIT_INFO, ExternalCommitInfoParams(h.group_id, h.ear_key), bob
        )
    )
    assert info.credential_chains == (
        MemberCredential(0, b"cred:alice"),
        MemberCredential(bob.leaf, b"cred:bob"),
    )
