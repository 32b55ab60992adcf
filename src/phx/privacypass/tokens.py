"""Wire structs of the batched ristretto255 Privacy Pass token type (0x0005).

References: RFC 9577 (TokenChallenge, Token, the ``PrivateToken`` HTTP scheme), RFC 9578 §5 (privately
verifiable issuance), draft-ietf-privacypass-batched-tokens (token type 0x0005, amortized batch issuance):

========================================  =========================================================
struct                                    wire form
========================================  =========================================================
:class:`TokenChallenge`                   RFC 9577 §2.1 (fixed-width TLS length prefixes)
:class:`Token`                            ``uint16 type, nonce[32], challenge_digest[32],
                                          token_key_id[32], authenticator[64]`` (162 bytes)
:class:`AmortizedBatchTokenRequest`       ``uint16 type, uint8 truncated_key_id, blinded_msgs<V>``
:class:`AmortizedBatchTokenResponse`      ``evaluated_msgs<V>, evaluated_proof[64]``
========================================  =========================================================

The ``<V>`` vectors use the QUIC/MLS variable-length header, which is exactly the codec's ``T<V>``.

Phoenix has no HTTP challenge round trip: every token of a homeserver answers one fixed challenge
(:func:`phoenix_challenge`), so a token obtained from ``as.<domain>`` is redeemable at any service of that
domain and nowhere else (docs/decisions.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Self

from phx.codec import U8, U16, Fixed, Reader, Struct, Writer
from phx.errors import DecodeError
from phx.identifiers import Fqdn, Service, service_domain

__all__ = [
    "NE",
    "NH",
    "NONCE_SIZE",
    "PROOF_SIZE",
    "TOKEN_TYPE",
    "AmortizedBatchTokenRequest",
    "AmortizedBatchTokenResponse",
    "Token",
    "TokenChallenge",
    "phoenix_challenge",
    "token_input",
    "token_key_id",
]

#: VOPRF(ristretto255, SHA-512), draft-ietf-privacypass-batched-tokens §"Token Type".
TOKEN_TYPE = 0x0005
#: Serialized element, scalar and hash output sizes of ristretto255-SHA512 (RFC 9497 §4.1).
NE = 32
NS = 32
NH = 64
NONCE_SIZE = 32
PROOF_SIZE = 2 * NS

Element = Annotated[bytes, Fixed(NE)]


@dataclass(frozen=True, slots=True)
class TokenChallenge(Struct):
    """RFC 9577 §2.1. Unlike the rest of phx its vectors carry fixed-width (TLS 1.3 style) lengths."""

    token_type: int
    issuer_name: bytes
    redemption_context: bytes
    origin_info: bytes

    def _write(self, w: Writer) -> None:
        if not 1 <= len(self.issuer_name) < 1 << 16:
            raise ValueError("issuer_name must have 1..65535 bytes")
        if len(self.redemption_context) not in (0, 32):
            raise ValueError("redemption_context must be empty or 32 bytes")
        if len(self.origin_info) >= 1 << 16:
            raise ValueError("origin_info must be shorter than 65536 bytes")
        w.u16(self.token_type)
        w.u16(len(self.issuer_name))
        w.raw(self.issuer_name)
        w.u8(len(self.redemption_context))
        w.raw(self.redemption_context)
        w.u16(len(self.origin_info))
        w.raw(self.origin_info)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        token_type = r.u16()
        issuer = r.take(r.u16())
        if not issuer:
            raise DecodeError("empty issuer_name")
        context = r.take(r.u8())
        if len(context) not in (0, 32):
            raise DecodeError("redemption_context must be empty or 32 bytes")
        origin = r.take(r.u16())
        return cls(token_type, issuer, context, origin)

    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()


@dataclass(frozen=True, slots=True)
class Token(Struct):
    """RFC 9577 §2.2 with ``Nk = 64`` for token type 0x0005."""

    token_type: Annotated[int, U16]
    nonce: Annotated[bytes, Fixed(NONCE_SIZE)]
    challenge_digest: Annotated[bytes, Fixed(32)]
    token_key_id: Annotated[bytes, Fixed(32)]
    authenticator: Annotated[bytes, Fixed(NH)]

    def token_input(self) -> bytes:
        """What the authenticator is the PRF output of (everything before it)."""
        return token_input(self.token_type, self.nonce, self.challenge_digest, self.token_key_id)


@dataclass(frozen=True, slots=True)
class AmortizedBatchTokenRequest(Struct):
    token_type: Annotated[int, U16]
    truncated_token_key_id: Annotated[int, U8]
    blinded_msgs: tuple[Element, ...]


@dataclass(frozen=True, slots=True)
class AmortizedBatchTokenResponse(Struct):
    evaluated_msgs: tuple[Element, ...]
    evaluated_proof: Annotated[bytes, Fixed(PROOF_SIZE)]


def token_input(token_type: int, nonce: bytes, challenge_digest: bytes, key_id: bytes) -> bytes:
    """``concat(token_type, nonce, challenge_digest, token_key_id)`` (RFC 9578 §5.1)."""
    return token_type.to_bytes(2, "big") + nonce + challenge_digest + key_id


def token_key_id(public_key: bytes) -> bytes:
    """``SHA256(SerializeElement(pkI))`` (RFC 9578 §5, the draft's token type registration)."""
    return hashlib.sha256(public_key).digest()


def phoenix_challenge(domain: Fqdn) -> TokenChallenge:
    """The one challenge every token of ``domain`` answers: issued by ``as.<domain>``, redeemable at the
    services of ``domain``, no per-request redemption context."""
    issuer = service_domain(domain, Service.AS).value.encode("ascii")
    return TokenChallenge(TOKEN_TYPE, issuer, b"", domain.value.encode("ascii"))
