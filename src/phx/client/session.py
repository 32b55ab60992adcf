"""The plumbing every client flow shares: state, services, caches, identity, names, groups.

User names: ``alice@a.test`` is the user whose :class:`~phx.identifiers.UserId` is
``uuid5(USER_NAMESPACE, "alice")@a.test`` (docs/decisions.md, "User names"). The name is also the user's
profile at the AS, and a name learned from anywhere (profile, friendship package) is accepted only if it
hashes to the user id, so names cannot be spoofed. ``<uuid>@<domain>`` addresses a user directly.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from phx.auth.messages import UserProfileParams
from phx.credentials import ClientCredential
from phx.errors import DecodeError, PhxError, ValidationError
from phx.identifiers import ClientId, Fqdn, GroupId, UserId
from phx.mls.group import Group
from phx.mls.group_state import GroupConfig
from phx.mls.messages import Credential
from phx.queuing.messages import ClientQueueConfig, QueueConfig, seal_queue_config

from .api import Api, ClientAuth, DsAuth, QsAuth
from .state import ClientState, GroupRow, Identity, MemberRow
from .transport import Transport
from .trust import CredentialCache, TokenCache
from .wire import (
    CredentialInformation,
    UserProfile,
    leaf_credential_of,
    open_credential_information,
    verify_member,
)

__all__ = [
    "GROUP_CONFIG",
    "USER_NAMESPACE",
    "ClientError",
    "Event",
    "Session",
    "check_leaf",
    "parse_user",
    "user_id_for",
]

#: Namespace of the name-derived user ids (uuid5).
USER_NAMESPACE = uuid.UUID("0c9e3a57-5d7b-4b0e-9f3f-7068785f7573")
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
#: Groups keep two past epochs so that application messages overtaken by a commit still decrypt.
GROUP_CONFIG = GroupConfig(max_past_epochs=2)


@dataclass(frozen=True, slots=True)
class Event:
    """Something a command observed: ``kind`` is ``message``, ``request``, ``connected`` (our request was
    accepted), ``ready`` (a contact's friendship keys arrived), ``declined``, ``disconnected``, ``joined``,
    ``added``, ``removed``, ``left`` or ``warning``."""

    kind: str
    group: str = ""
    group_id: str = ""
    sender: str = ""
    text: str = ""
    sent_at: int = 0
    request_id: int = 0

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"event": self.kind}
        for key in ("group", "group_id", "sender", "text", "sent_at", "request_id"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out


class ClientError(PhxError):
    """A command that cannot run as asked (unknown group, not a contact, not registered, …)."""

    code = "client_error"


def user_id_for(name: str, domain: Fqdn) -> UserId:
    return UserId(domain, uuid.uuid5(USER_NAMESPACE, name))


def parse_user(text: str) -> tuple[UserId, str | None]:
    """``name@domain`` or ``<uuid>@domain`` → (user id, name or None)."""
    local, sep, domain = text.strip().rpartition("@")
    if not sep or not local or not domain:
        raise ClientError(f"not a user address (expected USER@DOMAIN): {text!r}")
    try:
        fqdn = Fqdn.parse(domain)
    except ValidationError as e:
        raise ClientError(f"not a user address: {e}") from None
    try:
        return UserId(fqdn, uuid.UUID(local)), None
    except ValueError:
        pass
    name = local.lower()
    if not _NAME.fullmatch(name):
        raise ClientError(
            f"invalid user name {local!r}: 1-64 letters, digits, '.', '_' or '-' (not at the ends)"
        )
    return user_id_for(name, fqdn), name


def check_leaf(credential: Credential, signature_key: bytes) -> None:
    """The MLS engine's credential hook: every leaf carries a well-formed leaf credential for its key."""
    leaf = leaf_credential_of(credential)
    if leaf.payload.public_key != signature_key:
        raise ValidationError("leaf credential is for another signature key than the leaf's")


def wall_clock() -> int:
    return int(time.time())


class Session:
    """One open client home: the state file, the services, the caches."""

    def __init__(
        self, state: ClientState, transport: Transport, *, clock: Callable[[], int] = wall_clock
    ) -> None:
        self.state = state
        self.transport = transport
        self.clock = clock
        self.api = Api(transport, self, clock)
        self.tokens = TokenCache(state, self.api, self.client_auth, clock)
        self.creds = CredentialCache(state, self.api, clock)
        #: Set while a sync runs, so that flows a sync triggers do not start another one.
        self.syncing = False

    # TokenSource for Api (delegates to the cache, which needs the Api itself)
    async def take(self, domain: Fqdn) -> bytes:
        return await self.tokens.take(domain)

    async def invalidate(self, domain: Fqdn) -> None:
        await self.tokens.invalidate(domain)

    # --- identity ------------------------------------------------------------------------------------

    def me(self) -> Identity:
        identity = self.state.identity()
        if identity is None or identity.credential is None:
            raise ClientError("this client is not registered (run: phx client register USER@DOMAIN)")
        return identity

    @property
    def domain(self) -> Fqdn:
        return self.me().client_id.domain

    def client_auth(self) -> ClientAuth:
        me = self.me()
        return ClientAuth(me.cred, me.signing_key)

    def qs_auth(self, *, user: bool = False) -> QsAuth:
        me = self.me()
        if me.qs_uid is None or me.qs_cid is None:
            raise ClientError("this client has no QS record yet (finish registration first)")
        return QsAuth(me.qs_uid, me.qs_user_key) if user else QsAuth(me.qs_cid, me.qs_client_key)

    def update_identity(self, c: sqlite3.Connection, **changes: object) -> Identity:
        current = self.state.identity()
        if current is None:
            raise ClientError("this client has no identity yet")
        identity = replace(current, **changes)  # type: ignore[arg-type]
        self.state.put_identity(c, identity)
        return identity

    async def queue_config(self) -> ClientQueueConfig:
        """A freshly sealed config of our QS queue (fresh HPKE randomness: unlinkable across groups)."""
        me = self.me()
        if me.qs_cid is None:
            raise ClientError("this client has no QS queue yet")
        key = self.state.get("qs_config_key")
        if key is None:
            key = await self.api.queue_config_key(me.client_id.domain)
            with self.state.tx() as c:
                self.state.put(c, "qs_config_key", key)
        return seal_queue_config(key, me.client_id.domain, QueueConfig(None, me.qs_cid))

    # --- names ---------------------------------------------------------------------------------------

    def label(self, user_id: UserId) -> str:
        """``name@domain`` when the name is known, else ``<uuid>@domain``."""
        name = self.state.user_name(user_id)
        me = self.state.identity()
        if name is None and me is not None and me.user_id == user_id:
            name = me.user_name
        return f"{name}@{user_id.as_domain}" if name else str(user_id)

    def accept_name(self, c: sqlite3.Connection, user_id: UserId, name: str) -> bool:
        """Record ``name`` for ``user_id`` if it is the name the id derives from."""
        if user_id_for(name, user_id.as_domain) != user_id:
            return False
        self.state.put_user_name(c, user_id, name)
        return True

    async def learn_name(self, user_id: UserId) -> str:
        """Fetch the user's profile from its AS (once) and return its label."""
        me = self.state.identity()
        if self.state.user_name(user_id) is None and (me is None or me.user_id != user_id):
            try:
                body = (await self.api.fetch_profile(UserProfileParams(user_id))).user_profile
                name = UserProfile.decode(body).user_name
            except (PhxError, DecodeError):
                return str(user_id)
            with self.state.tx() as c:
                self.accept_name(c, user_id, name)
        return self.label(user_id)

    def resolve_user(self, text: str) -> UserId:
        return parse_user(text)[0]

    # --- groups --------------------------------------------------------------------------------------

    def find_group(self, text: str, *, kind: str = "group") -> GroupRow:
        """A group by its id or its name (names may repeat: then the id is needed)."""
        rows = [g for g in self.state.groups(kind) if g.status in ("active", "leaving")]
        try:
            gid = GroupId.parse(text)
        except ValidationError:
            gid = None
        if gid is not None:
            row = self.state.group(gid)
            if row is not None:
                return row
        matches = [g for g in rows if g.name == text]
        if not matches:
            raise ClientError(f"no group named {text!r} (see: phx client groups)")
        if len(matches) > 1:
            ids = ", ".join(str(g.group_id) for g in matches)
            raise ClientError(f"several groups are named {text!r}; use the group id: {ids}")
        return matches[0]

    def load_group(self, row: GroupRow) -> Group:
        return Group.from_bytes(row.state, credential_validator=check_leaf)

    def save_group(
        self, c: sqlite3.Connection, row: GroupRow, group: Group | None = None, **changes: object
    ) -> GroupRow:
        if group is not None:
            changes["state"] = group.to_bytes()
        new = replace(row, **changes)  # type: ignore[arg-type]
        self.state.put_group(c, new)
        return new

    def ds_auth(self, row: GroupRow, group: Group) -> DsAuth:
        from phx.delivery.messages import DsSenderId

        return DsAuth(DsSenderId.leaf(group.leaf_index), row.leaf_key)

    async def verify_info(
        self,
        group_id: GroupId,
        credential_key: bytes,
        leaf_credential: Credential,
        signature_key: bytes,
        blob: bytes,
    ) -> CredentialInformation:
        """Open a member's credential information, check its leaf credential and the full chain."""
        info = open_credential_information(credential_key, group_id, blob)
        verify_member(leaf_credential, signature_key, info, self.clock())
        await self.creds.verify_client(info.client_credential)
        return info

    async def verify_members(
        self, group_id: GroupId, group: Group, credential_key: bytes, chains: Sequence[tuple[int, bytes]]
    ) -> list[MemberRow]:
        """Every member of ``group`` against the DS's credential chains (leaf → client → AS)."""
        by_leaf = dict(chains)
        rows = []
        for m in group.members():
            blob = by_leaf.get(m.leaf_index)
            if blob is None:
                raise ValidationError(f"no credential information for member {m.leaf_index}")
            info = await self.verify_info(group_id, credential_key, m.credential, m.signature_key, blob)
            rows.append(member_row(m.leaf_index, info.client_credential))
        return rows


def member_row(leaf: int, credential: ClientCredential) -> MemberRow:
    cid: ClientId = credential.client_id
    return MemberRow(leaf, cid, cid.user_id, credential)


def new_ear_key() -> bytes:
    return os.urandom(32)
