"""The client group: creation, every proposal kind by value and by reference, commits with and without
path, external commits, PSKs, ReInit/branch, Welcome variants, and application messages."""

from __future__ import annotations

from dataclasses import replace

import pytest

from phx.errors import MlsError, SignatureError, WrongEpoch
from phx.mls.group import Group
from phx.mls.group_join import new_member_add_proposal
from phx.mls.group_state import (
    ApplicationMessage,
    CommitApplied,
    GroupConfig,
    GroupStatus,
    ProposalReceived,
)
from phx.mls.key_package import default_capabilities
from phx.mls.messages import (
    Add,
    Extension,
    ExtensionType,
    MLSMessage,
    PreSharedKeyID,
    ResumptionPSKUsage,
    WireFormat,
    find_extension,
)
from phx.mls.welcome import UnknownPsk, verify_group_info_signature
from tests.mls.test_group_helpers import CS, NOW, assert_in_sync, client, commit_all, deliver, make_group


def _commit_path(result_commit: MLSMessage) -> bool:
    pm = result_commit.public_message
    assert pm is not None and pm.content.commit is not None
    return pm.content.commit.path is not None


def test_create_one_member_group() -> None:
    alice = client("alice").create_group()
    assert alice.epoch == 0
    assert alice.member_count == 1
    assert alice.leaf_index == 0
    assert alice.status == GroupStatus.ACTIVE
    assert len(alice.group_id) == CS.nh
    gi = alice.group_info().group_info
    assert gi is not None
    verify_group_info_signature(CS, gi, alice.own_leaf.signature_key)
    assert gi.group_context == alice.context


def test_two_members_exchange_messages_both_ways() -> None:
    _, (a, b) = make_group(2)
    assert_in_sync([a, b])
    out = b.process(a.send(b"hello bob", authenticated_data=b"ad").encode(), now=NOW)
    assert out == ApplicationMessage(0, b"hello bob", b"ad", a.epoch)
    out = a.process(b.send(b"hi alice").encode(), now=NOW)
    assert isinstance(out, ApplicationMessage) and out.sender == 1 and out.data == b"hi alice"


def test_add_commit_without_path_and_with_path() -> None:
    alice = client("alice").create_group()
    bob_kp = client("bob").key_package()
    result = alice.commit(now=NOW, add=[bob_kp.key_package])
    assert not _commit_path(result.commit)
    alice.merge_pending_commit()
    bob = Group.join_from_welcome(result.welcome, bob_kp, now=NOW)  # type: ignore[arg-type]
    carol_kp = client("carol").key_package()
    result, applied = commit_all(alice, [bob], add=[carol_kp.key_package], path=True)
    assert _commit_path(result.commit)
    carol = Group.join_from_welcome(result.welcome, carol_kp, now=NOW)  # type: ignore[arg-type]
    assert [m.leaf_index for m in applied.added] == [2]
    assert_in_sync([alice, bob, carol])


def test_three_members_every_proposal_by_reference() -> None:
    _, (a, b, c) = make_group(3)
    # Add by reference: b proposes, a commits.
    dave_kp = client("dave").key_package()
    p = b.propose_add(dave_kp.key_package, now=NOW)
    outs = deliver(p.message, [a, c])
    assert all(isinstance(o, ProposalReceived) and o.ref == p.ref for o in outs)
    result, applied = commit_all(a, [b, c])
    assert [m.credential.identity for m in applied.added] == [b"dave"]
    d = Group.join_from_welcome(result.welcome, dave_kp, now=NOW)  # type: ignore[arg-type]
    assert_in_sync([a, b, c, d])
    # Update by reference: c proposes, b commits; c's own leaf key changes.
    old_key = c.own_leaf.encryption_key
    p = c.propose_update(now=NOW)
    deliver(p.message, [a, b, d])
    _, applied = commit_all(b, [a, c, d])
    assert applied.updated == (2,)
    assert c.own_leaf.encryption_key != old_key
    assert_in_sync([a, b, c, d])
    # Remove by reference: d proposes removing a, c commits.
    p = d.propose_remove(0, now=NOW)
    deliver(p.message, [a, b, c])
    result = c.commit(now=NOW)
    out_a, out_b, out_d = deliver(result.commit, [a, b, d])
    c.merge_pending_commit()
    assert isinstance(out_a, CommitApplied) and out_a.removed_self
    assert a.status == GroupStatus.REMOVED
    assert isinstance(out_b, CommitApplied) and [m.leaf_index for m in out_b.removed] == [0]
    assert_in_sync([b, c, d])
    with pytest.raises(MlsError):
        a.send(b"too late")
    # Messages keep flowing among the rest, both wire formats of handshakes.
    assert deliver(b.send(b"x"), [c, d])[0] == ApplicationMessage(1, b"x", b"", b.epoch)


def test_every_proposal_kind_by_value() -> None:
    psks = {b"ext": b"s" * 32}
    _, (a, b, c) = make_group(3, psk_store=psks)
    for g in (b, c):
        g.psk_store = psks
    carol_kp = client("erin").key_package()
    exts = [Extension(ExtensionType.APPLICATION_ID, b"\x03app")]
    result, applied = commit_all(
        a, [b, c], add=[carol_kp.key_package], remove=[2], psks=[b"ext"], group_context_extensions=exts
    )
    assert _commit_path(result.commit)
    assert applied.extensions_changed and applied.removed[0].leaf_index == 2
    assert c.status == GroupStatus.REMOVED
    e = Group.join_from_welcome(result.welcome, carol_kp, now=NOW, psk_store=psks)  # type: ignore[arg-type]
    assert a.extensions == tuple(exts)
    assert_in_sync([a, b, e])
    assert e.leaf_index == 2


def test_own_update_proposal_is_not_committed_by_self_and_path_refreshes() -> None:
    _, (a, b) = make_group(2)
    p = a.propose_update(now=NOW)
    deliver(p.message, [b])
    result, applied = commit_all(a, [b])
    assert applied.proposals == ()
    assert _commit_path(result.commit)
    assert_in_sync([a, b])


def test_private_and_public_handshake_per_call() -> None:
    _, (a, b, c) = make_group(3)
    p = b.propose_update(now=NOW, wire_format=WireFormat.PRIVATE_MESSAGE)
    assert p.message.private_message is not None
    deliver(p.message, [a, c])
    result = a.commit(now=NOW, wire_format=WireFormat.PRIVATE_MESSAGE)
    assert result.commit.private_message is not None
    deliver(result.commit, [b, c])
    a.merge_pending_commit()
    assert_in_sync([a, b, c])
    result, _ = commit_all(c, [a, b], wire_format=WireFormat.PUBLIC_MESSAGE)
    assert result.commit.public_message is not None
    assert_in_sync([a, b, c])


def test_private_handshake_by_default_config() -> None:
    cfg = GroupConfig(handshake_wire_format=WireFormat.PRIVATE_MESSAGE)
    alice = client("alice").create_group(config=cfg)
    result = alice.commit(now=NOW)
    assert result.commit.private_message is not None


def test_pending_commit_takes_effect_only_when_merged() -> None:
    _, (a, b) = make_group(2)
    result = a.commit(now=NOW)
    assert a.epoch == 1 and a.pending_commit == result
    with pytest.raises(MlsError):
        a.commit(now=NOW)
    a.send(b"still in epoch 1")
    a.clear_pending_commit()
    assert a.pending_commit is None
    # b's competing commit wins at the DS; a processes it.
    commit_all(b, [a])
    assert_in_sync([a, b])
    with pytest.raises(MlsError):
        a.merge_pending_commit()


def test_pending_epoch_group_info_is_what_the_new_epoch_signs() -> None:
    _, (a, b) = make_group(2)
    with pytest.raises(MlsError, match="no pending commit"):
        a.pending_group_info()
    with pytest.raises(MlsError, match="no pending commit"):
        _ = a.pending_context
    a.commit(now=NOW, path=True)
    pending = a.pending_group_info()
    assert a.pending_context.epoch == a.epoch + 1 == pending.group_context.epoch
    assert pending.group_context == a.pending_context
    a.merge_pending_commit()
    current = a.group_info(ratchet_tree=False, external_pub=True).group_info
    assert current is not None
    assert current.group_context == pending.group_context
    verify_group_info_signature(CS, pending, a.own_leaf.signature_key)  # raises if not signed by a


def test_received_commit_discards_our_pending_commit() -> None:
    _, (a, b) = make_group(2)
    a.commit(now=NOW)
    commit_all(b, [a])
    assert a.pending_commit is None
    assert_in_sync([a, b])


def test_external_psk_and_unknown_psk() -> None:
    psks = {b"k1": b"\x01" * 32}
    _, (a, b) = make_group(2, psk_store=psks)
    b.psk_store = psks
    p = b.propose_psk(b"k1", now=NOW)
    deliver(p.message, [a])
    _, applied = commit_all(a, [b])
    assert len(applied.proposals) == 1
    assert_in_sync([a, b])
    # Only a knows k2: b cannot follow and stays where it was.
    a.psk_store = {**psks, b"k2": b"\x02" * 32}
    result = a.commit(now=NOW, psks=[b"k2"])
    before = b.epoch_authenticator
    with pytest.raises(UnknownPsk):
        b.process(result.commit, now=NOW)
    assert b.epoch_authenticator == before
    a.clear_pending_commit()
    with pytest.raises(UnknownPsk):
        a.commit(now=NOW, psks=[b"nope"])
    assert a.pending_commit is None


def test_resumption_psk_within_window() -> None:
    cfg = GroupConfig(resumption_psk_epochs=2)
    _, (a, b) = make_group(2, config=cfg)
    b.config = cfg
    for _ in range(2):
        commit_all(a, [b])
    psk = PreSharedKeyID.resumption(ResumptionPSKUsage.APPLICATION, a.group_id, a.epoch - 1, CS.random())
    commit_all(b, [a], psks=[psk])
    assert_in_sync([a, b])
    old = PreSharedKeyID.resumption(ResumptionPSKUsage.APPLICATION, a.group_id, 0, CS.random())
    assert a.resumption_psk(0) is None
    with pytest.raises(UnknownPsk):
        a.commit(now=NOW, psks=[old])


def test_group_context_extensions_and_external_sender_proposal() -> None:
    from phx.mls.framing import FramingContext, authenticate, protect_public
    from phx.mls.messages import (
        ExternalSender,
        FramedContent,
        Proposal,
        Remove,
        Sender,
        make_external_senders_extension,
    )

    _, (a, b, c) = make_group(3)
    ds_priv, ds_pub = CS.generate_signature_key_pair()
    ext = make_external_senders_extension([ExternalSender(ds_pub, client("ds").credential)])
    p = b.propose_group_context_extensions([ext], now=NOW)
    deliver(p.message, [a, c])
    _, applied = commit_all(a, [b, c])
    assert applied.extensions_changed
    assert find_extension(c.extensions, ExtensionType.EXTERNAL_SENDERS) == ext
    # The external sender (e.g. the DS) proposes removing c.
    content = FramedContent(a.group_id, a.epoch, Sender.external(0), b"", Proposal(Remove(2)))
    ctx = FramingContext(CS, a.context)
    auth = authenticate(ctx, content, ds_priv, wire_format=WireFormat.PUBLIC_MESSAGE)
    msg = MLSMessage(protect_public(ctx, auth))
    outs = deliver(msg, [a, b, c])
    assert all(isinstance(o, ProposalReceived) and o.sender == Sender.external(0) for o in outs)
    result = b.commit(now=NOW)
    deliver(result.commit, [a, c])
    b.merge_pending_commit()
    assert c.status == GroupStatus.REMOVED
    assert_in_sync([a, b])


def test_external_join_and_resync() -> None:
    clients, (a, b) = make_group(2)
    carol = client("carol")
    gi = a.group_info()
    c, message = Group.join_external(gi.encode(), carol.credential, carol.signature_private_key, now=NOW)
    assert c.status == GroupStatus.EXTERNAL_JOIN_PENDING
    with pytest.raises(MlsError):
        c.send(b"not yet")
    outs = deliver(message, [a, b])
    assert all(isinstance(o, CommitApplied) and o.external and o.committer == 2 for o in outs)
    applied = c.merge_pending_commit()
    assert applied.external and c.is_active
    assert_in_sync([a, b, c])
    assert deliver(c.send(b"hi"), [a, b])[0] == ApplicationMessage(2, b"hi", b"", a.epoch)
    # b lost its state: it rejoins externally, removing its old leaf.
    bob = clients[1]
    b2, message = Group.join_external(
        a.group_info(), bob.credential, bob.signature_private_key, now=NOW, remove=1
    )
    outs = deliver(message, [a, c])
    assert all(isinstance(o, CommitApplied) and [m.leaf_index for m in o.removed] == [1] for o in outs)
    b2.merge_pending_commit()
    assert b2.leaf_index == 1
    assert_in_sync([a, b2, c])


def test_external_join_needs_external_pub() -> None:
    _, (a,) = make_group(1)
    carol = client("carol")
    with pytest.raises(MlsError, match="external_pub"):
        Group.join_external(
            a.group_info(external_pub=False), carol.credential, carol.signature_private_key, now=NOW
        )


def test_welcome_with_tree_out_of_band() -> None:
    alice = client("alice").create_group(config=GroupConfig(ratchet_tree_in_welcome=False))
    bob_kp = client("bob").key_package()
    result = alice.commit(now=NOW, add=[bob_kp.key_package])
    alice.merge_pending_commit()
    with pytest.raises(MlsError, match="no ratchet tree"):
        Group.join_from_welcome(result.welcome, bob_kp, now=NOW)  # type: ignore[arg-type]
    bob = Group.join_from_welcome(result.welcome, bob_kp, now=NOW, ratchet_tree=alice.tree.encode())  # type: ignore[arg-type]
    assert_in_sync([alice, bob])


def test_welcome_for_several_members_with_path_secrets() -> None:
    _, groups = make_group(2)
    a = groups[0]
    bundles = [client(f"new{i}").key_package() for i in range(5)]
    result, _ = commit_all(a, groups[1:], add=[x.key_package for x in bundles], path=True)
    joined = [Group.join_from_welcome(result.welcome, x, now=NOW) for x in bundles]  # type: ignore[arg-type]
    everyone = groups + joined
    assert_in_sync(everyone)
    # Every joiner holds private keys up its path: a commit from one reaches all.
    commit_all(joined[3], [g for g in everyone if g is not joined[3]])
    assert_in_sync(everyone)


def test_commit_group_info_output() -> None:
    _, (a, b) = make_group(2)
    result, _ = commit_all(a, [b], group_info=True)
    assert result.group_info is not None and result.group_info.group_info is not None
    gi = result.group_info.group_info
    assert gi.group_context == a.context
    assert find_extension(gi.extensions, ExtensionType.EXTERNAL_PUB) is not None


def test_reinit_and_recreate() -> None:
    _, (a, b, c) = make_group(3)
    p = a.propose_reinit(now=NOW, group_id=b"new-group-id")
    deliver(p.message, [b, c])
    result = b.commit(now=NOW)
    outs = deliver(result.commit, [a, c])
    applied = b.merge_pending_commit()
    assert applied.reinit is not None and all(isinstance(o, CommitApplied) and o.reinit for o in outs)
    assert b.status == GroupStatus.REINIT
    with pytest.raises(MlsError):
        b.send(b"frozen")
    kps = {g.leaf_index: client(f"again{g.leaf_index}").key_package() for g in (a, c)}
    new_b, result = b.recreate([kp.key_package for kp in kps.values()], now=NOW)
    new_b.merge_pending_commit()
    assert new_b.group_id == b"new-group-id" and new_b.epoch == 1
    new_a = Group.join_from_welcome(result.welcome, kps[0], now=NOW, reinit_from=a)  # type: ignore[arg-type]
    new_c = Group.join_from_welcome(result.welcome, kps[2], now=NOW, reinit_from=c)  # type: ignore[arg-type]
    assert_in_sync([new_a, new_b, new_c])
    # Without the old group the resumption PSK is unknown.
    with pytest.raises(UnknownPsk):
        Group.join_from_welcome(result.welcome, kps[0], now=NOW)  # type: ignore[arg-type]


def test_branch() -> None:
    _, (a, b, c) = make_group(3)
    kp = client("b-again").key_package()
    sub, result = a.recreate([kp.key_package], now=NOW, branch=True, group_id=b"sub")
    sub.merge_pending_commit()
    new_b = Group.join_from_welcome(result.welcome, kp, now=NOW, reinit_from=b)  # type: ignore[arg-type]
    assert_in_sync([sub, new_b])
    assert a.status == GroupStatus.ACTIVE and sub.member_count == 2
    del c


def test_out_of_order_application_messages() -> None:
    _, (a, b) = make_group(2)
    msgs = [a.send(f"m{i}".encode()) for i in range(6)]
    got = [b.process(m, now=NOW) for m in reversed(msgs)]
    assert [o.data for o in got if isinstance(o, ApplicationMessage)] == [
        f"m{i}".encode() for i in range(5, -1, -1)
    ]


def test_exporter_and_padding() -> None:
    _, (a, b) = make_group(2, config=GroupConfig(padding_block=64))
    assert a.export_secret(b"label", b"ctx", 16) == b.export_secret(b"label", b"ctx", 16)
    assert a.export_secret(b"label", b"ctx", 16) != a.export_secret(b"other", b"ctx", 16)
    m1, m2 = a.send(b"x"), a.send(b"y" * 50)
    assert m1.private_message is not None and m2.private_message is not None
    assert len(m1.private_message.ciphertext) == len(m2.private_message.ciphertext)
    assert b.process(m2, now=NOW) == ApplicationMessage(0, b"y" * 50, b"", a.epoch)


def test_credential_validator_is_consulted() -> None:
    seen: list[bytes] = []

    def validator(cred: object, key: bytes) -> None:
        identity = getattr(cred, "identity", b"")
        seen.append(identity)
        if identity == b"mallory":
            raise MlsError("not allowed")

    alice = client("alice").create_group(credential_validator=validator)
    with pytest.raises(MlsError, match="not allowed"):
        alice.commit(now=NOW, add=[client("mallory").key_package().key_package])
    alice.commit(now=NOW, add=[client("bob").key_package().key_package])
    assert b"bob" in seen and b"alice" in seen


def test_add_proposal_from_member_is_stored() -> None:
    _, (a, b) = make_group(2)
    p = b.propose_add(client("x").key_package().key_package, now=NOW)
    out = a.process(p.message, now=NOW)
    assert isinstance(out, ProposalReceived) and isinstance(out.proposal.value, Add)


def test_late_application_message_from_a_kept_past_epoch() -> None:
    cfg = GroupConfig(max_past_epochs=1)
    a = client("alice").create_group(config=cfg)
    bob_kp = client("bob").key_package()
    result = a.commit(now=NOW, add=[bob_kp.key_package])
    a.merge_pending_commit()
    b = Group.join_from_welcome(result.welcome, bob_kp, now=NOW, config=cfg)  # type: ignore[arg-type]
    late = a.send(b"sent before the commit")
    older = a.send(b"two epochs old")
    commit_all(b, [a])
    assert b.process(late, now=NOW) == ApplicationMessage(0, b"sent before the commit", b"", 1)
    commit_all(b, [a])
    with pytest.raises(WrongEpoch):
        b.process(older, now=NOW)
    # Without the setting, the same situation is a WrongEpoch.
    _, (x, y) = make_group(2)
    stale = x.send(b"late")
    commit_all(y, [x])
    with pytest.raises(WrongEpoch):
        y.process(stale, now=NOW)


def test_own_commit_relayed_back_merges_it() -> None:
    _, (a, b) = make_group(2)
    result = a.commit(now=NOW)
    deliver(result.commit, [b])
    out = a.process(result.commit.encode(), now=NOW)
    assert isinstance(out, CommitApplied) and a.pending_commit is None
    assert_in_sync([a, b])


def test_commit_with_new_leaf_extensions() -> None:
    ext = Extension(0xF0F0, b"profile")
    caps = default_capabilities(CS, 1, extensions=[0xF0F0])
    alice, bob = client("alice"), client("bob")
    a = alice.create_group(capabilities=caps)
    bob_kp = bob.key_package(capabilities=caps)
    result = a.commit(now=NOW, add=[bob_kp.key_package])
    a.merge_pending_commit()
    b = Group.join_from_welcome(result.welcome, bob_kp, now=NOW)  # type: ignore[arg-type]
    commit_all(b, [a], leaf_extensions=[ext])
    assert a.member(1) is not None and b.own_leaf.extensions == (ext,)
    assert_in_sync([a, b])


def test_new_member_proposal_then_welcome() -> None:
    _, (a, b) = make_group(2)
    carol_kp = client("carol").key_package()
    gi = a.group_info().group_info
    assert gi is not None
    msg = new_member_add_proposal(gi, carol_kp)
    outs = deliver(msg, [a, b])
    assert all(isinstance(o, ProposalReceived) and o.sender.sender_type == 3 for o in outs)
    result, applied = commit_all(b, [a])
    assert [m.credential.identity for m in applied.added] == [b"carol"]
    c = Group.join_from_welcome(result.welcome, carol_kp, now=NOW)  # type: ignore[arg-type]
    assert_in_sync([a, b, c])
    # A new_member_proposal signed by someone else's key is rejected.
    gi = a.group_info().group_info
    assert gi is not None
    mallory_kp = client("mallory").key_package()
    stolen = replace(mallory_kp, signature_private_key=carol_kp.signature_private_key)
    with pytest.raises(SignatureError):
        a.process(new_member_add_proposal(gi, stolen), now=NOW)
    assert a.pending_proposals() == []


def test_inline_reinit_commit_freezes_everyone() -> None:
    _, (a, b) = make_group(2)
    new_exts = [Extension(ExtensionType.APPLICATION_ID, b"\x02v2")]
    result = a.reinit_commit(now=NOW, extensions=new_exts, wire_format=WireFormat.PRIVATE_MESSAGE)
    out = b.process(result.commit, now=NOW)
    a.merge_pending_commit()
    assert isinstance(out, CommitApplied) and out.reinit is not None
    assert out.reinit.extensions == tuple(new_exts)
    assert a.status == b.status == GroupStatus.REINIT and b.reinit_proposal == out.reinit
    with pytest.raises(MlsError):
        b.commit(now=NOW)
    kp = client("b2").key_package()
    new_a, welcome = a.recreate([kp.key_package], now=NOW)
    new_a.merge_pending_commit()
    new_b = Group.join_from_welcome(welcome.welcome, kp, now=NOW, reinit_from=b)  # type: ignore[arg-type]
    assert new_b.extensions == tuple(new_exts)
    assert_in_sync([new_a, new_b])
