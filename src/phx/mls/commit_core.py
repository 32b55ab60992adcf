"""The secret-free rules of committing (RFC 9420 §12.1-§12.4), shared by the client group and the DS.

Receiving a commit, both sides run the same pipeline on the *public* state (tree + GroupContext)::

    resolved = resolve_proposals(cs, commit, sender, store)         # ProposalOrRef -> (proposal, sender)
    app = apply_proposals(cs, ctx, tree, resolved, committer=sender, now=now)   # §12.2 checks + §12.3
    apply_commit_path(app, commit.path, group_id=ctx.group_id, now=now)        # path rules, merge

or in one call :func:`stage_commit`. The client then builds the provisional GroupContext from
``app.tree.tree_hash()`` and decrypts the path; the DS only computes the new public state. A committer
building a commit calls :func:`apply_proposals` on its own resolved list and then generates its path.

Everything raises an :class:`~phx.errors.MlsError` subclass naming the broken rule, and nothing mutates
the input tree (``apply_proposals`` works on a copy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from phx.crypto import CipherSuite
from phx.errors import MlsError, WrongEpoch
from phx.mls.leaf_validation import (
    CredentialCheck,
    InvalidExtensions,
    InvalidKeyPackage,
    InvalidLeafNode,
    MemberSupport,
    check_group_context_extensions,
    check_leaf_supports_group,
    validate_key_package,
    validate_leaf_node,
)
from phx.mls.messages import (
    Add,
    Commit,
    Extension,
    ExternalInit,
    GroupContext,
    GroupContextExtensions,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    PreSharedKey,
    PreSharedKeyID,
    ProposalType,
    ReInit,
    Remove,
    Sender,
    SenderType,
    Update,
    UpdatePath,
)
from phx.mls.proposal_validation import (
    EXTERNAL_SENDER_PROPOSAL_TYPES,
    PATH_REQUIRED_TYPES,
    ClientIdentity,
    InvalidCommit,
    InvalidProposal,
    InvalidProposalList,
    InvalidUpdatePath,
    ProposalStore,
    ResolvedProposal,
    StoredProposal,
    check_proposal_list,
    path_required,
    proposal_ref,
    resolve_proposals,
    validate_proposal,
)
from phx.mls.tree import RatchetTree
from phx.mls.treekem import merge_update_path

__all__ = [
    "CredentialCheck",
    "InvalidExtensions",
    "InvalidKeyPackage",
    "InvalidLeafNode",
    "MemberSupport",
    "validate_key_package",
    "validate_leaf_node",
    "EXTERNAL_SENDER_PROPOSAL_TYPES",
    "PATH_REQUIRED_TYPES",
    "AddedMember",
    "ClientIdentity",
    "InvalidCommit",
    "InvalidProposal",
    "InvalidProposalList",
    "InvalidUpdatePath",
    "ProposalApplication",
    "ProposalStore",
    "RemovedMember",
    "ResolvedProposal",
    "StoredProposal",
    "WrongEpoch",
    "apply_commit_path",
    "apply_proposals",
    "check_proposal_list",
    "path_required",
    "proposal_ref",
    "resolve_proposals",
    "stage_commit",
    "validate_proposal",
]

# --- applying (§12.3) --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddedMember:
    leaf_index: int
    key_package: KeyPackage


@dataclass(frozen=True, slots=True)
class RemovedMember:
    leaf_index: int
    leaf_node: LeafNode


@dataclass
class ProposalApplication:
    """The public state after a commit's proposals (and, after :func:`apply_commit_path`, its path)."""

    tree: RatchetTree
    extensions: tuple[Extension, ...]
    proposals: list[ResolvedProposal]
    committer: Sender
    added: list[AddedMember] = field(default_factory=list)
    removed: list[RemovedMember] = field(default_factory=list)
    updated: list[tuple[int, LeafNode]] = field(default_factory=list)
    psk_ids: list[PreSharedKeyID] = field(default_factory=list)
    external_init: bytes | None = None
    reinit: ReInit | None = None
    path_required: bool = True
    extensions_changed: bool = False
    support: MemberSupport | None = None
    #: The committer's leaf index in the new tree (for external commits: the joiner's new leaf); set by
    #: apply_commit_path when the commit has a path.
    committer_leaf: int | None = None
    path_applied: bool = False

    @property
    def is_external(self) -> bool:
        return self.committer.sender_type == SenderType.NEW_MEMBER_COMMIT

    @property
    def added_leaves(self) -> list[int]:
        return [a.leaf_index for a in self.added]


def apply_proposals(
    cs: CipherSuite,
    group_context: GroupContext,
    tree: RatchetTree,
    proposals: Sequence[ResolvedProposal],
    *,
    committer: Sender,
    now: int | None = None,
    support: MemberSupport | None = None,
    check_credential: CredentialCheck | None = None,
    client_identity: ClientIdentity | None = None,
) -> ProposalApplication:
    """Validate the proposal list (§12.2) and apply it to a copy of ``tree`` (§12.3).

    ``support`` is the current members' credential support (computed from ``tree`` when None); the
    result carries the updated one. ``client_identity`` is the application's "same client" rule for
    Adds (the signature key is always one). Raises :class:`InvalidProposalList`.
    """
    st = committer.sender_type
    if st not in (SenderType.MEMBER, SenderType.NEW_MEMBER_COMMIT):
        raise InvalidCommit(f"a {st.name.lower()} sender cannot commit")
    if st == SenderType.MEMBER:
        assert committer.index is not None
        if tree.leaf(committer.index) is None:
            raise InvalidCommit(f"commit from blank leaf {committer.index}")
    check_proposal_list(proposals, committer)
    extensions = group_context.extensions
    extensions_changed = False
    for p in proposals:
        if isinstance(p.proposal.value, GroupContextExtensions):
            extensions = p.proposal.value.extensions
            extensions_changed = True
    for i, p in enumerate(proposals):
        try:
            validate_proposal(
                cs, group_context, tree, p, extensions=extensions, now=now, check_credential=check_credential
            )
        except MlsError as e:
            raise InvalidProposalList(f"proposal {i}: {e}") from e

    new = tree.copy()
    sup = support.copy() if support is not None else MemberSupport.of_tree(tree)
    app = ProposalApplication(new, tuple(extensions), list(proposals), committer, support=sup)
    app.extensions_changed = extensions_changed
    app.path_required = st == SenderType.NEW_MEMBER_COMMIT or path_required(proposals)
    new_leaves: list[tuple[str, LeafNode]] = []
    for p in proposals:
        body = p.proposal.value
        if isinstance(body, Update):
            leaf_index = p.sender.leaf_index
            assert leaf_index is not None
            sup.replace(new.leaf(leaf_index), body.leaf_node)
            new.update_leaf(leaf_index, body.leaf_node)
            app.updated.append((leaf_index, body.leaf_node))
            new_leaves.append((f"update of leaf {leaf_index}", body.leaf_node))
    for p in proposals:
        body = p.proposal.value
        if isinstance(body, Remove):
            old = new.require_leaf(body.removed)
            sup.remove(old)
            new.remove_leaf(body.removed)
            app.removed.append(RemovedMember(body.removed, old))
    identities: dict[bytes, int] | None = None
    if client_identity is not None and any(p.type == ProposalType.ADD for p in proposals):
        identities = {client_identity(leaf): i for i, leaf in new.leaves()}
    for i, p in enumerate(proposals):
        body = p.proposal.value
        if not isinstance(body, Add):
            continue
        leaf = body.key_package.leaf_node
        owner = new.signature_key_owner(leaf.signature_key)
        if owner is not None:
            what = "a client added earlier in this commit" if owner in app.added_leaves else "a member"
            raise InvalidProposalList(f"proposal {i}: add of {what} (leaf {owner}, same signature key)")
        enc_owner = new.encryption_key_owner(leaf.encryption_key)
        if enc_owner is not None:
            raise InvalidProposalList(f"proposal {i}: add reuses the encryption key of node {enc_owner}")
        if identities is not None:
            assert client_identity is not None
            ident = client_identity(leaf)
            if ident in identities:
                raise InvalidProposalList(f"proposal {i}: add of a client already in the group")
        index = new.add_leaf(leaf)
        if identities is not None:
            identities[ident] = index
        sup.add(leaf)
        app.added.append(AddedMember(index, body.key_package))
        new_leaves.append((f"add at leaf {index}", leaf))
    for p in proposals:
        body = p.proposal.value
        if isinstance(body, PreSharedKey):
            app.psk_ids.append(body.psk)
        elif isinstance(body, ExternalInit):
            app.external_init = body.kem_output
        elif isinstance(body, ReInit):
            app.reinit = body
    for where, leaf in new_leaves:
        try:
            sup.check(leaf, where)
        except InvalidLeafNode as e:
            raise InvalidProposalList(str(e)) from e
    if extensions_changed:
        # §12.1.7: every member after the commit (added ones included) supports the new extensions.
        required = check_group_context_extensions(extensions)
        for i, leaf in new.leaves():
            try:
                check_leaf_supports_group(leaf, extensions, required, f"leaf {i}")
            except InvalidLeafNode as e:
                raise InvalidProposalList(f"group_context_extensions: {e}") from e
    return app


# --- the path (§12.4.2) ------------------------------------------------------------------------------


def apply_commit_path(
    app: ProposalApplication,
    path: UpdatePath | None,
    *,
    group_id: bytes,
    now: int | None = None,
    check_credential: CredentialCheck | None = None,
    client_identity: ClientIdentity | None = None,
) -> None:
    """Check the commit's path against ``app`` and merge it into ``app.tree`` (no secrets needed).

    Rejects a missing required path; validates the path's LeafNode (§7.3, source commit, signature
    bound to the committer's leaf), that its encryption key is new, that no key of the path is already
    in the tree, and (via :func:`merge_update_path`) its shape and parent hashes. For external commits
    the joiner is placed at the leftmost blank leaf first. Sets ``app.committer_leaf``.
    """
    if app.path_applied:
        raise InvalidCommit("the path was already applied")
    tree = app.tree
    if path is None:
        if app.is_external:
            raise InvalidCommit("an external commit must contain a path")
        if app.path_required:
            raise InvalidCommit("this commit must contain a path (empty, or covers update/remove/gce)")
        app.committer_leaf = app.committer.leaf_index
        return
    leaf = path.leaf_node
    removed_old: RemovedMember | None = None
    if app.is_external:
        index = tree.leftmost_blank_leaf()
        replaces = None
        if app.removed:
            removed_old = app.removed[0]
    else:
        assert app.committer.index is not None
        index = app.committer.index
        replaces = index
    try:
        validate_leaf_node(
            tree.suite,
            leaf,
            source=LeafNodeSource.COMMIT,
            group_id=group_id,
            leaf_index=index,
            extensions=app.extensions,
            now=now,
            tree=tree,
            replaces=replaces,
            check_credential=check_credential,
        )
    except (InvalidLeafNode, InvalidExtensions) as e:
        raise InvalidUpdatePath(f"path leaf node: {e}") from e
    if removed_old is not None:
        # §12.2: a resync's new leaf must be a valid Update of the removed one.
        if leaf.encryption_key == removed_old.leaf_node.encryption_key:
            raise InvalidUpdatePath("external commit: path leaf keeps the removed leaf's encryption key")
        if client_identity is not None and client_identity(leaf) != client_identity(removed_old.leaf_node):
            raise InvalidUpdatePath("external commit: path leaf is not the same client as the removed leaf")
    if replaces is not None:
        old = tree.require_leaf(replaces)
        if leaf.encryption_key == old.encryption_key:
            raise InvalidUpdatePath("path leaf node must change the committer's encryption key")
    seen: set[bytes] = {leaf.encryption_key}
    for upn in path.nodes:
        key = upn.encryption_key
        if key in seen or tree.encryption_key_owner(key) is not None:
            raise InvalidUpdatePath("path reuses an encryption key already in the tree")
        seen.add(key)
    support = app.support
    if app.is_external:
        # The joiner's leaf is still blank: the merge fills it (§12.4.2).
        placed = tree.free_leaf()
        assert placed == index
        old_leaf = None
    else:
        old_leaf = tree.leaf(index)
    try:
        merge_update_path(tree, index, path, app.added_leaves)
    except MlsError as e:
        # app.tree is this commit's scratch copy: a rejected commit discards it whole.
        raise InvalidUpdatePath(str(e)) from e
    if support is not None:
        support.replace(old_leaf, leaf)
        try:
            support.check(leaf, f"path leaf {index}")
        except InvalidLeafNode as e:
            raise InvalidUpdatePath(str(e)) from e
    app.committer_leaf = index
    app.path_applied = True


# --- one call ----------------------------------------------------------------------------------------


def stage_commit(
    cs: CipherSuite,
    group_context: GroupContext,
    tree: RatchetTree,
    commit: Commit,
    committer: Sender,
    store: ProposalStore | None,
    *,
    now: int | None = None,
    support: MemberSupport | None = None,
    check_credential: CredentialCheck | None = None,
    client_identity: ClientIdentity | None = None,
) -> ProposalApplication:
    """Resolve, validate and apply a received commit's proposals and path to a copy of ``tree``."""
    resolved = resolve_proposals(cs, commit, committer, store)
    app = apply_proposals(
        cs,
        group_context,
        tree,
        resolved,
        committer=committer,
        now=now,
        support=support,
        check_credential=check_credential,
        client_identity=client_identity,
    )
    apply_commit_path(
        app,
        commit.path,
        group_id=group_context.group_id,
        now=now,
        check_credential=check_credential,
        client_identity=client_identity,
    )
    return app
