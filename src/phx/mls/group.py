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

from collections.abc import Sequence
from dataclasses import replace

from phx.crypto import CipherSuite, suite
from phx.errors import MlsError, WrongEpoch
from phx.mls.commit_core import (
    ClientIdentity,
    ResolvedProposal,
    validate_proposal,
)
from phx.mls.framing import (
    authenticate,
    protect_application,
    protect_private,
    protect_public,
    unprotect_private,
    unprotect_public,
)
from phx.mls.group_base import GroupBase
from phx.mls.group_codec import decode_group, encode_group
from phx.mls.group_commit import (
    PskResolver,
    committable_proposals,
    create_commit,
    create_external_commit,
    process_commit,
    sender_signature_key,
)
from phx.mls.group_join import (
    check_resumed_group,
    external_pub_of,
    initial_state,
    join_welcome,
    verified_tree,
)
from phx.mls.group_state import (
    ApplicationMessage,
    CommitApplied,
    CommitResult,
    GroupConfig,
    GroupStatus,
    Outcome,
    PendingCommit,
    ProposalMessage,
    ProposalReceived,
)
from phx.mls.key_package import (
    DEFAULT_LIFETIME,
    CredentialValidator,
    KeyPackageBundle,
    create_key_package,
    credential_check,
    sign_leaf_node,
)
from phx.mls.messages import (
    Add,
    AuthenticatedContent,
    Capabilities,
    ContentType,
    Credential,
    Extension,
    FramedContent,
    GroupContextExtensions,
    GroupInfo,
    KeyPackage,
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
    Sender,
    Update,
    Welcome,
    WireFormat,
)
from phx.mls.tree import RatchetTree
from phx.mls.welcome import PskStore, ResumptionLookup, resolve_psk_secret

__all__ = ["Group"]


def _as_message(data: MLSMessage | bytes) -> MLSMessage:
    return data if isinstance(data, MLSMessage) else MLSMessage.decode(data)


class Group(GroupBase):
    """A member's view of one MLS group. See the module docstring."""

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
        if credential_validator is not None:
            credential_validator(credential, bundle.leaf_node.signature_key)
        gid = cs.random() if group_id is None else group_id
        state = initial_state(cs, bundle.leaf_node, bundle.encryption_private_key, gid, tuple(extensions))
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
        check = credential_check(credential_validator)
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
        if reinit_from is not None:
            old = reinit_from
            check_resumed_group(
                joined, old.context, old._reinit if old._status == GroupStatus.REINIT else None
            )
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
        check = credential_check(credential_validator)
        tree = verified_tree(cs, group_info, ratchet_tree, check)
        bundle = create_key_package(
            cs, credential, signature_private_key, now=now, capabilities=capabilities,
            leaf_extensions=leaf_extensions,
        )  # fmt: skip

        def resolve(ids: Sequence[PreSharedKeyID]) -> bytes | None:
            return resolve_psk_secret(cs, ids, psk_store, resumption_source or (lambda g, e: None))

        state, message, outcome = create_external_commit(
            cs, group_info, tree, external_pub_of(group_info), bundle.leaf_node, signature_private_key,
            now=now, remove=remove, psk_ids=psks, authenticated_data=authenticated_data,
            resolve_psks=resolve, check_credential=check, client_identity=client_identity,
        )  # fmt: skip
        group = cls(
            cs, state, signature_private_key, config=config, psk_store=psk_store,
            credential_validator=credential_validator, client_identity=client_identity,
            resumption_source=resumption_source, status=GroupStatus.EXTERNAL_JOIN_PENDING,
        )  # fmt: skip
        group._pending = PendingCommit(state, CommitResult(message, None, None), outcome)
        return group, message

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
    # Every propose_* takes ``wire_format`` (default: GroupConfig.handshake_wire_format) and
    # ``authenticated_data``; the proposal is validated, stored, and its message returned.
    def propose_add(
        self,
        key_package: KeyPackage,
        *,
        now: int,
        wire_format: WireFormat | None = None,
        authenticated_data: bytes = b"",
    ) -> ProposalMessage:
        return self.propose(
            Proposal(Add(key_package)),
            now=now,
            wire_format=wire_format,
            authenticated_data=authenticated_data,
        )

    def propose_remove(
        self,
        leaf_index: int,
        *,
        now: int,
        wire_format: WireFormat | None = None,
        authenticated_data: bytes = b"",
    ) -> ProposalMessage:
        return self.propose(
            Proposal(Remove(leaf_index)),
            now=now,
            wire_format=wire_format,
            authenticated_data=authenticated_data,
        )

    def propose_psk(
        self,
        psk: PreSharedKeyID | bytes,
        *,
        now: int,
        wire_format: WireFormat | None = None,
        authenticated_data: bytes = b"",
    ) -> ProposalMessage:
        """``psk`` is a PreSharedKeyID or an external PSK id (a fresh nonce is added)."""
        p = Proposal(PreSharedKey(self._psk_id(psk)))
        return self.propose(p, now=now, wire_format=wire_format, authenticated_data=authenticated_data)

    def propose_reinit(
        self,
        *,
        now: int,
        group_id: bytes | None = None,
        cipher_suite: int | None = None,
        extensions: Sequence[Extension] | None = None,
        wire_format: WireFormat | None = None,
        authenticated_data: bytes = b"",
    ) -> ProposalMessage:
        p = Proposal(self._reinit_body(group_id, cipher_suite, extensions))
        return self.propose(p, now=now, wire_format=wire_format, authenticated_data=authenticated_data)

    def propose_group_context_extensions(
        self,
        extensions: Sequence[Extension],
        *,
        now: int,
        wire_format: WireFormat | None = None,
        authenticated_data: bytes = b"",
    ) -> ProposalMessage:
        p = Proposal(GroupContextExtensions(tuple(extensions)))
        return self.propose(p, now=now, wire_format=wire_format, authenticated_data=authenticated_data)

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
        priv, pub = self.cs.generate_hpke_key_pair()
        old = self.own_leaf
        unsigned = replace(
            old, encryption_key=pub, leaf_node_source=LeafNodeSource.UPDATE, lifetime=None, parent_hash=None,
            capabilities=old.capabilities if capabilities is None else capabilities,
            extensions=old.extensions if leaf_extensions is None else tuple(leaf_extensions),
        )  # fmt: skip
        leaf = sign_leaf_node(self.cs, unsigned, self._sig_priv, self.group_id, self.leaf_index)
        sent = self._send_proposal(Proposal(Update(leaf)), now, wire_format, authenticated_data)
        self._own_updates[sent.ref] = priv
        return sent

    def propose(
        self,
        proposal: Proposal,
        *,
        now: int,
        wire_format: WireFormat | None = None,
        authenticated_data: bytes = b"",
    ) -> ProposalMessage:
        """Send any proposal but Update (use :meth:`propose_update`, which keeps the new private key)."""
        if isinstance(proposal.value, Update):
            raise MlsError("use propose_update for Update proposals")
        return self._send_proposal(proposal, now, wire_format, authenticated_data)

    def _send_proposal(
        self, proposal: Proposal, now: int, wire_format: WireFormat | None, authenticated_data: bytes
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
            check_credential=credential_check(self.credential_validator),
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
            st = self._state
            chosen.extend(
                committable_proposals(
                    self.cs, st.context, st.tree, self._store, inline, me=self.leaf_index, now=now,
                    check_credential=credential_check(self.credential_validator),
                )
            )  # fmt: skip
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
            check_credential=credential_check(self.credential_validator),
            client_identity=self.client_identity,
        )  # fmt: skip
        self._pending = pending
        return pending.result

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
        extensions: Sequence[Extension] | None = None, wire_format: WireFormat | None = None,
        authenticated_data: bytes = b"",
    ) -> CommitResult:  # fmt: skip
        """Commit an inline ReInit; after merging, the group is frozen (status REINIT)."""
        reinit = self._reinit_body(group_id, cipher_suite, extensions)
        return self.commit(
            now=now, reinit=reinit, wire_format=wire_format, authenticated_data=authenticated_data
        )

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
        # group_reinit builds on Group itself, hence the late import.
        from phx.mls.group_reinit import recreate_group

        return recreate_group(
            self, key_packages, now=now, credential=credential, signature_private_key=signature_private_key,
            branch=branch, group_id=group_id, group_info=group_info,
        )  # fmt: skip

    # --- receiving -------------------------------------------------------------------------------------
    def process(self, message: MLSMessage | bytes, *, now: int) -> Outcome:
        """Verify and apply a PublicMessage or PrivateMessage of this group's current epoch.

        Raises :class:`~phx.errors.WrongEpoch` for another epoch, :class:`MlsError` /
        :class:`~phx.errors.SignatureError` for invalid messages; the group is unchanged on failure.
        """
        if self._status in (GroupStatus.REMOVED, GroupStatus.EXTERNAL_JOIN_PENDING):
            raise MlsError(f"cannot process messages in state {self._status.name.lower()}")
        msg = _as_message(message)
        body = msg.body
        if self._pending is not None and msg == self._pending.result.commit:
            # Our own commit relayed back by the DS: it was accepted.
            return self.merge_pending_commit()
        if isinstance(body, PublicMessage):
            auth = unprotect_public(self._framing, body, self._signature_key)
        elif isinstance(body, PrivateMessage):
            if body.epoch != self.epoch and body.group_id == self.group_id:
                return self._process_past(body)
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

    def _process_past(self, msg: PrivateMessage) -> ApplicationMessage:
        """An application message of a kept earlier epoch (``GroupConfig.max_past_epochs``)."""
        past = next((p for p in self._past if p.framing.epoch == msg.epoch), None)
        if past is None or msg.content_type != ContentType.APPLICATION:
            raise WrongEpoch(f"message is for epoch {msg.epoch}, the group is at epoch {self.epoch}")
        tree = past.tree
        auth = unprotect_private(
            past.framing, msg, lambda c: sender_signature_key(tree, (), c),
            leaf_in_use=lambda i: tree.leaf(i) is not None,
        )  # fmt: skip
        c = auth.content
        assert c.application_data is not None and c.sender.leaf_index is not None
        return ApplicationMessage(c.sender.leaf_index, c.application_data, c.authenticated_data, msg.epoch)

    def _signature_key(self, content: FramedContent) -> bytes:
        return sender_signature_key(self._state.tree, self._state.context.extensions, content)

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
            now=now, check_credential=credential_check(self.credential_validator),
        )  # fmt: skip
        entry = self._store.add(auth)
        return ProposalReceived(entry.ref, proposal, content.sender, content.authenticated_data)

    def _receive_commit(self, auth: AuthenticatedContent, now: int) -> CommitApplied:
        if self._status != GroupStatus.ACTIVE:
            raise MlsError(f"cannot process commits in state {self._status.name.lower()}")
        new_state, outcome = process_commit(
            self.cs, self._state, auth, self._store, now=now, own_update_keys=self._own_updates,
            resolve_psks=self._resolve_psks, check_credential=credential_check(self.credential_validator),
            client_identity=self.client_identity,
        )  # fmt: skip
        if new_state is None:
            self._status = GroupStatus.REMOVED
            self._pending = None
            return outcome
        self._install(new_state, outcome)
        return outcome

    # --- persistence -----------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Everything needed to resume this group later (secret: store it encrypted)."""
        return encode_group(self)

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
        """Load a group saved with :meth:`to_bytes`; hooks are not persisted and must be given again.
        Raises :class:`~phx.errors.DecodeError` for malformed state."""
        return decode_group(
            cls, data, psk_store=psk_store, credential_validator=credential_validator,
            client_identity=client_identity, resumption_source=resumption_source,
        )  # fmt: skip
