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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from phx.codec import Reader, Writer, decode_all
from phx.crypto import CipherSuite
from phx.errors import DecodeError, MlsError, WrongEpoch
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
    AuthenticatedContent,
    Commit,
    ContentType,
    Extension,
    ExtensionType,
    ExternalInit,
    GroupContext,
    GroupContextExtensions,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    ProposalType,
    PSKType,
    ReInit,
    Remove,
    ResumptionPSKUsage,
    Sender,
    SenderType,
    Update,
    UpdatePath,
)
from phx.mls.messages.extensions import find_extension, parse_external_senders
from phx.mls.messages.refs import make_proposal_ref
from phx.mls.tree import RatchetTree
from phx.mls.tree_validation import DEFAULT_PROPOSAL_TYPES
from phx.mls.treekem import merge_update_path

__all__ = [
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

#: Proposal types whose presence makes the commit's path mandatory (§12.4).
PATH_REQUIRED_TYPES = frozenset(
    {
        ProposalType.UPDATE,
        ProposalType.REMOVE,
        ProposalType.EXTERNAL_INIT,
        ProposalType.GROUP_CONTEXT_EXTENSIONS,
    }
)
#: Proposal types an ``external`` sender may send (§12.1.8).
EXTERNAL_SENDER_PROPOSAL_TYPES = frozenset(
    {
        ProposalType.ADD,
        ProposalType.REMOVE,
        ProposalType.PSK,
        ProposalType.REINIT,
        ProposalType.GROUP_CONTEXT_EXTENSIONS,
    }
)
_EXTERNAL_COMMIT_TYPES = frozenset({ProposalType.EXTERNAL_INIT, ProposalType.REMOVE, ProposalType.PSK})

#: The application's notion of "the same client" (§12.2): maps a leaf to a client identifier. Without it
#: only the signature key identifies a client.
ClientIdentity = Callable[[LeafNode], bytes]


class InvalidProposal(MlsError):
    code = "mls_invalid_proposal"


class InvalidProposalList(MlsError):
    code = "mls_invalid_proposal_list"


class InvalidCommit(MlsError):
    code = "mls_invalid_commit"


class InvalidUpdatePath(MlsError):
    code = "mls_invalid_update_path"


# --- proposal references and the store ---------------------------------------------------------------


def proposal_ref(cs: CipherSuite, auth: AuthenticatedContent) -> bytes:
    """``RefHash("MLS 1.0 Proposal Reference", AuthenticatedContent)``."""
    return make_proposal_ref(cs, auth.encode())


@dataclass(frozen=True, slots=True)
class ResolvedProposal:
    """A committed proposal with its sender; ``ref`` is None for proposals inlined in the commit."""

    proposal: Proposal
    sender: Sender
    ref: bytes | None = None

    @property
    def type(self) -> ProposalType:
        return self.proposal.proposal_type


@dataclass(frozen=True, slots=True)
class StoredProposal:
    ref: bytes
    content: AuthenticatedContent

    @property
    def proposal(self) -> Proposal:
        p = self.content.content.proposal
        assert p is not None
        return p

    @property
    def sender(self) -> Sender:
        return self.content.content.sender

    def resolved(self) -> ResolvedProposal:
        return ResolvedProposal(self.proposal, self.sender, self.ref)


class ProposalStore:
    """Proposals received in the current epoch, by ProposalRef. Cleared at every epoch change."""

    __slots__ = ("cs", "_items")

    def __init__(self, cs: CipherSuite) -> None:
        self.cs = cs
        self._items: dict[bytes, StoredProposal] = {}

    def add(self, auth: AuthenticatedContent) -> StoredProposal:
        """Store a verified proposal message; returns the entry (its ``ref`` names it in commits)."""
        if auth.content.content_type != ContentType.PROPOSAL:
            raise InvalidProposal("only proposals go into the proposal store")
        entry = StoredProposal(proposal_ref(self.cs, auth), auth)
        self._items[entry.ref] = entry
        return entry

    def get(self, ref: bytes) -> StoredProposal | None:
        return self._items.get(ref)

    def __contains__(self, ref: object) -> bool:
        return ref in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[StoredProposal]:
        return iter(list(self._items.values()))

    def clear(self) -> None:
        self._items.clear()

    def copy(self) -> ProposalStore:
        s = ProposalStore(self.cs)
        s._items = dict(self._items)
        return s

    def encode(self) -> bytes:
        w = Writer()
        w.vector([e.content for e in self._items.values()], Writer.struct)
        return w.getvalue()

    @classmethod
    def decode(cls, cs: CipherSuite, data: bytes) -> ProposalStore:
        def read(r: Reader) -> tuple[AuthenticatedContent, ...]:
            return r.vector(AuthenticatedContent.read)

        store = cls(cs)
        for auth in decode_all(read, data):
            store.add(auth)
        return store


def resolve_proposals(
    cs: CipherSuite, commit: Commit, committer: Sender, store: ProposalStore | None
) -> list[ResolvedProposal]:
    """Turn the commit's ProposalOrRef list into (proposal, sender) pairs, in commit order.

    Inline proposals are the committer's. An unknown reference is an :class:`InvalidProposalList`;
    external commits must not reference proposals at all (§12.4.3.2).
    """
    out: list[ResolvedProposal] = []
    for i, por in enumerate(commit.proposals):
        v = por.value
        if isinstance(v, Proposal):
            out.append(ResolvedProposal(v, committer))
            continue
        if committer.sender_type == SenderType.NEW_MEMBER_COMMIT:
            raise InvalidProposalList("an external commit must not include proposals by reference")
        entry = store.get(v) if store is not None else None
        if entry is None:
            raise InvalidProposalList(f"proposal {i}: unknown proposal reference {v.hex()}")
        out.append(entry.resolved())
    return out


def path_required(proposals: Sequence[ResolvedProposal]) -> bool:
    """§12.4: an empty commit or one covering a path-required proposal type must carry a path."""
    return not proposals or any(p.type in PATH_REQUIRED_TYPES for p in proposals)


# --- individual proposals (§12.1) --------------------------------------------------------------------


def _external_senders(extensions: Sequence[Extension]) -> int:
    ext = find_extension(extensions, ExtensionType.EXTERNAL_SENDERS)
    if ext is None:
        return 0
    try:
        return len(parse_external_senders(ext))
    except DecodeError as e:
        raise InvalidExtensions(f"malformed external_senders extension: {e}") from e


def _check_sender(rp: ResolvedProposal, tree: RatchetTree, extensions: Sequence[Extension]) -> None:
    t, st = rp.type, rp.sender.sender_type
    if st == SenderType.MEMBER:
        assert rp.sender.index is not None
        if tree.leaf(rp.sender.index) is None:
            raise InvalidProposal(f"{t.name.lower()} proposal from blank leaf {rp.sender.index}")
        if t == ProposalType.EXTERNAL_INIT:
            raise InvalidProposal("an ExternalInit proposal can only be inlined in an external commit")
    elif st == SenderType.EXTERNAL:
        if t not in EXTERNAL_SENDER_PROPOSAL_TYPES:
            raise InvalidProposal(f"an external sender cannot propose {t.name.lower()}")
        assert rp.sender.index is not None
        if rp.sender.index >= _external_senders(extensions):
            raise InvalidProposal(f"external sender index {rp.sender.index} is not in external_senders")
    elif st == SenderType.NEW_MEMBER_PROPOSAL:
        if t != ProposalType.ADD:
            raise InvalidProposal("a new_member_proposal sender can only propose add")
    elif t not in _EXTERNAL_COMMIT_TYPES:
        raise InvalidProposal(f"an external commit cannot contain a {t.name.lower()} proposal")


def validate_proposal(
    cs: CipherSuite,
    group_context: GroupContext,
    tree: RatchetTree,
    rp: ResolvedProposal,
    *,
    extensions: Sequence[Extension] | None = None,
    now: int | None = None,
    check_credential: CredentialCheck | None = None,
) -> None:
    """The validity of one proposal on its own (§12.1.x), including who may send it.

    ``extensions`` are the GroupContext extensions to judge it by (default: the context's; a commit
    passes the ones after its GroupContextExtensions proposal). Checks that involve other proposals or
    the resulting tree are :func:`apply_proposals`'s.
    """
    exts = group_context.extensions if extensions is None else extensions
    _check_sender(rp, tree, exts)
    body = rp.proposal.value
    if isinstance(body, Add):
        try:
            validate_key_package(
                cs, body.key_package, now=now, extensions=exts, check_credential=check_credential
            )
        except (InvalidKeyPackage, InvalidExtensions) as e:
            raise InvalidProposal(f"add: {e}") from e
        if rp.sender.sender_type == SenderType.NEW_MEMBER_PROPOSAL:
            # §12.1.8: signed by the joiner itself; the caller verified the signature with this key.
            pass
    elif isinstance(body, Update):
        sender = rp.sender.leaf_index
        if sender is None:
            raise InvalidProposal("an update can only come from a member")
        old = tree.require_leaf(sender)
        try:
            validate_leaf_node(
                cs,
                body.leaf_node,
                source=LeafNodeSource.UPDATE,
                group_id=group_context.group_id,
                leaf_index=sender,
                extensions=exts,
                now=now,
                tree=tree,
                replaces=sender,
                check_credential=check_credential,
            )
        except (InvalidLeafNode, InvalidExtensions) as e:
            raise InvalidProposal(f"update: {e}") from e
        if body.leaf_node.encryption_key == old.encryption_key:
            raise InvalidProposal(f"update: leaf {sender} keeps its old encryption key")
    elif isinstance(body, Remove):
        if tree.leaf(body.removed) is None:
            raise InvalidProposal(f"remove: leaf {body.removed} is blank or outside the tree")
    elif isinstance(body, PreSharedKey):
        psk = body.psk
        if len(psk.psk_nonce) != cs.nh:
            raise InvalidProposal(f"psk: psk_nonce has {len(psk.psk_nonce)} bytes, expected {cs.nh}")
        if psk.psktype == PSKType.RESUMPTION and psk.usage != ResumptionPSKUsage.APPLICATION:
            # reinit/branch PSKs only appear in Welcomes of reinitialised/branched groups, never here.
            assert psk.usage is not None
            raise InvalidProposal(f"psk: resumption PSK with usage {psk.usage.name.lower()} in a commit")
    elif isinstance(body, ReInit):
        if body.version < group_context.version:
            raise InvalidProposal("reinit: version is lower than the group's")
        try:
            check_group_context_extensions(body.extensions)
        except InvalidExtensions as e:
            raise InvalidProposal(f"reinit: {e}") from e
    elif isinstance(body, GroupContextExtensions):
        try:
            check_group_context_extensions(body.extensions)
        except InvalidExtensions as e:
            raise InvalidProposal(f"group_context_extensions: {e}") from e
    else:
        assert isinstance(body, ExternalInit)
        if not body.kem_output:
            raise InvalidProposal("external_init: empty kem_output")


# --- proposal list (§12.2) ---------------------------------------------------------------------------


def check_proposal_list(
    proposals: Sequence[ResolvedProposal],
    committer: Sender,
    *,
    supported_proposal_types: frozenset[int] = frozenset(),
) -> None:
    """The rules of §12.2 that depend only on the list (the tree-dependent ones are in apply_proposals).

    ``supported_proposal_types``: non-default proposal types every remaining member supports.
    """
    external = committer.sender_type == SenderType.NEW_MEMBER_COMMIT
    types = [p.type for p in proposals]
    for i, p in enumerate(proposals):
        t = p.type
        if t not in DEFAULT_PROPOSAL_TYPES and t not in supported_proposal_types:
            raise InvalidProposalList(f"proposal {i}: type {int(t)} is not supported by every member")
    if external:
        bad = [t for t in types if t not in _EXTERNAL_COMMIT_TYPES]
        if bad:
            raise InvalidProposalList(f"an external commit cannot contain a {bad[0].name.lower()} proposal")
        if types.count(ProposalType.EXTERNAL_INIT) != 1:
            raise InvalidProposalList("an external commit must contain exactly one ExternalInit proposal")
        if types.count(ProposalType.REMOVE) > 1:
            raise InvalidProposalList("an external commit may contain at most one Remove proposal")
    else:
        if ProposalType.EXTERNAL_INIT in types:
            raise InvalidProposalList("a regular commit cannot contain an ExternalInit proposal")
        if ProposalType.REINIT in types and len(types) > 1:
            raise InvalidProposalList("a ReInit proposal must be the only proposal of its commit")
        me = committer.leaf_index
        touched: set[int] = set()
        for i, p in enumerate(proposals):
            body = p.proposal.value
            if isinstance(body, Update):
                leaf = p.sender.leaf_index
                if leaf is None:
                    raise InvalidProposalList(f"proposal {i}: update from a non-member")
                if leaf == me:
                    raise InvalidProposalList(f"proposal {i}: update generated by the committer")
            elif isinstance(body, Remove):
                leaf = body.removed
                if leaf == me:
                    raise InvalidProposalList(f"proposal {i}: remove of the committer")
            else:
                continue
            if leaf in touched:
                raise InvalidProposalList(f"proposal {i}: several updates/removes for leaf {leaf}")
            touched.add(leaf)
    if types.count(ProposalType.GROUP_CONTEXT_EXTENSIONS) > 1:
        raise InvalidProposalList("several GroupContextExtensions proposals")
    psk_ids: set[bytes] = set()
    for i, p in enumerate(proposals):
        body = p.proposal.value
        if isinstance(body, PreSharedKey):
            key = body.psk.encode()
            if key in psk_ids:
                raise InvalidProposalList(f"proposal {i}: PreSharedKeyID already in the list")
            psk_ids.add(key)


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
        index = _leftmost_free_leaf(tree)
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
        # The joiner occupies its leaf before the path is merged (§12.4.2); the placeholder is replaced
        # by the path's leaf in the merge (it only needs a key the merge will see as changed).
        placed = tree.add_leaf(replace(leaf, encryption_key=b""))
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


def _leftmost_free_leaf(tree: RatchetTree) -> int:
    for i in range(tree.n_leaves):
        if tree.leaf(i) is None:
            return i
    return tree.n_leaves


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
