"""``sync``: drain the AS direct queue and the QS queue, decrypt and apply every item, then finish what
the items asked for (book: clients/client_sync.md and the queue chapters).

Each queue item is handled on its own: decrypted with a copy of the queue reader (which follows the
server's ratchet, key updates included), applied to copies of the affected state, and then written —
reader position, groups, members, contacts, messages — in one transaction. A network failure while
handling an item (fetching welcome information or a sender's credentials) stops the sync before that
item's transaction, so the next sync handles it again from the same position; an item that is invalid
(does not decrypt, bad signature, unknown group) is skipped with a warning so it cannot block the queue.

After the queues: deliver connection requests whose sending was interrupted, send our friendship keys
where they are due, delete connection groups whose request was declined, rejoin groups whose epoch this
client lost track of, commit proposals waiting in groups (any member not being removed does; the DS takes
the first commit and refuses the others with ``wrong_epoch``, whose senders then process the winner's),
and publish fresh KeyPackages and connection packages when the published ones run low.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from phx.auth.messages import DequeueMessagesParams as AsDequeueParams
from phx.delivery.messages import (
    AddUsersParamsAad,
    DsSenderId,
    JoinConnectionGroupParamsAad,
    UpdateClientParamsAad,
    WelcomeInfoParams,
    decrypt_ear_key,
)
from phx.errors import DecodeError, PhxError, Unavailable, ValidationError, WrongEpoch
from phx.identifiers import GroupId
from phx.mls.group import Group
from phx.mls.group_state import ApplicationMessage, CommitApplied, Member, ProposalReceived
from phx.mls.key_package import KeyPackageBundle
from phx.mls.messages import MLSMessage, Remove
from phx.queues import QueueMessage, QueueReader
from phx.queuing.messages import (
    DequeueMessagesParams,
    FanOutQueuePayload,
    MessageContentType,
    WelcomeBundle,
)

from .account import PACKAGES_LEFT, packages_left, publish_key_packages, upload_connection_packages
from .aliases import alias_items, store_alias_reader
from .api import DsAuth
from .connections import (
    receive_establishment,
    receive_friendship,
    resume_joins,
    resume_requests,
    send_pending_keys,
)
from .groups import commit, delete_group_row, resync, resync_key, update_plan
from .session import GROUP_CONFIG, ClientError, Event, Session, check_leaf, member_row
from .state import GroupRow, MemberRow
from .transport import ServiceError
from .wire import (
    CS,
    ClientMessage,
    ClientMessageType,
    WelcomeAttributionInfo,
    group_metadata,
)

__all__ = ["sync"]

BATCH = 100
#: Refill the published AddPackages when fewer unused ones than this are left.
KEY_PACKAGE_LOW = 2

Write = Callable[[sqlite3.Connection], object]


@dataclass
class _Item:
    """What handling one queue item changes, applied in one transaction."""

    writes: list[Write] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    #: Events that need what the writes produced (row ids).
    late: list[Callable[[], Event]] = field(default_factory=list)


def _transient(e: BaseException) -> bool:
    """Failures that are worth retrying later (the item stays in the queue)."""
    if isinstance(e, ServiceError):
        return e.status >= 500 or e.status == 429
    return isinstance(e, Unavailable)


async def sync(s: Session) -> list[Event]:
    if s.syncing:
        return []
    s.syncing = True
    try:
        events: list[Event] = []
        await resume_joins(s)
        await resume_requests(s)
        await _drain_as(s, events)
        await _drain_aliases(s, events)
        await _drain_qs(s, events)
        await _after(s, events)
        return events
    finally:
        s.syncing = False


# --- the two queues ----------------------------------------------------------------------------------


async def _drain_as(s: Session, events: list[Event]) -> None:
    me = s.me()
    while True:
        reader = _reader(s, "as_reader")
        params = AsDequeueParams(reader.next_sequence, BATCH)
        response = await s.api.dequeue_messages(me.client_id.domain, params, s.client_auth())
        for item in response.messages:
            await _handle(s, _meta_reader(s, "as_reader"), item, events, _direct_item)
        if response.remaining_messages_number == 0 or not response.messages:
            return


async def _drain_aliases(s: Session, events: list[Event]) -> None:
    for alias in s.state.aliases():
        address = alias.alias
        while True:
            row = next((a for a in s.state.aliases() if a.alias == address), None)
            if row is None:
                break
            items, remaining = await alias_items(s, row)
            for item in items:
                await _handle(s, _alias_reader(s, address), item, events, _direct_item)
            if remaining == 0 or not items:
                break


async def _drain_qs(s: Session, events: list[Event]) -> None:
    me = s.me()
    assert me.qs_cid is not None
    while True:
        reader = _reader(s, "qs_reader")
        params = DequeueMessagesParams(me.qs_cid, reader.next_sequence, BATCH)
        response = await s.api.dequeue(me.client_id.domain, params, s.qs_auth())
        for item in response.messages:
            await _handle(s, _meta_reader(s, "qs_reader"), item, events, _fan_out_item)
        if response.remaining_messages_number == 0 or not response.messages:
            return


def _reader(s: Session, key: str) -> QueueReader:
    data = s.state.get(key)
    if data is None:
        raise ClientError("this client has no queue state (finish registration first)")
    return QueueReader.from_bytes(data, CS)


@dataclass(frozen=True, slots=True)
class _ReaderSlot:
    """Where one queue's reader is kept: how to load it and how to store it (in the item's transaction)."""

    load: Callable[[], QueueReader]
    save: Callable[[sqlite3.Connection, QueueReader], None]


def _meta_reader(s: Session, key: str) -> _ReaderSlot:
    return _ReaderSlot(lambda: _reader(s, key), lambda c, r: s.state.put(c, key, r.to_bytes()))


def _alias_reader(s: Session, address: str) -> _ReaderSlot:
    def load() -> QueueReader:
        row = next(a for a in s.state.aliases() if a.alias == address)
        return QueueReader.from_bytes(row.reader, CS)

    return _ReaderSlot(load, lambda c, r: store_alias_reader(s, c, address, r.to_bytes()))


Handler = Callable[[Session, bytes, _Item], Awaitable[None]]


async def _handle(
    s: Session, slot: _ReaderSlot, item: QueueMessage, events: list[Event], handler: Handler
) -> None:
    reader = slot.load()
    result = _Item()
    try:
        plaintext = reader.read(item)
        if plaintext is not None:
            await handler(s, plaintext, result)
    except Exception as e:
        if _transient(e):
            raise
        if not isinstance(e, PhxError | ValueError):
            raise
        # Drop the item (the reader moves past it): an invalid item must not block the queue forever.
        result = _Item(events=[Event("warning", text=f"skipped queue item {item.sequence_number}: {e}")])
        if reader.next_sequence <= item.sequence_number:
            reader.next_sequence = item.sequence_number + 1
    with s.state.tx() as c:
        for write in result.writes:
            write(c)
        slot.save(c, reader)
    events.extend(result.events)
    events.extend(make() for make in result.late)


# --- direct queue: connection requests ---------------------------------------------------------------


async def _direct_item(s: Session, plaintext: bytes, out: _Item) -> None:
    cep, label = await receive_establishment(s, plaintext)
    sender = cep.sender_client_credential.client_id.user_id
    now = s.clock()
    box: list[int] = []

    def write(c: sqlite3.Connection) -> None:
        box.append(
            s.state.add_request(c, "in", sender, cep.connection_group_id, cep.encode(), "pending", now)
        )
        s.state.put(c, PACKAGES_LEFT, str(packages_left(s) - 1).encode())

    out.writes.append(write)
    out.late.append(lambda: Event("request", sender=label, request_id=box[0]))


# --- QS queue: group traffic -------------------------------------------------------------------------


async def _fan_out_item(s: Session, plaintext: bytes, out: _Item) -> None:
    payload = FanOutQueuePayload.decode(plaintext)
    content = payload.content
    if content.content_type == MessageContentType.WELCOME_BUNDLE:
        assert isinstance(content.body, WelcomeBundle)
        await _welcome(s, content.body, out)
        return
    gid = content.group_id()
    row = s.state.group(gid)
    if row is None or row.status not in ("active", "leaving"):
        return  # a group we left, were removed from or deleted: late traffic
    group = s.load_group(row)
    message = content.body
    assert not isinstance(message, WelcomeBundle)
    try:
        outcome = group.process(message, now=s.clock())
    except WrongEpoch:
        epoch = _epoch_of(message)
        if epoch is None or epoch <= group.epoch:
            return  # from an epoch we already left behind: nothing to do with it
        # From an epoch we never reached: we lost track of the group (a commit of ours whose fate we do
        # not know, or commits we could not process). Rejoin its current epoch after the queues.
        out.writes.append(lambda c: s.state.put(c, resync_key(gid), b"1"))
        out.events.append(
            Event("warning", row.name, str(gid), text="lost track of the group's epoch; rejoining")
        )
        return
    if isinstance(outcome, ApplicationMessage):
        await _application(s, row, group, outcome, payload.timestamp, out)
    elif isinstance(outcome, CommitApplied):
        await _commit(s, row, group, outcome, out)
    else:
        assert isinstance(outcome, ProposalReceived)
        out.writes.append(lambda c: s.save_group(c, row, group))


async def _application(
    s: Session, row: GroupRow, group: Group, msg: ApplicationMessage, sent_at: int, out: _Item
) -> None:
    members = {m.leaf: m for m in s.state.members(row.group_id)}
    sender = members.get(msg.sender)
    if sender is None:
        raise ValidationError(f"message from leaf {msg.sender}, which has no verified credential")
    body = ClientMessage.decode(msg.data)
    out.writes.append(lambda c: s.save_group(c, row, group))
    if body.message_type == ClientMessageType.TEXT:
        label = s.label(sender.user_id)
        if row.kind != "group":
            return  # text in a connection group: not part of any conversation we show
        out.writes.append(
            lambda c: s.state.add_message(c, row.group_id, sender.user_id, body.text, sent_at, False)
        )
        out.events.append(Event("message", row.name, str(row.group_id), label, body.text, sent_at))
    elif body.message_type == ClientMessageType.FRIENDSHIP and row.kind == "connection":
        assert body.friendship is not None
        writes, events = receive_friendship(s, row, sender.user_id, body.friendship)
        out.writes += writes
        out.events += events
    elif body.message_type == ClientMessageType.CONNECTION_DECLINED and row.kind == "connection":
        request = s.state.request_by_group(row.group_id)
        if request is not None and request.direction == "out" and request.status == "pending":
            out.writes.append(lambda c: s.state.set_request_status(c, request.id, "rejected"))
            out.events.append(Event("declined", sender=s.label(request.user_id), request_id=request.id))


def _epoch_of(message: MLSMessage) -> int | None:
    if message.public_message is not None:
        return message.public_message.content.epoch
    if message.private_message is not None:
        return message.private_message.epoch
    return None


def _joiners(group: Group, outcome: CommitApplied) -> list[tuple[Member, bytes]]:
    """The members a commit brings in with their encrypted credential information: the Adds of an
    add-users commit (AAD in the order of the Adds) or the joiner of a connection-group external commit."""
    if outcome.external:
        if outcome.removed or outcome.committer is None:
            return []  # a resync: the member keeps its credential information
        node = group.member(outcome.committer)
        aad = JoinConnectionGroupParamsAad.decode(outcome.authenticated_data)
        return [] if node is None else [(node, aad.encrypted_credential_information)]
    if not outcome.added:
        return []
    users = AddUsersParamsAad.decode(outcome.authenticated_data).encrypted_credential_information
    infos = [c for user in users for c in user.clients]
    if len(infos) != len(outcome.added):
        raise ValidationError("the commit's credential information does not match its Adds")
    return list(zip(outcome.added, infos, strict=True))


async def _commit(s: Session, row: GroupRow, group: Group, outcome: CommitApplied, out: _Item) -> None:
    me = s.me()
    gid = row.group_id
    label = row.name or "connection"
    if outcome.removed_self:
        status = "left" if row.status == "leaving" else "removed"
        out.writes.append(lambda c: s.save_group(c, row, group, status=status))
        if row.kind == "connection":
            contact = s.state.contact_by_group(gid)
            if contact is not None:
                peer = contact.user_id
                out.writes.append(lambda c: s.state.delete_contact(c, peer))
                out.events.append(Event("disconnected", sender=s.label(peer)))
        else:
            out.events.append(Event(status, row.name, str(gid)))
        return
    added: list[MemberRow] = []
    for joiner, blob in _joiners(group, outcome):
        info = await s.verify_info(gid, row.credential_key, joiner.credential, joiner.signature_key, blob)
        added.append(member_row(joiner.leaf_index, info.client_credential))
    if outcome.external and outcome.removed and outcome.committer is not None:
        # A resync: the member keeps its credential under its new leaf.
        old = {m.leaf: m for m in s.state.members(gid)}.get(outcome.removed[0].leaf_index)
        if old is not None:
            added.append(MemberRow(outcome.committer, old.client_id, old.user_id, old.credential))
    if not outcome.external and not outcome.added and outcome.committer is not None:
        try:
            info_blob = UpdateClientParamsAad.decode(
                outcome.authenticated_data
            ).option_encrypted_credential_information
        except DecodeError:
            info_blob = None
        node = group.member(outcome.committer)
        if info_blob is not None and node is not None:
            info = await s.verify_info(
                gid, row.credential_key, node.credential, node.signature_key, info_blob
            )
            added.append(member_row(outcome.committer, info.client_credential))
    name = row.name
    if outcome.extensions_changed and row.kind == "group":
        meta = group_metadata(group.extensions, row.credential_key, gid)
        name = meta.name if meta is not None else name
    removed = [m.leaf_index for m in outcome.removed]
    known = {m.leaf: m for m in s.state.members(gid)}

    def write(c: sqlite3.Connection) -> None:
        s.save_group(c, row, group, name=name)
        for leaf in removed:
            s.state.delete_member(c, gid, leaf)
        for m in added:
            s.state.put_member(c, gid, m)

    out.writes.append(write)
    if row.kind == "group":
        for m in added:
            if m.user_id != me.user_id and m.leaf not in known:
                out.events.append(Event("added", label, str(gid), await s.learn_name(m.user_id)))
        for leaf in removed:
            gone = known.get(leaf)
            if gone is not None:
                out.events.append(Event("removed", label, str(gid), s.label(gone.user_id)))
    elif removed:
        contact = s.state.contact_by_group(gid)
        if contact is not None and any(
            known.get(leaf) and known[leaf].user_id == contact.user_id for leaf in removed
        ):
            out.writes.append(lambda c: s.state.delete_contact(c, contact.user_id))
            out.events.append(Event("disconnected", sender=s.label(contact.user_id)))


async def _welcome(s: Session, bundle: WelcomeBundle, out: _Item) -> None:
    me = s.me()
    gid = bundle.group_id
    existing = s.state.group(gid)
    if existing is not None and existing.status in ("active", "leaving", "joining"):
        return  # already a member (a repeated bundle)
    found = None
    for secret in bundle.welcome.secrets:
        stored = s.state.key_package(secret.new_member)
        if stored is not None:
            found = (secret.new_member, stored)
            break
    if found is None:
        raise ValidationError("a Welcome for none of our KeyPackages")
    ref, (bundle_bytes, _sig_key, _last_resort) = found
    kpb = KeyPackageBundle.from_bytes(bundle_bytes)
    ear_key = decrypt_ear_key(kpb.init_private_key, gid, bundle.encrypted_group_state_ear_key)
    wai = WelcomeAttributionInfo.open(me.wai_key, gid, bundle.encrypted_welcome_attribution_info)
    credential_key = wai.payload.group_credential_encryption_key
    group = Group.join_from_welcome(
        bundle.welcome, kpb, now=s.clock(), credential_validator=check_leaf, config=GROUP_CONFIG
    )
    if GroupId.from_mls(group.group_id) != gid:
        raise ValidationError("the Welcome is for another group than its bundle names")
    info = await s.api.welcome_info(
        WelcomeInfoParams(gid, ear_key, group.epoch),
        DsAuth(DsSenderId.key_package(ref), kpb.signature_private_key),
    )
    chains = [(m.leaf_index, m.encrypted_credential_information) for m in info.credential_chains]
    members = await s.verify_members(gid, group, credential_key, chains)
    inviter = next((m for m in members if m.client_id == wai.payload.sender_client_id), None)
    if inviter is None:
        raise ValidationError("the inviter is not a member of the group")
    wai.verify(gid, bundle.welcome.encode(), inviter.credential)
    if s.state.contact(inviter.user_id) is None:
        raise ValidationError(f"{s.label(inviter.user_id)} invited us but is not a contact")
    meta = group_metadata(group.extensions, credential_key, gid)
    name = meta.name if meta is not None else str(gid)
    for m in members:
        await s.learn_name(m.user_id)  # so that every member's messages show a name
    row = GroupRow(
        gid,
        "group",
        name,
        group.to_bytes(),
        ear_key,
        credential_key,
        kpb.signature_private_key,
        "active",
        s.clock(),
    )

    def write(c: sqlite3.Connection) -> None:
        s.state.delete_group(c, gid)  # a group we were in before: start over
        s.state.put_group(c, row)
        for m in members:
            s.state.put_member(c, gid, m)
        s.state.use_key_package(c, ref)

    out.writes.append(write)
    out.events.append(Event("joined", name, str(gid), s.label(inviter.user_id)))


# --- after the queues --------------------------------------------------------------------------------


async def _after(s: Session, events: list[Event]) -> None:
    await send_pending_keys(s)
    for request in s.state.requests("out", "rejected"):
        row = s.state.group(request.group_id)
        if row is not None and row.status == "active":
            try:
                await delete_group_row(s, row)
            except ServiceError as e:
                events.append(Event("warning", text=f"could not delete a declined connection group: {e}"))
    for row in s.state.groups():
        if row.status in ("active", "leaving") and s.state.get(resync_key(row.group_id)) is not None:
            try:
                await resync(s, row)
            except ServiceError as e:
                events.append(Event("warning", row.name, str(row.group_id), text=f"could not rejoin: {e}"))
    for row in s.state.groups():
        if row.status != "active":
            continue
        group = s.load_group(row)
        proposals = group.pending_proposals()
        if not proposals or group.pending_commit is not None:
            continue
        leaving = {p.proposal.value.removed for p in proposals if isinstance(p.proposal.value, Remove)}
        if group.leaf_index in leaving:
            continue  # our own removal is for someone else to commit
        try:
            before = {m.leaf: m for m in s.state.members(row.group_id)}
            await commit(s, row, group, update_plan(s), retry=False)
            for leaf in leaving:
                gone = before.get(leaf)
                if gone is not None and row.kind == "group":
                    events.append(Event("removed", row.name, str(row.group_id), s.label(gone.user_id)))
        except ServiceError as e:
            if e.code not in ("wrong_epoch", "pending_proposals"):
                raise
    if s.state.unused_key_packages() < KEY_PACKAGE_LOW:
        await publish_key_packages(s)
    if packages_left(s) <= 1:
        await upload_connection_packages(s)
