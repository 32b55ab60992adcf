from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import pytest

from phx.errors import DecodeError, MlsError, SignatureError, WrongEpoch
from phx.mls.commit_core import InvalidCommit, InvalidProposal, InvalidProposalList, InvalidUpdatePath
from phx.mls.framing import sign_content
from phx.mls.group import Group as ClientGroup
from phx.mls.group_state import CommitResult
from phx.mls.key_package import KeyPackageBundle, create_key_package
from phx.mls.messages import (
    Add,
    ContentType,
    Credential,
    ExternalSender,
    FramedContent,
    FramedContentAuthData,
    GroupContextExtensions,
    GroupInfo,
    LeafNode,
    MLSMessage,
    Node,
    ParentNode,
    PrivateMessage,
    Proposal,
    PublicMessage,
    ReInit,
    Remove,
    Sender,
    Update,
    WireFormat,
    encode_ratchet_tree,
    make_external_senders_extension,
    make_ratchet_tree_extension,
)
from phx.mls.public_group import (
    CommitOutcome,
    OpaqueOutcome,
    ProposalOutcome,
    PublicGroup,
    UnknownGroup,
)
from phx.mls.tree import RatchetTree
from tests.mls.builders import CS, Group, make_client, sign_leaf, update_leaf

NOW = 1_000_000


def P(body: object) -> Proposal:
    return Proposal(body)  # type: ignore[arg-type]


def setup(n: int = 4, **kw: object) -> tuple[Group, PublicGroup]:
    g = Group.create(n, **kw)  # type: ignore[arg-type]
    return g, PublicGroup.from_group_info(g.group_info(0), g.tree.encode(), NOW)


def commit_outcome(pg: PublicGroup, msg: PublicMessage | MLSMessage) -> CommitOutcome:
    out = pg.process(msg, NOW)
    assert isinstance(out, CommitOutcome)
    return out


def sign_gi(g: Group, out: CommitOutcome, who: int) -> bytes:
    return CS.sign_with_label(g.clients[who].sig_priv, b"GroupInfoTBS", out.group_info_tbs())


# --- creation from a GroupInfo ---------------------------------------------------------------------------


def test_from_group_info() -> None:
    g, pg = setup(5)
    assert pg.epoch == 0 and pg.group_id == g.context.group_id and pg.member_count() == 5
    assert pg.context == g.context and pg.interim_transcript_hash == g.interim
    assert [i for i, _ in pg.members()] == [0, 1, 2, 3, 4]
    assert pg.credential(3) == g.clients[3].leaf.credential and pg.leaf_extensions(3) == ()
    assert RatchetTree.decode(CS, pg.encoded_tree()) == g.tree


def test_from_group_info_tree_from_extension_or_missing() -> None:
    g = Group.create(3)
    gi = g.group_info(1, extensions=(make_ratchet_tree_extension(g.tree.wire_nodes()),))
    assert PublicGroup.from_group_info(gi, None, NOW).tree == g.tree
    with pytest.raises(MlsError, match="no ratchet tree"):
        PublicGroup.from_group_info(g.group_info(1), None, NOW)


def test_group_info_bad_signature() -> None:
    g = Group.create(3)
    gi = g.group_info(0)
    with pytest.raises(SignatureError):
        PublicGroup.from_group_info(gi.with_signature(bytes(64)), g.tree, NOW)
    with pytest.raises(SignatureError):  # signed by member 1, claims member 2
        PublicGroup.from_group_info(replace(g.group_info(1), signer=2), g.tree, NOW)


def test_group_info_signer_must_be_member() -> None:
    g = Group.create(3)
    with pytest.raises(MlsError, match="signer 3 is not a member"):
        PublicGroup.from_group_info(replace(g.group_info(0), signer=3), g.tree, NOW)


def test_tree_must_match_tree_hash() -> None:
    g = Group.create(3)
    other = Group.create(3)
    with pytest.raises(MlsError, match="tree hash"):
        PublicGroup.from_group_info(g.group_info(0), other.tree, NOW)


def test_malformed_tree_rejected() -> None:
    g = Group.create(3)
    data = g.tree.encode()
    for bad in (data[:-1], data + b"\x00", b"\x01\x00", b"\x00"):
        with pytest.raises(MlsError):
            PublicGroup.from_group_info(g.group_info(0), bad, NOW)


def test_tree_with_invalid_leaf_rejected() -> None:
    g = Group.create(3)
    nodes = g.tree.wire_nodes()
    leaf = nodes[2]
    assert leaf is not None and isinstance(leaf.value, LeafNode)
    nodes[2] = Node(leaf.value.with_signature(bytes(64)))
    tree = RatchetTree.from_wire_nodes(CS, nodes)
    g.context = replace(g.context, tree_hash=tree.tree_hash())
    with pytest.raises(MlsError, match="signature"):
        PublicGroup.from_group_info(g.group_info(0), tree, NOW)


def test_tree_with_parent_hash_invalid_node_rejected() -> None:
    g = Group.create(4)
    nodes = g.tree.wire_nodes()
    nodes[1] = Node(ParentNode(os.urandom(32), b"", ()))
    tree = RatchetTree.from_wire_nodes(CS, nodes)
    g.context = replace(g.context, tree_hash=tree.tree_hash())
    with pytest.raises(MlsError, match="parent-hash valid"):
        PublicGroup.from_group_info(g.group_info(0), encode_ratchet_tree(nodes), NOW)


def test_tree_with_duplicate_keys_rejected() -> None:
    first = make_client("a")
    twin = make_client("b", sig_keys=(first.sig_priv, first.sig_pub))
    g = Group.create(2, clients=[first, twin])
    with pytest.raises(MlsError, match="signature key duplicates"):
        PublicGroup.from_group_info(g.group_info(0), g.tree, NOW)


def test_tree_with_expired_member_rejected_when_now_given() -> None:
    from phx.mls.messages import Lifetime

    g = Group.create(2, clients=[make_client("a"), make_client("old", lifetime=Lifetime(0, 10))])
    PublicGroup.from_group_info(g.group_info(0), g.tree, None)
    with pytest.raises(MlsError, match="lifetime"):
        PublicGroup.from_group_info(g.group_info(0), g.tree, NOW)


# --- proposals -------------------------------------------------------------------------------------------


def test_proposal_is_validated_stored_and_committed_by_reference() -> None:
    g, pg = setup(4)
    msg = g.proposal_message(3, P(Remove(1)))
    out = pg.process(msg, NOW)
    assert isinstance(out, ProposalOutcome) and out.ref == g.ref_of(msg) and out.sender == Sender.member(3)
    assert len(pg.store) == 0  # process alone changes nothing
    pg.accept(out)
    assert [e.ref for e in pg.pending_proposals()] == [out.ref]
    commit, tree = g.commit(0, [out.ref], referenced={out.ref: (P(Remove(1)), 3)})
    c = commit_outcome(pg, commit)
    assert [r.leaf_index for r in c.removed] == [1] and c.proposals[0].sender == Sender.member(3)
    pg.accept(c)
    assert len(pg.store) == 0 and pg.tree == tree and pg.leaf(1) is None


def test_update_proposal_by_reference_then_commit() -> None:
    g, pg = setup(4)
    up = P(Update(update_leaf(CS, g.clients[2], g.context.group_id, 2)))
    out = pg.process(g.proposal_message(2, up), NOW)
    assert isinstance(out, ProposalOutcome)
    pg.accept(out)
    msg, tree = g.commit(1, [out.ref], referenced={out.ref: (up, 2)})
    c = commit_outcome(pg, msg)
    assert c.updated == ((2, up.value.leaf_node),)  # type: ignore[union-attr]
    pg.accept(c)
    assert pg.tree == tree


def test_invalid_proposal_rejected() -> None:
    g, pg = setup(3)
    with pytest.raises(InvalidProposal, match="blank or outside"):
        pg.process(g.proposal_message(0, P(Remove(7))), NOW)


def test_proposal_bad_signature() -> None:
    g, pg = setup(3)
    msg = g.proposal_message(1, P(Remove(2)))
    with pytest.raises(SignatureError):
        pg.process(replace(msg, auth=FramedContentAuthData(bytes(64))), NOW)
    with pytest.raises(SignatureError):  # unsigned
        pg.process(replace(msg, auth=FramedContentAuthData(b"")), NOW)
    with pytest.raises(SignatureError):  # signed by another member than the sender
        pg.process(g.proposal_message(1, P(Remove(2)), sig_priv=g.clients[0].sig_priv), NOW)
    with pytest.raises(SignatureError):  # content altered after signing
        pg.process(replace(msg, content=replace(msg.content, authenticated_data=b"x")), NOW)


def test_wrong_epoch_and_group() -> None:
    g, pg = setup(3)
    msg = g.proposal_message(1, P(Remove(2)))
    for epoch in (1, 2**64 - 1):
        with pytest.raises(WrongEpoch):
            pg.process(replace(msg, content=replace(msg.content, epoch=epoch)), NOW)
    with pytest.raises(UnknownGroup):
        pg.process(replace(msg, content=replace(msg.content, group_id=b"other")), NOW)


def test_sender_must_be_member() -> None:
    g, pg = setup(3)
    msg = g.proposal_message(1, P(Remove(2)))
    with pytest.raises(MlsError, match="not a member"):
        pg.process(replace(msg, content=replace(msg.content, sender=Sender.member(5))), NOW)


def test_application_data_in_public_message_rejected() -> None:
    g, pg = setup(2)
    content = FramedContent(g.context.group_id, 0, Sender.member(0), b"", b"hello")
    sig = sign_content(CS, g.clients[0].sig_priv, WireFormat.PUBLIC_MESSAGE, content, g.context)
    with pytest.raises(MlsError, match="application data"):
        pg.process(PublicMessage(content, FramedContentAuthData(sig), b"t"), NOW)


def test_external_sender_proposals() -> None:
    ds = make_client("ds")
    ext = make_external_senders_extension([ExternalSender(ds.sig_pub, ds.leaf.credential)])
    g, pg = setup(3, extensions=(ext,))
    msg = g.proposal_message(0, P(Remove(2)), sender_obj=Sender.external(0), sig_priv=ds.sig_priv)
    out = pg.process(msg, NOW)
    assert isinstance(out, ProposalOutcome) and out.sender == Sender.external(0)
    with pytest.raises(SignatureError):
        pg.process(g.proposal_message(0, P(Remove(2)), sender_obj=Sender.external(0)), NOW)
    with pytest.raises(MlsError, match="index 1"):
        pg.process(
            g.proposal_message(0, P(Remove(2)), sender_obj=Sender.external(1), sig_priv=ds.sig_priv), NOW
        )
    up = P(Update(update_leaf(CS, g.clients[1], g.context.group_id, 1)))
    with pytest.raises(InvalidProposal, match="external sender cannot propose update"):
        pg.process(g.proposal_message(0, up, sender_obj=Sender.external(0), sig_priv=ds.sig_priv), NOW)
    g2, pg2 = setup(3)
    with pytest.raises(MlsError, match="no external_senders"):
        pg2.process(
            g2.proposal_message(0, P(Remove(2)), sender_obj=Sender.external(0), sig_priv=ds.sig_priv), NOW
        )


def test_new_member_proposal() -> None:
    g, pg = setup(2)
    j = make_client("joiner")
    add = P(Add(j.key_package))
    out = pg.process(
        g.proposal_message(0, add, sender_obj=Sender.new_member_proposal(), sig_priv=j.sig_priv), NOW
    )
    assert isinstance(out, ProposalOutcome)
    with pytest.raises(SignatureError):
        pg.process(g.proposal_message(0, add, sender_obj=Sender.new_member_proposal()), NOW)
    with pytest.raises(MlsError, match="only propose add"):
        pg.process(
            g.proposal_message(0, P(Remove(1)), sender_obj=Sender.new_member_proposal(), sig_priv=j.sig_priv),
            NOW,
        )


# --- commits ---------------------------------------------------------------------------------------------


def test_update_commit_advances_epoch_like_a_member() -> None:
    g, pg = setup(6)
    msg, tree = g.commit(3, [])
    out = commit_outcome(pg, msg)
    ctx, interim = g.expected_context(msg, tree)
    assert out.new_context == ctx and out.interim_transcript_hash == interim
    assert out.committer_leaf == 3 and out.signer == 3 and not out.is_external
    assert pg.epoch == 0  # not yet accepted
    gi = out.group_info(sign_gi(g, out, 3))
    pg.accept(out, gi)
    assert pg.epoch == 1 and pg.context == ctx and pg.tree == tree and pg.group_info == gi
    assert pg.tree.tree_hash() == ctx.tree_hash and pg.confirmation_tag == msg.auth.confirmation_tag
    g.advance(msg, tree)
    # the next epoch chains on the new transcript
    msg2, tree2 = g.commit(5, [P(Remove(0))])
    out2 = commit_outcome(pg, msg2)
    assert (out2.new_context, out2.interim_transcript_hash) == g.expected_context(msg2, tree2)


def test_add_commit_outcome_and_new_member_can_commit() -> None:
    g, pg = setup(3)
    new = make_client("new")
    msg, tree = g.commit(0, [P(Add(new.key_package))], path=False)
    out = commit_outcome(pg, msg)
    assert [(a.leaf_index, a.key_package) for a in out.added] == [(3, new.key_package)]
    assert out.committer_leaf == 0 and out.signer == 0
    pg.accept(out)
    g.advance(msg, tree)
    g.clients[3] = new
    msg2, tree2 = g.commit(3, [])
    out2 = commit_outcome(pg, msg2)
    pg.accept(out2)
    assert pg.tree == tree2 and pg.epoch == 2


def test_group_info_rebuild_checks_signature() -> None:
    g, pg = setup(3)
    msg, _ = g.commit(1, [])
    out = commit_outcome(pg, msg)
    with pytest.raises(SignatureError):
        out.group_info(sign_gi(g, out, 0))  # signed by a non-committer
    with pytest.raises(SignatureError):
        out.group_info(bytes(64))
    gi = out.group_info(sign_gi(g, out, 1))
    assert (
        gi.signer == 1 and gi.group_context == out.new_context and gi.confirmation_tag == out.confirmation_tag
    )
    other = replace(gi, group_context=replace(gi.group_context, epoch=9))
    with pytest.raises(MlsError, match="new epoch"):
        pg.accept(out, other)
    pg.accept(out)
    assert pg.group_info is None
    tbs = pg.group_info_tbs(1)
    stored = pg.set_group_info(1, CS.sign_with_label(g.clients[1].sig_priv, b"GroupInfoTBS", tbs))
    assert stored == gi and pg.group_info == gi
    with pytest.raises(SignatureError):
        pg.set_group_info(2, stored.signature)
    # a joiner can build a public group from the rebuilt GroupInfo and the DS's tree
    joined = PublicGroup.from_group_info(gi, pg.encoded_tree(), NOW)
    assert joined.context == pg.context and joined.interim_transcript_hash == pg.interim_transcript_hash


def test_commit_bad_signature() -> None:
    g, pg = setup(3)
    msg, _ = g.commit(1, [])
    with pytest.raises(SignatureError):
        pg.process(replace(msg, auth=replace(msg.auth, signature=bytes(64))), NOW)
    with pytest.raises(SignatureError):
        pg.process(replace(msg, content=replace(msg.content, sender=Sender.member(2))), NOW)


def test_commit_signed_under_another_context() -> None:
    g, pg = setup(3)
    msg, _ = g.commit(1, [])
    bad_ctx = replace(g.context, confirmed_transcript_hash=b"x")
    sig = sign_content(CS, g.clients[1].sig_priv, WireFormat.PUBLIC_MESSAGE, msg.content, bad_ctx)
    with pytest.raises(SignatureError):
        pg.process(replace(msg, auth=replace(msg.auth, signature=sig)), NOW)


def test_commit_with_unknown_reference() -> None:
    g, pg = setup(3)
    ref = os.urandom(32)
    msg, _ = g.commit(0, [ref], referenced={ref: (P(Remove(1)), 2)})
    with pytest.raises(InvalidProposalList, match="unknown proposal reference"):
        pg.process(msg, NOW)


def test_commit_missing_required_path() -> None:
    g, pg = setup(3)
    for proposals in ([], [P(Remove(2))]):
        msg, _ = g.commit(0, proposals, path=False)
        with pytest.raises(InvalidCommit, match="must contain a path"):
            pg.process(msg, NOW)


def test_commit_list_attacks() -> None:
    g, pg = setup(4)
    gid = g.context.group_id
    kp = make_client("n").key_package
    twin = make_client("twin", sig_keys=(g.clients[2].sig_priv, g.clients[2].sig_pub))
    cases = [
        ([P(Update(update_leaf(CS, g.clients[0], gid, 0)))], "generated by the committer"),
        ([P(Remove(0))], "remove of the committer"),
        ([P(Add(kp)), P(Add(kp))], "added earlier in this commit"),
        ([P(Add(twin.key_package))], "add of a member"),
        ([P(GroupContextExtensions(())), P(GroupContextExtensions(()))], "several GroupContextExtensions"),
        ([P(ReInit(b"g2", g.context.version, 1, ())), P(Remove(1))], "only proposal"),
        ([P(Remove(1)), P(Remove(1))], "several updates/removes"),
    ]
    for proposals, match in cases:
        msg, _ = g.commit(0, proposals)
        with pytest.raises(InvalidProposalList, match=match):
            pg.process(msg, NOW)


def test_commit_with_tampered_path() -> None:
    g, pg = setup(4)

    def tamper(path):  # type: ignore[no-untyped-def]
        leaf = sign_leaf(
            CS, replace(path.leaf_node, parent_hash=bytes(32)), g.clients[0].sig_priv, g.context.group_id, 0
        )
        return replace(path, leaf_node=leaf)

    msg, _ = g.commit(0, [], tamper_path=tamper)
    with pytest.raises(InvalidUpdatePath, match="parent_hash"):
        pg.process(msg, NOW)


def test_external_join() -> None:
    g, pg = setup(3)
    j = make_client("joiner")
    msg, tree = g.external_commit(j)
    out = commit_outcome(pg, msg)
    assert out.is_external and out.committer_leaf == 3 and out.signer == 3 and out.external_init is not None
    assert (out.new_context, out.interim_transcript_hash) == g.expected_context(msg, tree)
    gi = out.group_info(CS.sign_with_label(j.sig_priv, b"GroupInfoTBS", out.group_info_tbs()))
    pg.accept(out, gi)
    assert pg.leaf(3) is not None and pg.leaf(3).signature_key == j.sig_pub  # type: ignore[union-attr]


def test_external_resync() -> None:
    g, pg = setup(3)
    msg, tree = g.external_commit(g.clients[1], remove=1)
    out = commit_outcome(pg, msg)
    assert out.committer_leaf == 1 and [r.leaf_index for r in out.removed] == [1]
    pg.accept(out)
    assert pg.tree == tree


def test_external_commit_without_path_rejected() -> None:
    g, pg = setup(3)
    msg, _ = g.external_commit(make_client("j"), path=False)
    with pytest.raises(MlsError, match="must contain a path"):
        pg.process(msg, NOW)


def test_external_commit_signed_by_someone_else() -> None:
    g, pg = setup(3)
    j = make_client("j")
    msg, _ = g.external_commit(j)
    sig = sign_content(CS, g.clients[0].sig_priv, WireFormat.PUBLIC_MESSAGE, msg.content, g.context)
    with pytest.raises(SignatureError):
        pg.process(replace(msg, auth=replace(msg.auth, signature=sig)), NOW)


def test_external_commit_bad_proposals() -> None:
    g, pg = setup(3)
    msg, _ = g.external_commit(make_client("j"), external_init=False)
    with pytest.raises(InvalidProposalList, match="exactly one ExternalInit"):
        pg.process(msg, NOW)
    msg, _ = g.external_commit(make_client("j"), extra=[P(Add(make_client("x").key_package))])
    with pytest.raises(InvalidProposalList, match="cannot contain a add"):
        pg.process(msg, NOW)


def test_proposal_from_new_member_commit_sender_rejected() -> None:
    g, pg = setup(2)
    msg = g.proposal_message(0, P(Remove(1)), sender_obj=Sender.new_member_commit())
    with pytest.raises(MlsError, match="only send a commit"):
        pg.process(msg, NOW)


# --- pass-through, state handling ------------------------------------------------------------------------


def test_private_messages_pass_through() -> None:
    g, pg = setup(2)
    pm = PrivateMessage(g.context.group_id, 0, ContentType.APPLICATION, b"", b"sd", b"ct")
    out = pg.process(MLSMessage(pm), NOW)
    assert (
        isinstance(out, OpaqueOutcome) and out.message == pm and out.content_type == ContentType.APPLICATION
    )
    pg.accept(out)
    assert pg.epoch == 0
    with pytest.raises(WrongEpoch):
        pg.process(replace(pm, epoch=1), NOW)
    with pytest.raises(UnknownGroup):
        pg.process(replace(pm, group_id=b"x"), NOW)


def test_non_group_message_rejected() -> None:
    g, pg = setup(2)
    with pytest.raises(MlsError, match="not a group message"):
        pg.process(MLSMessage(g.clients[0].key_package), NOW)


def test_stale_outcome_refused() -> None:
    g, pg = setup(3)
    a, _ = g.commit(0, [])
    b, _ = g.commit(1, [])
    out_a, out_b = commit_outcome(pg, a), commit_outcome(pg, b)
    pg.accept(out_a)
    with pytest.raises(WrongEpoch):
        pg.accept(out_b)
    assert pg.epoch == 1


def test_stale_proposal_outcome_refused() -> None:
    g, pg = setup(3)
    p1 = pg.process(g.proposal_message(0, P(Remove(1))), NOW)
    c = pg.process(g.commit(2, [])[0], NOW)
    pg.accept(c)
    with pytest.raises(WrongEpoch):
        pg.accept(p1)


def test_persistence_round_trip() -> None:
    g, pg = setup(5)
    out = pg.process(g.proposal_message(3, P(Remove(1))), NOW)
    assert isinstance(out, ProposalOutcome)
    pg.accept(out)
    data = pg.to_bytes()
    back = PublicGroup.from_bytes(data)
    assert back.tree == pg.tree and back.context == pg.context
    assert back.interim_transcript_hash == pg.interim_transcript_hash
    assert back.confirmation_tag == pg.confirmation_tag and back.group_info == pg.group_info
    assert [e.ref for e in back.pending_proposals()] == [out.ref]
    assert back.to_bytes() == data
    # and it keeps working: commit the stored proposal on the restored group
    msg, tree = g.commit(0, [out.ref], referenced={out.ref: (P(Remove(1)), 3)})
    back.accept(commit_outcome(back, msg))
    assert back.tree == tree
    with pytest.raises(DecodeError):
        PublicGroup.from_bytes(data + b"\x00")
    with pytest.raises(DecodeError):
        PublicGroup.from_bytes(b"\x09" + data[1:])
    with pytest.raises(DecodeError):
        PublicGroup.from_bytes(data[:-3])


def test_group_info_type_is_the_wire_struct() -> None:
    g, pg = setup(2)
    assert isinstance(pg.group_info, GroupInfo) and pg.group_info.signer == 0


def test_uncommitted_proposals() -> None:
    g, pg = setup(4)
    outs = [pg.process(g.proposal_message(0, P(Remove(i))), NOW) for i in (1, 2)]
    for o in outs:
        pg.accept(o)
    p1 = outs[0]
    assert isinstance(p1, ProposalOutcome)
    msg, _ = g.commit(3, [p1.ref], referenced={p1.ref: (P(Remove(1)), 0)})
    out = commit_outcome(pg, msg)
    assert [e.ref for e in pg.uncommitted_proposals(out)] == [outs[1].ref]  # type: ignore[union-attr]


# --- against the real client group -----------------------------------------------------------------------


def test_follows_client_groups() -> None:
    def kp(name: bytes) -> KeyPackageBundle:
        priv, _ = CS.generate_signature_key_pair()
        return create_key_package(CS, Credential.basic(name), priv, now=NOW)

    a_priv, _ = CS.generate_signature_key_pair()
    alice = ClientGroup.create(CS, Credential.basic(b"alice"), a_priv, now=NOW)
    gi0 = alice.group_info(ratchet_tree=False, external_pub=False).group_info
    assert gi0 is not None
    pg = PublicGroup.from_group_info(gi0, alice.tree.encode(), NOW)
    assert pg.interim_transcript_hash == alice._state.interim_transcript_hash

    def step(
        committer: ClientGroup, result: CommitResult, others: Sequence[ClientGroup] = ()
    ) -> CommitOutcome:
        out = pg.process(result.commit, NOW)
        assert isinstance(out, CommitOutcome)
        committer.merge_pending_commit()
        for o in others:
            o.process(result.commit, now=NOW)
        # the committer signs the GroupInfo the DS rebuilds
        gi = committer.group_info(ratchet_tree=False, external_pub=False).group_info
        assert gi is not None and out.group_info_tbs() == gi.tbs()
        pg.accept(out, out.group_info(gi.signature))
        assert pg.context == committer.context and pg.tree == committer.tree
        return out

    bob_b, carol_b = kp(b"bob"), kp(b"carol")
    res = alice.commit(now=NOW, add=[bob_b.key_package, carol_b.key_package])
    out = step(alice, res)
    assert [a.leaf_index for a in out.added] == [1, 2]
    assert res.welcome is not None
    bob = ClientGroup.join_from_welcome(res.welcome, bob_b, now=NOW, ratchet_tree=pg.encoded_tree())
    carol = ClientGroup.join_from_welcome(res.welcome, carol_b, now=NOW)
    step(bob, bob.commit(now=NOW, path=True), [alice, carol])  # update with path
    prop = carol.propose_remove(0, now=NOW)
    pout = pg.process(prop.message, NOW)
    assert isinstance(pout, ProposalOutcome) and pout.ref == prop.ref
    pg.accept(pout)
    for m in (alice, bob):
        m.process(prop.message, now=NOW)
    out = step(bob, bob.commit(now=NOW), [carol, alice])  # commits carol's Remove by reference
    assert [r.leaf_index for r in out.removed] == [0] and pg.member_count() == 2
    # an external joiner, from the DS's GroupInfo plus the committer's external_pub
    gi_ext = bob.group_info(ratchet_tree=False, external_pub=True).group_info
    assert gi_ext is not None
    d_priv, _ = CS.generate_signature_key_pair()
    dave, ext_commit = ClientGroup.join_external(
        gi_ext, Credential.basic(b"dave"), d_priv, now=NOW, ratchet_tree=pg.encoded_tree()
    )
    out = commit_outcome(pg, ext_commit)
    assert out.is_external and out.committer_leaf == 0
    pg.accept(out)
    dave.merge_pending_commit()
    for m in (bob, carol):
        m.process(ext_commit, now=NOW)
    assert pg.context == dave.context == bob.context and pg.tree == dave.tree
