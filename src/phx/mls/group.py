"""The client's MLS group (RFC 9420): one object per group a client is a member of.

Sans-IO: methods take ``now`` (Unix seconds) where time matters and return messages to send; nothing is
sent or stored by this module. ::

    g = Group.create(SUITE_1, credential, sig_priv, now=now)
    result = g.commit(now=now, add=[kp_bob])         # CommitResult(commit, welcome, group_info)
    ...the DS accepts result.commit...
    g.merge_pending_commit()                           # only now does the new epoch take effect
    bob = Group.join_from_welcome(result.welcome, bob_bundle, now=now)
    bob.process(g.send(b"hi"), now=now)                # ApplicationMessage(sender=0, data=b"hi", ...)

Proposals sent as their own messages (``propose_*``) are kept in the proposal store of both sender and
receivers until a commit includes them by reference. :meth:`Group.to_bytes` / :meth:`Group.from_bytes`
persist everything (including the ratchets' out-of-order keys and a pending commit).

Application hooks, given at construction or load (not persisted): ``psk_store`` (external PSKs),
``credential_validator`` (called for every credential accepted into the group), ``client_identity``
(the "same client" rule for Adds) and ``resumption_source`` (resumption PSKs of other groups).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from phx.codec import Reader, Writer, decode_all
from phx.crypto import CipherSuite, suite
from phx.errors import DecodeError, MlsError
from phx.mls.commit_core import (
    ClientIdentity,
    InvalidCommit,
    InvalidProposal,
    ProposalStore,
    ResolvedProposal,
    StoredProposal,
    validate_proposal,
)
from phx.mls.framing import (
    FramingContext,
    authenticate,
    protect_application,
    protect_private,
    protect_public,
    unprotect_private,
    unprotect_public,
)
from phx.mls.group_commit import (
    PskResolver,
    build_group_info,
    create_commit,
    create_external_commit,
    process_commit,
)
from phx.mls.group_join import join_welcome, verified_tree
from phx.mls.group_state import (
    ApplicationMessage,
    CommitApplied,
    CommitResult,
    EpochState,
    GroupConfig,
    GroupStatus,
    Member,
    Outcome,
    PendingCommit,
    ProposalMessage,
    ProposalReceived,
    read_epoch_state,
    write_epoch_state,
)
from phx.mls.key_package import (
    DEFAULT_LIFETIME,
    CredentialValidator,
    KeyPackageBundle,
    create_key_package,
    sign_leaf_node,
)
from phx.mls.key_schedule import derive_epoch_secrets
from phx.mls.leaf_validation import (
    CredentialCheck,
    MemberSupport,
    check_group_context_extensions,
    check_leaf_supports_group,
)
from phx.mls.messages import (
    Add,
    AuthenticatedContent,
    Capabilities,
    ContentType,
    Credential,
    Extension,
    ExtensionType,
    ExternalInit,
    FramedContent,
    GroupContext,
    GroupContextExtensions,
    GroupInfo,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    MLSMessage,
    PreSharedKey,
    PreSharedKeyID,
    PrivateMessage,
    Proposal,
    ProposalOrRef,
    ProtocolVersion,
    PublicMessage,
    ReInit,
    Remove,
    ResumptionPSKUsage,
    Sender,
    SenderType,
    Update,
    Welcome,
    WireFormat,
    find_extension,
    parse_external_pub,
    parse_external_senders,
)
from phx.mls.secret_tree import SecretTree
from phx.mls.transcript import interim_transcript_hash
from phx.mls.tree import RatchetTree
from phx.mls.treekem import PrivateTree
from phx.mls.welcome import PskStore, ResumptionLookup, UnknownPsk, resolve_psk_secret

__all__ = ["Group"]

_FORMAT = 1


def _as_message(data: MLSMessage | bytes) -> MLSMessage:
    return data if isinstance(data, MLSMessage) else MLSMessage.decode(data)


class Group:
    """A member's view of one MLS group. See the module docstring."""

    def __init__(
        self,
        cs: CipherSuite,
        state: EpochState,
        signature_private_key: bytes,
        *,
        config: GroupConfig | None = None,
        psk_store: PskStore | None = None,
        credential_validator: CredentialValidator | None = None,
        client_identity: ClientIdentity | None = None,
        resumption_source: ResumptionLookup | None = None,
        secret_tree: SecretTree | None = None,
        status: GroupStatus = GroupStatus.ACTIVE,
    ) -> None:
        """Low-level constructor; use :meth:`create`, :meth:`join_from_welcome`, :meth:`join_external`
        or :meth:`from_bytes`."""
        self.cs = cs
        self.config = config or GroupConfig()
        self.psk_store = psk_store
        self.credential_validator = credential_validator
        self.client_identity = client_identity
        self.resumption_source = resumption_source
        self._sig_priv = signature_private_key
        self._state = state
        self._framing = self._framing_for(state, secret_tree)
        self._store = ProposalStore(cs)
        self._own_updates: dict[bytes, bytes] = {}
        self._pending: PendingCommit | None = None
        self._resumption: dict[int, bytes] = {state.epoch: state.secrets.resumption_psk}
        self._status = status
        self._reinit: ReInit | None = None

    def __repr__(self) -> str:
        gc = self._state.context
        return (
            f"Group(id={gc.group_id.hex()[:16]}, epoch={gc.epoch}, leaf={self.leaf_index}, "
            f"members={self._state.tree.member_count()}, {self._status.name.lower()})"
        )

    # --- construction ----------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        cs: CipherSuite,
        credential: Credential,
        signature_private_key: bytes,
        *,
        now: int,
        group_id: bytes | None = None,
        extensions: Sequence[Extension] = (),
        capabilities: Capabilities | None = None,
        leaf_extensions: Sequence[Extension] = (),
        lifetime: int = DEFAULT_LIFETIME,
        config: GroupConfig | None = None,
        psk_store: PskStore | None = None,
        credential_validator: CredentialValidator | None = None,
        client_identity: ClientIdentity | None = None,
        resumption_source: ResumptionLookup | None = None,
    ) -> Group:
        """A one-member group at epoch 0 (§11) with a random ``group_id`` unless one is given."""
        bundle = create_key_package(
            cs, credential, signature_private_key, now=now, lifetime=lifetime,
            capabilities=capabilities, leaf_extensions=leaf_extensions,
        )  # fmt: skip
        leaf = bundle.leaf_node
        exts = tuple(extensions)
        required = check_group_context_extensions(exts)
        check_leaf_supports_group(leaf, exts, required, "creator's leaf")
        if credential_validator is not None:
            credential_validator(credential, leaf.signature_key)
        tree = RatchetTree.one_member(cs, leaf)
        gid = cs.random() if group_id is None else group_id
        ctx = GroupContext(ProtocolVersion.MLS10, cs.suite_id, gid, 0, tree.tree_hash(), b"", exts)
        # §11: a random epoch secret; deriving it from a random init secret is the same distribution.
        secrets = derive_epoch_secrets(cs, cs.random(), None, ctx.encode())
        tag = secrets.confirmation_tag(b"")
        state = EpochState(
            ctx,
            tree,
            PrivateTree(cs, 0, bundle.encryption_private_key),
            secrets,
            interim_transcript_hash(cs, b"", tag),
            tag,
            MemberSupport.of_tree(tree),
        )
        return cls(
            cs, state, signature_private_key, config=config, psk_store=psk_store,
            credential_validator=credential_validator, client_identity=client_identity,
            resumption_source=resumption_source,
        )  # fmt: skip

    @classmethod
    def join_from_welcome(
        cls,
        welcome: MLSMessage | Welcome | bytes,
        bundle: KeyPackageBundle,
        *,
        now: int,
        ratchet_tree: bytes | RatchetTree | None = None,
        config: GroupConfig | None = None,
        psk_store: PskStore | None = None,
        credential_validator: CredentialValidator | None = None,
        client_identity: ClientIdentity | None = None,
        resumption_source: ResumptionLookup | None = None,
        reinit_from: Group | None = None,
    ) -> Group:
        """Join with a Welcome (§12.4.3.1). The tree comes from the GroupInfo's ratchet_tree extension
        unless given out of band; it is validated in full either way.

        ``reinit_from``/``resumption_source`` provide the resumption PSK of an old group when the
        Welcome re-initialises or branches one; with ``reinit_from`` the new group is checked against the
        committed ReInit. Checking that ``group_id`` is not one of the client's other groups is the
        caller's job. ``now`` is accepted for symmetry; tree leaves' lifetimes are not enforced on join
        (members that never updated would otherwise make the group unjoinable).
        """
        del now
        if not isinstance(welcome, Welcome):
            w = _as_message(welcome).welcome
            if w is None:
                raise MlsError("not a Welcome message")
            welcome = w
        check = _credential_check(credential_validator)
        sources = [
            s for s in (resumption_source, reinit_from._lookup_resumption if reinit_from else None) if s
        ]

        def lookup(group_id: bytes, epoch: int) -> bytes | None:
            for s in sources:
                v = s(group_id, epoch)
                if v is not None:
                    return v
            return None

        joined = join_welcome(
            welcome, bundle, ratchet_tree=ratchet_tree, psk_store=psk_store, resumption=lookup,
            check_credential=check,
        )  # fmt: skip
        gc = joined.group_info.group_context
        if reinit_from is not None:
            r = joined.resumption
            old = reinit_from
            if r is None or r.psk_group_id != old.group_id:
                raise MlsError("the Welcome does not resume the given old group")
            if r.usage == ResumptionPSKUsage.REINIT:
                ri = old._reinit
                if ri is None or old._status != GroupStatus.REINIT or r.psk_epoch != old.epoch:
                    raise MlsError("the old group's last commit is not a ReInit for this epoch")
                if (ri.group_id, ri.version, ri.cipher_suite, ri.extensions) != (
                    gc.group_id, gc.version, gc.cipher_suite, gc.extensions,
                ):  # fmt: skip
                    raise MlsError("the new group does not match the committed ReInit")
            elif (gc.version, gc.cipher_suite) != (old.context.version, old.context.cipher_suite):
                raise MlsError("a branched group must keep the old group's version and cipher suite")
        return cls(
            bundle.cipher_suite, joined.state, bundle.signature_private_key, config=config,
            psk_store=psk_store, credential_validator=credential_validator,
            client_identity=client_identity, resumption_source=resumption_source,
        )  # fmt: skip

    @classmethod
    def join_external(
        cls,
        group_info: MLSMessage | GroupInfo | bytes,
        credential: Credential,
        signature_private_key: bytes,
        *,
        now: int,
        ratchet_tree: bytes | RatchetTree | None = None,
        capabilities: Capabilities | None = None,
        leaf_extensions: Sequence[Extension] = (),
        remove: int | None = None,
        psks: Sequence[PreSharedKeyID] = (),
        authenticated_data: bytes = b"",
        config: GroupConfig | None = None,
        psk_store: PskStore | None = None,
        credential_validator: CredentialValidator | None = None,
        client_identity: ClientIdentity | None = None,
        resumption_source: ResumptionLookup | None = None,
    ) -> tuple[Group, MLSMessage]:
        """Join by external commit (§12.4.3.2) from a GroupInfo carrying external_pub.

        Returns the group (status EXTERNAL_JOIN_PENDING) and the commit for the DS; once the DS accepts
        it, :meth:`merge_pending_commit` activates the group (if it rejects, discard the group).
        ``remove`` is the leaf of an old incarnation of this client to replace (resync).
        """
        if not isinstance(group_info, GroupInfo):
            gi = _as_message(group_info).group_info
            if gi is None:
                raise MlsError("not a GroupInfo message")
            group_info = gi
        cs = suite(group_info.group_context.cipher_suite)
        check = _credential_check(credential_validator)
        tree = verified_tree(cs, group_info, ratchet_tree, check)
        ext = find_extension(group_info.extensions, ExtensionType.EXTERNAL_PUB)
        if ext is None:
            raise MlsError("the GroupInfo has no external_pub extension")
        try:
            external_pub = parse_external_pub(ext)
        except DecodeError as e:
            raise MlsError(f"malformed external_pub extension: {e}") from e
        bundle = create_key_package(
            cs, credential, signature_private_key, now=now, capabilities=capabilities,
            leaf_extensions=leaf_extensions,
        )  # fmt: skip

        def resolve(ids: Sequence[PreSharedKeyID]) -> bytes | None:
            return resolve_psk_secret(cs, ids, psk_store, resumption_source or (lambda g, e: None))

        state, message, outcome = create_external_commit(
            cs, group_info, tree, external_pub, bundle.leaf_node, signature_private_key, now=now,
            remove=remove, psk_ids=psks, authenticated_data=authenticated_data, resolve_psks=resolve,
            check_credential=check, client_identity=client_identity,
        )  # fmt: skip
        group = cls(
            cs, state, signature_private_key, config=config, psk_store=psk_store,
            credential_validator=credential_validator, client_identity=client_identity,
            resumption_source=resumption_source, status=GroupStatus.EXTERNAL_JOIN_PENDING,
        )  # fmt: skip
        group._pending = PendingCommit(state, CommitResult(message, None, None), outcome)
        return group, message

    # --- reading ---------------------------------------------------------------------------------------
    @property
    def group_id(self) -> bytes:
        return self._state.context.group_id

    @property
    def epoch(self) -> int:
        return self._state.context.epoch

    @property
    def context(self) -> GroupContext:
        return self._state.context

    @property
    def extensions(self) -> tuple[Extension, ...]:
        return self._state.context.extensions

    @property
    def leaf_index(self) -> int:
        return self._state.leaf_index

    @property
    def status(self) -> GroupStatus:
        return self._status

    @property
    def is_active(self) -> bool:
        return self._status == GroupStatus.ACTIVE

    @property
    def reinit_proposal(self) -> ReInit | None:
        """The committed ReInit when :attr:`status` is REINIT."""
        return self._reinit

    @property
    def tree(self) -> RatchetTree:
        """The public ratchet tree (do not mutate)."""
        return self._state.tree

    @property
    def epoch_authenticator(self) -> bytes:
        return self._state.secrets.epoch_authenticator

    @property
    def member_count(self) -> int:
        return self._state.tree.member_count()

    @property
    def own_leaf(self) -> LeafNode:
        return self._state.tree.require_leaf(self.leaf_index)

    @property
    def pending_commit(self) -> CommitResult | None:
        return None if self._pending is None else self._pending.result

    def member(self, leaf_index: int) -> Member | None:
        leaf = self._state.tree.leaf(leaf_index)
        return None if leaf is None else Member.of(leaf_index, leaf)

    def members(self) -> Iterator[Member]:
        for i, leaf in self._state.tree.leaves():
            yield Member.of(i, leaf)

    def pending_proposals(self) -> list[StoredProposal]:
        return list(self._store)

    def export_secret(self, label: bytes, context: bytes, length: int) -> bytes:
        """MLS-Exporter (§8.5) of the current epoch."""
        return self._state.secrets.export(label, context, length)

    def resumption_psk(self, epoch: int) -> bytes | None:
        """This group's resumption PSK of ``epoch`` if still kept (the last ``resumption_psk_epochs``)."""
        return self._resumption.get(epoch)

    def group_info(
        self,
        *,
        ratchet_tree: bool = True,
        external_pub: bool | None = None,
        extensions: Sequence[Extension] = (),
    ) -> MLSMessage:
        """A signed GroupInfo for the current epoch (for external joins or the DS)."""
        ep = self.config.external_pub_in_group_info if external_pub is None else external_pub
        gi = build_group_info(
            self.cs, self._state, self._sig_priv, ratchet_tree=ratchet_tree, external_pub=ep, extra=extensions
        )
        return MLSMessage(gi)

    # --- application messages --------------------------------------------------------------------------
    def send(self, data: bytes, *, authenticated_data: bytes = b"", padding: int | None = None) -> MLSMessage:
        """Encrypt application data as a PrivateMessage from our leaf."""
        self._require(GroupStatus.ACTIVE)
        if padding is None:
            block = self.config.padding_block
            padding = (-len(data)) % block if block else 0
        msg = protect_application(
            self._framing, self.leaf_index, self._sig_priv, data,
            authenticated_data=authenticated_data, padding=padding,
        )  # fmt: skip
        return MLSMessage(msg)

    # --- proposals -------------------------------------------------------------------------------------
    def propose_add(self, key_package: KeyPackage, *, now: int, **kw: object) -> ProposalMessage:
        return self._propose(Proposal(Add(key_package)), now=now, **kw)  # type: ignore[arg-type]

    def propose_remove(self, leaf_index: int, *, now: int, **kw: object) -> ProposalMessage:
        return self._propose(Proposal(Remove(leaf_index)), now=now, **kw)  # type: ignore[arg-type]

    def propose_psk(self, psk: PreSharedKeyID | bytes, *, now: int, **kw: object) -> ProposalMessage:
        """``psk`` is a PreSharedKeyID or an external PSK id (a fresh nonce is added)."""
        return self._propose(Proposal(PreSharedKey(self._psk_id(psk))), now=now, **kw)  # type: ignore[arg-type]

    def propose_reinit(
        self,
        *,
        now: int,
        group_id: bytes | None = None,
        cipher_suite: int | None = None,
        extensions: Sequence[Extension] | None = None,
        **kw: object,
    ) -> ProposalMessage:
        return self._propose(Proposal(self._reinit_body(group_id, cipher_suite, extensions)), now=now, **kw)  # type: ignore[arg-type]

    def propose_group_context_extensions(
        self, extensions: Sequence[Extension], *, now: int, **kw: object
    ) -> ProposalMessage:
        return self._propose(Proposal(GroupContextExtensions(tuple(extensions))), now=now, **kw)  # type: ignore[arg-type]

    def propose_update(
        self,
        *,
        now: int,
        leaf_extensions: Sequence[Extension] | None = None,
        capabilities: Capabilities | None = None,
        wire_format: WireFormat | None = None,
        authenticated_data: bytes = b"",
    ) -> ProposalMessage:
        """Propose a fresh encryption key for our leaf (optionally new extensions/capabilities)."""
        old = self.own_leaf
        priv, pub = self.cs.generate_hpke_key_pair()
        unsigned = LeafNode(
            pub,
            old.signature_key,
            old.credential,
            old.capabilities if capabilities is None else capabilities,
            LeafNodeSource.UPDATE,
            None,
            None,
            old.extensions if leaf_extensions is None else tuple(leaf_extensions),
            b"",
        )
        leaf = sign_leaf_node(self.cs, unsigned, self._sig_priv, self.group_id, self.leaf_index)
        sent = self._propose(
            Proposal(Update(leaf)), now=now, wire_format=wire_format, authenticated_data=authenticated_data
        )
        self._own_updates[sent.ref] = priv
        return sent

    def _propose(
        self,
        proposal: Proposal,
        *,
        now: int,
        wire_format: WireFormat | None = None,
        authenticated_data: bytes = b"",
    ) -> ProposalMessage:
        self._require(GroupStatus.ACTIVE)
        gc = self._state.context
        content = FramedContent(
            gc.group_id, gc.epoch, Sender.member(self.leaf_index), authenticated_data, proposal
        )
        wf = wire_format or self.config.handshake_wire_format
        auth = authenticate(self._framing, content, self._sig_priv, wire_format=wf)
        validate_proposal(
            self.cs, gc, self._state.tree, ResolvedProposal(proposal, content.sender), now=now,
            check_credential=_credential_check(self.credential_validator),
        )  # fmt: skip
        message = self._protect(auth)
        entry = self._store.add(auth)
        return ProposalMessage(message, entry.ref)

    def _protect(self, auth: AuthenticatedContent) -> MLSMessage:
        if auth.wire_format == WireFormat.PUBLIC_MESSAGE:
            return MLSMessage(protect_public(self._framing, auth))
        return MLSMessage(protect_private(self._framing, auth))

    # --- commits ---------------------------------------------------------------------------------------
    def commit(
        self,
        *,
        now: int,
        add: Sequence[KeyPackage] = (),
        remove: Sequence[int] = (),
        psks: Sequence[PreSharedKeyID | bytes] = (),
        group_context_extensions: Sequence[Extension] | None = None,
        reinit: ReInit | None = None,
        by_reference: bool = True,
        path: bool | None = None,
        wire_format: WireFormat | None = None,
        authenticated_data: bytes = b"",
        ratchet_tree_in_welcome: bool | None = None,
        group_info: bool = False,
        leaf_extensions: Sequence[Extension] | None = None,
    ) -> CommitResult:
        """Commit the stored proposals (``by_reference``) plus the given ones (inline).

        Stored proposals that are invalid, ours that we may not commit ourselves (our Update, our Remove)
        or that conflict with earlier ones are left out. ``path``: None = an UpdatePath only when
        required, True = always. Nothing changes until :meth:`merge_pending_commit`.
        """
        self._require(GroupStatus.ACTIVE)
        if self._pending is not None:
            raise MlsError("a commit is already pending: merge or clear it first")
        return self._commit(
            now=now, add=add, remove=remove, psks=[self._psk_id(p) for p in psks],
            gce=group_context_extensions, reinit=reinit, by_reference=by_reference, path=path,
            wire_format=wire_format, authenticated_data=authenticated_data,
            ratchet_tree_in_welcome=ratchet_tree_in_welcome, group_info=group_info,
            leaf_extensions=leaf_extensions,
        )  # fmt: skip

    def _commit(
        self,
        *,
        now: int,
        add: Sequence[KeyPackage],
        remove: Sequence[int],
        psks: Sequence[PreSharedKeyID],
        gce: Sequence[Extension] | None,
        reinit: ReInit | None,
        by_reference: bool,
        path: bool | None,
        wire_format: WireFormat | None,
        authenticated_data: bytes,
        ratchet_tree_in_welcome: bool | None,
        group_info: bool,
        leaf_extensions: Sequence[Extension] | None,
        extra_psks: Sequence[PreSharedKeyID] = (),
        resolve_psks: PskResolver | None = None,
    ) -> CommitResult:
        me = Sender.member(self.leaf_index)
        inline: list[Proposal] = []
        if reinit is not None:
            inline.append(Proposal(reinit))
        if gce is not None:
            inline.append(Proposal(GroupContextExtensions(tuple(gce))))
        inline.extend(Proposal(Remove(i)) for i in remove)
        inline.extend(Proposal(Add(kp)) for kp in add)
        inline.extend(Proposal(PreSharedKey(p)) for p in psks)
        chosen: list[tuple[ProposalOrRef, ResolvedProposal]] = []
        if by_reference and reinit is None:
            chosen.extend(self._committable(now, inline))
        chosen.extend((ProposalOrRef(p), ResolvedProposal(p, me)) for p in inline)
        pending = create_commit(
            self.cs, self._state, self._framing, self._sig_priv, chosen, now=now, path=path,
            wire_format=wire_format or self.config.handshake_wire_format,
            authenticated_data=authenticated_data, resolve_psks=resolve_psks or self._resolve_psks,
            extra_psks=extra_psks,
            ratchet_tree_in_welcome=(
                self.config.ratchet_tree_in_welcome if ratchet_tree_in_welcome is None
                else ratchet_tree_in_welcome
            ),
            group_info=group_info, external_pub=self.config.external_pub_in_group_info,
            leaf_extensions=None if leaf_extensions is None else tuple(leaf_extensions),
            check_credential=_credential_check(self.credential_validator),
            client_identity=self.client_identity,
        )  # fmt: skip
        self._pending = pending
        return pending.result

    def _committable(self, now: int, inline: list[Proposal]) -> list[tuple[ProposalOrRef, ResolvedProposal]]:
        """Stored proposals this member can commit, in arrival order, without conflicts (§12.2).

        A stored ReInit is committed alone when no inline proposals are given, and left out otherwise.
        """
        me = self.leaf_index
        touched: set[int] = {p.value.removed for p in inline if isinstance(p.value, Remove)}
        has_gce = any(isinstance(p.value, GroupContextExtensions) for p in inline)
        psk_ids = {p.value.psk.encode() for p in inline if isinstance(p.value, PreSharedKey)}
        signature_keys = {
            p.value.key_package.leaf_node.signature_key for p in inline if isinstance(p.value, Add)
        }
        check = _credential_check(self.credential_validator)
        if not inline:
            # A ReInit must be alone in its commit (§12.2): a stored one wins over everything else.
            for entry in self._store:
                rp = entry.resolved()
                if isinstance(rp.proposal.value, ReInit):
                    try:
                        validate_proposal(self.cs, self._state.context, self._state.tree, rp, now=now)
                    except MlsError:
                        continue
                    return [(ProposalOrRef(entry.ref), rp)]
        out: list[tuple[ProposalOrRef, ResolvedProposal]] = []
        for entry in self._store:
            rp = entry.resolved()
            body = rp.proposal.value
            if isinstance(body, (ReInit, ExternalInit)):
                continue
            if isinstance(body, Update):
                leaf = rp.sender.leaf_index
                if leaf is None or leaf == me or leaf in touched:
                    continue
                touched.add(leaf)
            elif isinstance(body, Remove):
                if body.removed == me or body.removed in touched:
                    continue
                touched.add(body.removed)
            elif isinstance(body, GroupContextExtensions):
                if has_gce:
                    continue
                has_gce = True
            elif isinstance(body, PreSharedKey):
                key = body.psk.encode()
                if key in psk_ids:
                    continue
                psk_ids.add(key)
            elif isinstance(body, Add):
                sk = body.key_package.leaf_node.signature_key
                if sk in signature_keys:
                    continue
                signature_keys.add(sk)
            try:
                validate_proposal(
                    self.cs, self._state.context, self._state.tree, rp, now=now, check_credential=check
                )
            except MlsError:
                continue
            out.append((ProposalOrRef(entry.ref), rp))
        return out

    def merge_pending_commit(self) -> CommitApplied:
        """Make our pending commit (or external join) take effect: the DS accepted it."""
        pending = self._pending
        if pending is None:
            raise MlsError("no pending commit")
        if self._status == GroupStatus.EXTERNAL_JOIN_PENDING:
            self._status = GroupStatus.ACTIVE
            self._pending = None
            return pending.outcome
        self._install(pending.state, pending.outcome)
        return pending.outcome

    def clear_pending_commit(self) -> None:
        """Forget our pending commit (the DS rejected it); the group stays in the current epoch."""
        if self._status == GroupStatus.EXTERNAL_JOIN_PENDING:
            raise MlsError("an external join cannot be cleared: discard the group instead")
        self._pending = None

    # --- re-initialisation and branching (§11.2, §11.3) -------------------------------------------------
    def _reinit_body(
        self, group_id: bytes | None, cipher_suite: int | None, extensions: Sequence[Extension] | None
    ) -> ReInit:
        gc = self._state.context
        return ReInit(
            self.cs.random() if group_id is None else group_id,
            ProtocolVersion.MLS10,
            gc.cipher_suite if cipher_suite is None else cipher_suite,
            gc.extensions if extensions is None else tuple(extensions),
        )

    def reinit_commit(
        self, *, now: int, group_id: bytes | None = None, cipher_suite: int | None = None,
        extensions: Sequence[Extension] | None = None, **kw: object,
    ) -> CommitResult:  # fmt: skip
        """Commit an inline ReInit; after merging, the group is frozen (status REINIT)."""
        return self.commit(now=now, reinit=self._reinit_body(group_id, cipher_suite, extensions), **kw)  # type: ignore[arg-type]

    def recreate(
        self,
        key_packages: Sequence[KeyPackage],
        *,
        now: int,
        credential: Credential | None = None,
        signature_private_key: bytes | None = None,
        branch: bool = False,
        group_id: bytes | None = None,
        group_info: bool = False,
    ) -> tuple[Group, CommitResult]:
        """Start the group that re-initialises this one (status REINIT) or, with ``branch``, a subgroup
        (§11.3); ``key_packages`` are the other members'. Returns the new group with its first commit
        pending (epoch 0 -> 1, adding everyone, with the resumption PSK) and that commit's messages."""
        if branch:
            self._require(GroupStatus.ACTIVE)
            usage = ResumptionPSKUsage.BRANCH
            gc = self._state.context
            cs, new_gid, exts = self.cs, group_id, gc.extensions
        else:
            ri = self._reinit
            if self._status != GroupStatus.REINIT or ri is None:
                raise MlsError("the group has no committed ReInit")
            usage = ResumptionPSKUsage.REINIT
            cs, new_gid, exts = suite(ri.cipher_suite), ri.group_id, ri.extensions
        leaf = self.own_leaf
        sig = self._sig_priv if signature_private_key is None else signature_private_key
        new = Group.create(
            cs, leaf.credential if credential is None else credential, sig, now=now, group_id=new_gid,
            extensions=exts, capabilities=leaf.capabilities, leaf_extensions=leaf.extensions,
            config=self.config, psk_store=self.psk_store, credential_validator=self.credential_validator,
            client_identity=self.client_identity, resumption_source=self.resumption_source,
        )  # fmt: skip
        psk = PreSharedKeyID.resumption(usage, self.group_id, self.epoch, cs.random())
        value = self._resumption.get(self.epoch)
        assert value is not None

        def resolve(ids: Sequence[PreSharedKeyID]) -> bytes | None:
            # The old group's resumption PSK is known here, not to the new group.
            return resolve_psk_secret(
                cs, ids, None, lambda g, e: value if (g, e) == (self.group_id, self.epoch) else None
            )

        result = new._commit(
            now=now, add=key_packages, remove=(), psks=(), gce=None, reinit=None, by_reference=False,
            path=None, wire_format=None, authenticated_data=b"", ratchet_tree_in_welcome=None,
            group_info=group_info, leaf_extensions=None, extra_psks=[psk], resolve_psks=resolve,
        )  # fmt: skip
        return new, result

    # --- receiving -------------------------------------------------------------------------------------
    def process(self, message: MLSMessage | bytes, *, now: int) -> Outcome:
        """Verify and apply a PublicMessage or PrivateMessage of this group's current epoch.

        Raises :class:`~phx.errors.WrongEpoch` for another epoch, :class:`MlsError` /
        :class:`~phx.errors.SignatureError` for invalid messages; the group is unchanged on failure.
        """
        if self._status in (GroupStatus.REMOVED, GroupStatus.EXTERNAL_JOIN_PENDING):
            raise MlsError(f"cannot process messages in state {self._status.name.lower()}")
        body = _as_message(message).body
        if isinstance(body, PublicMessage):
            auth = unprotect_public(self._framing, body, self._signature_key)
        elif isinstance(body, PrivateMessage):
            tree = self._state.tree
            auth = unprotect_private(
                self._framing, body, self._signature_key, leaf_in_use=lambda i: tree.leaf(i) is not None
            )
        else:
            raise MlsError("only PublicMessage and PrivateMessage can be processed by a group")
        content = auth.content
        ct = content.content_type
        if ct == ContentType.APPLICATION:
            assert content.application_data is not None and content.sender.leaf_index is not None
            return ApplicationMessage(
                content.sender.leaf_index, content.application_data, content.authenticated_data, self.epoch
            )
        if ct == ContentType.PROPOSAL:
            return self._receive_proposal(auth, now)
        return self._receive_commit(auth, now)

    def _signature_key(self, content: FramedContent) -> bytes:
        sender = content.sender
        st = sender.sender_type
        if st == SenderType.MEMBER:
            assert sender.index is not None
            leaf = self._state.tree.leaf(sender.index)
            if leaf is None:
                raise MlsError(f"sender leaf {sender.index} is blank or outside the tree")
            return leaf.signature_key
        if st == SenderType.EXTERNAL:
            ext = find_extension(self._state.context.extensions, ExtensionType.EXTERNAL_SENDERS)
            senders = parse_external_senders(ext) if ext is not None else ()
            assert sender.index is not None
            if sender.index >= len(senders):
                raise MlsError(f"unknown external sender {sender.index}")
            return senders[sender.index].signature_key
        if st == SenderType.NEW_MEMBER_PROPOSAL:
            p = content.proposal
            if p is None or not isinstance(p.value, Add):
                raise InvalidProposal("a new_member_proposal sender can only propose add")
            return p.value.key_package.leaf_node.signature_key
        c = content.commit
        if c is None or c.path is None:
            raise InvalidCommit("an external commit must contain a path")
        return c.path.leaf_node.signature_key

    def _receive_proposal(self, auth: AuthenticatedContent, now: int) -> ProposalReceived:
        content = auth.content
        proposal = content.proposal
        assert proposal is not None
        if content.sender.leaf_index == self.leaf_index:
            # Our own proposal coming back from the DS: already stored when we sent it.
            stored = next((e for e in self._store if e.content == auth), None)
            if stored is None:
                raise MlsError("a proposal from our own leaf that we did not send")
            return ProposalReceived(stored.ref, proposal, content.sender, content.authenticated_data)
        validate_proposal(
            self.cs, self._state.context, self._state.tree, ResolvedProposal(proposal, content.sender),
            now=now, check_credential=_credential_check(self.credential_validator),
        )  # fmt: skip
        entry = self._store.add(auth)
        return ProposalReceived(entry.ref, proposal, content.sender, content.authenticated_data)

    def _receive_commit(self, auth: AuthenticatedContent, now: int) -> CommitApplied:
        if self._status != GroupStatus.ACTIVE:
            raise MlsError(f"cannot process commits in state {self._status.name.lower()}")
        new_state, outcome = process_commit(
            self.cs, self._state, auth, self._store, now=now, own_update_keys=self._own_updates,
            resolve_psks=self._resolve_psks, check_credential=_credential_check(self.credential_validator),
            client_identity=self.client_identity,
        )  # fmt: skip
        if new_state is None:
            self._status = GroupStatus.REMOVED
            self._pending = None
            return outcome
        self._install(new_state, outcome)
        return outcome

    # --- epoch changes ---------------------------------------------------------------------------------
    def _framing_for(self, state: EpochState, secret_tree: SecretTree | None = None) -> FramingContext:
        cfg = self.config
        if secret_tree is None:
            secret_tree = SecretTree(
                self.cs, state.secrets.encryption_secret, state.tree.n_leaves,
                max_forward=cfg.max_forward, max_skipped=cfg.max_skipped,
            )  # fmt: skip
        return FramingContext(
            self.cs,
            state.context,
            state.secrets.sender_data_secret,
            state.secrets.membership_key,
            secret_tree,
        )

    def _install(self, state: EpochState, outcome: CommitApplied) -> None:
        self._state = state
        self._framing = self._framing_for(state)
        self._store.clear()
        self._own_updates.clear()
        self._pending = None
        self._resumption[state.epoch] = state.secrets.resumption_psk
        keep = max(self.config.resumption_psk_epochs, 1)
        for e in sorted(self._resumption)[:-keep]:
            del self._resumption[e]
        if outcome.reinit is not None:
            self._status = GroupStatus.REINIT
            self._reinit = outcome.reinit

    # --- PSKs ------------------------------------------------------------------------------------------
    def _psk_id(self, psk: PreSharedKeyID | bytes) -> PreSharedKeyID:
        return psk if isinstance(psk, PreSharedKeyID) else PreSharedKeyID.external(psk, self.cs.random())

    def _lookup_resumption(self, group_id: bytes, epoch: int) -> bytes | None:
        if group_id == self.group_id:
            return self._resumption.get(epoch)
        return None

    def _resolve_psks(self, ids: Sequence[PreSharedKeyID]) -> bytes | None:
        outer = self.resumption_source

        def lookup(group_id: bytes, epoch: int) -> bytes | None:
            v = self._lookup_resumption(group_id, epoch)
            if v is None and outer is not None:
                v = outer(group_id, epoch)
            return v

        return resolve_psk_secret(self.cs, ids, self.psk_store, lookup)

    def _require(self, status: GroupStatus) -> None:
        if self._status != status:
            raise MlsError(f"the group is {self._status.name.lower()}, not {status.name.lower()}")

    # --- persistence -----------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Everything needed to resume this group later (secret: store it encrypted)."""
        w = Writer()
        w.u8(_FORMAT)
        w.u16(self.cs.suite_id)
        self.config.write(w)
        w.u8(self._status)
        w.optional(self._reinit, Writer.struct)
        w.opaque(self._sig_priv)
        write_epoch_state(w, self._state)
        w.opaque(self._framing._tree().to_bytes())
        w.opaque(self._store.encode())
        w.u32(len(self._own_updates))
        for ref, key in self._own_updates.items():
            w.opaque(ref)
            w.opaque(key)
        w.u32(len(self._resumption))
        for epoch, psk in sorted(self._resumption.items()):
            w.u64(epoch)
            w.opaque(psk)
        pending = self._pending
        w.u8(pending is not None)
        if pending is not None:
            write_epoch_state(w, pending.state)
            r = pending.result
            w.opaque(r.commit.encode())
            w.optional(r.welcome, Writer.struct)
            w.optional(r.group_info, Writer.struct)
            pending.outcome.write(w)
        return w.getvalue()

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        psk_store: PskStore | None = None,
        credential_validator: CredentialValidator | None = None,
        client_identity: ClientIdentity | None = None,
        resumption_source: ResumptionLookup | None = None,
    ) -> Group:
        def read(r: Reader) -> Group:
            if r.u8() != _FORMAT:
                raise DecodeError("unknown group state format")
            cs = suite(r.u16())
            config = GroupConfig.read(r)
            status = GroupStatus(r.u8())
            reinit = r.optional(ReInit.read)
            sig_priv = r.opaque()
            state = read_epoch_state(cs, r)
            secret_tree = SecretTree.from_bytes(cs, r.opaque())
            g = cls(
                cs, state, sig_priv, config=config, psk_store=psk_store,
                credential_validator=credential_validator, client_identity=client_identity,
                resumption_source=resumption_source, secret_tree=secret_tree, status=status,
            )  # fmt: skip
            g._reinit = reinit
            g._store = ProposalStore.decode(cs, r.opaque())
            g._own_updates = {r.opaque(): r.opaque() for _ in range(r.u32())}
            g._resumption = {r.u64(): r.opaque() for _ in range(r.u32())}
            if r.boolean():
                pstate = read_epoch_state(cs, r)
                commit = MLSMessage.decode(r.opaque())
                welcome = r.optional(MLSMessage.read)
                gi = r.optional(MLSMessage.read)
                g._pending = PendingCommit(pstate, CommitResult(commit, welcome, gi), CommitApplied.read(r))
            return g

        try:
            return decode_all(read, data)
        except (UnknownPsk, ValueError) as e:
            raise DecodeError(f"invalid group state: {e}") from e


def _credential_check(validator: CredentialValidator | None) -> CredentialCheck | None:
    if validator is None:
        return None

    def check(leaf: LeafNode) -> None:
        validator(leaf.credential, leaf.signature_key)

    return check
