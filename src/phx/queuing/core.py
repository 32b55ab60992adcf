"""The Queuing Service's rules, without I/O: (state, request, now) -> (new state, outputs).

Nothing here touches the database, the network or the clock; the service (:mod:`phx.queuing.service`)
loads the records a request needs, calls these functions and stores what they return. Randomness for queue
keys and ids comes in as a ``random`` callable so tests can fix it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import Any

from phx.crypto import PHX_PREFIX, CipherSuite, suite
from phx.errors import AuthError, ExpiredError, NotFound, ValidationError
from phx.identifiers import Fqdn, GroupId, QsCid, QsUid
from phx.mls.key_package import is_last_resort
from phx.mls.leaf_validation import validate_key_package
from phx.queues import QueueItemType, QueueMessage, QueueState, Random, new_queue, rotate
from phx.queues.ratchet import chainer
from phx.queues.store import Advance, ItemRow, MessageRow

from .messages import (
    LABEL_AUTH_TOKEN,
    AddPackage,
    ClientQueueConfig,
    QsAuthTbs,
    QsClientRequest,
    QueueConfig,
    blocklist_hash,
    queue_config_of,
    unseal_queue_config,
)

__all__ = [
    "CLOCK_SKEW",
    "MIN_FRIENDSHIP_TOKEN",
    "BatchPlan",
    "BatchPlanner",
    "ClientRecord",
    "DeliveryPlan",
    "DeliveryTarget",
    "LocalRecipient",
    "Unsealed",
    "UserRecord",
    "check_add_packages",
    "check_auth",
    "check_new_keys",
    "classify_configs",
    "dequeue_limit",
    "expiry_cutoff",
    "new_client_record",
    "new_user_record",
    "plan_batch",
    "plan_deliveries",
    "update_blocklist",
    "update_client_record",
]

#: Auth token timestamps may lie this far in the future (client clocks run fast, too).
CLOCK_SKEW = 300
#: Friendship tokens are random strings; shorter ones could be guessed.
MIN_FRIENDSHIP_TOKEN = 16
BLOCKLIST_SALT_LENGTH = 32


@dataclass(frozen=True, slots=True)
class UserRecord:
    qs_uid: QsUid
    auth_key: bytes
    friendship_token: bytes
    created_at: int


@dataclass(frozen=True, slots=True)
class ClientRecord:
    """A QS client record; its fan-out queue (id = the client id bytes) lives in ``phx.queues``."""

    qs_cid: QsCid
    auth_key: bytes
    encrypted_push_token: bytes | None
    activity_time: int
    blocklist_salt: bytes
    blocklist: frozenset[bytes] = field(default_factory=frozenset)
    created_at: int = 0

    @property
    def queue_id(self) -> bytes:
        return queue_id_of(self.qs_cid)


def queue_id_of(qs_cid: QsCid) -> bytes:
    return qs_cid.client_id.bytes


# --- authentication ----------------------------------------------------------------------------------


def check_auth(
    cs: CipherSuite,
    request: QsClientRequest,
    operation: str,
    expected: QsUid | QsCid,
    auth_key: bytes,
    now: int,
    max_age: int,
) -> None:
    """The request carries a fresh token for ``expected`` and ``operation``, signed by ``auth_key``."""
    token = request.auth_token
    if token is None:
        raise AuthError(f"{operation} needs a QsAuthToken")
    if token.sender_id.value != expected:
        raise AuthError("the QsAuthToken is for another record")
    if now - token.timestamp > max_age:
        raise ExpiredError("the QsAuthToken is too old")
    if token.timestamp - now > CLOCK_SKEW:
        raise ExpiredError("the QsAuthToken is from the future")
    tbs = QsAuthTbs.of(token.sender_id, token.timestamp, operation, request.params).encode()
    cs.check_signature(auth_key, LABEL_AUTH_TOKEN, tbs, token.signature, prefix=PHX_PREFIX)


def check_new_keys(
    cs: CipherSuite, *, signature_keys: Iterable[bytes] = (), hpke_keys: Iterable[bytes] = ()
) -> None:
    for key in signature_keys:
        if len(key) != 32:
            raise ValidationError("a record auth key must be a 32-byte Ed25519 public key")
    for key in hpke_keys:
        if len(key) != cs.hpke.kem.npk:
            raise ValidationError(f"a queue encryption key must be a {cs.hpke.kem.npk}-byte HPKE public key")


def check_friendship_token(token: bytes) -> None:
    if len(token) < MIN_FRIENDSHIP_TOKEN:
        raise ValidationError(f"a friendship token has at least {MIN_FRIENDSHIP_TOKEN} bytes")


# --- records -----------------------------------------------------------------------------------------


def new_client_record(
    cs: CipherSuite,
    qs_cid: QsCid,
    auth_key: bytes,
    queue_encryption_key: bytes,
    encrypted_push_token: bytes | None,
    now: int,
    *,
    random: Random = os.urandom,
) -> tuple[ClientRecord, QueueState, list[QueueMessage]]:
    """A client record and its queue, whose first item is the sealed initial ratchet key."""
    check_new_keys(cs, signature_keys=[auth_key], hpke_keys=[queue_encryption_key])
    state, items = new_queue(cs, queue_encryption_key, now, random=random)
    record = ClientRecord(
        qs_cid, auth_key, encrypted_push_token, now, random(BLOCKLIST_SALT_LENGTH), frozenset(), now
    )
    return record, state, items


def new_user_record(qs_uid: QsUid, auth_key: bytes, friendship_token: bytes, now: int) -> UserRecord:
    if len(auth_key) != 32:
        raise ValidationError("a record auth key must be a 32-byte Ed25519 public key")
    check_friendship_token(friendship_token)
    return UserRecord(qs_uid, auth_key, friendship_token, now)


def update_client_record(
    cs: CipherSuite,
    record: ClientRecord,
    state: QueueState,
    auth_key: bytes,
    queue_encryption_key: bytes,
    encrypted_push_token: bytes | None,
    now: int,
    *,
    random: Random = os.urandom,
) -> tuple[ClientRecord, QueueState, list[QueueMessage]]:
    """Overwrite keys and push token. A new queue encryption key gets a key update sealed to it at once,
    so whoever held the old private key cannot follow the ratchet from here on."""
    check_new_keys(cs, signature_keys=[auth_key], hpke_keys=[queue_encryption_key])
    new_record = replace(record, auth_key=auth_key, encrypted_push_token=encrypted_push_token)
    if queue_encryption_key == state.encryption_key:
        return new_record, state, []
    new_state, item = rotate(cs, replace(state, encryption_key=queue_encryption_key), now, random=random)
    return new_record, new_state, [item]


def update_blocklist(
    record: ClientRecord, add: Iterable[GroupId], remove: Iterable[GroupId], *, max_entries: int
) -> ClientRecord:
    entries = set(record.blocklist)
    entries.difference_update(blocklist_hash(record.blocklist_salt, g) for g in remove)
    entries.update(blocklist_hash(record.blocklist_salt, g) for g in add)
    if len(entries) > max_entries:
        raise ValidationError(f"a blocklist holds at most {max_entries} groups")
    return replace(record, blocklist=frozenset(entries))


def expiry_cutoff(now: int, max_age: int) -> int:
    """Client records whose activity time is below this are expired."""
    return now - max_age


def dequeue_limit(asked: int, configured: int) -> int:
    return max(0, min(asked, configured))


def check_dequeue_start(start: int, state: QueueState) -> None:
    if start > state.next_sequence:
        raise ValidationError(
            f"sequence_number_start {start} is past the queue's end ({state.next_sequence})"
        )


# --- KeyPackages -------------------------------------------------------------------------------------


def check_add_packages(
    add_packages: Sequence[AddPackage],
    qs_cid: QsCid,
    own_domain: Fqdn,
    qc_private_key: bytes,
    now: int,
    *,
    max_count: int,
) -> list[tuple[AddPackage, bool]]:
    """Every KeyPackage is valid (§10, signature and lifetime), carries a QueueConfig extension sealed to
    this QS that names the publishing client, and at least one is a last-resort KeyPackage. Returns each
    AddPackage with its last-resort flag."""
    if not add_packages:
        raise ValidationError("publish at least one AddPackage")
    if len(add_packages) > max_count:
        raise ValidationError(f"at most {max_count} AddPackages per publication")
    out: list[tuple[AddPackage, bool]] = []
    for i, ap in enumerate(add_packages):
        kp = ap.key_package
        validate_key_package(suite(kp.cipher_suite), kp, now=now)
        config = queue_config_of(kp)
        if config is None:
            raise ValidationError(f"KeyPackage {i} has no QueueConfig extension")
        if config.client_homeserver_domain != own_domain:
            raise ValidationError(f"KeyPackage {i}'s queue config names another homeserver")
        unsealed = unseal_queue_config(qc_private_key, own_domain, config.sealed_config)
        if unsealed.pseudonymous_client_id != qs_cid:
            raise ValidationError(f"KeyPackage {i}'s queue config is not the publishing client's")
        out.append((ap, is_last_resort(kp)))
    if not any(last for _, last in out):
        raise ValidationError("at least one KeyPackage must be a last-resort KeyPackage")
    return out


# --- fan-out -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unsealed:
    """What a sealed config tells this QS, precomputed once per sealed config (and cached)."""

    queue_config: QueueConfig
    queue_id: bytes
    qs_uid: bytes

    @classmethod
    def of(cls, qc: QueueConfig) -> Unsealed:
        cid = qc.pseudonymous_client_id
        return cls(qc, cid.client_id.bytes, cid.qs_uid.user_id.bytes)


@dataclass(frozen=True, slots=True)
class LocalRecipient:
    config: ClientQueueConfig
    unsealed: Unsealed


@dataclass(slots=True)
class Classified:
    local: list[LocalRecipient] = field(default_factory=list)
    remote: dict[Fqdn, list[ClientQueueConfig]] = field(default_factory=dict)
    unusable: list[ClientQueueConfig] = field(default_factory=list)


def classify_configs(
    configs: Iterable[ClientQueueConfig],
    own_domain: Fqdn,
    unseal: Callable[[ClientQueueConfig], Unsealed | None],
) -> Classified:
    """Split a fan-out's configs into local ones (unsealed), remote ones (by domain) and local ones that
    do not unseal (they can never be delivered)."""
    out = Classified()
    for config in configs:
        if config.client_homeserver_domain != own_domain:
            out.remote.setdefault(config.client_homeserver_domain, []).append(config)
            continue
        u = unseal(config)
        if u is None:
            out.unusable.append(config)
        else:
            out.local.append(LocalRecipient(config, u))
    return out


@dataclass(frozen=True, slots=True)
class DeliveryTarget:
    """The parts of a client record a delivery needs (keyed by queue id, owner checked by the store)."""

    blocklist_salt: bytes
    blocklist: frozenset[bytes]
    encrypted_push_token: bytes | None


@dataclass(slots=True)
class Delivery:
    """One queue the fan-out reached: for the listener wake-up and the push notification."""

    queue_id: bytes
    next_sequence: int
    push_token_key: bytes | None
    encrypted_push_token: bytes | None


@dataclass(slots=True)
class DeliveryPlan:
    states: dict[bytes, QueueState] = field(default_factory=dict)
    items: list[tuple[bytes, QueueMessage]] = field(default_factory=list)
    deleted: list[ClientQueueConfig] = field(default_factory=list)
    delivered: list[Delivery] = field(default_factory=list)


@dataclass(slots=True)
class BatchPlan:
    """What a batch of fan-outs does to the queues (in the shapes :meth:`QueueStore.save_advances` stores):
    one advance per queue that grew (whatever the number of messages it got), the ``MESSAGE`` items, any
    other items (key updates), per fan-out the configs without a queue, and per queue that grew its last
    delivery (for the post-commit wake-up or push)."""

    advances: list[Advance]
    messages: list[MessageRow]
    rows: list[ItemRow]
    deleted: list[list[ClientQueueConfig]]
    delivered: list[Delivery]

    def states(self, before: Mapping[bytes, QueueState]) -> dict[bytes, QueueState]:
        """The new states of the queues that grew (``before``: their states the plan started from)."""
        return {q: QueueState(before[q].encryption_key, rk, ns, lr) for q, rk, ns, lr in self.advances}

    def items(self) -> list[tuple[bytes, QueueMessage]]:
        """Every item as a :class:`QueueMessage`, queue by queue in sequence order (a key update right
        before the message it preceded)."""
        before = {(r[0], r[1] + 1): r for r in self.rows}
        out = []
        for qid, seq, ct in self.messages:
            r = before.get((qid, seq))
            if r is not None:
                out.append((qid, QueueMessage(r[1], QueueItemType(r[2]), r[3], r[4])))
            out.append((qid, QueueMessage(seq, QueueItemType.MESSAGE, b"", ct)))
        return out


class BatchPlanner:
    """:func:`plan_deliveries` for several fan-outs in order, as the fan-out loop needs it. :meth:`add`
    only decides who gets what (missing queues, blocklists, duplicates); :meth:`finish` then encrypts
    queue by queue, each queue's messages in the order they were added, so a busy queue's ratchet runs
    through its messages in one tight loop and only its final key and sequence number are kept. Per queue
    that is the same chain as one :func:`~phx.queues.enqueue` per message, so the result is exactly that of
    :func:`plan_deliveries` run on each fan-out in turn with the states it returned."""

    __slots__ = ("_cs", "_targets", "_states", "_interval", "_random", "_work", "_deleted")

    def __init__(
        self,
        cs: CipherSuite,
        targets: Mapping[bytes, DeliveryTarget],
        states: Mapping[bytes, QueueState],
        *,
        rotation_interval: int,
        random: Random = os.urandom,
    ) -> None:
        self._cs = cs
        self._targets = targets
        self._states = states
        self._interval = rotation_interval
        self._random = random
        # queue id -> [its state, [payloads], [their times], the last recipient naming it, its target]
        self._work: dict[bytes, list[Any]] = {}
        self._deleted: list[list[ClientQueueConfig]] = []

    def add(self, recipients: Iterable[LocalRecipient], group_id: GroupId, payload: bytes, now: int) -> None:
        """Queue one fan-out's ``payload`` for its recipients (encrypted by :meth:`finish`)."""
        targets, work = self._targets, self._work
        dead: list[ClientQueueConfig] = []
        self._deleted.append(dead)
        seen: set[bytes] = set()
        for rcpt in recipients:
            u = rcpt.unsealed
            qid = u.queue_id
            w = work.get(qid)
            if w is None:
                target = targets.get(qid)
                state = self._states.get(qid)
                if target is None or state is None:
                    dead.append(rcpt.config)
                    continue
                w = [state, [], [], None, target]
                work[qid] = w
            if qid in seen:
                continue
            seen.add(qid)
            target = w[4]
            if target.blocklist and blocklist_hash(target.blocklist_salt, group_id) in target.blocklist:
                continue
            w[1].append(payload)
            w[2].append(now)
            w[3] = u

    def finish(self) -> BatchPlan:
        """Encrypt; the advances, the items, the configs without a queue and the deliveries."""
        chain = chainer(self._cs)
        interval = self._interval
        advances: list[Advance] = []
        messages: list[MessageRow] = []
        rows: list[ItemRow] = []
        delivered = []
        for qid, (state, payloads, times, u, target) in self._work.items():
            if u is None:
                continue  # only blocked messages: unchanged
            rk, seq, last = state.ratchet_key, state.next_sequence, state.last_rotation
            i, n = 0, len(payloads)
            while i < n:
                if times[i] - last >= interval:
                    before = QueueState(state.encryption_key, rk, seq, last)
                    rotated, update = rotate(self._cs, before, times[i], random=self._random)
                    rows.append((qid, seq, int(update.item_type), update.kem_output, update.ciphertext))
                    rk, seq, last = rotated.ratchet_key, rotated.next_sequence, rotated.last_rotation
                # The run of messages up to the next one whose time makes a key update due.
                j = i + 1
                while j < n and times[j] - last < interval:
                    j += 1
                cts, rk = chain(rk, seq, payloads[i:j] if i or j < n else payloads)
                messages += zip(repeat(qid), range(seq, seq + j - i), cts, strict=False)
                seq += j - i
                i = j
            advances.append((qid, rk, seq, last))
            delivered.append(
                Delivery(qid, seq, u.queue_config.option_push_token_key, target.encrypted_push_token)
            )
        return BatchPlan(advances, messages, rows, self._deleted, delivered)


def plan_batch(
    cs: CipherSuite,
    fan_outs: Iterable[tuple[Sequence[LocalRecipient], GroupId, bytes, int]],
    targets: Mapping[bytes, DeliveryTarget],
    states: Mapping[bytes, QueueState],
    *,
    rotation_interval: int,
    random: Random = os.urandom,
) -> BatchPlan:
    """:class:`BatchPlanner` over fan-outs given as ``(recipients, group id, payload, now)``."""
    planner = BatchPlanner(cs, targets, states, rotation_interval=rotation_interval, random=random)
    for recipients, group_id, payload, now in fan_outs:
        planner.add(recipients, group_id, payload, now)
    return planner.finish()


def plan_deliveries(
    cs: CipherSuite,
    recipients: Sequence[LocalRecipient],
    targets: Mapping[bytes, DeliveryTarget],
    states: Mapping[bytes, QueueState],
    group_id: GroupId,
    payload: bytes,
    now: int,
    *,
    rotation_interval: int,
    random: Random = os.urandom,
) -> DeliveryPlan:
    """Encrypt ``payload`` into each recipient's queue. A recipient without a client record (or queue) is
    reported deleted; one whose blocklist holds the group is skipped silently; a client named twice gets
    it once. ``targets`` and ``states`` are keyed by queue id."""
    batch = plan_batch(
        cs,
        [(recipients, group_id, payload, now)],
        targets,
        states,
        rotation_interval=rotation_interval,
        random=random,
    )
    return DeliveryPlan(batch.states(states), batch.items(), batch.deleted[0], batch.delivered)


def require(value: object | None, what: str) -> None:
    if value is None:
        raise NotFound(f"no such {what}")
