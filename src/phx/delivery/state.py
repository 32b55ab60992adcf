"""The DS's group state and its encryption at rest (book: delivery_service.md "DS state",
delivery_service/group_state_encryption.md).

The decrypted state is split in two sections, each encrypted on its own under the group's EAR key:

* the **roster** (hot): epoch, the DS's index in external_senders, the queue-id decryption key, per
  member the leaf, user, signature key, ClientQueueConfig, activity time/epoch and (until the member's
  first update) its KeyPackageRef, and the joiners still expected to fetch a past group state. This is
  all an application message needs: check the DsAuthToken against the sender's key, check the epoch,
  fan out to the stored configs. It is small and decodes without touching the ratchet tree.
* the **cold** section: the :class:`~phx.mls.public_group.PublicGroup` (tree, GroupContext, transcript,
  GroupInfo, proposal store) and the members' encrypted credentials. Commits, proposals and the external
  commit information decrypt it; it is decrypted lazily, on first access.

Past group states (the tree and credentials of an epoch clients were added into, for Welcome
information) are stored apart, one ciphertext per epoch (:class:`PastState`), so commits do not re-encrypt
them and a Welcome-information request decrypts just the one it asks for.

The roster carries a hash of the cold ciphertext it belongs to, so the two sections can only be combined
as they were written. Each ciphertext is ``version || salt || AES-256-GCM(k, 0, pad(plaintext))`` with
``k = HKDF(salt, ear_key, "phx 1.0 ds state" || section || group_id)`` (a fresh salt per write, so nonces
never repeat under a key) and the section and group id as associated data. Plaintexts are padded to a
multiple of a unit derived from the DS's padding target (:func:`padding_unit`).

Activity timestamps keep the month only (:func:`month_start`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from phx.codec import Reader, Writer, decode_all, encode_varint
from phx.crypto import PHX_PREFIX, SUITE_1, CipherSuite
from phx.errors import AuthError, DecodeError
from phx.identifiers import Fqdn, GroupId
from phx.mls.public_group import PublicGroup
from phx.queuing.messages import ClientQueueConfig, FanOutMessage, SealedQueueConfig

from .messages import EAR_KEY_LENGTH, MemberCredential

__all__ = [
    "COLD",
    "PAST",
    "ROSTER",
    "ColdState",
    "GroupState",
    "Joiner",
    "Member",
    "PaddingTarget",
    "PastState",
    "Roster",
    "WrongEarKey",
    "decrypt_section",
    "encrypt_section",
    "month_start",
    "next_month",
    "padding_unit",
    "size_bucket",
]

ROSTER = b"roster"
COLD = b"cold"
PAST = b"past"
_VERSION = 1
_SALT = 32
_NONCE = bytes(12)
_TAG = 16
_INFO = PHX_PREFIX + b"ds state"
_ROSTER_VERSION = 1
_COLD_VERSION = 1
_PAST_VERSION = 1
_U32 = struct.Struct(">I")
_U32X2 = struct.Struct(">II")
_U64X2 = struct.Struct(">QQ")

#: Padding estimate per member and section (bytes) for cipher suite 1: a roster entry is ~200 bytes; the
#: cold section holds a leaf with its credential (~500), its parent node share (~100), the encrypted
#: credential information (~600) and copies in past states.
PER_MEMBER_BYTES = {ROSTER: 256, COLD: 2048, PAST: 1024}


class WrongEarKey(AuthError):
    """The GroupStateEarKey does not decrypt this group's state."""

    code = "wrong_ear_key"


# --- time ------------------------------------------------------------------------------------------


def month_start(t: int) -> int:
    """The first second (UTC) of the month containing ``t``: all an activity timestamp keeps."""
    d = datetime.fromtimestamp(t, UTC)
    return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp())


def next_month(t: int) -> int:
    """The first second of the month after the one containing ``t``."""
    d = datetime.fromtimestamp(t, UTC)
    y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(datetime(y, m, 1, tzinfo=UTC).timestamp())


# --- padding ---------------------------------------------------------------------------------------


def size_bucket(members: int) -> int:
    """``ceil(log2(members))``: groups are counted per bucket for the padding target."""
    return max(0, members - 1).bit_length()


def padding_unit(target_members: int, section: bytes) -> int:
    """Plaintexts of ``section`` are padded to a multiple of this many bytes, so every group looks at
    least as large as a group of ``target_members`` members, and larger ones to the next multiple."""
    return max(1, target_members) * PER_MEMBER_BYTES[section]


class PaddingTarget:
    """The padding target: the size of the largest group within the configured percentile (book: "Padding
    target"), in members, rounded up to a power of two.

    It is estimated from the sizes of the groups this process has decrypted (kept in memory only, never at
    rest: a per-group size record in the database would undo the padding). Until ``min_groups`` groups
    were seen, the estimate never goes below ``initial`` (the last persisted target, a single DS-wide
    number), so a restart does not shrink the padding."""

    def __init__(
        self, percentile: int, initial: int = 1, max_groups: int = 100_000, min_groups: int = 100
    ) -> None:
        self.percentile = percentile
        self.initial = max(1, initial)
        self.max_groups = max_groups
        self.min_groups = min_groups
        self._bucket: OrderedDict[bytes, int] = OrderedDict()
        self._counts = [0] * 40

    def observe(self, group_id: bytes, members: int) -> None:
        b = size_bucket(members)
        old = self._bucket.pop(group_id, None)
        if old is not None:
            self._counts[old] -= 1
        self._bucket[group_id] = b
        self._counts[b] += 1
        if len(self._bucket) > self.max_groups:
            _, evicted = self._bucket.popitem(last=False)
            self._counts[evicted] -= 1

    def forget(self, group_id: bytes) -> None:
        old = self._bucket.pop(group_id, None)
        if old is not None:
            self._counts[old] -= 1

    @property
    def observed(self) -> int:
        return len(self._bucket)

    def target(self) -> int:
        total = len(self._bucket)
        if total == 0:
            return self.initial
        need = -(-total * self.percentile // 10)  # ceil(total * p / 10)
        seen, estimate = 0, self.initial
        for b, n in enumerate(self._counts):
            seen += n
            if seen >= need:
                estimate = 1 << b
                break
        return estimate if total >= self.min_groups else max(estimate, self.initial)


def _pad(plaintext: bytes, unit: int) -> bytes:
    body = struct.pack(">I", len(plaintext)) + plaintext
    return body + bytes(-len(body) % unit)


def _unpad(padded: bytes) -> bytes:
    if len(padded) < 4:
        raise DecodeError("padded state too short")
    (n,) = struct.unpack_from(">I", padded)
    if n > len(padded) - 4:
        raise DecodeError("padded state length out of range")
    return padded[4 : 4 + n]


# --- encryption at rest ------------------------------------------------------------------------------


def _key(cs: CipherSuite, ear_key: bytes, salt: bytes, section: bytes, group_id: bytes) -> bytes:
    return cs.expand(cs.extract(salt, ear_key), _INFO + section + group_id, 32)


def encrypt_section(
    ear_key: bytes,
    group_id: GroupId,
    section: bytes,
    plaintext: bytes,
    unit: int,
    *,
    cs: CipherSuite = SUITE_1,
    random: Callable[[int], bytes] = os.urandom,
) -> bytes:
    if len(ear_key) != EAR_KEY_LENGTH:
        raise WrongEarKey("GroupStateEarKey has the wrong length")
    gid = group_id.encode()
    salt = random(_SALT)
    ct = AESGCM(_key(cs, ear_key, salt, section, gid)).encrypt(_NONCE, _pad(plaintext, unit), section + gid)
    return bytes([_VERSION]) + salt + ct


def decrypt_section(
    ear_key: bytes, group_id: GroupId, section: bytes, blob: bytes, *, cs: CipherSuite = SUITE_1
) -> bytes:
    """The plaintext of ``blob``; :class:`WrongEarKey` if ``ear_key`` does not open it."""
    if len(blob) < 1 + _SALT + _TAG or blob[0] != _VERSION:
        raise DecodeError(f"stored {section.decode()} state is malformed")
    gid = group_id.encode()
    salt = blob[1 : 1 + _SALT]
    try:
        padded = AESGCM(_key(cs, ear_key, salt, section, gid)).decrypt(
            _NONCE, blob[1 + _SALT :], section + gid
        )
    except InvalidTag:
        raise WrongEarKey("the GroupStateEarKey does not decrypt this group's state") from None
    return _unpad(padded)


# --- the roster (hot section) ------------------------------------------------------------------------


@dataclass(slots=True)
class Member:
    """A client profile (book: "Client profile"); ``user`` names its user profile."""

    leaf: int
    user: int
    signature_key: bytes
    queue_config: bytes  # encoded ClientQueueConfig (fan-out only concatenates or decodes it)
    activity_time: int  # month start
    activity_epoch: int
    key_package_ref: bytes | None = None  # from its Add until its first update

    def _write(self, w: Writer) -> None:
        # One pack per member: the roster of a large group is re-encoded on every commit.
        sig, qc, ref = self.signature_key, self.queue_config, self.key_package_ref
        w.buf += b"".join(
            (
                _U32X2.pack(self.leaf, self.user),
                encode_varint(len(sig)),
                sig,
                encode_varint(len(qc)),
                qc,
                _U64X2.pack(self.activity_time, self.activity_epoch),
                b"\x00" if ref is None else b"\x01" + encode_varint(len(ref)) + ref,
            )
        )

    @classmethod
    def _read(cls, r: Reader) -> Member:
        return cls(r.u32(), r.u32(), r.opaque(), r.opaque(), r.u64(), r.u64(), r.optional(Reader.opaque))


@dataclass(slots=True)
class Joiner:
    """A client expected to fetch the past group state of ``epoch``: its KeyPackageRef, the key its
    DsAuthToken is checked with, and when its KeyPackage expires (then nobody waits for it any more)."""

    key_package_ref: bytes
    signature_key: bytes
    expires_at: int
    epoch: int

    def _write(self, w: Writer) -> None:
        ref, sig = self.key_package_ref, self.signature_key
        w.buf += b"".join(
            (
                encode_varint(len(ref)),
                ref,
                encode_varint(len(sig)),
                sig,
                _U64X2.pack(self.expires_at, self.epoch),
            )
        )

    @classmethod
    def _read(cls, r: Reader) -> Joiner:
        return cls(r.opaque(), r.opaque(), r.u64(), r.u64())


@dataclass(slots=True)
class Roster:
    suite_id: int
    epoch: int
    ds_sender_index: int
    queue_id_private_key: bytes
    next_user: int
    members: dict[int, Member]
    proposed_removals: set[int] = field(default_factory=set)
    cold_digest: bytes = b""
    joiners: list[Joiner] = field(default_factory=list)

    def past_epochs(self) -> set[int]:
        """Epochs whose past state somebody may still fetch."""
        return {j.epoch for j in self.joiners}

    def users(self) -> dict[int, list[int]]:
        """User profiles: user id -> the leaves of its clients."""
        out: dict[int, list[int]] = {}
        for m in self.members.values():
            out.setdefault(m.user, []).append(m.leaf)
        return out

    def encode(self) -> bytes:
        w = Writer()
        w.u8(_ROSTER_VERSION)
        w.u16(self.suite_id)
        w.u64(self.epoch)
        w.u32(self.ds_sender_index)
        w.opaque(self.queue_id_private_key)
        w.u32(self.next_user)
        w.vector(sorted(self.members.values(), key=lambda m: m.leaf), lambda w2, m: m._write(w2))
        w.vector(sorted(self.proposed_removals), Writer.u32)
        w.opaque(self.cold_digest)
        w.vector(self.joiners, lambda w2, j: j._write(w2))
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Roster:
        def read(r: Reader) -> Roster:
            if r.u8() != _ROSTER_VERSION:
                raise DecodeError("unknown roster version")
            suite_id, epoch, ds_index = r.u16(), r.u64(), r.u32()
            qid, next_user = r.opaque(), r.u32()
            members = {m.leaf: m for m in r.vector(Member._read)}
            removals = set(r.vector(Reader.u32))
            digest = r.opaque()
            joiners = list(r.vector(Joiner._read))
            return cls(suite_id, epoch, ds_index, qid, next_user, members, removals, digest, joiners)

        return decode_all(read, data)


# --- the cold section --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PastState:
    """A copy of the public tree (and credentials) of the epoch some clients were added into."""

    epoch: int
    tree: bytes
    credentials: tuple[MemberCredential, ...]

    def encode(self) -> bytes:
        w = Writer()
        w.u8(_PAST_VERSION)
        w.u64(self.epoch)
        w.opaque(self.tree)
        w.vector(self.credentials, Writer.struct)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> PastState:
        def read(r: Reader) -> PastState:
            if r.u8() != _PAST_VERSION:
                raise DecodeError("unknown past state version")
            return cls(r.u64(), r.opaque(), r.vector(MemberCredential.read))

        return decode_all(read, data)


@dataclass(slots=True)
class ColdState:
    public: PublicGroup
    credentials: dict[int, bytes]  # leaf -> encrypted credential information

    def credential_chains(self) -> tuple[MemberCredential, ...]:
        return tuple(MemberCredential(leaf, c) for leaf, c in sorted(self.credentials.items()))

    def encode(self) -> bytes:
        w = Writer()
        w.u8(_COLD_VERSION)
        w.opaque(self.public.to_bytes())
        # MemberCredential encodings, joined directly (this runs on every commit)
        w.opaque(
            b"".join(
                _U32.pack(leaf) + encode_varint(len(c)) + c for leaf, c in sorted(self.credentials.items())
            )
        )
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> ColdState:
        def read(r: Reader) -> ColdState:
            if r.u8() != _COLD_VERSION:
                raise DecodeError("unknown cold state version")
            public = PublicGroup.from_bytes(r.opaque())
            creds = {
                c.leaf_index: c.encrypted_credential_information for c in r.vector(MemberCredential.read)
            }
            return cls(public, creds)

        return decode_all(read, data)


# --- the whole state ---------------------------------------------------------------------------------


class GroupState:
    """One group's decrypted state during a request (and in the service's cache between requests).

    The cold section is decrypted on first access to :attr:`cold`; mutators mark what changed so the
    service re-encrypts only that.
    """

    __slots__ = (
        "group_id",
        "roster",
        "version",
        "ear_key",
        "_cold",
        "_cold_blob",
        "roster_dirty",
        "cold_dirty",
        "_fanout",
        "_configs",
        "_next_due",
        "new_past",
        "joiners_changed",
    )

    def __init__(
        self,
        group_id: GroupId,
        roster: Roster,
        *,
        cold: ColdState | None = None,
        cold_blob: bytes | None = None,
        version: int = 0,
        ear_key: bytes | None = None,
    ) -> None:
        self.group_id = group_id
        self.roster = roster
        self.version = version
        self.ear_key = ear_key
        self._cold = cold
        self._cold_blob = cold_blob
        self.roster_dirty = False
        self.cold_dirty = False
        self._fanout: tuple[tuple[int, ...], tuple[ClientQueueConfig, ...]] | None = None
        # decoded queue configs by their encoding, and the encoding of each decoded object (by id), so a
        # roster change re-decodes only new configs and fan-outs are encoded by concatenation
        self._configs: dict[bytes, ClientQueueConfig] = {}
        self._next_due: int | None = None
        self.new_past: list[PastState] = []  # to store with this request
        self.joiners_changed = False  # past states of epochs nobody waits for can go

    # --- loading ------------------------------------------------------------------------------------
    @classmethod
    def decrypt(
        cls, group_id: GroupId, ear_key: bytes, roster_blob: bytes, cold_blob: bytes | None, *, version: int
    ) -> GroupState:
        """Open the roster (the cold section waits for first use, and its ciphertext may be attached
        later with :meth:`attach_cold`); WrongEarKey if the key is wrong."""
        roster = Roster.decode(decrypt_section(ear_key, group_id, ROSTER, roster_blob))
        state = cls(group_id, roster, version=version, ear_key=ear_key)
        if cold_blob is not None:
            state.attach_cold(cold_blob)
        return state

    def attach_cold(self, cold_blob: bytes) -> None:
        if not hmac.compare_digest(self.roster.cold_digest, _digest(cold_blob)):
            raise DecodeError("stored group state sections do not belong together")
        self._cold_blob = cold_blob

    @property
    def cold_available(self) -> bool:
        """The cold section is decrypted or its ciphertext is at hand."""
        return self._cold is not None or self._cold_blob is not None

    @property
    def cold_loaded(self) -> bool:
        return self._cold is not None

    @property
    def cold(self) -> ColdState:
        if self._cold is None:
            if self._cold_blob is None or self.ear_key is None:
                raise RuntimeError("the cold section was not loaded for this request")
            self._cold = ColdState.decode(decrypt_section(self.ear_key, self.group_id, COLD, self._cold_blob))
        return self._cold

    # --- reading ------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self.roster.epoch

    def member(self, leaf: int) -> Member | None:
        return self.roster.members.get(leaf)

    def members(self) -> Iterator[Member]:
        return iter(self.roster.members.values())

    def queue_id_public_key(self, cs: CipherSuite = SUITE_1) -> bytes:
        return cs.hpke_public_key(self.roster.queue_id_private_key)

    def fan_out_targets(self) -> tuple[tuple[int, ...], tuple[ClientQueueConfig, ...]]:
        """(leaves, their decoded queue configs), left to right; kept until the members change."""
        if self._fanout is None:
            ms = sorted(self.roster.members.values(), key=lambda m: m.leaf)
            known, fresh = self._configs, {}
            for m in ms:
                qc = known.get(m.queue_config)
                fresh[m.queue_config] = qc if qc is not None else _queue_config(m.queue_config)
            self._configs = fresh
            self._fanout = (tuple(m.leaf for m in ms), tuple(fresh[m.queue_config] for m in ms))
        return self._fanout

    def encode_fan_out(self, message: FanOutMessage) -> bytes:
        """``message.encode()``, concatenating the stored encodings of the group's queue configs."""
        by_id = {id(qc): raw for raw, qc in self._configs.items()}
        body = b"".join(by_id.get(id(qc)) or qc.encode() for qc in message.client_queue_configs)
        w = Writer()
        w.opaque(body)
        message.message_content._write(w)
        return w.getvalue()

    def weight(self) -> int:
        """A rough estimate of the memory this state holds (for the cache budget)."""
        n = len(self.roster.members)
        w = 1024 + 300 * n
        if self._cold is not None:
            w += 4096 * n
        elif self._cold_blob is not None:
            w += len(self._cold_blob)
        return w

    def recipients(self, exclude: int | None = None) -> tuple[ClientQueueConfig, ...]:
        leaves, configs = self.fan_out_targets()
        if exclude is None or exclude not in self.roster.members:
            return configs
        i = leaves.index(exclude)
        return configs[:i] + configs[i + 1 :]

    # --- changing -----------------------------------------------------------------------------------
    def next_activity_due(self, max_inactivity: int) -> int | float:
        """The earliest time a member not yet proposed for removal passes ``max_inactivity`` (after the
        end of the month of its last activity); kept until the roster changes."""
        if self._next_due is None:
            done = self.roster.proposed_removals
            months = {m.activity_time for m in self.roster.members.values() if m.leaf not in done}
            self._next_due = min((next_month(t) for t in months), default=-1)
        return float("inf") if self._next_due < 0 else self._next_due + max_inactivity

    def touch_roster(self) -> None:
        self.roster_dirty = True
        self._fanout = None
        self._next_due = None

    def touch_cold(self) -> None:
        self.cold_dirty = True
        self.touch_roster()  # the roster carries the cold digest

    @property
    def dirty(self) -> bool:
        return self.roster_dirty or self.cold_dirty

    # --- storing ------------------------------------------------------------------------------------
    def seal(self, roster_unit: int, cold_unit: int) -> tuple[bytes, bytes | None]:
        """Re-encrypt what changed: (roster ciphertext, new cold ciphertext or None if unchanged)."""
        assert self.ear_key is not None
        new_cold = None
        if self.cold_dirty:
            new_cold = encrypt_section(self.ear_key, self.group_id, COLD, self.cold.encode(), cold_unit)
            self._cold_blob = new_cold
        assert self._cold_blob is not None
        self.roster.cold_digest = _digest(self._cold_blob)
        roster_blob = encrypt_section(self.ear_key, self.group_id, ROSTER, self.roster.encode(), roster_unit)
        return roster_blob, new_cold

    def saved(self, version: int) -> None:
        self.version = version
        self.roster_dirty = self.cold_dirty = self.joiners_changed = False
        self.new_past = []


_DOMAINS: dict[bytes, Fqdn] = {}


def _queue_config(data: bytes) -> ClientQueueConfig:
    """Decode a ClientQueueConfig the DS stored itself (validated when it arrived): the domain objects are
    shared, since a group's configs name few homeservers and validating a domain is most of the cost."""
    r = Reader(data)
    raw, kem_output, ciphertext = r.opaque(), r.opaque(), r.opaque()
    r.finish()
    domain = _DOMAINS.get(raw)
    if domain is None:
        domain = Fqdn.decode(_opaque(raw))
        if len(_DOMAINS) < 10_000:
            _DOMAINS[raw] = domain
    return ClientQueueConfig(domain, SealedQueueConfig(kem_output, ciphertext))


def _opaque(raw: bytes) -> bytes:
    w = Writer()
    w.opaque(raw)
    return w.getvalue()


def _digest(blob: bytes) -> bytes:
    return hashlib.sha256(blob).digest()
