"""HPKE (RFC 9180), base mode, built on `cryptography` (AEAD) and libsodium (X25519) primitives.

The `cryptography` HPKE API offers neither the secret exporter nor DeriveKeyPair, both of which MLS
needs, so the key schedule is written out here. Only DHKEM(X25519, HKDF-SHA256) is provided as a KEM
and HKDF-SHA256 as a KDF; the AEAD is pluggable. The module is checked against the RFC 9180 test
vectors (tests/crypto/test_hpke.py) and cross-checked with the independent `pyhpke` package.

X25519 is computed on raw bytes with libsodium: a `cryptography` key object costs one scalar
multiplication to build (OpenSSL derives the public key on import), so an encap through key objects
took four multiplications where two are needed, and libsodium's fixed-base multiplication is about
twice as fast as a variable-base one. Both libraries reject the same inputs: low-order points, whose
shared secret is all zero (RFC 9180 §7.1.4). :class:`Sealer` seals to many recipients under one
``info`` and computes the ``info``-dependent part of the key schedule once.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Protocol

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from phx.errors import ValidationError


class HpkeError(ValidationError):
    """An HPKE open that fails (wrong key, altered ciphertext) or a malformed key."""

    code = "hpke_error"


class Kdf:
    """HKDF over a stdlib HMAC hash (fast: one C call per block)."""

    def __init__(self, kdf_id: int, hash_name: str, nh: int) -> None:
        self.kdf_id = kdf_id
        self.hash_name = hash_name
        self.nh = nh

    def extract(self, salt: bytes, ikm: bytes) -> bytes:
        return hmac.digest(salt or bytes(self.nh), ikm, self.hash_name)

    def expand(self, prk: bytes, info: bytes, length: int) -> bytes:
        if length <= self.nh:
            # One block, the common case (every MLS secret and key): T(1) = HMAC(prk, info || 0x01).
            return hmac.digest(prk, info + b"\x01", self.hash_name)[:length]
        if length > 255 * self.nh:
            raise ValueError("HKDF-Expand length too large")
        out = b""
        block = b""
        counter = 1
        while len(out) < length:
            block = hmac.digest(prk, block + info + bytes((counter,)), self.hash_name)
            out += block
            counter += 1
        return out[:length]


class Aead(Protocol):
    aead_id: int
    nk: int
    nn: int

    def seal(self, key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> bytes: ...

    def open(self, key: bytes, nonce: bytes, aad: bytes, ct: bytes) -> bytes: ...


class AesGcm:
    def __init__(self, aead_id: int, nk: int) -> None:
        self.aead_id = aead_id
        self.nk = nk
        self.nn = 12

    def seal(self, key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> bytes:
        return AESGCM(key).encrypt(nonce, pt, aad)

    def open(self, key: bytes, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
        try:
            return AESGCM(key).decrypt(nonce, ct, aad)
        except (InvalidTag, ValueError) as e:
            raise HpkeError("AEAD open failed") from e


class ChaChaPoly:
    aead_id = 0x0003
    nk = 32
    nn = 12

    def seal(self, key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> bytes:
        return ChaCha20Poly1305(key).encrypt(nonce, pt, aad)

    def open(self, key: bytes, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
        try:
            return ChaCha20Poly1305(key).decrypt(nonce, ct, aad)
        except (InvalidTag, ValueError) as e:
            raise HpkeError("AEAD open failed") from e


AES_128_GCM = AesGcm(0x0001, 16)
AES_256_GCM = AesGcm(0x0002, 32)
CHACHA20_POLY1305 = ChaChaPoly()
HKDF_SHA256 = Kdf(0x0001, "sha256", 32)
HKDF_SHA512 = Kdf(0x0003, "sha512", 64)


class DhkemX25519:
    """DHKEM(X25519, HKDF-SHA256), RFC 9180 §4.1."""

    kem_id = 0x0020
    nsecret = 32
    nenc = 32
    npk = 32
    nsk = 32

    def __init__(self) -> None:
        self.kdf = HKDF_SHA256
        self.suite_id = b"KEM" + self.kem_id.to_bytes(2, "big")

    def _labeled_extract(self, salt: bytes, label: bytes, ikm: bytes) -> bytes:
        return self.kdf.extract(salt, b"HPKE-v1" + self.suite_id + label + ikm)

    def _labeled_expand(self, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
        labeled_info = length.to_bytes(2, "big") + b"HPKE-v1" + self.suite_id + label + info
        return self.kdf.expand(prk, labeled_info, length)

    def derive_key_pair(self, ikm: bytes) -> tuple[bytes, bytes]:
        dkp_prk = self._labeled_extract(b"", b"dkp_prk", ikm)
        sk = self._labeled_expand(dkp_prk, b"sk", b"", self.nsk)
        return sk, self.public_key(sk)

    def generate_key_pair(self) -> tuple[bytes, bytes]:
        # Any 32 bytes are an X25519 private key (the scalar is clamped when used).
        sk = os.urandom(self.nsk)
        return sk, self.public_key(sk)

    @staticmethod
    def public_key(sk: bytes) -> bytes:
        if len(sk) != 32:
            raise HpkeError("malformed X25519 private key")
        return nacl.bindings.crypto_scalarmult_base(sk)

    @staticmethod
    def _dh(sk: bytes, pk: bytes) -> bytes:
        if len(sk) != 32 or len(pk) != 32:
            raise HpkeError("X25519 exchange failed: wrong key length")
        try:
            return nacl.bindings.crypto_scalarmult(sk, pk)
        except nacl.exceptions.RuntimeError as e:
            # libsodium refuses low-order points, whose shared secret would be all zero.
            raise HpkeError("X25519 exchange failed") from e

    def _extract_and_expand(self, dh: bytes, kem_context: bytes) -> bytes:
        eae_prk = self._labeled_extract(b"", b"eae_prk", dh)
        return self._labeled_expand(eae_prk, b"shared_secret", kem_context, self.nsecret)

    def encap(self, pk_r: bytes, eph_sk: bytes | None = None) -> tuple[bytes, bytes]:
        sk_e = eph_sk if eph_sk is not None else os.urandom(self.nsk)
        enc = self.public_key(sk_e)
        dh = self._dh(sk_e, pk_r)
        return self._extract_and_expand(dh, enc + pk_r), enc

    def decap(self, enc: bytes, sk_r: bytes) -> bytes:
        dh = self._dh(sk_r, enc)
        return self._extract_and_expand(dh, enc + self.public_key(sk_r))


@dataclass(slots=True)
class Context:
    """An HPKE encryption context (base mode): key, base nonce, sequence number, exporter secret."""

    suite: Hpke
    key: bytes
    base_nonce: bytes
    exporter_secret: bytes
    seq: int = 0

    def _nonce(self) -> bytes:
        nn = len(self.base_nonce)
        return bytes(a ^ b for a, b in zip(self.base_nonce, self.seq.to_bytes(nn, "big"), strict=True))

    def seal(self, aad: bytes, pt: bytes) -> bytes:
        ct = self.suite.aead.seal(self.key, self._nonce(), aad, pt)
        self.seq += 1
        return ct

    def open(self, aad: bytes, ct: bytes) -> bytes:
        pt = self.suite.aead.open(self.key, self._nonce(), aad, ct)
        self.seq += 1
        return pt

    def export(self, exporter_context: bytes, length: int) -> bytes:
        return self.suite.labeled_expand(self.exporter_secret, b"sec", exporter_context, length)


class Hpke:
    """One HPKE cipher suite (KEM, KDF, AEAD), base mode only."""

    def __init__(self, kem: DhkemX25519, kdf: Kdf, aead: Aead) -> None:
        self.kem = kem
        self.kdf = kdf
        self.aead = aead
        self.suite_id = (
            b"HPKE"
            + kem.kem_id.to_bytes(2, "big")
            + kdf.kdf_id.to_bytes(2, "big")
            + aead.aead_id.to_bytes(2, "big")
        )
        # Base mode has no PSK: psk_id_hash is a constant of the suite.
        self._psk_id_hash = self.labeled_extract(b"", b"psk_id_hash", b"")

    def labeled_extract(self, salt: bytes, label: bytes, ikm: bytes) -> bytes:
        return self.kdf.extract(salt, b"HPKE-v1" + self.suite_id + label + ikm)

    def labeled_expand(self, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
        labeled_info = length.to_bytes(2, "big") + b"HPKE-v1" + self.suite_id + label + info
        return self.kdf.expand(prk, labeled_info, length)

    def key_schedule_context(self, info: bytes) -> bytes:
        """``key_schedule_context`` of RFC 9180 §5.1 in base mode: everything that depends on ``info``."""
        # mode 0x00: base mode, no PSK, no sender authentication.
        return b"\x00" + self._psk_id_hash + self.labeled_extract(b"", b"info_hash", info)

    def _key_schedule(self, shared_secret: bytes, info: bytes) -> Context:
        ks_context = self.key_schedule_context(info)
        secret = self.labeled_extract(shared_secret, b"secret", b"")
        return Context(
            suite=self,
            key=self.labeled_expand(secret, b"key", ks_context, self.aead.nk),
            base_nonce=self.labeled_expand(secret, b"base_nonce", ks_context, self.aead.nn),
            exporter_secret=self.labeled_expand(secret, b"exp", ks_context, self.kdf.nh),
        )

    def setup_base_s(self, pk_r: bytes, info: bytes, eph_sk: bytes | None = None) -> tuple[bytes, Context]:
        shared_secret, enc = self.kem.encap(pk_r, eph_sk)
        return enc, self._key_schedule(shared_secret, info)

    def setup_base_r(self, enc: bytes, sk_r: bytes, info: bytes) -> Context:
        return self._key_schedule(self.kem.decap(enc, sk_r), info)

    def seal(self, pk_r: bytes, info: bytes, aad: bytes, pt: bytes) -> tuple[bytes, bytes]:
        """Single-shot base-mode seal; returns (enc, ciphertext)."""
        enc, ctx = self.setup_base_s(pk_r, info)
        return enc, ctx.seal(aad, pt)

    def open(self, enc: bytes, sk_r: bytes, info: bytes, aad: bytes, ct: bytes) -> bytes:
        return self.setup_base_r(enc, sk_r, info).open(aad, ct)

    def derive_key_pair(self, ikm: bytes) -> tuple[bytes, bytes]:
        return self.kem.derive_key_pair(ikm)

    def generate_key_pair(self) -> tuple[bytes, bytes]:
        return self.kem.generate_key_pair()

    def sealer(self, info: bytes) -> Sealer:
        """Single-shot seals to many recipients under the same ``info`` (see :class:`Sealer`)."""
        return Sealer(self, info)


class Sealer:
    """Single-shot base-mode seals (:meth:`Hpke.seal`) to many recipients under one ``info``.

    The ``info_hash`` of the key schedule is computed once instead of per recipient, which matters when
    ``info`` is large (an MLS Welcome's info embeds the encrypted GroupInfo, possibly the whole ratchet
    tree: hashing it per recipient is O(n^2) bytes). Each seal is the usual encap with a fresh
    ephemeral key and key derivation; recipients open with the ordinary :meth:`Hpke.open`.
    """

    __slots__ = ("_hpke", "_ks_context")

    def __init__(self, hpke: Hpke, info: bytes) -> None:
        self._hpke = hpke
        self._ks_context = hpke.key_schedule_context(info)

    def seal(self, pk_r: bytes, aad: bytes, pt: bytes, eph_sk: bytes | None = None) -> tuple[bytes, bytes]:
        """Returns (enc, ciphertext); ``eph_sk`` only for tests (deterministic encap)."""
        hpke, ctx = self._hpke, self._ks_context
        shared_secret, enc = hpke.kem.encap(pk_r, eph_sk)
        secret = hpke.labeled_extract(shared_secret, b"secret", b"")
        key = hpke.labeled_expand(secret, b"key", ctx, hpke.aead.nk)
        base_nonce = hpke.labeled_expand(secret, b"base_nonce", ctx, hpke.aead.nn)
        # Sequence number 0: the nonce is the base nonce.
        return enc, hpke.aead.seal(key, base_nonce, aad, pt)


DHKEM_X25519 = DhkemX25519()
