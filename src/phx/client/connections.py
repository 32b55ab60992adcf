"""Discovery and connection establishment (book: authentication_service/connection_establishment.md),
contacts, friendship keys and their rotation.

Initiator (``connect``): fetch a connection package of the user from its AS, check it and the credential
chain, create a connection group on our own DS, send a signed ConnectionEstablishmentPackage (HPKE to the
package's key) to the user's direct queue, record an outgoing request.

Responder (``sync`` finds the package in the direct queue; ``accept``/``reject``): check the package and
the chain, join the connection group by external commit, then send either our FriendshipPackage
(accept) or a ``connection_declined`` message (reject) in it — so the initiator learns the answer
(docs/decisions.md, "Declining a connection").

Both sides then exchange FriendshipPackages; a contact is complete (can be invited to groups) once its
friendship token and keys have arrived. Removing a contact rotates our friendship token on the QS and
re-sends our keys to the remaining contacts (book: keypackage_publication.md, "Friendship token rotation").
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace

from phx.auth.client import sign_connection_establishment_package, verify_connection_establishment_package
from phx.auth.core import check_connection_package
from phx.auth.messages import ConnectionEstablishmentPackage, EnqueueMessageParams, UserClientsParams
from phx.delivery.messages import (
    ExternalCommitInfoParams,
    ExternalCommitInfoResponse,
    JoinConnectionGroupParams,
    JoinConnectionGroupParamsAad,
)
from phx.errors import ValidationError
from phx.identifiers import ClientId, UserId
from phx.mls.group import Group
from phx.queuing.messages import UpdateUserRecordParams

from .aliases import ALIAS_PREFIX, NOBODY, deliver_to_alias
from .groups import delete_group_row, leave_row, send_payload
from .session import GROUP_CONFIG, ClientError, Event, Session, check_leaf, member_row, user_id_for
from .state import Contact, GroupRow, MemberRow, RequestRow
from .transport import ServiceError
from .wire import (
    CAPABILITIES,
    CS,
    ClientMessage,
    ClientMessageType,
    FriendshipPackage,
    new_leaf,
    new_secret,
    open_connection_establishment,
    pending_context,
    pending_group_info_update,
    seal_connection_establishment,
    seal_credential_information,
)

__all__ = [
    "ContactView",
    "RequestView",
    "accept",
    "connect",
    "disconnect",
    "list_contacts",
    "list_requests",
    "receive_establishment",
    "reject",
    "resume_joins",
    "send_pending_keys",
]


@dataclass(frozen=True, slots=True)
class RequestView:
    id: int
    direction: str
    user: str
    status: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class ContactView:
    user: str
    user_id: str
    ready: bool
    fingerprints: list[str]


def own_friendship_package(s: Session) -> bytes:
    me = s.me()
    fp = FriendshipPackage(me.user_name, me.friendship_token, me.friendship_key, me.wai_key)
    return ClientMessage(ClientMessageType.FRIENDSHIP, friendship=fp).encode()


# --- initiator ---------------------------------------------------------------------------------------


async def connect(s: Session, user_text: str) -> RequestRow:
    me = s.me()
    user_id = s.resolve_user(user_text)
    if user_id == me.user_id:
        raise ClientError("you cannot connect to yourself")
    if s.state.contact(user_id) is not None:
        raise ClientError(f"{user_text} is already a contact")
    for r in s.state.requests("out"):
        if r.user_id == user_id and r.status in ("sending", "pending"):
            raise ClientError(f"a connection request to {user_text} is already pending (#{r.id})")
    now = s.clock()
    package = (await s.api.connection_package(UserClientsParams(user_id))).connection_package
    target = package.client_credential.client_id
    if target.user_id != user_id:
        raise ValidationError(f"as.{user_id.as_domain} answered with another user's connection package")
    check_connection_package(package, package.client_credential, now)
    await s.creds.verify_client(package.client_credential)
    await s.learn_name(user_id)
    row, _ = await new_connection_group(s)
    cep = sign_connection_establishment_package(
        me.cred, me.signing_key, row.group_id, row.ear_key, row.credential_key
    )
    ctxt = seal_connection_establishment(package.payload.encryption_key, cep.encode())
    with s.state.tx() as c:
        request_id = s.state.add_request(c, "out", user_id, row.group_id, ctxt, "sending", now, str(target))
    await _deliver(s, request_id)
    request = s.state.request(request_id)
    assert request is not None
    return request


async def new_connection_group(s: Session) -> tuple[GroupRow, Group]:
    from .groups import new_group

    return await new_group(s, "", "connection")


async def _deliver(s: Session, request_id: int) -> None:
    request = s.state.request(request_id)
    assert request is not None
    if request.target.startswith(ALIAS_PREFIX):
        await deliver_to_alias(s, request_id)
        return
    target = ClientId.parse(request.target)
    await s.api.enqueue_message(EnqueueMessageParams(target, request.package))
    with s.state.tx() as c:
        s.state.set_request_status(c, request_id, "pending")


# --- responder ---------------------------------------------------------------------------------------


async def receive_establishment(s: Session, ciphertext: bytes) -> tuple[ConnectionEstablishmentPackage, str]:
    """Open and check a package from our direct queue; returns it and the sender's label (network: the
    sender's AS credentials and profile). Raises ValidationError for anything that does not check out."""
    plain = None
    for key in s.state.connection_keys():
        try:
            plain = open_connection_establishment(key, ciphertext)
            break
        except ValidationError:
            continue
    if plain is None:
        raise ValidationError("a connection establishment package for none of our connection keys")
    cep = ConnectionEstablishmentPackage.decode(plain)
    verify_connection_establishment_package(cep)
    await s.creds.verify_client(cep.sender_client_credential)
    if cep.connection_group_id.ds_domain != cep.sender_client_credential.client_id.domain:
        raise ValidationError("the connection group is not on the sender's homeserver")
    return cep, await s.learn_name(cep.sender_client_credential.client_id.user_id)


def _incoming(s: Session, request_id: int) -> tuple[RequestRow, ConnectionEstablishmentPackage]:
    request = s.state.request(request_id)
    if request is None or request.direction != "in":
        raise ClientError(f"no incoming connection request #{request_id} (see: phx client requests)")
    if request.status != "pending":
        raise ClientError(f"request #{request_id} is already {request.status}")
    return request, ConnectionEstablishmentPackage.decode(request.package)


async def _join(
    s: Session, request: RequestRow, cep: ConnectionEstablishmentPackage
) -> tuple[GroupRow, Group]:
    me = s.me()
    now = s.clock()
    gid = cep.connection_group_id
    sender = cep.sender_client_credential.client_id.user_id
    info = await s.api.external_commit_info(ExternalCommitInfoParams(gid, cep.connection_group_ear_key), None)
    leaf = new_leaf(me.cred, me.signing_key, now)
    aad = JoinConnectionGroupParamsAad(
        seal_credential_information(cep.connection_group_credential_key, gid, leaf.information(me.cred))
    )
    group, commit_message = Group.join_external(
        info.group_info, leaf.credential, leaf.signature_private_key, now=now, ratchet_tree=info.public_tree,
        capabilities=CAPABILITIES, authenticated_data=aad.encode(), credential_validator=check_leaf,
        config=GROUP_CONFIG,
    )  # fmt: skip
    members = await _check_members(s, cep, info, group)
    if any(m.user_id != sender for m in members):
        raise ValidationError("the connection group holds other users than the one who sent the request")
    params = JoinConnectionGroupParams(
        commit_message, cep.connection_group_ear_key,
        pending_group_info_update(group), await s.queue_config(),
    )  # fmt: skip
    row = GroupRow(
        gid, "connection", "", group.to_bytes(), cep.connection_group_ear_key,
        cep.connection_group_credential_key, leaf.signature_private_key, "joining", now,
    )  # fmt: skip
    with s.state.tx() as c:
        s.state.put_group(c, row)
        for m in members:
            s.state.put_member(c, gid, m)
    try:
        await s.api.join_connection_group(gid, params)
    except ServiceError:
        with s.state.tx() as c:
            s.state.delete_group(c, gid)
        raise
    return _joined(s, row, group, request)


async def _check_members(
    s: Session, cep: ConnectionEstablishmentPackage, info: ExternalCommitInfoResponse, group: Group
) -> list[MemberRow]:
    chains = [(m.leaf_index, m.encrypted_credential_information) for m in info.credential_chains]
    others = [m for m in group.members() if m.leaf_index != group.leaf_index]
    by_leaf = dict(chains)
    rows = []
    for m in others:
        blob = by_leaf.get(m.leaf_index)
        if blob is None:
            raise ValidationError(f"no credential information for member {m.leaf_index}")
        ci = await s.verify_info(
            cep.connection_group_id, cep.connection_group_credential_key, m.credential, m.signature_key, blob
        )
        rows.append(member_row(m.leaf_index, ci.client_credential))
    return rows


def _joined(s: Session, row: GroupRow, group: Group, request: RequestRow) -> tuple[GroupRow, Group]:
    me = s.me()
    group.merge_pending_commit()
    with s.state.tx() as c:
        row = s.save_group(c, row, group, status="active")
        s.state.put_member(c, row.group_id, member_row(group.leaf_index, me.cred))
    return row, group


async def accept(s: Session, request_id: int) -> Contact:
    request, cep = _incoming(s, request_id)
    sender = cep.sender_client_credential.client_id.user_id
    row, _ = await _join(s, request, cep)
    contact = Contact(sender, row.group_id, None, None, None, s.clock())
    with s.state.tx() as c:
        old = s.state.contact(sender)
        if old is not None and old.group_id != row.group_id:
            contact = replace(old, group_id=row.group_id, keys_sent=False)
        s.state.put_contact(c, contact)
        s.state.set_request_status(c, request.id, "accepted")
    await send_pending_keys(s)
    return s.state.contact(sender) or contact


async def reject(s: Session, request_id: int) -> None:
    request, cep = _incoming(s, request_id)
    row, _ = await _join(s, request, cep)
    await send_payload(s, row, ClientMessage(ClientMessageType.CONNECTION_DECLINED).encode())
    with s.state.tx() as c:
        s.state.delete_group(c, row.group_id)
        s.state.set_request_status(c, request.id, "rejected")


async def resume_joins(s: Session) -> None:
    """External joins whose answer was lost: merge them if the DS took them, else forget them."""
    for row in s.state.groups("connection"):
        if row.status != "joining":
            continue
        request = s.state.request_by_group(row.group_id)
        group = s.load_group(row)
        info = await s.api.external_commit_info(ExternalCommitInfoParams(row.group_id, row.ear_key), None)
        if request is not None and info.group_info.group_context.encode() == pending_context(group):
            _joined(s, row, group, request)
            with s.state.tx() as c:
                sender = request.user_id
                if s.state.contact(sender) is None:
                    s.state.put_contact(c, Contact(sender, row.group_id, None, None, None, s.clock()))
                s.state.set_request_status(c, request.id, "accepted")
        else:
            with s.state.tx() as c:
                s.state.delete_group(c, row.group_id)


async def resume_requests(s: Session) -> None:
    for r in s.state.requests("out", "sending"):
        await _deliver(s, r.id)


# --- friendship keys ---------------------------------------------------------------------------------


def receive_friendship(
    s: Session, row: GroupRow, sender: UserId, fp: FriendshipPackage
) -> tuple[list[Callable[[sqlite3.Connection], object]], list[Event]]:
    """Check a contact's friendship keys; returns the writes that store them (for the sync's transaction)
    and the events. Raises ValidationError before anything is written."""
    if user_id_for(fp.user_name, sender.as_domain) != sender:
        raise ValidationError(f"friendship package names {fp.user_name!r}, which is not {sender}")
    label = f"{fp.user_name}@{sender.as_domain}"
    writes: list[Callable[[sqlite3.Connection], object]] = [lambda c: s.accept_name(c, sender, fp.user_name)]
    events: list[Event] = []
    contact = s.state.contact(sender)
    if contact is None or contact.group_id != row.group_id:
        request = s.state.request_by_group(row.group_id)
        to_alias = request is not None and request.target.startswith(ALIAS_PREFIX)
        if request is None or request.direction != "out" or (request.user_id != sender and not to_alias):
            raise ValidationError("friendship keys in a connection group with no connection")
        if contact is not None:
            raise ValidationError(f"{label} is already a contact")
        contact = Contact(sender, row.group_id, None, None, None, s.clock())
        request_id = request.id
        writes.append(lambda c: s.state.set_request_status(c, request_id, "accepted"))
        if to_alias:
            writes.append(lambda c: s.state.set_request_user(c, request_id, sender))
        events.append(Event("connected", sender=label, request_id=request_id))
    elif contact.friendship_token is None:
        events.append(Event("ready", sender=label))
    updated = replace(
        contact,
        friendship_token=fp.friendship_token,
        friendship_key=fp.friendship_encryption_key,
        wai_key=fp.wai_encryption_key,
    )
    writes.append(lambda c: s.state.put_contact(c, updated))
    return writes, events


async def send_pending_keys(s: Session) -> None:
    """Send our current friendship keys to every contact that does not have them yet."""
    for contact in s.state.contacts():
        if contact.keys_sent:
            continue
        row = s.state.group(contact.group_id)
        if row is None or row.status != "active":
            continue
        await send_payload(s, row, own_friendship_package(s))
        with s.state.tx() as c:
            fresh = s.state.contact(contact.user_id)
            if fresh is not None:
                s.state.put_contact(c, replace(fresh, keys_sent=True))


async def disconnect(s: Session, user_text: str) -> None:
    """Remove a contact: end the connection group, rotate our friendship token, re-send it to the rest."""
    user_id = s.resolve_user(user_text)
    contact = s.state.contact(user_id)
    if contact is None:
        raise ClientError(f"{user_text} is not a contact")
    row = s.state.group(contact.group_id)
    if row is not None and row.status == "active":
        try:
            if s.load_group(row).leaf_index == 0:
                await delete_group_row(s, row)
            else:
                await leave_row(s, row)
        except ServiceError as e:
            if e.code != "not_found":
                raise
    await rotate_friendship_token(s)
    with s.state.tx() as c:
        s.state.delete_contact(c, user_id)
    await send_pending_keys(s)


async def rotate_friendship_token(s: Session) -> None:
    me = s.me()
    assert me.qs_uid is not None
    token = new_secret()
    params = UpdateUserRecordParams(me.qs_uid, CS.signature_public_key(me.qs_user_key), token)
    await s.api.update_user_record(me.client_id.domain, params, s.qs_auth(user=True))
    with s.state.tx() as c:
        s.update_identity(c, friendship_token=token)
        s.state.resend_keys(c)


# --- listings ----------------------------------------------------------------------------------------


def list_requests(s: Session, *, pending_only: bool = True) -> list[RequestView]:
    out = []
    for r in s.state.requests():
        if pending_only and r.status not in ("pending", "sending"):
            continue
        fingerprint = ""
        if r.direction == "in":
            cep = ConnectionEstablishmentPackage.decode(r.package)
            fingerprint = cep.sender_client_credential.fingerprint().hex()
        who = s.label(r.user_id)
        if r.target.startswith(ALIAS_PREFIX) and r.user_id.user_id == NOBODY:
            who = r.target  # an alias whose owner has not answered
        out.append(RequestView(r.id, r.direction, who, r.status, fingerprint))
    return out


def list_contacts(s: Session) -> list[ContactView]:
    out = []
    for contact in s.state.contacts():
        fps = sorted(
            {
                m.credential.fingerprint().hex()
                for m in s.state.members(contact.group_id)
                if m.user_id == contact.user_id
            }
        )
        ready = contact.friendship_token is not None
        out.append(ContactView(s.label(contact.user_id), str(contact.user_id), ready, fps))
    return out
