"""Commits with secrets (RFC 9420 §12.4): making one, processing one, and external commits (§12.4.3.2).

The secret-free rules (proposal validation and application, path checks) are
:mod:`phx.mls.commit_core`'s; this module adds what only a member can do: generate and encrypt or
decrypt the UpdatePath, run the key schedule, compute transcript hashes and the confirmation tag, and
build the Welcome. Functions take an :class:`~phx.mls.group_state.EpochState` and return the next one
without touching the input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from phx.crypto import CipherSuite
from phx.errors import MlsError
from phx.mls.commit_core import (
    ClientIdentity,
    InvalidCommit,
    InvalidProposal,
    ProposalApplication,
    ProposalStore,
    ResolvedProposal,
    apply_proposals,
    stage_commit,
    validate_proposal,
)
from phx.mls.framing import FramingContext, protect_private, protect_public, sign_content
from phx.mls.group_state import CommitApplied, CommitResult, EpochState, Member, PendingCommit
from phx.mls.key_schedule import EpochSecrets, derive_epoch_secrets, external_init_receive, external_init_send
from phx.mls.leaf_validation import CredentialCheck, MemberSupport
from phx.mls.messages import (
    Add,
    AuthenticatedContent,
    Commit,
    Extension,
    ExtensionType,
    ExternalInit,
    FramedContent,
    FramedContentAuthData,
    GroupContext,
    GroupContextExtensions,
    GroupInfo,
    LeafNode,
    MLSMessage,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    ProposalOrRef,
    PublicMessage,
    ReInit,
    Remove,
    Sender,
    SenderType,
    Update,
    WireFormat,
    find_extension,
    make_external_pub_extension,
    parse_external_senders,
)
from phx.mls.transcript import confirmed_transcript_hash, interim_transcript_hash
from phx.mls.tree import RatchetTree
from phx.mls.treekem import (
    PendingPath,
    PrivateTree,
    commit_leaf_node,
    decrypt_update_path,
    generate_update_path,
)
from phx.mls.welcome import NewMemberSecrets, build_welcome, sign_group_info

__all__ = [
    "PskResolver",
    "build_group_info",
    "committable_proposals",
    "create_commit",
    "create_external_commit",
    "process_commit",
    "provisional_context",
    "sender_signature_key",
]

#: Resolves a commit's PSK ids to ``psk_secret`` (None for none); raises if a PSK is unknown.
PskResolver = Callable[[Sequence[PreSharedKeyID]], bytes | None]


def provisional_context(
    ctx: GroupContext, tree: RatchetTree, extensions: tuple[Extension, ...]
) -> GroupContext:
    """§12.4.1: the GroupContext UpdatePath secrets are encrypted under (old confirmed transcript hash)."""
    return GroupContext(
        ctx.version, ctx.cipher_suite, ctx.group_id, ctx.epoch + 1, tree.tree_hash(),
        ctx.confirmed_transcript_hash, extensions,
    )  # fmt: skip


def build_group_info(
    cs: CipherSuite,
    state: EpochState,
    signature_private_key: bytes,
    *,
    ratchet_tree: bool,
    external_pub: bool,
    extra: Sequence[Extension] = (),
) -> GroupInfo:
    exts: list[Extension] = list(extra)
    if ratchet_tree:
        exts.append(Extension(ExtensionType.RATCHET_TREE, state.tree.encode()))
    if external_pub:
        exts.append(make_external_pub_extension(state.secrets.external_pub()))
    return sign_group_info(
        cs, state.context, exts, state.confirmation_tag, state.leaf_index, signature_private_key
    )


@dataclass
class _NextEpoch:
    context: GroupContext
    secrets: EpochSecrets
    confirmation_tag: bytes
    interim: bytes


def _key_schedule(
    cs: CipherSuite,
    old: GroupContext,
    old_interim: bytes,
    tree: RatchetTree,
    extensions: tuple[Extension, ...],
    wire_format: WireFormat,
    content: FramedContent,
    signature: bytes,
    init_secret: bytes,
    commit_secret: bytes | None,
    psk_secret: bytes | None,
    received_tag: bytes | None = None,
) -> _NextEpoch:
    """Transcript hashes, the new GroupContext and the key schedule (§8, §8.2); checks a received tag."""
    confirmed = confirmed_transcript_hash(cs, old_interim, wire_format, content, signature)
    ctx = GroupContext(
        old.version, old.cipher_suite, old.group_id, old.epoch + 1, tree.tree_hash(), confirmed, extensions
    )
    secrets = derive_epoch_secrets(cs, init_secret, commit_secret, ctx.encode(), psk_secret)
    if received_tag is None:
        tag = secrets.confirmation_tag(confirmed)
    else:
        secrets.verify_confirmation_tag(confirmed, received_tag)
        tag = received_tag
    return _NextEpoch(ctx, secrets, tag, interim_transcript_hash(cs, confirmed, tag))


def _outcome(
    new_epoch: int,
    sender: Sender,
    app: ProposalApplication,
    committer: int | None,
    aad: bytes,
    *,
    removed_self: bool = False,
) -> CommitApplied:
    return CommitApplied(
        epoch=new_epoch,
        sender=sender,
        committer=committer,
        added=tuple(Member.of(a.leaf_index, a.key_package.leaf_node) for a in app.added),
        removed=tuple(Member.of(r.leaf_index, r.leaf_node) for r in app.removed),
        updated=tuple(i for i, _ in app.updated),
        proposals=tuple(p.proposal for p in app.proposals),
        external=app.is_external,
        extensions_changed=app.extensions_changed,
        reinit=app.reinit,
        removed_self=removed_self,
        authenticated_data=aad,
    )


def _protect(framing: FramingContext, auth: AuthenticatedContent, padding: int) -> MLSMessage:
    if auth.wire_format == WireFormat.PUBLIC_MESSAGE:
        return MLSMessage(protect_public(framing, auth))
    return MLSMessage(protect_private(framing, auth, padding=padding))


# --- making a commit -----------------------------------------------------------------------------------


def create_commit(
    cs: CipherSuite,
    state: EpochState,
    framing: FramingContext,
    signature_private_key: bytes,
    proposals: Sequence[tuple[ProposalOrRef, ResolvedProposal]],
    *,
    now: int,
    path: bool | None,
    wire_format: WireFormat,
    authenticated_data: bytes,
    resolve_psks: PskResolver,
    extra_psks: Sequence[PreSharedKeyID] = (),
    ratchet_tree_in_welcome: bool = True,
    group_info: bool = False,
    external_pub: bool = True,
    leaf_extensions: tuple[Extension, ...] | None = None,
    check_credential: CredentialCheck | None = None,
    client_identity: ClientIdentity | None = None,
    padding: int = 0,
) -> PendingCommit:
    """Build a commit over ``proposals`` (as they appear in the commit, with their resolution).

    ``path``: None = only if required. ``extra_psks`` are injected into the key schedule and the Welcome
    without a proposal (the resumption PSK of a re-initialised or branched group, §11.2-§11.3).
    """
    me = state.leaf_index
    sender = Sender.member(me)
    resolved = [rp for _, rp in proposals]
    app = apply_proposals(
        cs,
        state.context,
        state.tree,
        resolved,
        committer=sender,
        now=now,
        support=state.support,
        check_credential=check_credential,
        client_identity=client_identity,
    )
    with_path = app.path_required if path is None else (path or app.path_required)
    pending_path: PendingPath | None = None
    update_path = None
    commit_secret: bytes | None = None
    assert app.support is not None
    support: MemberSupport = app.support
    if with_path:
        old_leaf = app.tree.require_leaf(me)
        base = old_leaf if leaf_extensions is None else _with_extensions(old_leaf, leaf_extensions)
        group_id = state.context.group_id

        def make_leaf(encryption_key: bytes, parent_hash: bytes) -> LeafNode:
            return commit_leaf_node(
                cs, base, encryption_key, parent_hash, group_id, me, signature_private_key
            )

        pending_path = generate_update_path(app.tree, me, make_leaf, exclude=app.added_leaves)
        support.replace(old_leaf, pending_path.leaf_node)
        prov = provisional_context(state.context, app.tree, app.extensions)
        update_path = pending_path.encrypt(prov.encode())
        commit_secret = pending_path.commit_secret
        private = pending_path.private
    else:
        private = state.private.copy()
        private.prune(app.tree)
    commit = Commit(tuple(por for por, _ in proposals), update_path)
    gc = state.context
    content = FramedContent(gc.group_id, gc.epoch, sender, authenticated_data, commit)
    signature = sign_content(cs, signature_private_key, wire_format, content, framing.group_context_bytes)
    psk_ids = [*app.psk_ids, *extra_psks]
    psk_secret = resolve_psks(psk_ids)
    nxt = _key_schedule(
        cs, gc, state.interim_transcript_hash, app.tree, app.extensions, wire_format, content, signature,
        state.secrets.init_secret, commit_secret, psk_secret,
    )  # fmt: skip
    auth = AuthenticatedContent(wire_format, content, FramedContentAuthData(signature, nxt.confirmation_tag))
    message = _protect(framing, auth, padding)
    new_state = EpochState(
        nxt.context, app.tree, private, nxt.secrets, nxt.interim, nxt.confirmation_tag, support
    )
    welcome = None
    gi_message = None
    if app.added or group_info:
        gi = build_group_info(
            cs, new_state, signature_private_key, ratchet_tree=ratchet_tree_in_welcome, external_pub=False
        )
        if app.added:
            recipients = [
                NewMemberSecrets(
                    a.key_package,
                    None if pending_path is None else pending_path.path_secret_for(a.leaf_index),
                )
                for a in app.added
            ]
            welcome = MLSMessage(
                build_welcome(cs, gi, nxt.secrets.joiner_secret, psk_ids, psk_secret, recipients)
            )
        if group_info:
            public_gi = build_group_info(
                cs, new_state, signature_private_key, ratchet_tree=True, external_pub=external_pub
            )
            gi_message = MLSMessage(public_gi)
    outcome = _outcome(nxt.context.epoch, sender, app, me, authenticated_data)
    return PendingCommit(new_state, CommitResult(message, welcome, gi_message), outcome)


def _with_extensions(leaf: LeafNode, extensions: tuple[Extension, ...]) -> LeafNode:
    return replace(leaf, extensions=extensions)


# --- processing a commit -------------------------------------------------------------------------------


def process_commit(
    cs: CipherSuite,
    state: EpochState,
    auth: AuthenticatedContent,
    store: ProposalStore,
    *,
    now: int,
    own_update_keys: dict[bytes, bytes],
    resolve_psks: PskResolver,
    check_credential: CredentialCheck | None = None,
    client_identity: ClientIdentity | None = None,
) -> tuple[EpochState | None, CommitApplied]:
    """Validate and apply a verified commit message (§12.4.2). Returns the next epoch's state, or None
    when the commit removes us (then the outcome says ``removed_self``)."""
    content = auth.content
    commit = content.commit
    assert commit is not None
    sender = content.sender
    me = state.leaf_index
    if sender.leaf_index == me:
        raise MlsError("cannot process our own commit: merge or clear the pending commit instead")
    tag = auth.auth.confirmation_tag
    if tag is None:
        raise InvalidCommit("commit without confirmation tag")
    app = stage_commit(
        cs,
        state.context,
        state.tree,
        commit,
        sender,
        store,
        now=now,
        support=state.support,
        check_credential=check_credential,
        client_identity=client_identity,
    )
    aad = content.authenticated_data
    if any(r.leaf_index == me for r in app.removed):
        return None, _outcome(state.epoch + 1, sender, app, app.committer_leaf, aad, removed_self=True)
    private = state.private.copy()
    for rp in app.proposals:
        if isinstance(rp.proposal.value, Update) and rp.sender.leaf_index == me:
            key = own_update_keys.get(rp.ref) if rp.ref is not None else None
            if key is None:
                raise MlsError("the commit applies an Update of ours we do not have the key of")
            private.set_leaf_key(key)
    private.prune(app.tree)
    commit_secret = None
    if commit.path is not None:
        committer = app.committer_leaf
        assert committer is not None
        prov = provisional_context(state.context, app.tree, app.extensions)
        _, commit_secret = decrypt_update_path(
            app.tree, private, committer, commit.path, prov.encode(), app.added_leaves
        )
    if app.external_init is not None:
        init_secret = external_init_receive(cs, state.secrets.external_key_pair()[0], app.external_init)
    else:
        init_secret = state.secrets.init_secret
    nxt = _key_schedule(
        cs, state.context, state.interim_transcript_hash, app.tree, app.extensions, auth.wire_format,
        content, auth.auth.signature, init_secret, commit_secret, resolve_psks(app.psk_ids), tag,
    )  # fmt: skip
    assert app.support is not None
    new_state = EpochState(
        nxt.context, app.tree, private, nxt.secrets, nxt.interim, nxt.confirmation_tag, app.support
    )
    return new_state, _outcome(nxt.context.epoch, sender, app, app.committer_leaf, aad)


# --- external commits (§12.4.3.2) ----------------------------------------------------------------------


def create_external_commit(
    cs: CipherSuite,
    group_info: GroupInfo,
    tree: RatchetTree,
    external_pub: bytes,
    leaf_template: LeafNode,
    signature_private_key: bytes,
    *,
    now: int,
    remove: int | None,
    psk_ids: Sequence[PreSharedKeyID],
    authenticated_data: bytes,
    resolve_psks: PskResolver,
    check_credential: CredentialCheck | None = None,
    client_identity: ClientIdentity | None = None,
) -> tuple[EpochState, MLSMessage, CommitApplied]:
    """Join the group of ``group_info`` (its tree already validated) by external commit.

    ``leaf_template`` supplies credential, capabilities, extensions and signature key of our leaf.
    ``remove`` resyncs: the leaf of our old incarnation to remove.
    """
    gc = group_info.group_context
    kem_output, init_secret = external_init_send(cs, external_pub)
    sender = Sender.new_member_commit()
    proposals: list[Proposal] = [Proposal(ExternalInit(kem_output))]
    if remove is not None:
        proposals.append(Proposal(Remove(remove)))
    proposals.extend(Proposal(PreSharedKey(p)) for p in psk_ids)
    resolved = [ResolvedProposal(p, sender) for p in proposals]
    app = apply_proposals(
        cs, gc, tree, resolved, committer=sender, now=now, check_credential=check_credential,
        client_identity=client_identity,
    )  # fmt: skip
    assert app.support is not None
    new_tree = app.tree
    me = new_tree.free_leaf()

    def make_leaf(encryption_key: bytes, parent_hash: bytes) -> LeafNode:
        return commit_leaf_node(
            cs, leaf_template, encryption_key, parent_hash, gc.group_id, me, signature_private_key
        )

    pending = generate_update_path(new_tree, me, make_leaf)
    app.support.add(pending.leaf_node)
    prov = provisional_context(gc, new_tree, app.extensions)
    update_path = pending.encrypt(prov.encode())
    commit = Commit(tuple(ProposalOrRef(p) for p in proposals), update_path)
    content = FramedContent(gc.group_id, gc.epoch, sender, authenticated_data, commit)
    wf = WireFormat.PUBLIC_MESSAGE
    signature = sign_content(cs, signature_private_key, wf, content, gc.encode())
    interim = interim_transcript_hash(cs, gc.confirmed_transcript_hash, group_info.confirmation_tag)
    nxt = _key_schedule(
        cs, gc, interim, new_tree, app.extensions, wf, content, signature, init_secret,
        pending.commit_secret, resolve_psks(list(psk_ids)),
    )  # fmt: skip
    auth = AuthenticatedContent(wf, content, FramedContentAuthData(signature, nxt.confirmation_tag))
    message = MLSMessage(PublicMessage(auth.content, auth.auth, None))
    private: PrivateTree = pending.private
    state = EpochState(
        nxt.context, new_tree, private, nxt.secrets, nxt.interim, nxt.confirmation_tag, app.support
    )
    app.committer_leaf = me
    return state, message, _outcome(nxt.context.epoch, sender, app, me, authenticated_data)


def committable_proposals(
    cs: CipherSuite,
    context: GroupContext,
    tree: RatchetTree,
    store: ProposalStore,
    inline: Sequence[Proposal],
    *,
    me: int,
    now: int,
    check_credential: CredentialCheck | None = None,
) -> list[tuple[ProposalOrRef, ResolvedProposal]]:
    """Stored proposals member ``me`` can commit next to ``inline``, in arrival order (§12.2).

    Left out: invalid ones, our own Update and Remove of us (the committer may not commit them), and
    those conflicting with an earlier choice (second update/remove of a leaf, second GCE, repeated PSK,
    same client added twice). A stored ReInit is committed alone when ``inline`` is empty.
    """

    def valid(rp: ResolvedProposal) -> bool:
        try:
            validate_proposal(cs, context, tree, rp, now=now, check_credential=check_credential)
        except MlsError:
            return False
        return True

    if not inline:
        for entry in store:
            rp = entry.resolved()
            if isinstance(rp.proposal.value, ReInit) and valid(rp):
                return [(ProposalOrRef(entry.ref), rp)]
    touched: set[int] = {p.value.removed for p in inline if isinstance(p.value, Remove)}
    has_gce = any(isinstance(p.value, GroupContextExtensions) for p in inline)
    psk_ids = {p.value.psk.encode() for p in inline if isinstance(p.value, PreSharedKey)}
    keys = {p.value.key_package.leaf_node.signature_key for p in inline if isinstance(p.value, Add)}
    out: list[tuple[ProposalOrRef, ResolvedProposal]] = []
    for entry in store:
        rp = entry.resolved()
        body = rp.proposal.value
        if isinstance(body, ReInit | ExternalInit):
            continue
        if isinstance(body, Update | Remove):
            leaf = rp.sender.leaf_index if isinstance(body, Update) else body.removed
            if leaf is None or leaf == me or leaf in touched:
                continue
            touched.add(leaf)
        elif isinstance(body, GroupContextExtensions):
            if has_gce:
                continue
            has_gce = True
        elif isinstance(body, PreSharedKey):
            if body.psk.encode() in psk_ids:
                continue
            psk_ids.add(body.psk.encode())
        elif isinstance(body, Add):
            if body.key_package.leaf_node.signature_key in keys:
                continue
            keys.add(body.key_package.leaf_node.signature_key)
        if valid(rp):
            out.append((ProposalOrRef(entry.ref), rp))
    return out


def sender_signature_key(tree: RatchetTree, extensions: Sequence[Extension], content: FramedContent) -> bytes:
    """The key that must have signed ``content``, by sender type (§6.1); raises for unknown senders."""
    sender = content.sender
    st = sender.sender_type
    if st == SenderType.MEMBER:
        leaf = tree.leaf(sender.index or 0)
        if leaf is None:
            raise MlsError(f"sender leaf {sender.index} is blank or outside the tree")
        return leaf.signature_key
    if st == SenderType.EXTERNAL:
        ext = find_extension(extensions, ExtensionType.EXTERNAL_SENDERS)
        senders = parse_external_senders(ext) if ext is not None else ()
        if (sender.index or 0) >= len(senders):
            raise MlsError(f"unknown external sender {sender.index}")
        return senders[sender.index or 0].signature_key
    if st == SenderType.NEW_MEMBER_PROPOSAL:
        p = content.proposal
        if p is None or not isinstance(p.value, Add):
            raise InvalidProposal("a new_member_proposal sender can only propose add")
        return p.value.key_package.leaf_node.signature_key
    c = content.commit
    if c is None or c.path is None:
        raise InvalidCommit("an external commit must contain a path")
    return c.path.leaf_node.signature_key
