"""Proposals on their own and as a list (RFC 9420 §12.1, §12.2): the store, resolution, validity.

Part of the secret-free commit core (see :mod:`phx.mls.commit_core`, which re-exports everything here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from phx.codec import Reader, Writer, decode_all
from phx.crypto import CipherSuite
from phx.errors import DecodeError, MlsError
from phx.mls.leaf_validation import (
    CredentialCheck,
    InvalidExtensions,
    InvalidKeyPackage,
    InvalidLeafNode,
    check_group_context_extensions,
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
    LeafNode,
    LeafNodeSource,
    PreSharedKey,
    Proposal,
    ProposalType,
    PSKType,
    ReInit,
    Remove,
    ResumptionPSKUsage,
    Sender,
    SenderType,
    Update,
)
from phx.mls.messages.extensions import find_extension, parse_external_senders
from phx.mls.messages.refs import make_proposal_ref
from phx.mls.tree import RatchetTree
from phx.mls.tree_validation import DEFAULT_PROPOSAL_TYPES

__all__ = [
    "EXTERNAL_SENDER_PROPOSAL_TYPES",
    "PATH_REQUIRED_TYPES",
    "ClientIdentity",
    "InvalidCommit",
    "InvalidProposal",
    "InvalidProposalList",
    "InvalidUpdatePath",
    "ProposalStore",
    "ResolvedProposal",
    "StoredProposal",
    "check_proposal_list",
    "path_required",
    "proposal_ref",
    "resolve_proposals",
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
