from __future__ import annotations

import os
from dataclasses import replace

import pytest

from phx.crypto import SUITE_1
from phx.errors import MlsError
from phx.mls.commit_core import (
    ClientIdentity,
    ProposalApplication,
    ProposalStore,
    ResolvedProposal,
    apply_commit_path,
    apply_proposals,
    path_required,
    proposal_ref,
    resolve_proposals,
    stage_commit,
    validate_proposal,
)
from phx.mls.leaf_validation import (
    InvalidExtensions,
    InvalidKeyPackage,
    InvalidLeafNode,
    MemberSupport,
    validate_key_package,
    validate_leaf_node,
)
from phx.mls.messages import (
    Add,
    AuthenticatedContent,
    Capabilities,
    Commit,
    Credential,
    Extension,
    ExternalInit,
    ExternalSender,
    GroupContextExtensions,
    LeafNodeSource,
    Lifetime,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    ProposalOrRef,
    PublicMessage,
    ReInit,
    Remove,
    RequiredCapabilities,
    ResumptionPSKUsage,
    Sender,
    Update,
    UpdatePath,
    UpdatePathNode,
    WireFormat,
    make_external_senders_extension,
    make_required_capabilities_extension,
)
from phx.mls.messages.refs import make_proposal_ref
from phx.mls.proposal_validation import (
    InvalidCommit,
    InvalidProposal,
    InvalidProposalList,
    InvalidUpdatePath,
)
from tests.mls.builders import (
    CS,
    Group,
    default_capabilities,
    make_client,
    sign_key_package,
    sign_leaf,
    update_leaf,
)

CUSTOM_EXT = 0xFF00
NOW = 1_000_000


def P(body: object) -> Proposal:
    return Proposal(body)  # type: ignore[arg-type]


def inline(proposals: list[Proposal], sender: int) -> list[ResolvedProposal]:
    return [ResolvedProposal(p, Sender.member(sender)) for p in proposals]


def apply(
    g: Group,
    proposals: list[ResolvedProposal],
    committer: int = 0,
    client_identity: ClientIdentity | None = None,
) -> ProposalApplication:
    return apply_proposals(
        g.cs,
        g.context,
        g.tree,
        proposals,
        committer=Sender.member(committer),
        now=NOW,
        client_identity=client_identity,
    )


# --- leaf nodes and key packages -------------------------------------------------------------------------


def test_valid_key_package_passes() -> None:
    validate_key_package(CS, make_client("a").key_package, now=NOW)


def test_key_package_wrong_cipher_suite() -> None:
    c = make_client("a")
    kp = sign_key_package(CS, replace(c.key_package, cipher_suite=2), c.sig_priv)
    with pytest.raises(InvalidKeyPackage, match="cipher suite"):
        validate_key_package(CS, kp)


def test_key_package_bad_signature() -> None:
    kp = make_client("a").key_package
    with pytest.raises(InvalidKeyPackage, match="signature"):
        validate_key_package(CS, kp.with_signature(bytes(64)))


def test_key_package_signed_by_other_key() -> None:
    c, other = make_client("a"), make_client("b")
    with pytest.raises(InvalidKeyPackage, match="signature"):
        validate_key_package(CS, sign_key_package(CS, c.key_package, other.sig_priv))


def test_key_package_init_key_equals_encryption_key() -> None:
    c = make_client("a")
    kp = sign_key_package(CS, replace(c.key_package, init_key=c.enc_pub), c.sig_priv)
    with pytest.raises(InvalidKeyPackage, match="init_key"):
        validate_key_package(CS, kp)


def test_key_package_leaf_with_update_source() -> None:
    c = make_client("a")
    leaf = update_leaf(CS, c, b"g", 0)
    kp = sign_key_package(CS, replace(c.key_package, leaf_node=leaf), c.sig_priv)
    with pytest.raises(InvalidKeyPackage, match="leaf_node_source"):
        validate_key_package(CS, kp)


def test_key_package_duplicate_extensions() -> None:
    c = make_client("a")
    ext = Extension(CUSTOM_EXT, b"")
    kp = sign_key_package(CS, replace(c.key_package, extensions=(ext, ext)), c.sig_priv)
    with pytest.raises(InvalidExtensions):
        validate_key_package(CS, kp)


def test_leaf_lifetime_checked_with_now() -> None:
    c = make_client("a", lifetime=Lifetime(10, 20))
    validate_leaf_node(CS, c.leaf, source=LeafNodeSource.KEY_PACKAGE, now=15)
    validate_leaf_node(CS, c.leaf, source=LeafNodeSource.KEY_PACKAGE)  # no clock, no check
    for now in (9, 21):
        with pytest.raises(InvalidLeafNode, match="lifetime"):
            validate_leaf_node(CS, c.leaf, source=LeafNodeSource.KEY_PACKAGE, now=now)


def test_leaf_credential_type_must_be_in_own_capabilities() -> None:
    c = make_client("a", capabilities=default_capabilities(credentials=(2,)))
    with pytest.raises(InvalidLeafNode, match="credential type 1"):
        validate_leaf_node(CS, c.leaf, source=LeafNodeSource.KEY_PACKAGE)


def test_leaf_extensions_must_be_in_capabilities() -> None:
    c = make_client("a", extensions=(Extension(CUSTOM_EXT, b"x"),))
    with pytest.raises(InvalidLeafNode, match="not in its capabilities"):
        validate_leaf_node(CS, c.leaf, source=LeafNodeSource.KEY_PACKAGE)
    ok = make_client(
        "b",
        extensions=(Extension(CUSTOM_EXT, b"x"),),
        capabilities=default_capabilities(extensions=(CUSTOM_EXT,)),
    )
    validate_leaf_node(CS, ok.leaf, source=LeafNodeSource.KEY_PACKAGE)


def test_leaf_required_capabilities_and_group_extensions() -> None:
    c = make_client("a")
    req = make_required_capabilities_extension(RequiredCapabilities(extension_types=(CUSTOM_EXT,)))
    with pytest.raises(InvalidLeafNode, match="required extension"):
        validate_leaf_node(CS, c.leaf, source=LeafNodeSource.KEY_PACKAGE, extensions=(req,))
    with pytest.raises(InvalidLeafNode, match="group context extension"):
        validate_leaf_node(
            CS, c.leaf, source=LeafNodeSource.KEY_PACKAGE, extensions=(Extension(CUSTOM_EXT, b""),)
        )
    req_prop = make_required_capabilities_extension(RequiredCapabilities(proposal_types=(0xFF01,)))
    with pytest.raises(InvalidLeafNode, match="proposal type"):
        validate_leaf_node(CS, c.leaf, source=LeafNodeSource.KEY_PACKAGE, extensions=(req_prop,))
    good = make_client("b", capabilities=default_capabilities(extensions=(CUSTOM_EXT,)))
    validate_leaf_node(
        CS, good.leaf, source=LeafNodeSource.KEY_PACKAGE, extensions=(req, Extension(CUSTOM_EXT, b""))
    )


def test_leaf_signature_and_binding() -> None:
    c = make_client("a")
    leaf = update_leaf(CS, c, b"group", 3)
    validate_leaf_node(CS, leaf, source=LeafNodeSource.UPDATE, group_id=b"group", leaf_index=3)
    with pytest.raises(InvalidLeafNode, match="signature"):
        validate_leaf_node(CS, leaf, source=LeafNodeSource.UPDATE, group_id=b"group", leaf_index=4)
    with pytest.raises(InvalidLeafNode, match="signature"):
        validate_leaf_node(CS, leaf, source=LeafNodeSource.UPDATE, group_id=b"other", leaf_index=3)
    with pytest.raises(InvalidLeafNode, match="expected commit"):
        validate_leaf_node(CS, leaf, source=LeafNodeSource.COMMIT, group_id=b"group", leaf_index=3)


def test_leaf_keys_unique_in_tree() -> None:
    g = Group.create(3)
    twin = make_client("twin", sig_keys=(g.clients[1].sig_priv, g.clients[1].sig_pub))
    with pytest.raises(InvalidLeafNode, match="signature key already used by leaf 1"):
        validate_leaf_node(CS, twin.leaf, source=LeafNodeSource.KEY_PACKAGE, tree=g.tree)
    validate_leaf_node(CS, twin.leaf, source=LeafNodeSource.KEY_PACKAGE, tree=g.tree, replaces=1)
    enc_twin = make_client("enc", enc_keys=(g.clients[2].enc_priv, g.clients[2].enc_pub))
    with pytest.raises(InvalidLeafNode, match="encryption key already used by node 4"):
        validate_leaf_node(CS, enc_twin.leaf, source=LeafNodeSource.KEY_PACKAGE, tree=g.tree)


def test_member_support_counts() -> None:
    a = make_client("a", capabilities=default_capabilities(credentials=(1, 2)))
    b = make_client("b")
    x = make_client(
        "x", credential=Credential.x509((b"cert",)), capabilities=default_capabilities(credentials=(1, 2))
    )
    sup = MemberSupport([a.leaf, b.leaf])
    assert sup.used == {1} and sup.supported == {1}
    with pytest.raises(InvalidLeafNode, match="not supported by every member"):
        sup.check(x.leaf, "x")
    sup.remove(b.leaf)
    sup.check(x.leaf, "x")
    sup.add(x.leaf)
    assert sup.used == {1, 2}
    with pytest.raises(InvalidLeafNode, match="credential types in use"):
        sup.check(b.leaf, "b")
    sup.replace(x.leaf, None)
    assert sup.used == {1}
    assert sup.copy().supported == sup.supported


# --- the proposal store and references -------------------------------------------------------------------


def test_store_refs_and_resolution() -> None:
    g = Group.create(3)
    msg = g.proposal_message(2, P(Remove(1)))
    auth = AuthenticatedContent(WireFormat.PUBLIC_MESSAGE, msg.content, msg.auth)
    store = ProposalStore(CS)
    entry = store.add(auth)
    assert entry.ref == make_proposal_ref(CS, auth.encode()) == proposal_ref(CS, auth) == g.ref_of(msg)
    assert entry.ref in store and len(store) == 1
    commit = Commit((ProposalOrRef(entry.ref), ProposalOrRef(P(Remove(2)))), None)
    resolved = resolve_proposals(CS, commit, Sender.member(0), store)
    assert [r.sender for r in resolved] == [Sender.member(2), Sender.member(0)]
    assert resolved[0].ref == entry.ref and resolved[1].ref is None
    restored = ProposalStore.decode(CS, store.encode())
    assert restored.get(entry.ref) == entry
    store.clear()
    with pytest.raises(InvalidProposalList, match="unknown proposal reference"):
        resolve_proposals(CS, commit, Sender.member(0), store)


def test_external_commit_cannot_reference_proposals() -> None:
    store = ProposalStore(CS)
    commit = Commit((ProposalOrRef(b"r" * 32),), None)
    with pytest.raises(InvalidProposalList, match="by reference"):
        resolve_proposals(CS, commit, Sender.new_member_commit(), store)


def test_store_takes_only_proposals() -> None:
    g = Group.create(2)
    msg, _ = g.commit(0, [])
    with pytest.raises(InvalidProposal):
        ProposalStore(CS).add(AuthenticatedContent(WireFormat.PUBLIC_MESSAGE, msg.content, msg.auth))


# --- individual proposals --------------------------------------------------------------------------------


def vp(g: Group, body: object, sender: Sender) -> None:
    validate_proposal(CS, g.context, g.tree, ResolvedProposal(P(body), sender), now=NOW)


def test_update_proposal_rules() -> None:
    g = Group.create(3)
    gid = g.context.group_id
    vp(g, Update(update_leaf(CS, g.clients[1], gid, 1)), Sender.member(1))
    with pytest.raises(InvalidProposal, match="external sender cannot propose update"):
        vp(g, Update(update_leaf(CS, g.clients[1], gid, 1)), Sender.external(0))
    with pytest.raises(InvalidProposal, match="old encryption key"):
        vp(g, Update(update_leaf(CS, g.clients[1], gid, 1, enc_pub=g.clients[1].enc_pub)), Sender.member(1))
    with pytest.raises(InvalidProposal, match="signature"):
        vp(g, Update(update_leaf(CS, g.clients[1], gid, 2)), Sender.member(1))
    with pytest.raises(InvalidProposal, match="leaf_node_source"):
        vp(g, Update(g.clients[1].leaf), Sender.member(1))
    with pytest.raises(InvalidProposal, match="blank leaf"):
        vp(g, Update(update_leaf(CS, g.clients[1], gid, 7)), Sender.member(7))


def test_remove_proposal_needs_a_member() -> None:
    g = Group.create(3)
    vp(g, Remove(2), Sender.member(0))
    for bad in (3, 99):
        with pytest.raises(InvalidProposal, match="blank or outside"):
            vp(g, Remove(bad), Sender.member(0))


def test_psk_proposal_rules() -> None:
    g = Group.create(2)
    vp(g, PreSharedKey(PreSharedKeyID.external(b"id", os.urandom(CS.nh))), Sender.member(0))
    with pytest.raises(InvalidProposal, match="psk_nonce"):
        vp(g, PreSharedKey(PreSharedKeyID.external(b"id", b"short")), Sender.member(0))
    reinit = PreSharedKeyID.resumption(ResumptionPSKUsage.REINIT, b"g", 1, os.urandom(CS.nh))
    with pytest.raises(InvalidProposal, match="reinit"):
        vp(g, PreSharedKey(reinit), Sender.member(0))


def test_external_and_new_member_senders() -> None:
    joiner = make_client("joiner")
    g = Group.create(2)
    with pytest.raises(InvalidProposal, match="external_senders"):
        vp(g, Remove(1), Sender.external(0))
    ext = make_external_senders_extension([ExternalSender(joiner.sig_pub, joiner.leaf.credential)])
    g2 = Group.create(2, extensions=(ext,))
    vp(g2, Remove(1), Sender.external(0))
    with pytest.raises(InvalidProposal, match="index 1"):
        vp(g2, Remove(1), Sender.external(1))
    vp(g, Add(joiner.key_package), Sender.new_member_proposal())
    with pytest.raises(InvalidProposal, match="new_member_proposal"):
        vp(g, Remove(1), Sender.new_member_proposal())
    with pytest.raises(InvalidProposal, match="ExternalInit"):
        vp(g, ExternalInit(b"k" * 32), Sender.member(0))


def test_gce_proposal_must_be_well_formed() -> None:
    g = Group.create(2)
    dup = Extension(CUSTOM_EXT, b"")
    with pytest.raises(InvalidProposal, match="twice"):
        vp(g, GroupContextExtensions((dup, dup)), Sender.member(0))
    with pytest.raises(InvalidProposal, match="external_senders"):
        vp(g, GroupContextExtensions((Extension(5, b"\xff"),)), Sender.member(0))


def test_add_proposal_with_invalid_key_package() -> None:
    g = Group.create(2)
    kp = make_client("a").key_package
    with pytest.raises(InvalidProposal, match="add: invalid KeyPackage signature"):
        vp(g, Add(kp.with_signature(bytes(64))), Sender.member(0))


# --- the proposal list -----------------------------------------------------------------------------------


def test_update_by_committer_rejected() -> None:
    g = Group.create(3)
    up = update_leaf(CS, g.clients[0], g.context.group_id, 0)
    with pytest.raises(InvalidProposalList, match="generated by the committer"):
        apply(g, inline([P(Update(up))], 0))


def test_remove_of_committer_rejected() -> None:
    g = Group.create(3)
    with pytest.raises(InvalidProposalList, match="remove of the committer"):
        apply(g, inline([P(Remove(0))], 0))


def test_update_and_remove_of_same_leaf_rejected() -> None:
    g = Group.create(3)
    up = ResolvedProposal(
        P(Update(update_leaf(CS, g.clients[2], g.context.group_id, 2))), Sender.member(2), b"r"
    )
    with pytest.raises(InvalidProposalList, match="several updates/removes for leaf 2"):
        apply(g, [up, *inline([P(Remove(2))], 0)])
    with pytest.raises(InvalidProposalList, match="several updates/removes"):
        apply(g, inline([P(Remove(1)), P(Remove(1))], 0))


def test_duplicate_adds_rejected() -> None:
    g = Group.create(2)
    kp = make_client("new").key_package
    with pytest.raises(InvalidProposalList, match="added earlier in this commit"):
        apply(g, inline([P(Add(kp)), P(Add(kp))], 0))


def test_add_of_existing_member_rejected_unless_removed() -> None:
    g = Group.create(3)
    again = make_client("again", sig_keys=(g.clients[2].sig_priv, g.clients[2].sig_pub))
    with pytest.raises(InvalidProposalList, match="add of a member"):
        apply(g, inline([P(Add(again.key_package))], 0))
    app = apply(g, inline([P(Remove(2)), P(Add(again.key_package))], 0))
    assert [a.leaf_index for a in app.added] == [2]


def test_client_identity_rule() -> None:
    g = Group.create(2)
    same_name = make_client("member 1")

    def identity(leaf):  # type: ignore[no-untyped-def]
        return leaf.credential.identity

    apply(g, inline([P(Add(same_name.key_package))], 0))
    with pytest.raises(InvalidProposalList, match="already in the group"):
        apply(g, inline([P(Add(same_name.key_package))], 0), client_identity=identity)


def test_duplicate_psk_rejected() -> None:
    g = Group.create(2)
    psk = P(PreSharedKey(PreSharedKeyID.external(b"id", bytes(CS.nh))))
    with pytest.raises(InvalidProposalList, match="PreSharedKeyID"):
        apply(g, inline([psk, psk], 0))


def test_two_gce_rejected() -> None:
    g = Group.create(2)
    with pytest.raises(InvalidProposalList, match="several GroupContextExtensions"):
        apply(g, inline([P(GroupContextExtensions(())), P(GroupContextExtensions(()))], 0))


def test_reinit_must_be_alone() -> None:
    g = Group.create(3)
    reinit = P(ReInit(b"new group", g.context.version, 1, ()))
    with pytest.raises(InvalidProposalList, match="only proposal"):
        apply(g, inline([reinit, P(Remove(2))], 0))
    app = apply(g, inline([reinit], 0))
    assert app.reinit == reinit.value and not app.path_required


def test_external_init_in_regular_commit_rejected() -> None:
    g = Group.create(2)
    with pytest.raises(InvalidProposalList, match="ExternalInit"):
        apply(g, inline([P(ExternalInit(b"k"))], 0))


def test_external_commit_proposal_list() -> None:
    g = Group.create(3)
    ei, rm, psk = (
        P(ExternalInit(b"k")),
        P(Remove(1)),
        P(PreSharedKey(PreSharedKeyID.external(b"i", bytes(CS.nh)))),
    )

    def ext(ps: list[Proposal]):  # type: ignore[no-untyped-def]
        rs = [ResolvedProposal(p, Sender.new_member_commit()) for p in ps]
        return apply_proposals(CS, g.context, g.tree, rs, committer=Sender.new_member_commit(), now=NOW)

    app = ext([psk, rm, ei])
    assert app.external_init == b"k" and app.path_required and app.is_external
    for bad, match in (
        ([], "exactly one ExternalInit"),
        ([ei, ei], "exactly one ExternalInit"),
        ([ei, rm, P(Remove(2))], "at most one Remove"),
        ([ei, P(Add(make_client("x").key_package))], "cannot contain a add"),
        ([ei, P(GroupContextExtensions(()))], "cannot contain a group_context_extensions"),
    ):
        with pytest.raises(InvalidProposalList, match=match):
            ext(bad)


def test_gce_must_be_supported_by_every_remaining_member() -> None:
    caps = default_capabilities(extensions=(CUSTOM_EXT,))
    clients = [make_client(f"m{i}", capabilities=caps) for i in range(3)] + [make_client("old")]
    g = Group.create(4, clients=clients)
    gce = P(GroupContextExtensions((Extension(CUSTOM_EXT, b"on"),)))
    with pytest.raises(InvalidProposalList, match="leaf 3: does not support group context extension"):
        apply(g, inline([gce], 0))
    apply(g, inline([gce, P(Remove(3))], 0))  # the non-supporting member leaves in the same commit
    newcomer = make_client("new")  # does not support it either
    with pytest.raises(InvalidProposalList, match="does not support"):
        apply(g, inline([gce, P(Remove(3)), P(Add(newcomer.key_package))], 0))
    req = make_required_capabilities_extension(RequiredCapabilities(extension_types=(CUSTOM_EXT,)))
    with pytest.raises(InvalidProposalList, match="lacks required extension"):
        apply(g, inline([P(GroupContextExtensions((req,)))], 0))


def test_add_must_fit_group_credentials() -> None:
    g = Group.create(2)
    x509 = make_client(
        "x", credential=Credential.x509((b"c",)), capabilities=default_capabilities(credentials=(1, 2))
    )
    with pytest.raises(InvalidProposalList, match="not supported by every member"):
        apply(g, inline([P(Add(x509.key_package))], 0))
    narrow = make_client("n", capabilities=default_capabilities(credentials=(1,)))
    apply(g, inline([P(Add(narrow.key_package))], 0))


def test_add_must_support_new_required_capabilities() -> None:
    caps = default_capabilities(extensions=(CUSTOM_EXT,))
    g = Group.create(2, clients=[make_client(f"m{i}", capabilities=caps) for i in range(2)])
    req = make_required_capabilities_extension(RequiredCapabilities(extension_types=(CUSTOM_EXT,)))
    add = P(Add(make_client("plain").key_package))
    apply(g, inline([add], 0))
    with pytest.raises(InvalidProposalList, match="lacks required extension"):
        apply(g, inline([P(GroupContextExtensions((req,))), add], 0))


# --- applying --------------------------------------------------------------------------------------------


def test_apply_order_and_result() -> None:
    g = Group.create(4)
    gid = g.context.group_id
    new1, new2 = make_client("n1"), make_client("n2")
    up = update_leaf(CS, g.clients[3], gid, 3)
    nonce = os.urandom(CS.nh)
    proposals = [
        ResolvedProposal(P(Add(new1.key_package)), Sender.member(0)),
        ResolvedProposal(P(Update(up)), Sender.member(3), b"ref"),
        ResolvedProposal(P(Remove(1)), Sender.member(0)),
        ResolvedProposal(P(Add(new2.key_package)), Sender.member(0)),
        ResolvedProposal(P(PreSharedKey(PreSharedKeyID.external(b"p", nonce))), Sender.member(0)),
    ]
    before = g.tree.copy()
    app = apply(g, proposals)
    assert g.tree == before  # input untouched
    assert [(a.leaf_index, a.key_package) for a in app.added] == [
        (1, new1.key_package),
        (4, new2.key_package),
    ]
    assert [(r.leaf_index, r.leaf_node) for r in app.removed] == [(1, g.clients[1].leaf)]
    assert app.updated == [(3, up)]
    assert app.tree.leaf(3) == up and app.tree.leaf(1) == new1.leaf and app.tree.leaf(4) == new2.leaf
    assert [p.psk_nonce for p in app.psk_ids] == [nonce]
    assert app.path_required and app.extensions == g.context.extensions


def test_path_required_rule() -> None:
    kp = make_client("x").key_package
    psk = P(PreSharedKey(PreSharedKeyID.external(b"p", bytes(32))))
    assert path_required([])
    assert not path_required(inline([P(Add(kp)), psk], 0))
    for p in (P(Remove(1)), P(GroupContextExtensions(())), P(ExternalInit(b"k"))):
        assert path_required(inline([P(Add(kp)), p], 0))


def test_commit_from_blank_leaf_rejected() -> None:
    g = Group.create(2)
    with pytest.raises(InvalidCommit, match="blank leaf"):
        apply(g, [], committer=5)
    with pytest.raises(InvalidCommit, match="cannot commit"):
        apply_proposals(CS, g.context, g.tree, [], committer=Sender.external(0))


# --- paths -----------------------------------------------------------------------------------------------


def stage(
    g: Group,
    msg: PublicMessage,
    store: ProposalStore | None = None,
    client_identity: ClientIdentity | None = None,
) -> ProposalApplication:
    c = msg.content
    assert c.commit is not None
    return stage_commit(
        CS, g.context, g.tree, c.commit, c.sender, store, now=NOW, client_identity=client_identity
    )


def test_stage_matches_builder_tree() -> None:
    g = Group.create(5)
    new = make_client("n")
    msg, expected = g.commit(2, [P(Add(new.key_package)), P(Remove(4))])
    app = stage(g, msg)
    assert app.tree == expected and app.tree.tree_hash() == expected.tree_hash()
    assert app.committer_leaf == 2 and app.added_leaves == [4]
    assert app.support is not None and app.support.used == {1}


def test_missing_path_rejected_when_required() -> None:
    g = Group.create(3)
    for proposals in ([], [P(Remove(1))], [P(GroupContextExtensions(()))]):
        msg, _ = g.commit(0, proposals, path=False)
        with pytest.raises(InvalidCommit, match="must contain a path"):
            stage(g, msg)
    msg, expected = g.commit(0, [P(Add(make_client("n").key_package))], path=False)
    app = stage(g, msg)
    assert app.tree == expected and app.committer_leaf == 0


def test_external_commit_needs_path() -> None:
    g = Group.create(3)
    msg, _ = g.external_commit(make_client("j"), path=False)
    with pytest.raises(InvalidCommit, match="external commit must contain a path"):
        stage(g, msg)


def test_external_join_placed_at_leftmost_blank_leaf() -> None:
    g = Group.create(4)
    msg, tree = g.commit(0, [P(Remove(1))])
    g.advance(msg, tree)
    j = make_client("j")
    msg, expected = g.external_commit(j)
    app = stage(g, msg)
    assert app.committer_leaf == 1 and app.tree == expected
    assert app.tree.leaf(1) is not None and app.tree.leaf(1).signature_key == j.sig_pub  # type: ignore[union-attr]


def test_external_resync_rules() -> None:
    g = Group.create(3)
    me = g.clients[2]
    msg, expected = g.external_commit(me, remove=2)
    app = stage(g, msg)
    assert app.committer_leaf == 2 and app.tree == expected and app.removed[0].leaf_index == 2

    def identity(leaf):  # type: ignore[no-untyped-def]
        return leaf.credential.identity

    stage(g, msg, client_identity=identity)
    impostor = make_client("someone else")
    msg, _ = g.external_commit(impostor, remove=2)
    stage(g, msg)  # without an application identity rule any client may resync a leaf
    with pytest.raises(InvalidUpdatePath, match="not the same client"):
        stage(g, msg, client_identity=identity)


def _tamper_leaf(g: Group, committer: int, **changes: object):  # type: ignore[no-untyped-def]
    def tamper(path: UpdatePath) -> UpdatePath:
        leaf = replace(path.leaf_node, **changes)  # type: ignore[arg-type]
        leaf = sign_leaf(CS, leaf, g.clients[committer].sig_priv, g.context.group_id, committer)
        return replace(path, leaf_node=leaf)

    return tamper


def test_path_leaf_must_have_commit_source() -> None:
    g = Group.create(3)
    msg, _ = g.commit(
        0, [], tamper_path=_tamper_leaf(g, 0, leaf_node_source=LeafNodeSource.UPDATE, parent_hash=None)
    )
    with pytest.raises(InvalidUpdatePath, match="expected commit"):
        stage(g, msg)


def test_path_leaf_must_change_encryption_key() -> None:
    g = Group.create(3)
    msg, _ = g.commit(0, [], tamper_path=_tamper_leaf(g, 0, encryption_key=g.clients[0].enc_pub))
    with pytest.raises(InvalidUpdatePath, match="encryption key"):
        stage(g, msg)


def test_path_parent_hash_must_match() -> None:
    g = Group.create(4)
    msg, _ = g.commit(0, [], tamper_path=_tamper_leaf(g, 0, parent_hash=bytes(32)))
    with pytest.raises(InvalidUpdatePath, match="parent_hash"):
        stage(g, msg)


def test_path_leaf_signed_for_another_leaf() -> None:
    g = Group.create(3)

    def tamper(path: UpdatePath) -> UpdatePath:
        leaf = sign_leaf(CS, path.leaf_node, g.clients[0].sig_priv, g.context.group_id, 1)
        return replace(path, leaf_node=leaf)

    msg, _ = g.commit(0, [], tamper_path=tamper)
    with pytest.raises(InvalidUpdatePath, match="signature"):
        stage(g, msg)


def test_path_keys_must_be_fresh() -> None:
    g = Group.create(4)

    def reuse(path: UpdatePath) -> UpdatePath:
        node = replace(path.nodes[0], encryption_key=g.clients[3].enc_pub)
        return replace(path, nodes=(node, *path.nodes[1:]))

    msg, _ = g.commit(0, [], tamper_path=reuse)
    with pytest.raises(InvalidUpdatePath, match="reuses an encryption key"):
        stage(g, msg)

    def twice(path: UpdatePath) -> UpdatePath:
        return replace(path, nodes=(path.nodes[0], path.nodes[0]))

    msg, _ = g.commit(0, [], tamper_path=twice)
    with pytest.raises(InvalidUpdatePath, match="reuses"):
        stage(g, msg)


def test_path_shape_checked() -> None:
    g = Group.create(4)
    msg, _ = g.commit(0, [], tamper_path=lambda p: replace(p, nodes=p.nodes[:1]))
    with pytest.raises(InvalidUpdatePath, match="filtered direct path"):
        stage(g, msg)

    def drop_ct(path: UpdatePath) -> UpdatePath:
        n = path.nodes[1]
        return replace(
            path, nodes=(path.nodes[0], UpdatePathNode(n.encryption_key, n.encrypted_path_secret[:1]))
        )

    msg, _ = g.commit(0, [], tamper_path=drop_ct)
    with pytest.raises(InvalidUpdatePath, match="ciphertexts"):
        stage(g, msg)


def test_path_applied_once() -> None:
    g = Group.create(2)
    msg, _ = g.commit(0, [])
    app = stage(g, msg)
    assert msg.content.commit is not None
    with pytest.raises(InvalidCommit, match="already"):
        apply_commit_path(app, msg.content.commit.path, group_id=g.context.group_id)


def test_path_leaf_must_support_group() -> None:
    caps = default_capabilities(extensions=(CUSTOM_EXT,))
    g = Group.create(2, clients=[make_client(f"m{i}", capabilities=caps) for i in range(2)])
    gce = P(GroupContextExtensions((Extension(CUSTOM_EXT, b""),)))
    msg, _ = g.commit(0, [gce], tamper_path=_tamper_leaf(g, 0, capabilities=default_capabilities()))
    with pytest.raises(MlsError, match="does not support group context extension"):
        stage(g, msg)
    msg, expected = g.commit(0, [gce])
    app = stage(g, msg)
    assert app.tree == expected and app.extensions_changed


def test_credential_change_in_path_checked_against_members() -> None:
    g = Group.create(3)
    caps = Capabilities(cipher_suites=(1,), credentials=(1, 2))
    msg, _ = g.commit(
        0, [], tamper_path=_tamper_leaf(g, 0, credential=Credential.x509((b"c",)), capabilities=caps)
    )
    with pytest.raises(InvalidUpdatePath, match="not supported by every member"):
        stage(g, msg)
    assert SUITE_1.suite_id == 1


def test_gce_external_senders_must_not_repeat_keys() -> None:
    g = Group.create(2)
    s = ExternalSender(g.clients[0].sig_pub, g.clients[0].leaf.credential)
    vp(g, GroupContextExtensions((make_external_senders_extension([s]),)), Sender.member(0))
    with pytest.raises(InvalidProposal, match="signature key twice"):
        vp(g, GroupContextExtensions((make_external_senders_extension([s, s]),)), Sender.member(0))
