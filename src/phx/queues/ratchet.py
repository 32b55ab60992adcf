"""Ratcheted at-rest queue encryption (book: queuing_service/queue_encryption.md), service-neutral.

One queue = an id (chosen by the owning service) + the owner's HPKE public key (the *queue encryption
key*) + a :class:`QueueState` (ratchet key, next sequence number, time of the last key update). The QS
uses it for fan-out queues, the AS for direct and alias queues.

Server side (pure functions, no I/O; ``now`` and randomness come in as arguments):

* :func:`new_queue` starts a queue. Without a ratchet key from the owner (QS) the server samples one and
  returns it as an ``INITIAL_KEY`` item (HPKE-sealed to the queue encryption key) that is enqueued at
  sequence number 0; with one (the AS's ``initial_queue_ratchet_key``) nothing is enqueued.
* :func:`enqueue` encrypts payloads. For each one the current ratchet key yields a one-time message key
  and nonce and the next ratchet key under distinct labels; the old key is replaced (forward secrecy).
  When the rotation interval has elapsed a ``KEY_UPDATE`` item goes first (:func:`rotate`).
* :func:`rotate` injects fresh randomness: ``rk' = Extract(salt=Expand(rk, "queue rotation key"),
  ikm=fresh)``, with ``fresh`` HPKE-sealed to the owner (post-compromise security: the old ratchet key alone
  cannot follow).

Client side: :class:`QueueReader` follows the same derivations. It is a plain object the client library
persists with :meth:`QueueReader.to_bytes`.

Every derivation uses the Phoenix label prefix (``"phx 1.0 "``) so no queue key equals an MLS secret.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from phx.codec import U8, U64, MaxLen, Reader, Struct, WireEnum, Writer, decode_all
from phx.crypto import PHX_PREFIX, CipherSuite, HpkeError
from phx.errors import ValidationError

__all__ = [
    "MAX_QUEUE_CIPHERTEXT",
    "QueueDecryptionError",
    "QueueGapError",
    "QueueItemType",
    "QueueMessage",
    "QueueReader",
    "QueueState",
    "Random",
    "Chain",
    "Step",
    "chainer",
    "enqueue",
    "new_queue",
    "rotate",
    "rotation_due",
    "stepper",
]

Random = Callable[[int], bytes]

#: Upper bound on one queue item's ciphertext on the wire (payload plus AEAD tag).
MAX_QUEUE_CIPHERTEXT = 1 << 24

_LABEL_INITIAL = b"queue initial ratchet key"
_LABEL_UPDATE = b"queue key update"
_LABEL_NEXT = b"queue next ratchet key"
_LABEL_MESSAGE_KEY = b"queue message key and nonce"
_LABEL_ROTATION = b"queue rotation key"


class QueueDecryptionError(ValidationError):
    """A queue item does not decrypt with the reader's state (wrong key, tampered, out of order)."""

    code = "queue_decryption_failed"


class QueueGapError(ValidationError):
    """A queue item arrived after a missing sequence number; the ratchet cannot skip it safely."""

    code = "queue_gap"


class QueueItemType(WireEnum):
    __wire_width__ = U8
    INITIAL_KEY = 1
    KEY_UPDATE = 2
    MESSAGE = 3


@dataclass(frozen=True, slots=True)
class QueueMessage(Struct):
    """One queued item as stored and as returned by a dequeue.

    ``kem_output`` is empty for ``MESSAGE`` items (those are sealed with a ratchet-derived AEAD key).
    """

    sequence_number: Annotated[int, U64]
    item_type: QueueItemType
    kem_output: Annotated[bytes, MaxLen(256)]
    ciphertext: Annotated[bytes, MaxLen(MAX_QUEUE_CIPHERTEXT)]


@dataclass(frozen=True, slots=True)
class QueueState:
    """The server's per-queue secret state. ``repr`` never shows the ratchet key."""

    encryption_key: bytes
    ratchet_key: bytes
    next_sequence: int
    last_rotation: int

    def __repr__(self) -> str:
        return f"QueueState(next_sequence={self.next_sequence}, last_rotation={self.last_rotation})"


def _opaque(b: bytes) -> bytes:
    w = Writer()
    w.opaque(b)
    return w.getvalue()


def _info(label: bytes, context: bytes, length: int) -> bytes:
    return length.to_bytes(2, "big") + _opaque(PHX_PREFIX + label) + _opaque(context)


def _expand(cs: CipherSuite, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """ExpandWithLabel with the Phoenix prefix. For ``length <= Nh`` HKDF-Expand is the single block
    ``HMAC(secret, info || 0x01)``, computed directly since this runs for every queued message."""
    info = _info(label, context, length)
    if length <= cs.nh:
        return cs.mac(secret, info + b"\x01")[:length]
    return cs.expand(secret, info, length)


def _aad(sequence_number: int, item_type: QueueItemType) -> bytes:
    return sequence_number.to_bytes(8, "big") + bytes((item_type,))


def _hpke_info(label: bytes, sequence_number: int, item_type: QueueItemType) -> bytes:
    return _opaque(PHX_PREFIX + label) + _opaque(_aad(sequence_number, item_type))


@lru_cache(maxsize=16)
def _step_constants(cs: CipherSuite) -> tuple[bytes, bytes] | None:
    """(message-key info without its context, full next-key info), both ending as HKDF's single block
    needs; None when the key and nonce do not fit one hash block (then the generic path runs)."""
    nk, nn = cs.aead.nk, cs.aead.nn
    if nk + nn > cs.nh:
        return None
    msg = (nk + nn).to_bytes(2, "big") + _opaque(PHX_PREFIX + _LABEL_MESSAGE_KEY) + b"\x08"
    nxt = _info(_LABEL_NEXT, b"", cs.nh) + b"\x01"
    return msg, nxt


def _message_keys(cs: CipherSuite, ratchet_key: bytes, sequence_number: int) -> tuple[bytes, bytes, bytes]:
    """(AEAD key, nonce, next ratchet key) derived from one ratchet key under two distinct labels."""
    nk, nn = cs.aead.nk, cs.aead.nn
    seq = sequence_number.to_bytes(8, "big")
    consts = _step_constants(cs)
    if consts is None:
        okm = _expand(cs, ratchet_key, _LABEL_MESSAGE_KEY, seq, nk + nn)
        nxt = _expand(cs, ratchet_key, _LABEL_NEXT, b"", cs.nh)
    else:
        # Exactly _expand's result: the context is the 8-byte sequence number (varint length 0x08).
        pair = _hmac_pair(cs.kdf.hash_name)
        if pair is None:
            okm = cs.mac(ratchet_key, consts[0] + seq + b"\x01")
            nxt = cs.mac(ratchet_key, consts[1])
        else:
            okm, nxt = pair(ratchet_key, consts[0] + seq + b"\x01", consts[1])
    return okm[:nk], okm[nk : nk + nn], nxt


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...

    def copy(self) -> _Hash: ...


_BLOCK_SIZES = {"sha256": 64, "sha384": 128, "sha512": 128}
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _hash_constructor(name: str) -> Callable[[bytes], _Hash]:
    """CPython's built-in hash module when there is one: per object it costs far less than OpenSSL's EVP
    (creating and copying contexts is most of the work for messages this short)."""
    try:
        module = importlib.import_module(f"_{name}")
        ctor: Callable[[bytes], _Hash] = getattr(module, name)
    except (ImportError, AttributeError):
        return lambda data: hashlib.new(name, data)
    return ctor


@lru_cache(maxsize=8)
def _hmac_pair(hash_name: str) -> Callable[[bytes, bytes, bytes], tuple[bytes, bytes]] | None:
    """``(key, m1, m2) -> (HMAC(key, m1), HMAC(key, m2))`` (RFC 2104), keying the inner and outer hash
    once for both messages; None for hashes without a known block size (then ``cs.mac`` runs)."""
    block = _BLOCK_SIZES.get(hash_name)
    if block is None:
        return None
    new = _hash_constructor(hash_name)

    def pair(key: bytes, m1: bytes, m2: bytes) -> tuple[bytes, bytes]:
        if len(key) > block:
            key = new(key).digest()
        key = key + bytes(block - len(key))
        inner, outer = new(key.translate(_IPAD)), new(key.translate(_OPAD))
        inner2, outer2 = inner.copy(), outer.copy()
        inner.update(m1)
        outer.update(inner.digest())
        inner2.update(m2)
        outer2.update(inner2.digest())
        return outer.digest(), outer2.digest()

    return pair


class Step(Protocol):
    def __call__(self, ratchet_key: bytes, sequence_number: int, payload: bytes, /) -> tuple[bytes, bytes]:
        """Encrypt ``payload`` as the ``MESSAGE`` item ``sequence_number``; returns (ciphertext, next
        ratchet key). The caller replaces its ratchet key by the returned one (forward secrecy)."""
        ...


@lru_cache(maxsize=16)
def stepper(cs: CipherSuite) -> Step:
    """The ratchet step of :func:`enqueue` as one function, for callers encrypting many messages (the QS
    fan-out). Same derivations and result as the generic path, with the per-call work cut: both HMACs share
    their keyed hash states, and the AEAD is called directly for the suites' AES-GCM / ChaCha20-Poly1305."""
    nk, nn = cs.aead.nk, cs.aead.nn
    consts = _step_constants(cs)
    pair = _hmac_pair(cs.kdf.hash_name)
    aead_id = cs.aead.aead_id
    aead: Callable[[bytes], AESGCM | ChaCha20Poly1305] | None = (
        AESGCM if aead_id in (0x0001, 0x0002) else ChaCha20Poly1305 if aead_id == 0x0003 else None
    )
    if consts is None or pair is None or aead is None:

        def generic(ratchet_key: bytes, sequence_number: int, payload: bytes) -> tuple[bytes, bytes]:
            key, nonce, nxt = _message_keys(cs, ratchet_key, sequence_number)
            aad = sequence_number.to_bytes(8, "big") + b"\x03"
            return cs.seal(key, nonce, aad, payload), nxt

        return generic
    msg_info, next_info = consts
    end = nk + nn

    def step(ratchet_key: bytes, sequence_number: int, payload: bytes) -> tuple[bytes, bytes]:
        seq = sequence_number.to_bytes(8, "big")
        okm, nxt = pair(ratchet_key, msg_info + seq + b"\x01", next_info)
        return aead(okm[:nk]).encrypt(okm[nk:end], payload, seq + b"\x03"), nxt

    return step


class Chain(Protocol):
    def __call__(
        self, ratchet_key: bytes, first_sequence: int, payloads: Sequence[bytes], /
    ) -> tuple[list[bytes], bytes]:
        """Encrypt ``payloads`` as consecutive ``MESSAGE`` items from ``first_sequence`` on; returns their
        ciphertexts and the ratchet key after the last (every intermediate key is dropped)."""
        ...


@lru_cache(maxsize=16)
def chainer(cs: CipherSuite) -> Chain:
    """:func:`stepper` for a run of messages into one queue, the loop and the HMAC inlined (a fan-out
    batch gives a busy queue several messages in a row)."""
    step = stepper(cs)
    consts = _step_constants(cs)
    hash_name = cs.kdf.hash_name
    block = _BLOCK_SIZES.get(hash_name)
    aead_id = cs.aead.aead_id
    if consts is None or block is None or aead_id not in (0x0001, 0x0002, 0x0003) or cs.nh > block:

        def generic(
            ratchet_key: bytes, first_sequence: int, payloads: Sequence[bytes]
        ) -> tuple[list[bytes], bytes]:
            if len(ratchet_key) != cs.nh:
                raise ValueError("ratchet key has the wrong length")
            out = []
            for i, payload in enumerate(payloads):
                ct, ratchet_key = step(ratchet_key, first_sequence + i, payload)
                out.append(ct)
            return out, ratchet_key

        return generic
    aead: Callable[[bytes], AESGCM | ChaCha20Poly1305] = AESGCM if aead_id != 0x0003 else ChaCha20Poly1305
    new = _hash_constructor(hash_name)
    msg_info, next_info = consts
    nk, end = cs.aead.nk, cs.aead.nk + cs.aead.nn
    pad = bytes(block - cs.nh)  # ratchet keys are Nh bytes, never longer than a hash block

    def chain(
        ratchet_key: bytes, first_sequence: int, payloads: Sequence[bytes]
    ) -> tuple[list[bytes], bytes]:
        if len(ratchet_key) != cs.nh:
            raise ValueError("ratchet key has the wrong length")
        out = []
        seq_no = first_sequence
        for payload in payloads:
            seq = seq_no.to_bytes(8, "big")
            key = ratchet_key + pad
            inner, outer = new(key.translate(_IPAD)), new(key.translate(_OPAD))
            inner2, outer2 = inner.copy(), outer.copy()
            inner.update(msg_info + seq + b"\x01")
            outer.update(inner.digest())
            okm = outer.digest()
            inner2.update(next_info)
            outer2.update(inner2.digest())
            ratchet_key = outer2.digest()
            out.append(aead(okm[:nk]).encrypt(okm[nk:end], payload, seq + b"\x03"))
            seq_no += 1
        return out, ratchet_key

    return chain


def _rotated(cs: CipherSuite, ratchet_key: bytes, fresh: bytes) -> bytes:
    rotation_key = _expand(cs, ratchet_key, _LABEL_ROTATION, b"", cs.nh)
    return cs.extract(rotation_key, fresh)


def new_queue(
    cs: CipherSuite,
    encryption_key: bytes,
    now: int,
    *,
    ratchet_key: bytes | None = None,
    random: Random = os.urandom,
) -> tuple[QueueState, list[QueueMessage]]:
    """Start a queue; returns its state and the items to enqueue (the sealed initial key, if sampled)."""
    if ratchet_key is not None:
        if len(ratchet_key) != cs.nh:
            raise ValidationError(f"initial ratchet key must be {cs.nh} bytes")
        return QueueState(encryption_key, ratchet_key, 0, now), []
    key = random(cs.nh)
    info = _hpke_info(_LABEL_INITIAL, 0, QueueItemType.INITIAL_KEY)
    try:
        kem_output, ct = cs.hpke.seal(encryption_key, info, _aad(0, QueueItemType.INITIAL_KEY), key)
    except (HpkeError, ValueError) as e:
        raise ValidationError(f"unusable queue encryption key: {e}") from e
    item = QueueMessage(0, QueueItemType.INITIAL_KEY, kem_output, ct)
    return QueueState(encryption_key, key, 1, now), [item]


def rotation_due(state: QueueState, now: int, interval: int) -> bool:
    return now - state.last_rotation >= interval


def rotate(
    cs: CipherSuite, state: QueueState, now: int, *, random: Random = os.urandom
) -> tuple[QueueState, QueueMessage]:
    """Inject fresh randomness into the ratchet; returns the new state and the ``KEY_UPDATE`` item."""
    seq = state.next_sequence
    fresh = random(cs.nh)
    info = _hpke_info(_LABEL_UPDATE, seq, QueueItemType.KEY_UPDATE)
    try:
        kem_output, ct = cs.hpke.seal(state.encryption_key, info, _aad(seq, QueueItemType.KEY_UPDATE), fresh)
    except (HpkeError, ValueError) as e:
        raise ValidationError(f"unusable queue encryption key: {e}") from e
    new_state = QueueState(state.encryption_key, _rotated(cs, state.ratchet_key, fresh), seq + 1, now)
    return new_state, QueueMessage(seq, QueueItemType.KEY_UPDATE, kem_output, ct)


def enqueue(
    cs: CipherSuite,
    state: QueueState,
    payloads: Iterable[bytes],
    now: int,
    *,
    rotation_interval: int | None = None,
    random: Random = os.urandom,
) -> tuple[QueueState, list[QueueMessage]]:
    """Encrypt ``payloads`` in order; a key update precedes them when ``rotation_interval`` has elapsed."""
    items: list[QueueMessage] = []
    if rotation_interval is not None and rotation_due(state, now, rotation_interval):
        state, update = rotate(cs, state, now, random=random)
        items.append(update)
    rk, seq = state.ratchet_key, state.next_sequence
    message = QueueItemType.MESSAGE
    step = stepper(cs)
    for payload in payloads:
        ct, rk = step(rk, seq, payload)
        items.append(QueueMessage(seq, message, b"", ct))
        seq += 1
    return QueueState(state.encryption_key, rk, seq, state.last_rotation), items


class QueueReader:
    """The queue owner's side: decrypts items in sequence order, following the server's ratchet.

    ``decryption_keys`` are the owner's HPKE private keys, newest first; keep an old one until every item
    sealed to it has been read (the server rotates to a new queue encryption key right away, see the QS).
    Items below :attr:`next_sequence` were read already (a repeated dequeue) and are skipped; an item above
    it means one is missing and raises :class:`QueueGapError` without changing the state.
    """

    def __init__(
        self,
        cs: CipherSuite,
        decryption_keys: Sequence[bytes],
        *,
        ratchet_key: bytes | None = None,
        next_sequence: int = 0,
    ) -> None:
        if not decryption_keys:
            raise ValueError("a QueueReader needs at least one decryption key")
        self.cs = cs
        self.decryption_keys = list(decryption_keys)
        self.ratchet_key = ratchet_key
        self.next_sequence = next_sequence

    def __repr__(self) -> str:
        return f"QueueReader(next_sequence={self.next_sequence}, keyed={self.ratchet_key is not None})"

    def add_decryption_key(self, private_key: bytes) -> None:
        self.decryption_keys.insert(0, private_key)

    def _hpke_open(self, item: QueueMessage, label: bytes) -> bytes:
        info = _hpke_info(label, item.sequence_number, item.item_type)
        aad = _aad(item.sequence_number, item.item_type)
        for sk in self.decryption_keys:
            try:
                return self.cs.hpke.open(item.kem_output, sk, info, aad, item.ciphertext)
            except (HpkeError, ValueError):
                continue
        raise QueueDecryptionError(f"queue item {item.sequence_number} does not open with any queue key")

    def read(self, item: QueueMessage) -> bytes | None:
        """The plaintext of a ``MESSAGE`` item; None for key items and for items read before."""
        seq = item.sequence_number
        if seq < self.next_sequence:
            return None
        if seq > self.next_sequence:
            raise QueueGapError(f"queue item {seq} arrived, expected {self.next_sequence}")
        if item.item_type == QueueItemType.INITIAL_KEY:
            key = self._hpke_open(item, _LABEL_INITIAL)
            if len(key) != self.cs.nh:
                raise QueueDecryptionError("initial ratchet key has the wrong length")
            self.ratchet_key, self.next_sequence = key, seq + 1
            return None
        if self.ratchet_key is None:
            raise QueueDecryptionError(f"queue item {seq} arrived before the initial ratchet key")
        if item.item_type == QueueItemType.KEY_UPDATE:
            fresh = self._hpke_open(item, _LABEL_UPDATE)
            self.ratchet_key, self.next_sequence = _rotated(self.cs, self.ratchet_key, fresh), seq + 1
            return None
        key, nonce, nxt = _message_keys(self.cs, self.ratchet_key, seq)
        try:
            plaintext = self.cs.open(key, nonce, _aad(seq, QueueItemType.MESSAGE), item.ciphertext)
        except HpkeError as e:
            raise QueueDecryptionError(f"queue item {seq} does not decrypt") from e
        self.ratchet_key, self.next_sequence = nxt, seq + 1
        return plaintext

    def read_all(self, items: Iterable[QueueMessage]) -> list[bytes]:
        """Plaintexts of the ``MESSAGE`` items among ``items`` (in order), skipping key items."""
        out: list[bytes] = []
        for item in items:
            pt = self.read(item)
            if pt is not None:
                out.append(pt)
        return out

    def to_bytes(self) -> bytes:
        w = Writer()
        w.u8(1)  # format version
        w.u16(self.cs.suite_id)
        w.vector(self.decryption_keys, lambda w2, k: w2.opaque(k))
        w.optional(self.ratchet_key, lambda w2, k: w2.opaque(k))
        w.u64(self.next_sequence)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, cs: CipherSuite) -> QueueReader:
        def read(r: Reader) -> QueueReader:
            if r.u8() != 1:
                raise ValidationError("unknown QueueReader format")
            if r.u16() != cs.suite_id:
                raise ValidationError("QueueReader was saved for another cipher suite")
            keys = list(r.vector(lambda r2: r2.opaque()))
            rk = r.optional(lambda r2: r2.opaque())
            return cls(cs, keys, ratchet_key=rk, next_sequence=r.u64())

        return decode_all(read, data)
