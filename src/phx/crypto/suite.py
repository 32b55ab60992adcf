"""MLS cipher suites (RFC 9420 §5.1) and the labeled helpers of §5.

A :class:`CipherSuite` bundles a hash/KDF, an AEAD, an HPKE suite and a signature scheme. Suite 1
(MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519) is implemented; :func:`suite` raises for others, so
callers (and the vector runners) can count them as unsupported. Adding a suite means adding one entry
to ``_SUITES``.

Phoenix's own signatures (credentials, tokens, QS-to-QS frames) use the same SignWithLabel
construction with the prefix ``"phx 1.0 "`` instead of ``"MLS 1.0 "`` so that no Phoenix signature can
ever be replayed as an MLS one under the same key (docs/decisions.md).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from functools import lru_cache

import nacl.bindings
import nacl.exceptions

from phx.crypto.hpke import AES_128_GCM, DHKEM_X25519, HKDF_SHA256, Aead, Hpke, HpkeError, Kdf
from phx.errors import SignatureError, ValidationError

MLS_PREFIX = b"MLS 1.0 "
PHX_PREFIX = b"phx 1.0 "


class UnsupportedCipherSuite(ValidationError):
    code = "unsupported_ciphersuite"


def _opaque(b: bytes) -> bytes:
    # Inline varint header (RFC 9420 §2.1.2); kept local so crypto does not depend on the codec.
    n = len(b)
    if n < 0x40:
        return bytes((n,)) + b
    if n < 0x4000:
        return (0x4000 | n).to_bytes(2, "big") + b
    return (0x80000000 | n).to_bytes(4, "big") + b


@lru_cache(maxsize=1024)
def _ed25519_expanded(seed: bytes) -> bytes:
    return nacl.bindings.crypto_sign_seed_keypair(seed)[1]


class Ed25519:
    scheme_id = 0x0807

    @staticmethod
    def generate() -> tuple[bytes, bytes]:
        """Return (private seed, public key)."""
        seed = os.urandom(32)
        return seed, Ed25519.public_key(seed)

    @staticmethod
    def public_key(seed: bytes) -> bytes:
        if len(seed) != 32:
            raise ValidationError("Ed25519 private key must be 32 bytes")
        return _ed25519_expanded(seed)[32:]

    @staticmethod
    def sign(seed: bytes, message: bytes) -> bytes:
        if len(seed) != 32:
            raise ValidationError("Ed25519 private key must be 32 bytes")
        return nacl.bindings.crypto_sign(message, _ed25519_expanded(seed))[:64]

    @staticmethod
    def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
        if len(public_key) != 32 or len(signature) != 64:
            return False
        try:
            nacl.bindings.crypto_sign_open(signature + message, public_key)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
            return False
        return True


class CipherSuite:
    def __init__(self, suite_id: int, name: str, kdf: Kdf, aead: Aead, hpke: Hpke) -> None:
        self.suite_id = suite_id
        self.name = name
        self.kdf = kdf
        self.aead = aead
        self.hpke = hpke
        self.signature = Ed25519
        self.nh = kdf.nh
        self._hash_name = kdf.hash_name

    def __repr__(self) -> str:
        return f"CipherSuite({self.suite_id:#06x}, {self.name})"

    # --- primitives -------------------------------------------------------------------------------
    def hash(self, data: bytes) -> bytes:
        return hashlib.new(self._hash_name, data).digest()

    def extract(self, salt: bytes, ikm: bytes) -> bytes:
        return self.kdf.extract(salt, ikm)

    def expand(self, prk: bytes, info: bytes, length: int) -> bytes:
        return self.kdf.expand(prk, info, length)

    def mac(self, key: bytes, data: bytes) -> bytes:
        return hmac.digest(key, data, self._hash_name)

    def seal(self, key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> bytes:
        return self.aead.seal(key, nonce, aad, pt)

    def open(self, key: bytes, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
        return self.aead.open(key, nonce, aad, ct)

    # --- RFC 9420 §5 helpers ----------------------------------------------------------------------
    def expand_with_label(self, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
        kdf_label = length.to_bytes(2, "big") + _opaque(MLS_PREFIX + label) + _opaque(context)
        return self.kdf.expand(secret, kdf_label, length)

    def derive_secret(self, secret: bytes, label: bytes) -> bytes:
        return self.expand_with_label(secret, label, b"", self.nh)

    def derive_tree_secret(self, secret: bytes, label: bytes, generation: int, length: int) -> bytes:
        return self.expand_with_label(secret, label, generation.to_bytes(4, "big"), length)

    def ref_hash(self, label: bytes, value: bytes) -> bytes:
        return self.hash(_opaque(label) + _opaque(value))

    def sign_with_label(
        self, private_key: bytes, label: bytes, content: bytes, prefix: bytes = MLS_PREFIX
    ) -> bytes:
        return self.signature.sign(private_key, _opaque(prefix + label) + _opaque(content))

    def verify_with_label(
        self, public_key: bytes, label: bytes, content: bytes, signature: bytes, prefix: bytes = MLS_PREFIX
    ) -> bool:
        return self.signature.verify(public_key, _opaque(prefix + label) + _opaque(content), signature)

    def check_signature(
        self, public_key: bytes, label: bytes, content: bytes, signature: bytes, prefix: bytes = MLS_PREFIX
    ) -> None:
        """Like :meth:`verify_with_label` but raises :class:`SignatureError` on failure."""
        if not self.verify_with_label(public_key, label, content, signature, prefix):
            raise SignatureError(f"invalid signature ({label.decode(errors='replace')})")

    def encrypt_with_label(
        self, public_key: bytes, label: bytes, context: bytes, plaintext: bytes
    ) -> tuple[bytes, bytes]:
        """Return (kem_output, ciphertext)."""
        info = _opaque(MLS_PREFIX + label) + _opaque(context)
        return self.hpke.seal(public_key, info, b"", plaintext)

    def decrypt_with_label(
        self, private_key: bytes, label: bytes, context: bytes, kem_output: bytes, ciphertext: bytes
    ) -> bytes:
        info = _opaque(MLS_PREFIX + label) + _opaque(context)
        return self.hpke.open(kem_output, private_key, info, b"", ciphertext)

    # --- keys -------------------------------------------------------------------------------------
    def generate_signature_key_pair(self) -> tuple[bytes, bytes]:
        return self.signature.generate()

    def signature_public_key(self, private_key: bytes) -> bytes:
        return self.signature.public_key(private_key)

    def generate_hpke_key_pair(self) -> tuple[bytes, bytes]:
        return self.hpke.generate_key_pair()

    def derive_hpke_key_pair(self, ikm: bytes) -> tuple[bytes, bytes]:
        return self.hpke.derive_key_pair(ikm)

    def hpke_public_key(self, private_key: bytes) -> bytes:
        return self.hpke.kem.public_key(private_key)

    def random(self, n: int | None = None) -> bytes:
        return os.urandom(self.nh if n is None else n)


SUITE_1 = CipherSuite(
    0x0001,
    "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
    HKDF_SHA256,
    AES_128_GCM,
    Hpke(DHKEM_X25519, HKDF_SHA256, AES_128_GCM),
)

_SUITES = {SUITE_1.suite_id: SUITE_1}


def suite(suite_id: int) -> CipherSuite:
    try:
        return _SUITES[suite_id]
    except KeyError:
        raise UnsupportedCipherSuite(f"cipher suite {suite_id:#06x} is not supported") from None


def supported_suites() -> tuple[int, ...]:
    return tuple(_SUITES)


__all__ = [
    "MLS_PREFIX",
    "PHX_PREFIX",
    "SUITE_1",
    "CipherSuite",
    "Ed25519",
    "HpkeError",
    "UnsupportedCipherSuite",
    "suite",
    "supported_suites",
]
