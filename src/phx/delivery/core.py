"""The DS's rules, without I/O: (decrypted group state, request, now) -> changed state + outputs.

Every function here takes the :class:`~.state.GroupState` of one group (already decrypted with the
request's EAR key, cold section on demand), the decoded params and ``now``; it raises a
:class:`~phx.errors.PhxError` subclass before changing anything, or changes the state in place (marking
what changed) and returns :class:`Outputs`: the fan-outs to hand to the QS, the response struct, and
whether the group is to be deleted. The service (:mod:`.service`) does the locking, storing and sending.

Errors a client sees (besides the MLS ones: ``mls_invalid``, ``wrong_epoch``, ``bad_signature``)::

    WrongEarKey        401 wrong_ear_key       (phx.delivery.state)
    AuthError          401 unauthenticated     missing, stale or foreign DsAuthToken / unknown sender
    NotAdmin           403 not_admin           adds, removes, deletion and role changes by a non-admin
    PendingProposals   409 pending_proposals   proposal store not empty, or a commit leaves some out
    ValidationError    400 invalid             a commit of the wrong shape for its endpoint
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

from phx.codec import Reader, Struct, Writer
from phx.config import DsConfig
from phx.crypto import PHX_PREFIX, CipherSuite, HpkeError
from phx.errors import AuthError, DecodeError, ExpiredError, Forbidden, ValidationError
from phx.identifiers import Fqdn, GroupId
from phx.mls.framing import sign_content
from phx.mls.messages import (
    Credential,
    Extension,
    ExtensionType,
    ExternalSender,
    FramedContent,
    FramedContentAuthData,
    GroupContext,
    MLSMessage,
    Proposal,
    PublicMessage,
    Remove,
    Sender,
    WireFormat,
    find_extension,
    parse_external_senders,
)
from phx.mls.public_group import ProposalOutcome, PublicGroup
from phx.queuing.messages import (
    ClientQueueConfig,
    FanOutMessage,
    MessageContent,
    MessageContentType,
)

from .messages import (
    LABEL_AUTH_TOKEN,
    ROLES_EXTENSION_TYPE,
    ClientInactivityRemoval,
    DsAuthTbs,
    DsRequest,
    DsSenderId,
    QueueDeletionRemoval,
    RolesExtension,
    parse_roles_extension,
)
from .state import GroupState, Member, month_start, next_month

__all__ = [
    "CLOCK_SKEW",
    "DsContext",
    "LocalClientsOnly",
    "NotAdmin",
    "Outputs",
    "PendingProposals",
    "authenticate",
    "check_leaf_sender",
    "commit_fan_out",
    "ds_external_sender_index",
    "is_admin",
    "maintenance",
    "removal_due",
    "roles_of",
]

#: A DsAuthToken may be dated this far in the future (client clocks run fast).
CLOCK_SKEW = 300
_QUEUE_ID_INFO = PHX_PREFIX + b"QueueIdEncryption"


class NotAdmin(Forbidden):
    code = "not_admin"


class LocalClientsOnly(Forbidden):
    """A client of another homeserver (its Privacy Pass token is of the federated class) asked for an
    endpoint only this homeserver's clients may use: request group id, create group."""

    code = "local_clients_only"


class PendingProposals(ValidationError):
    """Book: "the DS will return an error message indicating the proposal store is non-empty"."""

    status = 409
    code = "pending_proposals"


@dataclass(frozen=True, slots=True)
class DsContext:
    """The DS-wide constants the rules need."""

    domain: Fqdn
    config: DsConfig
    signing_key: bytes  # the DS's external-sender key (DS-induced removals)
    cs: CipherSuite

    @property
    def verifying_key(self) -> bytes:
        return self.cs.signature_public_key(self.signing_key)

    def external_sender(self) -> ExternalSender:
        name = f"ds.{self.domain}".encode()
        return ExternalSender(self.verifying_key, Credential.basic(name))


@dataclass(slots=True)
class Outputs:
    fan_outs: list[FanOutMessage] = field(default_factory=list)
    response: Struct | None = None
    delete_group: bool = False
    removals: list[ClientInactivityRemoval | QueueDeletionRemoval] = field(default_factory=list)


# --- authentication ---------------------------------------------------------------------------------


def authenticate(
    state: GroupState, request: DsRequest, operation: str, ctx: DsContext, now: int, *, kind: str = "leaf"
) -> DsSenderId:
    """Check the request's DsAuthToken (book: "Authentication"): for this group and operation, over
    these params, not older than the configured maximal age, with a sender of the endpoint's ``kind``
    (``"leaf"`` or ``"key_package"``) and signed by that leaf's (or KeyPackage's) signature key. Returns
    the sender id."""
    token = request.auth_token
    if token is None:
        raise AuthError("this operation needs a DsAuthToken")
    if token.group_id != state.group_id:
        raise AuthError("DsAuthToken is for another group")
    if token.timestamp > now + CLOCK_SKEW:
        raise ExpiredError("DsAuthToken is dated in the future")
    if now - token.timestamp > ctx.config.max_auth_token_age:
        raise ExpiredError("DsAuthToken is older than the maximal age")
    sid = token.sender_id
    if kind == "leaf" and sid.leaf_index is None:
        raise AuthError("this operation needs a LeafIndex sender")
    if kind == "key_package" and sid.key_package_ref is None:
        raise AuthError("this operation needs a KeyPackageRef sender")
    key = _sender_key(state, sid, now)
    tbs = DsAuthTbs.of(token.group_id, token.timestamp, sid, operation, request.params).encode()
    ctx.cs.check_signature(key, LABEL_AUTH_TOKEN, tbs, token.signature, prefix=PHX_PREFIX)
    return sid


def _sender_key(state: GroupState, sid: DsSenderId, now: int) -> bytes:
    if sid.leaf_index is not None:
        m = state.member(sid.leaf_index)
        if m is None:
            raise AuthError(f"leaf {sid.leaf_index} is not a member of the group")
        return m.signature_key
    for j in state.roster.joiners:
        if hmac.compare_digest(j.key_package_ref, sid.key_package_ref or b"") and j.expires_at >= now:
            return j.signature_key
    raise AuthError("no pending join for this KeyPackageRef")


def check_leaf_sender(sid: DsSenderId) -> int:
    if sid.leaf_index is None:
        raise AuthError("this operation needs a LeafIndex sender")
    return sid.leaf_index


# --- roles and the DS's own place in the group ---------------------------------------------------------


def roles_of(extensions: Sequence[Extension]) -> RolesExtension | None:
    ext = find_extension(extensions, ROLES_EXTENSION_TYPE)
    if ext is None:
        return None
    try:
        return parse_roles_extension(ext)
    except DecodeError as e:
        raise ValidationError(f"malformed RolesExtension: {e}") from e


def is_admin(public: PublicGroup, leaf: int) -> bool:
    roles = roles_of(public.extensions)
    return roles is not None and leaf in roles.admins


def require_admin(public: PublicGroup, leaf: int, what: str) -> None:
    if not is_admin(public, leaf):
        raise NotAdmin(f"only admins may {what}")


def ds_external_sender_index(ctx: DsContext, context: GroupContext) -> int:
    """The DS's index in the group's external_senders; the group must list the DS (DS-induced removals
    are external proposals) and carry a RolesExtension."""
    ext = find_extension(context.extensions, ExtensionType.EXTERNAL_SENDERS)
    if ext is None:
        raise ValidationError("the group must list the DS in its external_senders extension")
    senders = parse_external_senders(ext)
    key = ctx.verifying_key
    for i, s in enumerate(senders):
        if s.signature_key == key:
            if roles_of(context.extensions) is None:
                raise ValidationError("the group must carry a RolesExtension")
            return i
    raise ValidationError("the group's external_senders extension does not list this DS")


# --- fan-out ----------------------------------------------------------------------------------------


def fan_out(
    recipients: tuple[ClientQueueConfig, ...], message: MLSMessage, kind: MessageContentType
) -> list[FanOutMessage]:
    if not recipients:
        return []
    return [FanOutMessage(recipients, MessageContent(kind, message))]


def commit_fan_out(state: GroupState, message: MLSMessage, exclude: int | None) -> list[FanOutMessage]:
    """A handshake message to every member of the current roster but ``exclude`` (the sender)."""
    return fan_out(state.recipients(exclude), message, MessageContentType.COMMIT)


# --- DS-induced removals (book: "DS-induced removals") -----------------------------------------------


def removal_due(member: Member, config: DsConfig) -> int:
    """When ``member`` is proposed for removal: the configured inactivity after the *end* of the month
    of its last activity (timestamps keep the month only, and nobody is removed early)."""
    return next_month(member.activity_time) + config.max_client_inactivity


def needs_maintenance(state: GroupState, ctx: DsContext, now: int, deleted_queues: int) -> bool:
    """Whether :func:`maintenance` has anything to do (cheap: the roster only)."""
    if deleted_queues > 0 or now >= state.next_activity_due(ctx.config.max_client_inactivity):
        return True
    return any(j.expires_at < now for j in state.roster.joiners)


def maintenance(state: GroupState, ctx: DsContext, now: int, deleted_queues: Sequence[bytes]) -> Outputs:
    """Everything due whenever the state is decrypted: removal proposals for members whose queue was
    reported deleted (``deleted_queues``: the sealed configs stored with the group) and for members past
    the maximal commit inactivity, and forgetting joiners whose KeyPackage expired.

    Each removal is an external proposal signed by the DS, stored in the proposal store (the next commit
    must include it) and sent to every member."""
    out = Outputs()
    if deleted_queues:
        gone = _opened_queue_configs(state, ctx, deleted_queues)
        leaves = [m.leaf for m in state.members() if m.queue_config in gone]
        proposals = _propose_removals(state, ctx, leaves, now)
        if proposals:
            out.removals.append(QueueDeletionRemoval(tuple(proposals)))
        state.touch_roster()  # the sealed configs are consumed
    if needs_maintenance(state, ctx, now, 0):
        done = state.roster.proposed_removals
        inactive = [
            m.leaf for m in state.members() if m.leaf not in done and now >= removal_due(m, ctx.config)
        ]
        proposals = _propose_removals(state, ctx, inactive, now)
        if proposals:
            out.removals.append(ClientInactivityRemoval(tuple(proposals)))
    for removal in out.removals:
        for p in removal.proposals:
            out.fan_outs.extend(commit_fan_out(state, p, None))
    prune_joiners(state, now)
    return out


def seal_queue_config(
    cs: CipherSuite, public_key: bytes, group_id: GroupId, config: ClientQueueConfig
) -> bytes:
    """A QueueDeleted config sealed under the group's QueueIdEncryptionKey (stored in plaintext)."""
    kem_output, ct = cs.hpke.seal(public_key, _QUEUE_ID_INFO + group_id.encode(), b"", config.encode())
    w = Writer()
    w.opaque(kem_output)
    w.opaque(ct)
    return w.getvalue()


def _opened_queue_configs(state: GroupState, ctx: DsContext, sealed: Sequence[bytes]) -> set[bytes]:
    out: set[bytes] = set()
    info = _QUEUE_ID_INFO + state.group_id.encode()
    for blob in sealed:
        try:
            r = Reader(blob)
            kem_output, ct = r.opaque(), r.opaque()
            r.finish()
            out.add(ctx.cs.hpke.open(kem_output, state.roster.queue_id_private_key, info, b"", ct))
        except (DecodeError, HpkeError, ValueError):
            continue  # a record we cannot open is dropped, never fatal
    return out


def _propose_removals(state: GroupState, ctx: DsContext, leaves: Sequence[int], now: int) -> list[MLSMessage]:
    done = state.roster.proposed_removals
    pending = sorted({leaf for leaf in leaves if leaf not in done})
    if not pending:
        return []
    public = state.cold.public
    messages = []
    for leaf in pending:
        content = FramedContent(
            public.group_id, public.epoch, Sender.external(state.roster.ds_sender_index), b"",
            Proposal(Remove(leaf)),
        )  # fmt: skip
        sig = sign_content(ctx.cs, ctx.signing_key, WireFormat.PUBLIC_MESSAGE, content, None)
        pm = PublicMessage(content, FramedContentAuthData(sig), None)
        outcome = public.process(pm, now)
        assert isinstance(outcome, ProposalOutcome)
        public.accept(outcome)
        done.add(leaf)
        messages.append(MLSMessage(pm))
    state.touch_cold()
    return messages


def prune_joiners(state: GroupState, now: int) -> None:
    """Forget joiners whose KeyPackage expired (their past states go when nobody else waits for them)."""
    roster = state.roster
    kept = [j for j in roster.joiners if j.expires_at >= now]
    if len(kept) != len(roster.joiners):
        roster.joiners = kept
        state.joiners_changed = True
        state.touch_roster()


def forget_joiner(state: GroupState, key_package_ref: bytes) -> None:
    """The client that joined with ``key_package_ref`` updated or left: it no longer needs a past state."""
    roster = state.roster
    roster.joiners = [j for j in roster.joiners if j.key_package_ref != key_package_ref]
    state.joiners_changed = True
    state.touch_roster()


def activity(now: int) -> int:
    return month_start(now)
