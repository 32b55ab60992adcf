"""One pure function per DS endpoint (book: delivery_service.md, "Client endpoints").

Each takes the decrypted :class:`~.state.GroupState`, the authenticated sender (where the endpoint has
one), the decoded params and ``now``; validates everything first (the MLS rules through the group's
:class:`~phx.mls.public_group.PublicGroup`, then the endpoint's own), and only then changes the state and
returns :class:`~.core.Outputs`. Nothing here does I/O.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from phx.codec import Struct
from phx.errors import AuthError, DecodeError, MlsError, NotFound, ValidationError, WrongEpoch
from phx.identifiers import GroupId
from phx.mls.key_package import key_package_ref
from phx.mls.messages import (
    ContentType,
    GroupInfo,
    MLSMessage,
    ProposalType,
    Remove,
    SenderType,
    find_extension,
)
from phx.mls.public_group import CommitOutcome, ProposalOutcome, PublicGroup
from phx.queuing.messages import (
    FanOutMessage,
    MessageContent,
    MessageContentType,
    WelcomeBundle,
    queue_config_of,
)

from .core import (
    DsContext,
    Outputs,
    PendingProposals,
    activity,
    commit_fan_out,
    ds_external_sender_index,
    fan_out,
    forget_joiner,
    require_admin,
    roles_of,
)
from .messages import (
    ROLES_EXTENSION_TYPE,
    AddUsersParams,
    AddUsersParamsAad,
    CreateGroupParams,
    DeleteGroupParams,
    DsSenderId,
    ExternalCommitInfoResponse,
    GroupInfoUpdate,
    JoinConnectionGroupParams,
    JoinConnectionGroupParamsAad,
    RemoveUsersParams,
    ResyncClientParams,
    SelfRemoveUserParams,
    SendMessageParams,
    UpdateClientParams,
    UpdateClientParamsAad,
    UpdateQueueInfoParams,
    WelcomeInfoParams,
    WelcomeInfoResponse,
    encrypt_ear_key,
)
from .state import ColdState, GroupState, Joiner, Member, PastState, Roster

__all__ = [
    "add_users",
    "create_group",
    "delete_group",
    "external_commit_info",
    "join_connection_group",
    "remove_users",
    "resync_client",
    "self_remove_user",
    "send_message",
    "update_client",
    "update_queue_info",
    "welcome_info",
]


def _aad(cls: type[Struct], out: CommitOutcome) -> Struct:
    data = out.content.content.authenticated_data
    try:
        return cls.decode(data)
    except DecodeError as e:
        raise ValidationError(f"the commit's authenticated data is not a {cls.__name__}: {e}") from e


# --- creation and plain state updates ----------------------------------------------------------------


def create_group(
    ctx: DsContext,
    params: CreateGroupParams,
    now: int,
    *,
    random: Callable[[int], bytes] = os.urandom,
) -> GroupState:
    """A new group from its creator's GroupInfo (with the one-member ratchet tree in its ratchet_tree
    extension). The caller authenticates the creator's leaf against the returned state."""
    gid = params.group_id
    if gid.ds_domain != ctx.domain:
        raise ValidationError(f"group id is for {gid.ds_domain}, not this DS")
    gi = params.group_info
    if gi.group_context.cipher_suite != ctx.cs.suite_id:
        raise ValidationError(f"cipher suite {gi.group_context.cipher_suite} is not supported by this DS")
    if gi.group_context.group_id != gid.to_mls():
        raise ValidationError("the GroupInfo is for another group id")
    public = PublicGroup.from_group_info(gi, None, now)
    if public.member_count() != 1:
        raise ValidationError("a new group has exactly one member, its creator")
    ds_index = ds_external_sender_index(ctx, public.context)
    leaf, node = next(public.members())
    require_admin(public, leaf, "create a group (the creator must be an admin)")
    qid_private, _ = ctx.cs.derive_hpke_key_pair(random(32))
    creator = Member(
        leaf, 0, node.signature_key, params.creator_queue_config.encode(), activity(now), public.epoch
    )
    roster = Roster(ctx.cs.suite_id, public.epoch, ds_index, qid_private, 1, {leaf: creator})
    cold = ColdState(public, {leaf: params.encrypted_credential_chain})
    state = GroupState(gid, roster, cold=cold, ear_key=params.initial_ear_key)
    state.touch_cold()
    return state


def update_queue_info(state: GroupState, leaf: int, params: UpdateQueueInfoParams) -> Outputs:
    member = state.member(leaf)
    assert member is not None  # authenticated
    member.queue_config = params.new_queue_config.encode()
    state.touch_roster()
    return Outputs()


def welcome_info(
    state: GroupState, sid: DsSenderId, params: WelcomeInfoParams, past: PastState | None
) -> Outputs:
    """The past group state of the epoch the authenticated KeyPackage was added into (``past``: the
    stored state of ``params.epoch``, loaded by the caller)."""
    if not any(
        j.key_package_ref == sid.key_package_ref and j.epoch == params.epoch for j in state.roster.joiners
    ):
        raise AuthError(f"this KeyPackage was not added in epoch {params.epoch}")
    if past is None or past.epoch != params.epoch:
        raise NotFound(f"no group state of epoch {params.epoch}")
    return Outputs(response=WelcomeInfoResponse(past.tree, past.credentials))


def external_commit_info(state: GroupState) -> Outputs:
    cold = state.cold
    gi = cold.public.group_info
    if gi is None:
        raise ValidationError("the group has no GroupInfo for this epoch")
    return Outputs(
        response=ExternalCommitInfoResponse(gi, cold.public.encoded_tree(), cold.credential_chains())
    )


# --- application messages (the hot path: roster only) --------------------------------------------------


def send_message(state: GroupState, leaf: int, params: SendMessageParams) -> Outputs:
    msg = params.application_message.private_message
    if msg is None:
        raise ValidationError("application messages are PrivateMessages")
    if msg.content_type != ContentType.APPLICATION:
        raise ValidationError("send_message carries application messages only")
    if msg.group_id != state.group_id.to_mls():
        raise ValidationError("message is for another group")
    if msg.epoch != state.epoch:
        raise WrongEpoch(f"message is for epoch {msg.epoch}, the group is at epoch {state.epoch}")
    recipients = state.recipients(exclude=leaf)
    return Outputs(fan_outs=fan_out(recipients, params.application_message, MessageContentType.APPLICATION))


# --- commits: shared steps ----------------------------------------------------------------------------


def _commit(state: GroupState, message: MLSMessage, now: int) -> CommitOutcome:
    pm = message.public_message
    if pm is None:
        raise ValidationError("commits must be sent as PublicMessages (the DS validates them)")
    if pm.content.content_type != ContentType.COMMIT:
        raise ValidationError("expected a commit")
    out = state.cold.public.process(pm, now)
    assert isinstance(out, CommitOutcome)
    return out


def _member_commit(state: GroupState, message: MLSMessage, leaf: int, now: int) -> CommitOutcome:
    out = _commit(state, message, now)
    if out.sender.sender_type != SenderType.MEMBER or out.sender.leaf_index != leaf:
        raise AuthError("the commit is not from the authenticated leaf")
    return out


def _no_pending_proposals(state: GroupState) -> None:
    if len(state.cold.public.store):
        raise PendingProposals(
            "the proposal store is non-empty: the next commit must be a client update including them"
        )


def _types(out: CommitOutcome, allowed: set[ProposalType], what: str) -> list[ProposalType]:
    types = [p.type for p in out.proposals]
    for t in types:
        if t not in allowed:
            raise ValidationError(f"{what} may not contain a {t.name.lower()} proposal")
    return types


def _inline_only(out: CommitOutcome, what: str) -> None:
    if any(p.ref is not None for p in out.proposals):
        raise ValidationError(f"{what} must carry its proposals inline")


def _roles_change(state: GroupState, out: CommitOutcome, leaf: int) -> None:
    public = state.cold.public
    old = find_extension(public.extensions, ROLES_EXTENSION_TYPE)
    new = find_extension(out.new_context.extensions, ROLES_EXTENSION_TYPE)
    if old != new:
        require_admin(public, leaf, "change the group's roles")


def _no_inherited_admin(
    state: GroupState, out: CommitOutcome, leaves: Sequence[int], keep: int | None = None
) -> None:
    """A leaf filled by this commit must not inherit the admin role a former occupant left in the roles
    (removals do not always update them); only an explicit roles change in the same commit may name it.
    ``keep``: a resyncing admin that lands on its own old leaf."""
    old = find_extension(state.cold.public.extensions, ROLES_EXTENSION_TYPE)
    new = find_extension(out.new_context.extensions, ROLES_EXTENSION_TYPE)
    roles = roles_of(out.new_context.extensions)
    if old != new or roles is None:
        return
    if any(leaf in roles.admins and leaf != keep for leaf in leaves):
        raise ValidationError("the roles name a leaf this commit fills as admin: update the roles with it")


def _group_info(out: CommitOutcome, update: GroupInfoUpdate) -> GroupInfo:
    return out.group_info(update.signature, update.extensions)


def _accept(
    state: GroupState, ctx: DsContext, out: CommitOutcome, group_info: GroupInfo | None, now: int
) -> None:
    """Move the group to the commit's epoch and bring the roster and credentials along."""
    ds_index = ds_external_sender_index(ctx, out.new_context)  # the DS must stay an external sender
    cold, roster = state.cold, state.roster
    cold.public.accept(out, group_info)
    public = cold.public
    roster.epoch = public.epoch
    roster.ds_sender_index = ds_index
    roster.proposed_removals.clear()
    for r in out.removed:
        gone = roster.members.pop(r.leaf_index, None)
        cold.credentials.pop(r.leaf_index, None)
        if gone is not None and gone.key_package_ref is not None:
            forget_joiner(state, gone.key_package_ref)
    for m in roster.members.values():
        node = public.leaf(m.leaf)
        assert node is not None
        m.signature_key = node.signature_key
    if not out.is_external and out.sender.leaf_index in roster.members:
        committer = roster.members[out.sender.leaf_index]
        committer.activity_time = activity(now)
        committer.activity_epoch = public.epoch
    state.touch_cold()
    state.touch_roster()


def _check_store_complete(state: GroupState, out: CommitOutcome) -> None:
    if state.cold.public.uncommitted_proposals(out):
        raise PendingProposals("the commit must include every proposal in the proposal store")


# --- commits: the endpoints ----------------------------------------------------------------------------


def add_users(state: GroupState, ctx: DsContext, leaf: int, params: AddUsersParams, now: int) -> Outputs:
    """Inline Adds of one or more new users' clients (optionally one GroupContextExtensions proposal for
    the roles), by an admin; WelcomeBundles to the joiners."""
    out = _member_commit(state, params.commit, leaf, now)
    public = state.cold.public
    require_admin(public, leaf, "add users")
    _no_pending_proposals(state)
    _inline_only(out, "an add-users commit")
    types = _types(out, {ProposalType.ADD, ProposalType.GROUP_CONTEXT_EXTENSIONS}, "an add-users commit")
    if not out.added or types.count(ProposalType.GROUP_CONTEXT_EXTENSIONS) > 1:
        raise ValidationError("an add-users commit adds at least one client (and changes roles at most once)")
    _roles_change(state, out, leaf)
    _no_inherited_admin(state, out, [a.leaf_index for a in out.added])
    aad = _aad(AddUsersParamsAad, out)
    assert isinstance(aad, AddUsersParamsAad)
    per_user = [u.clients for u in aad.encrypted_credential_information]
    if any(not clients for clients in per_user):
        raise ValidationError("every added user has at least one client")
    flat = [c for clients in per_user for c in clients]
    if len(flat) != len(out.added):
        raise ValidationError("the AAD's credential information does not match the Add proposals")
    if len(params.welcome_attribution_info) != len(out.added):
        raise ValidationError("one welcome attribution info per added client is required")
    welcome = params.welcome.welcome
    if welcome is None:
        raise ValidationError("add users needs a Welcome message")
    if welcome.cipher_suite != ctx.cs.suite_id:
        raise ValidationError("the Welcome uses another cipher suite than the group")
    configs, refs = [], []
    for a in out.added:
        kp = a.key_package
        try:
            qc = queue_config_of(kp)
        except DecodeError as e:
            raise ValidationError(f"malformed QueueConfig extension in a KeyPackage: {e}") from e
        if qc is None:
            raise ValidationError("every added KeyPackage must carry a QueueConfig extension")
        lifetime = kp.leaf_node.lifetime
        if lifetime is None or now - lifetime.not_before > ctx.config.key_package_max_age:
            raise ValidationError("a KeyPackage is older than the maximal KeyPackage age")
        configs.append(qc)
        refs.append(key_package_ref(ctx.cs, kp))
    if sorted(s.new_member for s in welcome.secrets) != sorted(refs):
        raise ValidationError("the Welcome does not address exactly the added KeyPackages")
    group_info = _group_info(out, params.group_info_update)
    # --- valid: apply ---
    fan_outs = commit_fan_out(state, params.commit, leaf)
    _accept(state, ctx, out, group_info, now)
    roster, cold = state.roster, state.cold
    users = [roster.next_user + i for i, clients in enumerate(per_user) for _ in clients]
    roster.next_user += len(per_user)
    joiners = []
    for a, user, qc, ref, cred in zip(out.added, users, configs, refs, flat, strict=True):
        kp = a.key_package
        roster.members[a.leaf_index] = Member(
            a.leaf_index, user, kp.leaf_node.signature_key, qc.encode(), activity(now), roster.epoch, ref
        )
        cold.credentials[a.leaf_index] = cred
        assert kp.leaf_node.lifetime is not None
        joiners.append(Joiner(ref, kp.leaf_node.signature_key, kp.leaf_node.lifetime.not_after, roster.epoch))
    roster.joiners.extend(joiners)
    state.new_past.append(PastState(roster.epoch, cold.public.encoded_tree(), cold.credential_chains()))
    state.touch_roster()
    for a, qc, info in zip(out.added, configs, params.welcome_attribution_info, strict=True):
        bundle = WelcomeBundle(
            welcome,
            info.encrypted_welcome_attribution_info,
            encrypt_ear_key(a.key_package.init_key, state.group_id, _ear_key(state), cs=ctx.cs),
            info.encrypted_credential_encryption_key,
            state.group_id,
        )
        fan_outs.append(FanOutMessage((qc,), MessageContent(MessageContentType.WELCOME_BUNDLE, bundle)))
    return Outputs(fan_outs=fan_outs)


def _ear_key(state: GroupState) -> bytes:
    assert state.ear_key is not None
    return state.ear_key


def remove_users(
    state: GroupState, ctx: DsContext, leaf: int, params: RemoveUsersParams, now: int
) -> Outputs:
    """Inline Removes of every client of one or more users (plus optionally a roles change), by an admin."""
    out = _member_commit(state, params.commit, leaf, now)
    require_admin(state.cold.public, leaf, "remove users")
    _no_pending_proposals(state)
    _inline_only(out, "a remove-users commit")
    types = _types(out, {ProposalType.REMOVE, ProposalType.GROUP_CONTEXT_EXTENSIONS}, "a remove-users commit")
    if not out.removed or types.count(ProposalType.GROUP_CONTEXT_EXTENSIONS) > 1:
        raise ValidationError("a remove-users commit removes at least one client")
    _roles_change(state, out, leaf)
    _whole_users(state, [r.leaf_index for r in out.removed])
    group_info = _group_info(out, params.group_info_update)
    fan_outs = commit_fan_out(state, params.commit, leaf)
    _accept(state, ctx, out, group_info, now)
    return Outputs(fan_outs=fan_outs)


def _whole_users(state: GroupState, removed: Sequence[int]) -> None:
    gone = set(removed)
    users = state.roster.users()
    for r in gone:
        member = state.member(r)
        if member is not None and not gone.issuperset(users[member.user]):
            raise ValidationError("remove users removes every client of each user it names")


def update_client(
    state: GroupState, ctx: DsContext, leaf: int, params: UpdateClientParams, now: int
) -> Outputs:
    """A commit with an UpdatePath that commits every stored proposal (by reference) and nothing else."""
    out = _member_commit(state, params.commit, leaf, now)
    commit = out.content.content.commit
    assert commit is not None
    if commit.path is None:
        raise ValidationError("a client update must contain an UpdatePath")
    if any(p.ref is None for p in out.proposals):
        raise ValidationError("a client update may only commit stored proposals (by reference)")
    _check_store_complete(state, out)
    aad = _aad(UpdateClientParamsAad, out)
    assert isinstance(aad, UpdateClientParamsAad)
    public = state.cold.public
    old_leaf, new_leaf = public.leaf(leaf), out.tree.leaf(leaf)
    assert old_leaf is not None and new_leaf is not None
    info = aad.option_encrypted_credential_information
    if old_leaf.credential != new_leaf.credential and info is None:
        raise ValidationError("the credential changed: encrypted credential information is required")
    group_info = _group_info(out, params.group_info_update)
    fan_outs = commit_fan_out(state, params.commit, leaf)
    member = state.member(leaf)
    assert member is not None
    ref = member.key_package_ref
    _accept(state, ctx, out, group_info, now)
    if info is not None:
        state.cold.credentials[leaf] = info
    if ref is not None:
        member.key_package_ref = None
        forget_joiner(state, ref)
    state.touch_roster()
    return Outputs(fan_outs=fan_outs)


def join_connection_group(
    state: GroupState, ctx: DsContext, params: JoinConnectionGroupParams, now: int
) -> Outputs:
    """An external commit into a group of a single user (knowing the EAR key authenticates the joiner)."""
    out = _commit(state, params.external_commit, now)
    if not out.is_external:
        raise ValidationError("joining a connection group takes an external commit")
    if len(state.roster.users()) != 1:
        raise ValidationError("only groups of a single user can be joined as connection groups")
    _no_pending_proposals(state)
    _types(out, {ProposalType.EXTERNAL_INIT}, "a connection-group join")
    assert out.committer_leaf is not None
    _no_inherited_admin(state, out, [out.committer_leaf])
    aad = _aad(JoinConnectionGroupParamsAad, out)
    assert isinstance(aad, JoinConnectionGroupParamsAad)
    group_info = _group_info(out, params.group_info_update)
    fan_outs = commit_fan_out(state, params.external_commit, None)
    _accept(state, ctx, out, group_info, now)
    roster = state.roster
    new = out.committer_leaf
    assert new is not None
    node = out.tree.require_leaf(new)
    roster.members[new] = Member(
        new, roster.next_user, node.signature_key, params.client_queue_config.encode(), activity(now),
        roster.epoch,
    )  # fmt: skip
    roster.next_user += 1
    state.cold.credentials[new] = aad.encrypted_credential_information
    state.touch_roster()
    return Outputs(fan_outs=fan_outs)


def resync_client(
    state: GroupState, ctx: DsContext, leaf: int, params: ResyncClientParams, now: int
) -> Outputs:
    """An external commit replacing the authenticated client's own leaf (one Remove of it), keeping its
    credential; the client keeps its user, queue config and credential information."""
    out = _commit(state, params.external_commit, now)
    if not out.is_external:
        raise ValidationError("a resync takes an external commit")
    _no_pending_proposals(state)
    types = _types(out, {ProposalType.EXTERNAL_INIT, ProposalType.REMOVE}, "a resync")
    removes = [p.proposal.value for p in out.proposals if p.type == ProposalType.REMOVE]
    if (
        types.count(ProposalType.REMOVE) != 1
        or not isinstance(removes[0], Remove)
        or removes[0].removed != leaf
    ):
        raise ValidationError("a resync removes exactly the resyncing client's old leaf")
    new = out.committer_leaf
    assert new is not None
    old_node = state.cold.public.leaf(leaf)
    assert old_node is not None
    if out.tree.require_leaf(new).credential != old_node.credential:
        raise ValidationError("a resynced client keeps its leaf credential")
    _no_inherited_admin(state, out, [new], keep=leaf)
    group_info = _group_info(out, params.group_info_update)
    fan_outs = commit_fan_out(state, params.external_commit, leaf)
    old = state.member(leaf)
    assert old is not None
    credential = state.cold.credentials.get(leaf, b"")
    _accept(state, ctx, out, group_info, now)
    roster = state.roster
    roster.members[new] = Member(
        new, old.user, out.tree.require_leaf(new).signature_key, old.queue_config, activity(now), roster.epoch
    )
    state.cold.credentials[new] = credential
    state.touch_roster()
    return Outputs(fan_outs=fan_outs)


def self_remove_user(
    state: GroupState, ctx: DsContext, leaf: int, params: SelfRemoveUserParams, now: int
) -> Outputs:
    """A Remove proposal by a member for one of its own user's clients: stored, the next commit (a client
    update) must include it."""
    pm = params.remove_proposal.public_message
    if pm is None or pm.content.content_type != ContentType.PROPOSAL:
        raise ValidationError("self remove takes a Remove proposal as a PublicMessage")
    public = state.cold.public
    out = public.process(pm, now)
    assert isinstance(out, ProposalOutcome)
    if out.sender.sender_type != SenderType.MEMBER or out.sender.leaf_index != leaf:
        raise AuthError("the proposal is not from the authenticated leaf")
    body = out.proposal.value
    if not isinstance(body, Remove):
        raise ValidationError("self remove takes a Remove proposal")
    sender, target = state.member(leaf), state.member(body.removed)
    if sender is None or target is None or target.user != sender.user:
        raise ValidationError("a user may only propose the removal of its own clients")
    if body.removed in state.roster.proposed_removals:
        raise ValidationError("the removal of this client is already proposed")
    fan_outs = commit_fan_out(state, params.remove_proposal, leaf)
    public.accept(out)
    state.roster.proposed_removals.add(body.removed)
    state.touch_cold()
    return Outputs(fan_outs=fan_outs)


def delete_group(
    state: GroupState, ctx: DsContext, leaf: int, params: DeleteGroupParams, now: int
) -> Outputs:
    """A commit removing every member but the sender (an admin); the group is deleted after fan-out."""
    out = _member_commit(state, params.commit, leaf, now)
    require_admin(state.cold.public, leaf, "delete the group")
    _no_pending_proposals(state)
    _inline_only(out, "a delete-group commit")
    _types(out, {ProposalType.REMOVE}, "a delete-group commit")
    others = {m.leaf for m in state.members()} - {leaf}
    if {r.leaf_index for r in out.removed} != others:
        raise ValidationError("a delete-group commit removes every member but its sender")
    return Outputs(fan_outs=commit_fan_out(state, params.commit, leaf), delete_group=True)


def group_id_of_message(message: MLSMessage) -> GroupId:
    """The Phoenix group a PublicMessage or PrivateMessage belongs to (DecodeError if none)."""
    pm, priv = message.public_message, message.private_message
    if pm is not None:
        return GroupId.from_mls(pm.content.group_id)
    if priv is not None:
        return GroupId.from_mls(priv.group_id)
    raise MlsError("expected a PublicMessage or PrivateMessage")
