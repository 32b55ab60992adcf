"""The client group against malicious or broken input: forged signatures and tags, wrong epoch or group,
ratchet abuse (stale, replayed, far-ahead generations), malformed commits, invalid Welcomes and trees.
After every rejection the group must still work."""

from __future__ import annotations

from dataclasses import replace

import pytest

from phx.errors import MlsError, SignatureError, WrongEpoch
from phx.mls.commit_core import InvalidCommit, InvalidProposalList
from phx.mls.framing import authenticate, protect_public, sign_content
from phx.mls.group import Group
from phx.mls.group_state import ApplicationMessage, GroupConfig
from phx.mls.key_package import KeyPackageBundle
from phx.mls.key_schedule import ConfirmationTagMismatch, MembershipTagMismatch
from phx.mls.messages import (
    Commit,
    ExternalInit,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    Proposal,
    ProposalOrRef,
    PublicMessage,
    Remove,
    Sender,
    WireFormat,
)
from phx.mls.secret_tree import GenerationReused, GenerationTooFarAhead, GenerationTooOld
from phx.mls.tree import RatchetTree
from tests.mls.test_group_helpers import NOW, assert_in_sync, client, commit_all, deliver, make_group


def _still_works(sender: Group, receiver: Group) -> None:
    out = receiver.process(sender.send(b"alive"), now=NOW)
    assert isinstance(out, ApplicationMessage) and out.data == b"alive"


def _forged_public(
    insider: Group, content: FramedContent, key: bytes, tag: bytes | None = None
) -> MLSMessage:
    """A PublicMessage an insider (who knows the membership key) builds with any content and key."""
    fr = insider._framing
    if content.commit is None:
        auth = authenticate(fr, content, key, wire_format=WireFormat.PUBLIC_MESSAGE)
    else:
        sig = sign_content(fr.cs, key, WireFormat.PUBLIC_MESSAGE, content, fr.group_context_bytes)
        from phx.mls.messages import AuthenticatedContent

        auth = AuthenticatedContent(
            WireFormat.PUBLIC_MESSAGE, content, FramedContentAuthData(sig, tag or bytes(32))
        )
    return MLSMessage(protect_public(fr, auth))


def test_signature_of_another_member_is_rejected() -> None:
    clients, (a, b, c) = make_group(3)
    # b claims to be a: valid membership tag (b is a member), signature by b's key.
    content = FramedContent(a.group_id, a.epoch, Sender.member(0), b"", Proposal(Remove(2)))
    msg = _forged_public(b, content, clients[1].signature_private_key)
    with pytest.raises(SignatureError):
        c.process(msg, now=NOW)
    assert c.pending_proposals() == []
    _still_works(a, c)


def test_tampered_public_message_fails_membership_tag() -> None:
    _, (a, b) = make_group(2)
    p = a.propose_remove(1, now=NOW).message.public_message
    assert p is not None
    bad = replace(p, content=replace(p.content, authenticated_data=b"x"))
    with pytest.raises(MembershipTagMismatch):
        b.process(MLSMessage(bad), now=NOW)
    outsider = client("eve").create_group()
    content = FramedContent(a.group_id, a.epoch, Sender.member(0), b"", Proposal(Remove(1)))
    sig = sign_content(
        outsider.cs, b"\x01" * 32, WireFormat.PUBLIC_MESSAGE, content, a._framing.group_context_bytes
    )
    forged = PublicMessage(content, FramedContentAuthData(sig), b"\x00" * 32)
    with pytest.raises(MembershipTagMismatch):
        b.process(MLSMessage(forged), now=NOW)


def test_tampered_private_message_does_not_decrypt_and_burns_nothing() -> None:
    _, (a, b) = make_group(2)
    msg = a.send(b"secret")
    pm = msg.private_message
    assert pm is not None
    flipped = replace(pm, ciphertext=pm.ciphertext[:-1] + bytes([pm.ciphertext[-1] ^ 1]))
    with pytest.raises(MlsError):
        b.process(MLSMessage(flipped), now=NOW)
    assert b.process(msg, now=NOW) == ApplicationMessage(0, b"secret", b"", a.epoch)


def test_wrong_epoch_and_wrong_group() -> None:
    _, (a, b) = make_group(2)
    old = a.send(b"old epoch")
    old_proposal = a.propose_remove(1, now=NOW).message
    commit_all(a, [b], by_reference=False)
    with pytest.raises(WrongEpoch):
        b.process(old, now=NOW)
    with pytest.raises(WrongEpoch):
        b.process(old_proposal, now=NOW)
    _, (x, y) = make_group(2)
    with pytest.raises(MlsError):
        b.process(x.send(b"other group"), now=NOW)
    with pytest.raises(MlsError):
        b.process(x.propose_remove(1, now=NOW).message, now=NOW)
    _still_works(a, b)


def test_replayed_generation_is_rejected() -> None:
    _, (a, b) = make_group(2)
    msg = a.send(b"once")
    b.process(msg, now=NOW)
    with pytest.raises(GenerationReused):
        b.process(msg, now=NOW)
    _still_works(a, b)


def test_generations_outside_the_window() -> None:
    cfg = GroupConfig(max_forward=5, max_skipped=3)
    a = client("alice").create_group()
    bob_kp = client("bob").key_package()
    result = a.commit(now=NOW, add=[bob_kp.key_package])
    a.merge_pending_commit()
    b = Group.join_from_welcome(result.welcome, bob_kp, now=NOW, config=cfg)  # type: ignore[arg-type]
    msgs = [a.send(f"m{i}".encode()) for i in range(10)]
    with pytest.raises(GenerationTooFarAhead):
        b.process(msgs[9], now=NOW)
    b.process(msgs[5], now=NOW)  # skips 0..4, keeps only the newest 3 keys (2, 3, 4)
    with pytest.raises(GenerationTooOld):
        b.process(msgs[0], now=NOW)
    assert b.process(msgs[3], now=NOW) == ApplicationMessage(0, b"m3", b"", a.epoch)
    assert b.process(msgs[9], now=NOW) == ApplicationMessage(0, b"m9", b"", a.epoch)


def test_commit_missing_required_path() -> None:
    clients, (a, b, c) = make_group(3)
    content = FramedContent(
        a.group_id, a.epoch, Sender.member(0), b"", Commit((ProposalOrRef(Proposal(Remove(2))),), None)
    )
    msg = _forged_public(a, content, clients[0].signature_private_key)
    with pytest.raises(InvalidCommit, match="path"):
        b.process(msg, now=NOW)
    empty = FramedContent(a.group_id, a.epoch, Sender.member(0), b"", Commit((), None))
    with pytest.raises(InvalidCommit, match="path"):
        b.process(_forged_public(a, empty, clients[0].signature_private_key), now=NOW)
    _still_works(a, b)


def test_commit_referencing_unknown_proposal() -> None:
    _, (a, b, c) = make_group(3)
    p = a.propose_remove(1, now=NOW)
    deliver(p.message, [c])  # b never saw the proposal
    result = c.commit(now=NOW)
    with pytest.raises(InvalidProposalList, match="unknown proposal reference"):
        b.process(result.commit, now=NOW)
    assert b.epoch == c.epoch


def test_bad_confirmation_tag() -> None:
    clients, (a, b) = make_group(2)
    content = FramedContent(
        a.group_id, a.epoch, Sender.member(0), b"", Commit((ProposalOrRef(Proposal(Remove(1))),), None)
    )
    del content
    # A well-formed commit with a path whose tag is wrong.
    result = a.commit(now=NOW)
    a.clear_pending_commit()
    pm = result.commit.public_message
    assert pm is not None
    insider_msg = _forged_public(a, pm.content, clients[0].signature_private_key, tag=b"\x00" * 32)
    with pytest.raises(ConfirmationTagMismatch):
        b.process(insider_msg, now=NOW)
    assert b.process(result.commit, now=NOW).epoch == 2  # type: ignore[union-attr]


def test_external_commit_without_path_or_external_init() -> None:
    clients, (a, b) = make_group(2)
    eve = client("eve")
    no_path = FramedContent(
        a.group_id,
        a.epoch,
        Sender.new_member_commit(),
        b"",
        Commit((ProposalOrRef(Proposal(ExternalInit(b"k"))),), None),
    )
    sig = sign_content(
        a.cs, eve.signature_private_key, WireFormat.PUBLIC_MESSAGE, no_path, a._framing.group_context_bytes
    )
    msg = MLSMessage(PublicMessage(no_path, FramedContentAuthData(sig, bytes(32))))
    with pytest.raises(InvalidCommit, match="path"):
        b.process(msg, now=NOW)
    # A genuine external commit with its ExternalInit stripped.
    _, good = Group.join_external(a.group_info(), eve.credential, eve.signature_private_key, now=NOW)
    gpm = good.public_message
    assert gpm is not None and gpm.content.commit is not None
    stripped = replace(gpm.content, body=replace(gpm.content.commit, proposals=()))
    sig = sign_content(
        a.cs, eve.signature_private_key, WireFormat.PUBLIC_MESSAGE, stripped, a._framing.group_context_bytes
    )
    bad = MLSMessage(PublicMessage(stripped, FramedContentAuthData(sig, bytes(32))))
    with pytest.raises(InvalidProposalList, match="ExternalInit"):
        b.process(bad, now=NOW)
    _still_works(a, b)


def test_welcome_for_someone_else_or_tampered() -> None:
    alice = client("alice").create_group()
    bob_kp, carol_kp = client("bob").key_package(), client("carol").key_package()
    result = alice.commit(now=NOW, add=[bob_kp.key_package], path=True)
    alice.merge_pending_commit()
    assert result.welcome is not None and result.welcome.welcome is not None
    with pytest.raises(MlsError, match="no entry"):
        Group.join_from_welcome(result.welcome, carol_kp, now=NOW)
    w = result.welcome.welcome
    broken = replace(w, encrypted_group_info=w.encrypted_group_info[:-1] + b"\x00")
    with pytest.raises(MlsError):
        Group.join_from_welcome(MLSMessage(broken), bob_kp, now=NOW)


def _welcome_with_tree_oob() -> tuple[Group, MLSMessage, KeyPackageBundle]:
    alice = client("alice").create_group(config=GroupConfig(ratchet_tree_in_welcome=False))
    others = [client(f"m{i}").key_package() for i in range(3)]
    result = alice.commit(now=NOW, add=[k.key_package for k in others], path=True)
    alice.merge_pending_commit()
    assert result.welcome is not None
    return alice, result.welcome, others[0]


def test_invalid_trees_in_welcome() -> None:
    alice, welcome, bundle = _welcome_with_tree_oob()
    tree = alice.tree
    # Tree hash mismatch: drop the last member.
    smaller = tree.copy()
    smaller.remove_leaf(3)
    with pytest.raises(MlsError, match="tree hash|tree_hash"):
        Group.join_from_welcome(welcome, bundle, now=NOW, ratchet_tree=smaller.encode())
    # A leaf with a broken signature.
    forged = tree.copy()
    leaf = forged.require_leaf(2)
    forged.set_leaf(2, replace(leaf, signature=bytes(64)))
    with pytest.raises(MlsError):
        Group.join_from_welcome(welcome, bundle, now=NOW, ratchet_tree=forged)
    # A parent node whose parent hash chain is broken.
    parents = list(tree.parents())
    assert parents
    x, node = parents[0]
    broken = tree.copy()
    broken.set_node(x, replace(node, parent_hash=b"\x01" * 32))
    with pytest.raises(MlsError):
        Group.join_from_welcome(welcome, bundle, now=NOW, ratchet_tree=broken)
    # Garbage bytes.
    with pytest.raises(MlsError):
        Group.join_from_welcome(welcome, bundle, now=NOW, ratchet_tree=b"\x05garbage")
    oob = RatchetTree.decode(alice.cs, tree.encode())
    good = Group.join_from_welcome(welcome, bundle, now=NOW, ratchet_tree=oob)
    assert_in_sync([alice, good])


def test_application_data_as_public_message_is_rejected() -> None:
    clients, (a, b) = make_group(2)
    content = FramedContent(a.group_id, a.epoch, Sender.member(0), b"", b"plaintext!")
    sig = sign_content(
        a.cs,
        clients[0].signature_private_key,
        WireFormat.PUBLIC_MESSAGE,
        content,
        a._framing.group_context_bytes,
    )
    msg = MLSMessage(PublicMessage(content, FramedContentAuthData(sig), b"\x00" * 32))
    with pytest.raises(MlsError, match="application"):
        b.process(msg, now=NOW)


def test_commit_removing_committer_via_reference_is_not_committed() -> None:
    _, (a, b) = make_group(2)
    p = b.propose_remove(0, now=NOW)
    deliver(p.message, [a])
    result, applied = commit_all(a, [b])
    assert applied.removed == ()
    del result
    assert_in_sync([a, b])


def test_unknown_sender_leaf() -> None:
    clients, (a, b) = make_group(2)
    content = FramedContent(a.group_id, a.epoch, Sender.member(7), b"", Proposal(Remove(1)))
    with pytest.raises(MlsError):
        b.process(_forged_public(a, content, clients[0].signature_private_key), now=NOW)
