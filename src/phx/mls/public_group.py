"""The DS's view of a group (RFC 9420 without group secrets): public tree, GroupContext, transcript.

The DS follows a group by processing its handshake messages exactly as a member would, minus everything
that needs epoch secrets. What it can and cannot check:

* checked: group id, epoch (:class:`~phx.errors.WrongEpoch`), the sender's signature over
  FramedContentTBS with the current GroupContext, every proposal and proposal-list rule (§12.1, §12.2),
  the commit's path (leaf node validation, key uniqueness, shape, parent hashes), the resulting tree;
* **not** checked: the membership tag of member PublicMessages (needs the ``membership_key``; the DS
  never has it, so the tag is ignored — a member who strips or forges it is caught by the other members,
  who check it), the confirmation tag (needs the next epoch's ``confirmation_key``; the DS takes it as
  sent, it only feeds the interim transcript hash), the ExternalInit ``kem_output`` and anything inside
  PrivateMessages (passed through unprocessed after the group id and epoch check).

Processing is two-step so the DS can add its own policy between validation and storage::

    outcome = group.process(message, now)        # validates; the group is unchanged
    ...policy checks on outcome...
    group.accept(outcome)                         # stores the proposal / moves to the new epoch

After a commit the DS rebuilds the new epoch's GroupInfo from public state (Phoenix "GroupInfo updates"):
the committer only sends its signature, see :meth:`CommitOutcome.group_info`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from phx.codec import Reader, Writer, decode_all
from phx.crypto import CipherSuite, suite
from phx.errors import DecodeError, MlsError, WrongEpoch
from phx.mls.commit_core import (
    AddedMember,
    ClientIdentity,
    CredentialCheck,
    MemberSupport,
    ProposalStore,
    RemovedMember,
    ResolvedProposal,
    StoredProposal,
    proposal_ref,
    stage_commit,
    validate_proposal,
)
from phx.mls.framing import verify_content
from phx.mls.leaf_validation import (
    InvalidExtensions,
    check_extension_list,
    check_group_context_extensions,
    check_leaf_supports_group,
)
from phx.mls.messages import (
    Add,
    AuthenticatedContent,
    ContentType,
    Credential,
    Extension,
    ExtensionType,
    GroupContext,
    GroupInfo,
    LeafNode,
    MLSMessage,
    PreSharedKeyID,
    PrivateMessage,
    Proposal,
    PublicMessage,
    ReInit,
    Sender,
    SenderType,
    WireFormat,
    decode_ratchet_tree,
)
from phx.mls.messages.extensions import find_extension, parse_external_senders
from phx.mls.transcript import confirmed_transcript_hash, interim_transcript_hash
from phx.mls.tree import RatchetTree
from phx.mls.tree_validation import validate_tree

__all__ = [
    "CommitOutcome",
    "OpaqueOutcome",
    "ProcessOutcome",
    "ProposalOutcome",
    "PublicGroup",
    "UnknownGroup",
]

GROUP_INFO_TBS = b"GroupInfoTBS"
# 1: without the tree-hash cache; 2: the cache follows the tree (still reads 1).
_STATE_VERSION = 2


class UnknownGroup(MlsError):
    """A message for another group than this one."""

    code = "mls_wrong_group"


# --- outcomes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProposalOutcome:
    """A valid proposal; :meth:`PublicGroup.accept` puts it into the proposal store under ``ref``."""

    epoch: int
    ref: bytes
    proposal: Proposal
    sender: Sender
    content: AuthenticatedContent


@dataclass(frozen=True, slots=True)
class OpaqueOutcome:
    """A PrivateMessage of this group and epoch: the DS cannot read it and passes it through."""

    epoch: int
    content_type: ContentType
    message: PrivateMessage


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    """A valid commit and the public state of the epoch it starts (not yet accepted)."""

    epoch: int  # the epoch the commit was sent in
    sender: Sender
    committer_leaf: int | None  # the committer's leaf in the new tree (None: path-less regular commit)
    proposals: tuple[ResolvedProposal, ...]
    added: tuple[AddedMember, ...]
    removed: tuple[RemovedMember, ...]
    updated: tuple[tuple[int, LeafNode], ...]
    psk_ids: tuple[PreSharedKeyID, ...]
    external_init: bytes | None
    reinit: ReInit | None
    new_context: GroupContext
    confirmation_tag: bytes
    interim_transcript_hash: bytes
    content: AuthenticatedContent
    tree: RatchetTree = field(repr=False)
    support: MemberSupport = field(repr=False)

    @property
    def is_external(self) -> bool:
        return self.sender.sender_type == SenderType.NEW_MEMBER_COMMIT

    @property
    def signer(self) -> int:
        """The leaf that signs the new GroupInfo: the committer (at its new leaf, for external joins)."""
        if self.committer_leaf is not None:
            return self.committer_leaf
        assert self.sender.leaf_index is not None
        return self.sender.leaf_index

    def group_info_unsigned(self, extensions: Sequence[Extension] = ()) -> GroupInfo:
        return GroupInfo(self.new_context, tuple(extensions), self.confirmation_tag, self.signer, b"")

    def group_info_tbs(self, extensions: Sequence[Extension] = ()) -> bytes:
        """The new epoch's GroupInfoTBS: context, ``extensions``, confirmation tag, signer."""
        return self.group_info_unsigned(extensions).tbs()

    def group_info(self, signature: bytes, extensions: Sequence[Extension] = ()) -> GroupInfo:
        """The new epoch's GroupInfo from the committer's ``signature``; raises SignatureError if it does
        not verify under the signer's key. ``extensions`` are the GroupInfo extensions the committer
        signed (e.g. external_pub, which the DS cannot derive)."""
        check_extension_list(extensions, "GroupInfo")
        gi = self.group_info_unsigned(extensions).with_signature(signature)
        leaf = self.tree.require_leaf(self.signer)
        self.tree.suite.check_signature(leaf.signature_key, GROUP_INFO_TBS, gi.tbs(), signature)
        return gi


ProcessOutcome = ProposalOutcome | CommitOutcome | OpaqueOutcome


# --- the group ------------------------------------------------------------------------------------


class PublicGroup:
    """Public state of one group at one epoch, and the rules to move it forward."""

    __slots__ = (
        "cs",
        "tree",
        "context",
        "interim_transcript_hash",
        "confirmation_tag",
        "store",
        "group_info",
        "_support",
        "_context_bytes",
    )

    def __init__(
        self,
        cs: CipherSuite,
        tree: RatchetTree,
        context: GroupContext,
        interim_transcript_hash: bytes,
        confirmation_tag: bytes,
        *,
        store: ProposalStore | None = None,
        group_info: GroupInfo | None = None,
        support: MemberSupport | None = None,
    ) -> None:
        """Trusting constructor (state the DS built or stored itself); use :meth:`from_group_info` for
        state received from a client."""
        self.cs = cs
        self.tree = tree
        self.context = context
        self.interim_transcript_hash = interim_transcript_hash
        self.confirmation_tag = confirmation_tag
        self.store = store if store is not None else ProposalStore(cs)
        self.group_info = group_info
        self._support = support if support is not None else MemberSupport.of_tree(tree)
        self._context_bytes = context.encode()

    # --- creation -----------------------------------------------------------------------------------
    @classmethod
    def from_group_info(
        cls,
        group_info: GroupInfo,
        ratchet_tree: RatchetTree | bytes | None = None,
        now: int | None = None,
        *,
        check_credential: CredentialCheck | None = None,
    ) -> PublicGroup:
        """Build the public group from a GroupInfo and its ratchet tree, validating both as a joiner
        would (§12.4.3.1): the whole tree (leaves, parent hashes, unmerged leaves, key uniqueness), its
        hash against the context, the GroupInfo signature by its signer.

        ``ratchet_tree``: a RatchetTree, its encoding, or None to take the GroupInfo's ratchet_tree
        extension. ``check_credential(leaf)`` is the application's credential check for every member.
        """
        ctx = group_info.group_context
        cs = suite(ctx.cipher_suite)
        check_extension_list(group_info.extensions, "GroupInfo")
        try:
            required = check_group_context_extensions(ctx.extensions)
        except InvalidExtensions as e:
            raise MlsError(f"GroupInfo: {e}") from e
        tree = _tree_from(cs, ratchet_tree, group_info)
        ident = None
        if check_credential is not None:
            checker = check_credential

            def ident(_: int, leaf: LeafNode) -> None:
                checker(leaf)

        validate_tree(
            tree, ctx.group_id, tree_hash=ctx.tree_hash, now=now, required=required, check_credential=ident
        )
        for i, leaf in tree.leaves():
            check_leaf_supports_group(leaf, ctx.extensions, required, f"leaf {i}", MlsError)
        signer = tree.leaf(group_info.signer)
        if signer is None:
            raise MlsError(f"GroupInfo signer {group_info.signer} is not a member")
        cs.check_signature(signer.signature_key, GROUP_INFO_TBS, group_info.tbs(), group_info.signature)
        interim = interim_transcript_hash(cs, ctx.confirmed_transcript_hash, group_info.confirmation_tag)
        return cls(cs, tree, ctx, interim, group_info.confirmation_tag, group_info=group_info)

    # --- reading ------------------------------------------------------------------------------------
    @property
    def group_id(self) -> bytes:
        return self.context.group_id

    @property
    def epoch(self) -> int:
        return self.context.epoch

    @property
    def extensions(self) -> tuple[Extension, ...]:
        return self.context.extensions

    def members(self) -> Iterator[tuple[int, LeafNode]]:
        """(leaf index, LeafNode) of every member, left to right."""
        return self.tree.leaves()

    def member_count(self) -> int:
        return self.tree.member_count()

    def leaf(self, leaf_index: int) -> LeafNode | None:
        return self.tree.leaf(leaf_index)

    def credential(self, leaf_index: int) -> Credential:
        return self.tree.require_leaf(leaf_index).credential

    def leaf_extensions(self, leaf_index: int) -> tuple[Extension, ...]:
        return self.tree.require_leaf(leaf_index).extensions

    def encoded_tree(self) -> bytes:
        """``optional<Node> ratchet_tree<V>``, what a joiner needs besides the GroupInfo."""
        return self.tree.encode()

    def pending_proposals(self) -> list[StoredProposal]:
        return list(self.store)

    def uncommitted_proposals(self, outcome: CommitOutcome) -> list[StoredProposal]:
        """Stored proposals the commit does not include (Phoenix: a commit must include all of them)."""
        included = {p.ref for p in outcome.proposals if p.ref is not None}
        return [e for e in self.store if e.ref not in included]

    # --- processing ---------------------------------------------------------------------------------
    def process(
        self,
        message: MLSMessage | PublicMessage | PrivateMessage,
        now: int | None = None,
        *,
        check_credential: CredentialCheck | None = None,
        client_identity: ClientIdentity | None = None,
    ) -> ProcessOutcome:
        """Validate one message against the current epoch; the group is not changed (see :meth:`accept`).

        Raises :class:`UnknownGroup`, :class:`WrongEpoch`, :class:`~phx.errors.SignatureError` or
        another :class:`MlsError` subclass naming the rule broken.
        """
        if isinstance(message, MLSMessage):
            body = message.body
            if not isinstance(body, PublicMessage | PrivateMessage):
                raise MlsError(f"a {message.wire_format.name.lower()} is not a group message")
            message = body
        if isinstance(message, PrivateMessage):
            self._check_group_epoch(message.group_id, message.epoch)
            return OpaqueOutcome(self.epoch, message.content_type, message)
        content = message.content
        self._check_group_epoch(content.group_id, content.epoch)
        st, ct = content.sender.sender_type, content.content_type
        if ct == ContentType.APPLICATION:
            raise MlsError("application data must not be sent as a PublicMessage")
        if st in (SenderType.EXTERNAL, SenderType.NEW_MEMBER_PROPOSAL) and ct != ContentType.PROPOSAL:
            raise MlsError(f"a {st.name.lower()} sender can only send proposals")
        if st == SenderType.NEW_MEMBER_COMMIT and ct != ContentType.COMMIT:
            raise MlsError("a new_member_commit sender can only send a commit")
        auth = AuthenticatedContent(WireFormat.PUBLIC_MESSAGE, content, message.auth)
        # The membership tag is not checked: the DS has no membership_key (see the module docstring).
        verify_content(self.cs, auth, self._signature_key(auth), self._context_bytes)
        if ct == ContentType.PROPOSAL:
            return self._process_proposal(auth, now, check_credential)
        return self._process_commit(auth, now, check_credential, client_identity)

    def accept(self, outcome: ProcessOutcome, group_info: GroupInfo | None = None) -> None:
        """Apply a processed message: store a proposal, or move to the commit's new epoch.

        ``group_info`` (from :meth:`CommitOutcome.group_info`) becomes the group's GroupInfo; without
        it the group has none until :meth:`set_group_info`. An outcome of another epoch (another commit was
        accepted since) is refused.
        """
        if outcome.epoch != self.epoch:
            raise WrongEpoch(f"outcome is for epoch {outcome.epoch}, the group is at epoch {self.epoch}")
        if isinstance(outcome, OpaqueOutcome):
            return
        if isinstance(outcome, ProposalOutcome):
            self.store.add(outcome.content)
            return
        if group_info is not None and group_info.group_context != outcome.new_context:
            raise MlsError("GroupInfo does not describe the commit's new epoch")
        self.tree = outcome.tree
        self.context = outcome.new_context
        self._context_bytes = outcome.new_context.encode()
        self.interim_transcript_hash = outcome.interim_transcript_hash
        self.confirmation_tag = outcome.confirmation_tag
        self._support = outcome.support
        self.store = ProposalStore(self.cs)
        self.group_info = group_info

    def group_info_tbs(self, signer: int, extensions: Sequence[Extension] = ()) -> bytes:
        """The current epoch's GroupInfoTBS with ``signer`` as the signing leaf."""
        return GroupInfo(self.context, tuple(extensions), self.confirmation_tag, signer, b"").tbs()

    def set_group_info(
        self, signer: int, signature: bytes, extensions: Sequence[Extension] = ()
    ) -> GroupInfo:
        """Rebuild and store the current epoch's GroupInfo from ``signer``'s ``signature`` (verified)."""
        check_extension_list(extensions, "GroupInfo")
        gi = GroupInfo(self.context, tuple(extensions), self.confirmation_tag, signer, signature)
        leaf = self.tree.leaf(signer)
        if leaf is None:
            raise MlsError(f"GroupInfo signer {signer} is not a member")
        self.cs.check_signature(leaf.signature_key, GROUP_INFO_TBS, gi.tbs(), signature)
        self.group_info = gi
        return gi

    # --- internals ----------------------------------------------------------------------------------
    def _check_group_epoch(self, group_id: bytes, epoch: int) -> None:
        if group_id != self.context.group_id:
            raise UnknownGroup("message is for another group")
        if epoch != self.context.epoch:
            raise WrongEpoch(f"message is for epoch {epoch}, the group is at epoch {self.context.epoch}")

    def _signature_key(self, auth: AuthenticatedContent) -> bytes:
        content = auth.content
        sender = content.sender
        st = sender.sender_type
        if st == SenderType.MEMBER:
            assert sender.index is not None
            leaf = self.tree.leaf(sender.index)
            if leaf is None:
                raise MlsError(f"sender leaf {sender.index} is not a member")
            return leaf.signature_key
        if st == SenderType.EXTERNAL:
            ext = find_extension(self.context.extensions, ExtensionType.EXTERNAL_SENDERS)
            if ext is None:
                raise MlsError("external sender, but the group has no external_senders extension")
            try:
                senders = parse_external_senders(ext)
            except DecodeError as e:
                raise MlsError(f"malformed external_senders extension: {e}") from e
            assert sender.index is not None
            if sender.index >= len(senders):
                raise MlsError(f"external sender index {sender.index} is not in external_senders")
            return senders[sender.index].signature_key
        if st == SenderType.NEW_MEMBER_PROPOSAL:
            proposal = content.proposal
            if proposal is None or not isinstance(proposal.value, Add):
                raise MlsError("a new_member_proposal sender can only propose add")
            return proposal.value.key_package.leaf_node.signature_key
        commit = content.commit
        assert commit is not None
        if commit.path is None:
            raise MlsError("an external commit must contain a path")
        return commit.path.leaf_node.signature_key

    def _process_proposal(
        self, auth: AuthenticatedContent, now: int | None, check_credential: CredentialCheck | None
    ) -> ProposalOutcome:
        proposal = auth.content.proposal
        assert proposal is not None
        rp = ResolvedProposal(proposal, auth.content.sender)
        validate_proposal(self.cs, self.context, self.tree, rp, now=now, check_credential=check_credential)
        ref = proposal_ref(self.cs, auth)
        return ProposalOutcome(self.epoch, ref, proposal, auth.content.sender, auth)

    def _process_commit(
        self,
        auth: AuthenticatedContent,
        now: int | None,
        check_credential: CredentialCheck | None,
        client_identity: ClientIdentity | None,
    ) -> CommitOutcome:
        content = auth.content
        commit = content.commit
        tag = auth.auth.confirmation_tag
        assert commit is not None and tag is not None
        app = stage_commit(
            self.cs,
            self.context,
            self.tree,
            commit,
            content.sender,
            self.store,
            now=now,
            support=self._support,
            check_credential=check_credential,
            client_identity=client_identity,
        )
        ctx = self.context
        confirmed = confirmed_transcript_hash(
            self.cs, self.interim_transcript_hash, WireFormat.PUBLIC_MESSAGE, content, auth.auth.signature
        )
        new_ctx = GroupContext(
            ctx.version,
            ctx.cipher_suite,
            ctx.group_id,
            ctx.epoch + 1,
            app.tree.tree_hash(),
            confirmed,
            app.extensions,
        )
        assert app.support is not None
        return CommitOutcome(
            epoch=ctx.epoch,
            sender=content.sender,
            committer_leaf=app.committer_leaf,
            proposals=tuple(app.proposals),
            added=tuple(app.added),
            removed=tuple(app.removed),
            updated=tuple(app.updated),
            psk_ids=tuple(app.psk_ids),
            external_init=app.external_init,
            reinit=app.reinit,
            new_context=new_ctx,
            confirmation_tag=tag,
            interim_transcript_hash=interim_transcript_hash(self.cs, confirmed, tag),
            content=auth,
            tree=app.tree,
            support=app.support,
        )

    # --- persistence --------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The whole state (the DS encrypts it at rest), with the tree-hash cache so that restoring a
        large group does not rehash its tree. Restored by :meth:`from_bytes`."""
        w = Writer()
        w.u8(_STATE_VERSION)
        w.u16(self.cs.suite_id)
        self.context._write(w)
        w.opaque(self.interim_transcript_hash)
        w.opaque(self.confirmation_tag)
        self.tree.write(w)
        w.opaque(self.tree.export_hash_cache())
        w.opaque(self.store.encode())
        w.optional(self.group_info, Writer.struct)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicGroup:
        """Restore :meth:`to_bytes` output (current or version 1). The state is the DS's own, so it is not
        re-validated beyond decoding and the tree/context consistency of sizes, and its tree-hash cache is
        trusted after a check of its root against the context (see
        :meth:`RatchetTree.import_hash_cache`: the DS stores this state encrypted under a key it does not
        keep, so only state it wrote comes back). Without a usable cache (version 1) the tree hashes are
        recomputed lazily."""

        def read(r: Reader) -> PublicGroup:
            version = r.u8()
            if version not in (1, _STATE_VERSION):
                raise DecodeError(f"unknown public group state version {version}")
            cs = suite(r.u16())
            ctx = GroupContext.read(r)
            if ctx.cipher_suite != cs.suite_id:
                raise DecodeError("public group state: cipher suite mismatch")
            interim = r.opaque()
            tag = r.opaque()
            try:
                tree = RatchetTree.from_wire_nodes(cs, decode_ratchet_tree(_opaque_with_header(r)))
            except MlsError as e:
                raise DecodeError(f"public group state: bad tree: {e}") from e
            if version >= 2:
                tree.import_hash_cache(r.opaque(), ctx.tree_hash)
            store = ProposalStore.decode(cs, r.opaque())
            gi = r.optional(GroupInfo.read)
            return cls(cs, tree, ctx, interim, tag, store=store, group_info=gi)

        return decode_all(read, data)


def _opaque_with_header(r: Reader) -> bytes:
    """Re-read an ``opaque<V>`` keeping its length header (decode_ratchet_tree wants the whole vector)."""
    start = r.pos
    r.opaque()
    return bytes(r.data[start : r.pos])


def _tree_from(
    cs: CipherSuite, ratchet_tree: RatchetTree | bytes | None, group_info: GroupInfo
) -> RatchetTree:
    if isinstance(ratchet_tree, RatchetTree):
        if ratchet_tree.suite.suite_id != cs.suite_id:
            raise MlsError("ratchet tree uses another cipher suite than the group")
        return ratchet_tree.copy()
    data = ratchet_tree
    if data is None:
        ext = find_extension(group_info.extensions, ExtensionType.RATCHET_TREE)
        if ext is None:
            raise MlsError("no ratchet tree: neither given nor in the GroupInfo's ratchet_tree extension")
        data = ext.extension_data
    try:
        return RatchetTree.from_wire_nodes(cs, decode_ratchet_tree(data))
    except DecodeError as e:
        raise MlsError(f"malformed ratchet tree: {e}") from e
