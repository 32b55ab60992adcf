"""The secret tree and its per-sender hash ratchets (RFC 9420 §9), plus sender-data keys (§6.3.2).

The tree is derived lazily from ``encryption_secret``: a leaf's secret is computed the first time its
ratchets are needed, and every node secret on the way down is deleted once its two children exist
(§9.2, deletion schedule). Each leaf then owns two :class:`HashRatchet` objects, handshake and
application.

A ratchet deletes each key/nonce as soon as it is consumed. Receivers may see generations out of
order: keys for skipped generations are kept, up to ``max_skipped`` per ratchet (oldest evicted first),
and a generation more than ``max_forward`` ahead of the ratchet is refused so a bogus generation cannot
make us derive millions of secrets. Failures are :class:`RatchetError` subclasses telling *why*:
too far ahead, too old (its key was evicted or lies below the retention window), or reused (its key was
already consumed — a replay).
"""

from __future__ import annotations

import hmac
from functools import lru_cache

from phx.codec import Reader, Writer, decode_all, encode_varint
from phx.crypto import CipherSuite
from phx.errors import MlsError
from phx.mls import tree_math

__all__ = [
    "DEFAULT_MAX_FORWARD",
    "DEFAULT_MAX_SKIPPED",
    "GenerationReused",
    "GenerationTooFarAhead",
    "GenerationTooOld",
    "HashRatchet",
    "InvalidSenderLeaf",
    "RatchetError",
    "SecretTree",
    "sender_data_key_nonce",
]

DEFAULT_MAX_FORWARD = 1000
DEFAULT_MAX_SKIPPED = 1000
_MAX_GENERATION = (1 << 32) - 1  # generations are uint32 on the wire


class RatchetError(MlsError):
    """A key for the requested (leaf, generation) cannot be produced."""


class GenerationTooFarAhead(RatchetError):
    pass


class GenerationTooOld(RatchetError):
    pass


class GenerationReused(RatchetError):
    pass


class InvalidSenderLeaf(RatchetError):
    pass


@lru_cache(maxsize=64)
def _kdf_label_prefix(label: bytes, length: int) -> bytes:
    # KDFLabel up to (not including) its context: uint16 length || opaque label<V>.
    full = b"MLS 1.0 " + label
    return length.to_bytes(2, "big") + bytes((len(full),)) + full


class HashRatchet:
    """One sender ratchet: ``ratchet_secret_[N]_[j]`` and the keys/nonces derived from it (§9.1)."""

    __slots__ = (
        "_hash_name",
        "_secret",
        "_next",
        "_skipped",
        "_floor",
        "_key_info",
        "_nonce_info",
        "_secret_info",
        "_nk",
        "_nn",
        "_nh",
        "max_forward",
        "max_skipped",
        "leaf",
        "kind",
    )

    def __init__(
        self,
        cs: CipherSuite,
        secret: bytes,
        *,
        max_forward: int = DEFAULT_MAX_FORWARD,
        max_skipped: int = DEFAULT_MAX_SKIPPED,
        leaf: int = 0,
        kind: str = "application",
    ) -> None:
        if cs.aead.nk > cs.nh or cs.aead.nn > cs.nh:
            raise ValueError("single-block key derivation needs Nk, Nn <= Nh")
        self._hash_name = cs.kdf.hash_name
        self._secret = secret
        self._next = 0
        # Unconsumed keys of generations below ``_next`` (insertion order == generation order).
        self._skipped: dict[int, tuple[bytes, bytes]] = {}
        # Every generation below ``_floor`` was evicted or consumed; it is "too old".
        self._floor = 0
        self._nk, self._nn, self._nh = cs.aead.nk, cs.aead.nn, cs.nh
        self._key_info = _kdf_label_prefix(b"key", self._nk)
        self._nonce_info = _kdf_label_prefix(b"nonce", self._nn)
        self._secret_info = _kdf_label_prefix(b"secret", self._nh)
        self.max_forward = max_forward
        self.max_skipped = max_skipped
        self.leaf = leaf
        self.kind = kind

    def __repr__(self) -> str:
        return f"HashRatchet(leaf={self.leaf}, {self.kind}, next={self._next}, skipped={len(self._skipped)})"

    @property
    def next_generation(self) -> int:
        return self._next

    def _step(self) -> tuple[bytes, bytes]:
        """Derive the key/nonce of generation ``_next`` and advance the ratchet secret."""
        if self._next > _MAX_GENERATION:
            raise RatchetError(f"{self.kind} ratchet of leaf {self.leaf} is exhausted")
        # HKDF-Expand of at most Nh bytes is one HMAC block: T(1) = HMAC(prk, info || 0x01).
        ctx = b"\x04" + self._next.to_bytes(4, "big") + b"\x01"
        secret, h = self._secret, self._hash_name
        key = hmac.digest(secret, self._key_info + ctx, h)[: self._nk]
        nonce = hmac.digest(secret, self._nonce_info + ctx, h)[: self._nn]
        self._secret = hmac.digest(secret, self._secret_info + ctx, h)
        self._next += 1
        return key, nonce

    def next_key(self) -> tuple[int, bytes, bytes]:
        """Sender side: take the next unused generation; its key is gone from the ratchet afterwards."""
        generation = self._next
        key, nonce = self._step()
        self._floor = self._next
        return generation, key, nonce

    def key_for(self, generation: int) -> tuple[bytes, bytes]:
        """Receiver side: the key/nonce of ``generation``, *not yet* consumed.

        Call :meth:`consume` once the message decrypted; a failed decryption leaves the key in place so
        the genuine message with that generation still decrypts later.
        """
        if generation < self._next:
            found = self._skipped.get(generation)
            if found is not None:
                return found
            if generation < self._floor:
                raise GenerationTooOld(
                    f"{self.kind} generation {generation} of leaf {self.leaf} is too old "
                    "(its key was already deleted)"
                )
            raise GenerationReused(
                f"{self.kind} generation {generation} of leaf {self.leaf} was already used (replay)"
            )
        if generation - self._next > self.max_forward:
            raise GenerationTooFarAhead(
                f"{self.kind} generation {generation} of leaf {self.leaf} is more than {self.max_forward} "
                f"ahead of the ratchet (at {self._next})"
            )
        if generation > _MAX_GENERATION:
            raise GenerationTooFarAhead(f"generation {generation} does not fit uint32")
        skipped = self._skipped
        while True:
            g = self._next
            kn = self._step()
            skipped[g] = kn
            if g == generation:
                break
        while len(skipped) > self.max_skipped:
            oldest = next(iter(skipped))
            del skipped[oldest]
            self._floor = max(self._floor, oldest + 1)
        return kn

    def consume(self, generation: int) -> None:
        """Delete the key of ``generation`` (after a successful decryption)."""
        self._skipped.pop(generation, None)

    def take(self, generation: int) -> tuple[bytes, bytes]:
        """:meth:`key_for` then :meth:`consume`, for callers that cannot fail after this point."""
        kn = self.key_for(generation)
        self.consume(generation)
        return kn

    # --- persistence --------------------------------------------------------------------------------
    def write(self, w: Writer) -> None:
        """Serialize the ratchet state (secret, position, retained keys). The bytes are secret."""
        w.opaque(self._secret)
        w.u32(self._next)
        w.u32(self._floor)
        w.u32(self.max_forward)
        w.u32(self.max_skipped)
        w.u32(len(self._skipped))
        for g, (key, nonce) in self._skipped.items():
            w.u32(g)
            w.opaque(key)
            w.opaque(nonce)

    @classmethod
    def read(cls, cs: CipherSuite, r: Reader, *, leaf: int, kind: str) -> HashRatchet:
        secret = r.opaque()
        nxt, floor, max_forward, max_skipped = r.u32(), r.u32(), r.u32(), r.u32()
        ratchet = cls(cs, secret, max_forward=max_forward, max_skipped=max_skipped, leaf=leaf, kind=kind)
        ratchet._next = nxt
        ratchet._floor = floor
        prev = -1
        for _ in range(r.u32()):
            g = r.u32()
            if not prev < g < nxt:
                raise ValueError("skipped generations must be increasing and below the ratchet position")
            prev = g
            ratchet._skipped[g] = (r.opaque(), r.opaque())
        return ratchet


class SecretTree:
    """The secret tree of one epoch for a group of ``n_leaves`` leaves (a power of two)."""

    __slots__ = ("cs", "n_leaves", "_nodes", "_ratchets", "max_forward", "max_skipped")

    def __init__(
        self,
        cs: CipherSuite,
        encryption_secret: bytes,
        n_leaves: int,
        *,
        max_forward: int = DEFAULT_MAX_FORWARD,
        max_skipped: int = DEFAULT_MAX_SKIPPED,
    ) -> None:
        if n_leaves < 1 or n_leaves & (n_leaves - 1):
            raise ValueError(f"secret tree size {n_leaves} is not a power of two")
        self.cs = cs
        self.n_leaves = n_leaves
        self._nodes: dict[int, bytes] = {tree_math.root(n_leaves): encryption_secret}
        # leaf -> (handshake, application)
        self._ratchets: dict[int, tuple[HashRatchet, HashRatchet]] = {}
        self.max_forward = max_forward
        self.max_skipped = max_skipped

    def __repr__(self) -> str:
        return f"SecretTree(n_leaves={self.n_leaves}, leaves_in_use={sorted(self._ratchets)})"

    def _leaf_ratchets(self, leaf: int) -> tuple[HashRatchet, HashRatchet]:
        found = self._ratchets.get(leaf)
        if found is not None:
            return found
        if not 0 <= leaf < self.n_leaves:
            raise InvalidSenderLeaf(f"leaf {leaf} is outside a tree of {self.n_leaves} leaves")
        target = tree_math.leaf_to_node(leaf)
        # Lowest stored ancestor-or-self of the leaf; deriving always stores both children, so one exists.
        path = [target, *tree_math.direct_path(target, self.n_leaves)]
        start = next(i for i, x in enumerate(path) if x in self._nodes)
        cs = self.cs
        for i in range(start, 0, -1):
            x = path[i]
            secret = self._nodes.pop(x)
            self._nodes[tree_math.left(x)] = cs.expand_with_label(secret, b"tree", b"left", cs.nh)
            self._nodes[tree_math.right(x)] = cs.expand_with_label(secret, b"tree", b"right", cs.nh)
        leaf_secret = self._nodes.pop(target)
        opts = {"max_forward": self.max_forward, "max_skipped": self.max_skipped, "leaf": leaf}
        pair = (
            HashRatchet(
                cs, cs.expand_with_label(leaf_secret, b"handshake", b"", cs.nh), kind="handshake", **opts
            ),
            HashRatchet(
                cs, cs.expand_with_label(leaf_secret, b"application", b"", cs.nh), kind="application", **opts
            ),
        )
        self._ratchets[leaf] = pair
        return pair

    def handshake_ratchet(self, leaf: int) -> HashRatchet:
        return self._leaf_ratchets(leaf)[0]

    def application_ratchet(self, leaf: int) -> HashRatchet:
        return self._leaf_ratchets(leaf)[1]

    def ratchet(self, leaf: int, handshake: bool) -> HashRatchet:
        return self._leaf_ratchets(leaf)[0 if handshake else 1]

    def next_key(self, leaf: int, handshake: bool) -> tuple[int, bytes, bytes]:
        """Sender side: ``(generation, key, nonce)`` for our own next message."""
        return self.ratchet(leaf, handshake).next_key()

    def key_for(self, leaf: int, handshake: bool, generation: int) -> tuple[bytes, bytes]:
        """Receiver side: see :meth:`HashRatchet.key_for`; pair with :meth:`consume`."""
        return self.ratchet(leaf, handshake).key_for(generation)

    def consume(self, leaf: int, handshake: bool, generation: int) -> None:
        self.ratchet(leaf, handshake).consume(generation)

    # --- persistence --------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The whole state: remaining node secrets and every leaf's two ratchets. The bytes are secret."""
        w = Writer()
        w.u32(self.n_leaves)
        w.u32(self.max_forward)
        w.u32(self.max_skipped)
        w.u32(len(self._nodes))
        for x, secret in sorted(self._nodes.items()):
            w.u32(x)
            w.opaque(secret)
        w.u32(len(self._ratchets))
        for leaf, (handshake, application) in sorted(self._ratchets.items()):
            w.u32(leaf)
            handshake.write(w)
            application.write(w)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, cs: CipherSuite, data: bytes) -> SecretTree:
        """Inverse of :meth:`to_bytes`; raises :class:`~phx.errors.DecodeError` on malformed input."""

        def read(r: Reader) -> SecretTree:
            n_leaves, max_forward, max_skipped = r.u32(), r.u32(), r.u32()
            tree = cls(cs, b"", n_leaves, max_forward=max_forward, max_skipped=max_skipped)
            tree._nodes.clear()
            width = tree_math.node_width(n_leaves)
            for _ in range(r.u32()):
                x = r.u32()
                if x >= width:
                    raise ValueError(f"secret tree node {x} outside the tree")
                tree._nodes[x] = r.opaque()
            for _ in range(r.u32()):
                leaf = r.u32()
                if leaf >= n_leaves:
                    raise ValueError(f"secret tree leaf {leaf} outside the tree")
                handshake = HashRatchet.read(cs, r, leaf=leaf, kind="handshake")
                application = HashRatchet.read(cs, r, leaf=leaf, kind="application")
                tree._ratchets[leaf] = (handshake, application)
            return tree

        return decode_all(read, data)


def sender_data_key_nonce(
    cs: CipherSuite, sender_data_secret: bytes, ciphertext: bytes
) -> tuple[bytes, bytes]:
    """§6.3.2: key and nonce sealing SenderData, from the first ``Nh`` bytes of the content ciphertext."""
    sample = ciphertext[: cs.nh]
    nk, nn = cs.aead.nk, cs.aead.nn
    if nk > cs.nh or nn > cs.nh:
        return (
            cs.expand_with_label(sender_data_secret, b"key", sample, nk),
            cs.expand_with_label(sender_data_secret, b"nonce", sample, nn),
        )
    # Same as ExpandWithLabel, inlined for the per-message hot path (one HMAC block each).
    ctx = encode_varint(len(sample)) + sample + b"\x01"
    h = cs.kdf.hash_name
    key = hmac.digest(sender_data_secret, _kdf_label_prefix(b"key", nk) + ctx, h)[:nk]
    nonce = hmac.digest(sender_data_secret, _kdf_label_prefix(b"nonce", nn) + ctx, h)[:nn]
    return key, nonce
