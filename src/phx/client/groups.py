"""Groups (book: clients/group_interactions.md and the DS chapter): create, invite, remove, leave, delete,
send; and the bookkeeping every commit needs.

A commit is made locally, persisted with the group as *pending*, sent to the DS, and merged when the DS
accepts it. If the answer never comes (network gone), the pending commit stays in the state; before the
group is used again, :func:`settle` asks the DS for the group's current GroupInfo and merges the pending
commit if the DS took it, else drops it. A commit the DS refuses because the group moved on
(``wrong_epoch``) or because proposals are waiting (``pending_proposals``) is dropped, the client syncs,
and the operation is tried once more.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from phx.codec import Struct
from phx.delivery.messages import (
    AddUsersParams,
    AddUsersParamsAad,
    CreateGroupParams,
    DeleteGroupParams,
    DsSenderId,
    ExternalCommitInfoParams,
    ExternalCommitInfoResponse,
    RemoveUsersParams,
    ResyncClientParams,
    SelfRemoveUserParams,
    SendMessageParams,
    UpdateClientParams,
    UpdateClientParamsAad,
    UserCredentialInformation,
    WelcomeAttributionCiphertexts,
    make_roles_extension,
)
from phx.errors import PhxError, Unavailable
from phx.identifiers import GroupId, UserId
from phx.mls.group import Group
from phx.mls.group_state import CommitApplied
from phx.mls.messages import KeyPackage, MLSMessage, make_external_senders_extension
from phx.queuing.messages import AddPackageParams

from .api import DsAuth
from .session import GROUP_CONFIG, ClientError, Session, check_leaf, member_row
from .state import GroupRow, MemberRow
from .transport import ServiceError
from .wire import (
    CAPABILITIES,
    CS,
    ClientMessage,
    CredentialInformation,
    GroupMetadata,
    WelcomeAttributionInfo,
    WelcomeAttributionInfoPayload,
    make_metadata_extension,
    new_leaf,
    new_secret,
    open_add_package,
    pending_context,
    pending_group_info_update,
    seal_bundle_credential_key,
    seal_credential_information,
)

__all__ = [
    "GroupView",
    "create_group",
    "delete_group",
    "invite",
    "leave",
    "leave_all",
    "list_groups",
    "remove",
    "resync",
    "resync_key",
    "send_payload",
    "send_text",
    "settle",
]

#: DS error codes after which a commit is retried once, after a sync.
RETRY_CODES = frozenset({"wrong_epoch", "pending_proposals"})


@dataclass(frozen=True, slots=True)
class GroupView:
    group_id: GroupId
    name: str
    members: list[str]
    status: str
    epoch: int


def list_groups(s: Session) -> list[GroupView]:
    out = []
    for row in s.state.groups("group"):
        if row.status not in ("active", "leaving"):
            continue
        members = sorted({s.label(m.user_id) for m in s.state.members(row.group_id)})
        out.append(GroupView(row.group_id, row.name, members, row.status, s.load_group(row).epoch))
    return out


# --- creation ----------------------------------------------------------------------------------------


async def new_group(s: Session, name: str, kind: str) -> tuple[GroupRow, Group]:
    """Create a group on our own DS with us as its only member (and admin)."""
    me = s.me()
    domain = me.client_id.domain
    now = s.clock()
    gid = await s.api.request_group_id(domain)
    ds = (await s.api.ds_verifying_key(domain)).external_sender
    leaf = new_leaf(me.cred, me.signing_key, now)
    credential_key, ear_key = new_secret(), os.urandom(32)
    extensions = [make_external_senders_extension([ds]), make_roles_extension((0,))]
    if kind == "group":
        extensions.append(make_metadata_extension(credential_key, gid, GroupMetadata(name)))
    group = Group.create(
        CS, leaf.credential, leaf.signature_private_key, now=now, group_id=gid.to_mls(),
        extensions=extensions, capabilities=CAPABILITIES, credential_validator=check_leaf,
        config=GROUP_CONFIG,
    )  # fmt: skip
    gi = group.group_info(ratchet_tree=True, external_pub=True).group_info
    assert gi is not None
    info = seal_credential_information(credential_key, gid, leaf.information(me.cred))
    params = CreateGroupParams(gid, info, await s.queue_config(), gi, ear_key)
    row = GroupRow(
        gid, kind, name, group.to_bytes(), ear_key, credential_key, leaf.signature_private_key, "active", now
    )
    await s.api.create_group(params, s.ds_auth(row, group))
    with s.state.tx() as c:
        s.state.put_group(c, row)
        s.state.put_member(c, gid, member_row(group.leaf_index, me.cred))
    return row, group


async def create_group(s: Session, name: str) -> GroupRow:
    if not name.strip():
        raise ClientError("a group needs a name")
    row, _ = await new_group(s, name, "group")
    return row


# --- committing --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommitPlan:
    """How to make one kind of commit (``build`` leaves it pending in the group and returns the DS params),
    send it, and which member rows it adds once merged."""

    build: Callable[[GroupRow, Group], Struct]
    send: Callable[[GroupRow, Group, Struct], Awaitable[None]]
    members: Callable[[CommitApplied], list[MemberRow]] | None = None


def update_plan(s: Session) -> CommitPlan:
    """A client update (UpdatePath) committing every stored proposal (book: the DS's proposal store)."""

    def build(row: GroupRow, group: Group) -> Struct:
        aad = UpdateClientParamsAad(None).encode()
        result = group.commit(now=s.clock(), path=True, authenticated_data=aad)
        return UpdateClientParams(result.commit, row.ear_key, pending_group_info_update(group))

    async def send(row: GroupRow, group: Group, params: Struct) -> None:
        assert isinstance(params, UpdateClientParams)
        await s.api.update_client(row.group_id, params, s.ds_auth(row, group))

    return CommitPlan(build, send)


async def settle(s: Session, row: GroupRow) -> tuple[GroupRow, Group]:
    """Resolve a pending commit left by an interrupted command, then commit waiting proposals.

    The DS's GroupInfo decides: at the pending commit's epoch with its GroupContext, the DS took it (merge);
    still at our epoch, it did not (drop); further on, others have committed since and we cannot tell
    which commit they built on, so we rejoin the group's current epoch (:func:`resync`)."""
    group = s.load_group(row)
    if group.pending_commit is not None:
        # The EAR key is the authentication here (a member's DsAuthToken is not needed).
        info = await s.api.external_commit_info(ExternalCommitInfoParams(row.group_id, row.ear_key), None)
        ds_epoch = info.group_info.group_context.epoch
        if ds_epoch == group.epoch + 1 and info.group_info.group_context.encode() == pending_context(group):
            group.merge_pending_commit()
            # The commit's own bookkeeping was lost with the answer: take the members from the DS.
            chains = [(m.leaf_index, m.encrypted_credential_information) for m in info.credential_chains]
            members = await s.verify_members(row.group_id, group, row.credential_key, chains)
            with s.state.tx() as c:
                row = s.save_group(c, row, group)
                s.state.delete_members(c, row.group_id)
                for m in members:
                    s.state.put_member(c, row.group_id, m)
        elif ds_epoch <= group.epoch:
            group.clear_pending_commit()
            with s.state.tx() as c:
                row = s.save_group(c, row, group)
        else:
            row, group = await resync(s, row, info)
    if group.pending_proposals() and row.status == "active":
        row, group = await commit(s, row, group, update_plan(s), retry=False)
    return row, group


async def resync(
    s: Session, row: GroupRow, info: ExternalCommitInfoResponse | None = None
) -> tuple[GroupRow, Group]:
    """Rejoin the group at the DS's current epoch by an external commit that replaces our old leaf (book:
    DS "ReSync"), keeping our leaf credential, queue config and credential information. For a client
    that lost track of the group's epochs; what was sent in the epochs in between is lost to it."""
    old = s.load_group(row)
    if info is None:
        info = await s.api.external_commit_info(ExternalCommitInfoParams(row.group_id, row.ear_key), None)
    leaf = old.own_leaf
    group, message = Group.join_external(
        info.group_info, leaf.credential, row.leaf_key, now=s.clock(), ratchet_tree=info.public_tree,
        capabilities=CAPABILITIES, remove=old.leaf_index, credential_validator=check_leaf,
        config=GROUP_CONFIG,
    )  # fmt: skip
    params = ResyncClientParams(message, row.ear_key, pending_group_info_update(group))
    await s.api.resync_client(row.group_id, params, DsAuth(DsSenderId.leaf(old.leaf_index), row.leaf_key))
    group.merge_pending_commit()
    chains = [(m.leaf_index, m.encrypted_credential_information) for m in info.credential_chains]
    chains = [(leaf, blob) for leaf, blob in chains if leaf != old.leaf_index]
    members = []
    by_leaf = dict(chains)
    for m in group.members():
        if m.leaf_index == group.leaf_index:
            members.append(member_row(m.leaf_index, s.me().cred))
        elif m.leaf_index in by_leaf:
            ci = await s.verify_info(
                row.group_id, row.credential_key, m.credential, m.signature_key, by_leaf[m.leaf_index]
            )
            members.append(member_row(m.leaf_index, ci.client_credential))
    with s.state.tx() as c:
        row = s.save_group(c, row, group)
        s.state.delete_members(c, row.group_id)
        for mr in members:
            s.state.put_member(c, row.group_id, mr)
        s.state.delete_meta(c, resync_key(row.group_id))
    return row, group


def resync_key(group_id: GroupId) -> str:
    """Meta key marking a group whose epoch this client lost track of (resynced at the end of a sync)."""
    return f"resync:{group_id}"


async def commit(
    s: Session, row: GroupRow, group: Group, plan: CommitPlan, *, retry: bool
) -> tuple[GroupRow, Group]:
    params = plan.build(row, group)
    with s.state.tx() as c:
        row = s.save_group(c, row, group)
    try:
        await plan.send(row, group, params)
    except ServiceError as e:
        group.clear_pending_commit()
        with s.state.tx() as c:
            row = s.save_group(c, row, group)
        if retry and e.code in RETRY_CODES:
            from .sync import sync

            await sync(s)
            fresh = s.state.group(row.group_id)
            if fresh is None or fresh.status != "active":
                raise ClientError("the group changed meanwhile and is no longer active") from e
            fresh, group = await settle(s, fresh)
            return await commit(s, fresh, group, plan, retry=False)
        raise
    outcome = group.merge_pending_commit()
    with s.state.tx() as c:
        row = s.save_group(c, row, group)
        forget_removed(s, c, row.group_id, outcome)
        if plan.members is not None:
            for m in plan.members(outcome):
                s.state.put_member(c, row.group_id, m)
    return row, group


def forget_removed(s: Session, c: sqlite3.Connection, group_id: GroupId, outcome: CommitApplied) -> None:
    for m in outcome.removed:
        s.state.delete_member(c, group_id, m.leaf_index)


async def _group_op(s: Session, text: str, plan: CommitPlan) -> GroupRow:
    row = s.find_group(text)
    if row.status != "active":
        raise ClientError(f"you are leaving {row.name!r}; it can no longer be changed")
    row, group = await settle(s, row)
    row, _ = await commit(s, row, group, plan, retry=True)
    return row


# --- invite, remove, delete --------------------------------------------------------------------------


async def invite(s: Session, group_text: str, user_text: str) -> GroupRow:
    me = s.me()
    user_id = s.resolve_user(user_text)
    if user_id == me.user_id:
        raise ClientError("you are already a member")
    contact = s.state.contact(user_id)
    if contact is None:
        raise ClientError(f"{user_text} is not a contact (connect first: phx client connect {user_text})")
    if contact.friendship_token is None or contact.friendship_key is None or contact.wai_key is None:
        raise ClientError(f"{user_text} has not sent its friendship keys yet (run: phx client sync)")
    row = s.find_group(group_text)
    if any(m.user_id == user_id for m in s.state.members(row.group_id)):
        raise ClientError(f"{user_text} is already in {row.name!r}")
    now = s.clock()
    response = await s.api.add_packages(user_id.as_domain, AddPackageParams(contact.friendship_token))
    infos: list[tuple[KeyPackage, CredentialInformation]] = []
    for ap in response.add_packages:
        info = open_add_package(ap, contact.friendship_key, now)
        if info.client_credential.client_id.user_id != user_id:
            raise ClientError(f"{user_text}'s QS returned a KeyPackage of another user")
        await s.creds.verify_client(info.client_credential)
        infos.append((ap.key_package, info))
    if not infos:
        raise ClientError(f"{user_text} has no KeyPackages available")
    wai_key, gid = contact.wai_key, row.group_id

    def build(row: GroupRow, group: Group) -> Struct:
        aad = AddUsersParamsAad(
            (
                UserCredentialInformation(
                    tuple(seal_credential_information(row.credential_key, gid, i) for _, i in infos)
                ),
            )
        )
        result = group.commit(now=s.clock(), add=[kp for kp, _ in infos], authenticated_data=aad.encode())
        assert result.welcome is not None and result.welcome.welcome is not None
        welcome = result.welcome.welcome.encode()
        wai = WelcomeAttributionInfo.sign(
            WelcomeAttributionInfoPayload(me.client_id, row.credential_key),
            gid,
            welcome,
            me.cred,
            me.signing_key,
        )
        sealed = WelcomeAttributionCiphertexts(
            wai.seal(wai_key, gid), seal_bundle_credential_key(wai_key, gid, row.credential_key)
        )
        return AddUsersParams(
            result.commit, row.ear_key, pending_group_info_update(group), result.welcome,
            tuple(sealed for _ in infos),
        )  # fmt: skip

    async def send(r: GroupRow, group: Group, params: Struct) -> None:
        assert isinstance(params, AddUsersParams)
        await s.api.add_users(r.group_id, params, s.ds_auth(r, group))

    def members(outcome: CommitApplied) -> list[MemberRow]:
        return [
            member_row(a.leaf_index, i.client_credential)
            for a, (_, i) in zip(outcome.added, infos, strict=True)
        ]

    return await _group_op(s, group_text, CommitPlan(build, send, members))


def _leaves_of(s: Session, row: GroupRow, user_id: UserId) -> list[int]:
    return [m.leaf for m in s.state.members(row.group_id) if m.user_id == user_id]


async def remove(s: Session, group_text: str, user_text: str) -> GroupRow:
    user_id = s.resolve_user(user_text)
    if user_id == s.me().user_id:
        raise ClientError("to remove yourself, leave the group (phx client group leave)")
    row = s.find_group(group_text)
    leaves = _leaves_of(s, row, user_id)
    if not leaves:
        raise ClientError(f"{user_text} is not a member of {row.name!r}")

    def build(row: GroupRow, group: Group) -> Struct:
        result = group.commit(now=s.clock(), remove=leaves)
        return RemoveUsersParams(result.commit, row.ear_key, pending_group_info_update(group))

    async def send(r: GroupRow, group: Group, params: Struct) -> None:
        assert isinstance(params, RemoveUsersParams)
        await s.api.remove_users(r.group_id, params, s.ds_auth(r, group))

    return await _group_op(s, group_text, CommitPlan(build, send))


async def delete_group_row(s: Session, row: GroupRow) -> None:
    """Delete a group we administer (a commit removing everyone else, then the DS drops the group)."""
    row, group = await settle(s, row)
    others = [m.leaf_index for m in group.members() if m.leaf_index != group.leaf_index]
    result = group.commit(now=s.clock(), remove=others, path=True)
    with s.state.tx() as c:
        row = s.save_group(c, row, group)
    try:
        await s.api.delete_group(
            row.group_id, DeleteGroupParams(result.commit, row.ear_key), s.ds_auth(row, group)
        )
    except ServiceError:
        group.clear_pending_commit()
        with s.state.tx() as c:
            s.save_group(c, row, group)
        raise
    with s.state.tx() as c:
        s.save_group(c, row, group, status="deleted")


async def delete_group(s: Session, group_text: str) -> None:
    await delete_group_row(s, s.find_group(group_text))


# --- leaving -----------------------------------------------------------------------------------------


async def leave_row(s: Session, row: GroupRow, *, retry: bool = True) -> None:
    """Propose our own removal (the DS stores it; another member's next commit carries it out)."""
    row, group = await settle(s, row)
    if group.member_count == 1:
        await delete_group_row(s, row)
        return
    before = row
    proposal = group.propose_remove(group.leaf_index, now=s.clock())
    # Kept before sending: the DS does not echo our proposal, and the commit that includes it refers to it.
    with s.state.tx() as c:
        row = s.save_group(c, row, group)
    try:
        await s.api.self_remove(
            row.group_id, SelfRemoveUserParams(proposal.message, row.ear_key), s.ds_auth(row, group)
        )
    except ServiceError as e:
        with s.state.tx() as c:
            s.state.put_group(c, before)  # refused: the proposal never existed
        if not retry or e.code != "wrong_epoch":
            raise
        from .sync import sync

        await sync(s)
        fresh = s.state.group(row.group_id)
        if fresh is None or fresh.status != "active":
            return  # removed meanwhile
        await leave_row(s, fresh, retry=False)
        return
    with s.state.tx() as c:
        s.save_group(c, row, status="leaving")


async def leave(s: Session, group_text: str) -> None:
    row = s.find_group(group_text)
    if row.status == "leaving":
        raise ClientError(f"already leaving {row.name!r} (the removal completes with the next commit)")
    await leave_row(s, row)


async def leave_all(s: Session) -> list[str]:
    """Leave (or delete, where we are alone or the connection group's creator) every group; returns the
    problems met, best effort."""
    problems = []
    for row in s.state.groups():
        if row.status != "active":
            continue
        try:
            await leave_row(s, row)
        except (PhxError, Unavailable) as e:
            problems.append(f"{row.name or row.group_id}: {e}")
    return problems


# --- application messages ----------------------------------------------------------------------------


async def send_payload(s: Session, row: GroupRow, payload: bytes, *, retry: bool = True) -> GroupRow:
    row, group = await settle(s, row)
    message: MLSMessage = group.send(payload)
    # Persist before sending: the generation is used up whether or not the DS takes the message.
    with s.state.tx() as c:
        row = s.save_group(c, row, group)
    try:
        await s.api.send_message(row.group_id, SendMessageParams(message, row.ear_key), s.ds_auth(row, group))
    except ServiceError as e:
        if e.code != "wrong_epoch" or not retry:
            raise
        from .sync import sync

        await sync(s)
        fresh = s.state.group(row.group_id)
        if fresh is None or fresh.status not in ("active", "leaving"):
            raise ClientError("the group is gone") from e
        return await send_payload(s, fresh, payload, retry=False)
    return row


async def send_text(s: Session, group_text: str, text: str) -> GroupRow:
    row = s.find_group(group_text)
    if row.status != "active":
        raise ClientError(f"you are leaving {row.name!r}")
    row = await send_payload(s, row, ClientMessage.of_text(text).encode())
    with s.state.tx() as c:
        s.state.add_message(c, row.group_id, s.me().user_id, text, s.clock(), True)
    return row
