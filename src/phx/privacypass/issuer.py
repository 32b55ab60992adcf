"""The issuer's key and the two operations done with it: batch evaluation and token verification.

Pure and synchronous (no database, no clock): :mod:`phx.privacypass.keys` decides which key is current
and :mod:`phx.privacypass.redeemer` keeps the spent-token store.

The OPRF is ``voprf.ristretto`` (RFC 9497 VOPRF mode, ristretto255-SHA512); its wire layout is checked in
tests/privacypass against the RFC 9497 vectors and against an independent reference implementation.
``voprf`` serializes a batch output as ``proof || evaluated elements``; the draft's response is
``evaluated_msgs<V> || proof``, so the bytes are rearranged here and in :mod:`phx.privacypass.client`.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass

from voprf import ristretto

from phx.errors import ValidationError

from .tokens import (
    NE,
    PROOF_SIZE,
    TOKEN_TYPE,
    AmortizedBatchTokenRequest,
    AmortizedBatchTokenResponse,
    Token,
    token_key_id,
)

__all__ = [
    "KEY_INFO",
    "KEY_INFO_FEDERATED",
    "SEED_SIZE",
    "BlindedBatch",
    "IssuerKey",
    "TokenClass",
    "TokenRequestError",
    "UnknownTokenKey",
    "check_request",
]

SEED_SIZE = 32
#: The ``info`` of RFC 9497 DeriveKeyPair for the key of tokens issued to this homeserver's clients.
KEY_INFO = b"phx privacy pass issuer key"
#: ... and for the key of tokens issued to clients of other homeservers (same seed, independent key).
KEY_INFO_FEDERATED = b"phx privacy pass issuer key federated"


class TokenClass(enum.Enum):
    """Whom a token was issued to: the one bit a redeemer learns about its holder (docs/decisions.md).

    Each time frame has one issuer key per class; a token's key id names its class and its authenticator
    binds it to that key, so a token of one class cannot pass for the other."""

    LOCAL = "local"
    """Issued to a client of this homeserver."""
    FEDERATED = "federated"
    """Issued to a client of another homeserver (authenticated through that homeserver's AS)."""

    @property
    def key_info(self) -> bytes:
        return KEY_INFO if self is TokenClass.LOCAL else KEY_INFO_FEDERATED


class TokenRequestError(ValidationError):
    """A token request the issuer cannot process (the draft's HTTP 422 cases)."""

    code = "bad_token_request"


class UnknownTokenKey(TokenRequestError):
    """The request names a key (by truncated id) that is not the issuer's current one: refetch the key."""

    code = "unknown_token_key"


@dataclass(frozen=True, slots=True)
class BlindedBatch:
    """A checked, decoded batch of blinded elements (see :meth:`IssuerKey.parse`)."""

    elements: list[ristretto.BlindedInput]

    def __len__(self) -> int:
        return len(self.elements)


class IssuerKey:
    """One issuer key pair, derived from a secret seed (RFC 9497 DeriveKeyPair with the class's info)."""

    __slots__ = ("seed", "token_class", "_evaluator", "public_key", "key_id")

    def __init__(self, seed: bytes, token_class: TokenClass = TokenClass.LOCAL) -> None:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"issuer key seed must be {SEED_SIZE} bytes")
        self.seed = seed
        self.token_class = token_class
        self._evaluator = ristretto.Evaluator.from_seed(seed, token_class.key_info)
        self.public_key: bytes = self._evaluator.public_key.serialize()
        self.key_id: bytes = token_key_id(self.public_key)

    @property
    def truncated_key_id(self) -> int:
        return self.key_id[-1]

    def issue(self, request: AmortizedBatchTokenRequest, *, max_batch: int) -> AmortizedBatchTokenResponse:
        """Evaluate a batch (BlindEvaluateBatch) after the draft's checks; one proof covers the batch."""
        return self.evaluate(self.parse(request, max_batch=max_batch))

    def parse(self, request: AmortizedBatchTokenRequest, *, max_batch: int) -> BlindedBatch:
        """The draft's checks and element decoding: everything that can fail, before anything is charged."""
        check_request(request, self, max_batch=max_batch)
        try:
            return BlindedBatch([ristretto.BlindedInput.deserialize(m) for m in request.blinded_msgs])
        except ValueError:
            raise TokenRequestError("a blinded message is not a valid ristretto255 element") from None

    def evaluate(self, batch: BlindedBatch) -> AmortizedBatchTokenResponse:
        blinded = batch.elements
        raw = self._evaluator.evaluate_batch(blinded).serialize()
        proof, elements = raw[:PROOF_SIZE], raw[PROOF_SIZE:]
        evaluated = tuple(elements[i : i + NE] for i in range(0, len(elements), NE))
        if len(evaluated) != len(blinded):
            raise AssertionError("voprf returned a batch of the wrong size")
        return AmortizedBatchTokenResponse(evaluated, proof)

    def authenticator(self, token_input: bytes) -> bytes:
        """The PRF output a genuine token carries for ``token_input`` (RFC 9497 Evaluate)."""
        return self._evaluator.evaluate_known_input(token_input)

    def verify(self, token: Token) -> bool:
        """Whether ``token`` carries this key's authenticator (the caller checks type, challenge and id)."""
        if token.token_key_id != self.key_id:
            return False
        return hmac.compare_digest(self.authenticator(token.token_input()), token.authenticator)


def check_request(request: AmortizedBatchTokenRequest, key: IssuerKey, *, max_batch: int) -> None:
    """The draft's request checks (token type, key, batch size), before any allowance is charged."""
    if request.token_type != TOKEN_TYPE:
        raise TokenRequestError(f"unsupported token type 0x{request.token_type:04x}")
    if request.truncated_token_key_id != key.truncated_key_id:
        raise UnknownTokenKey("the request names an issuer key that is not current; fetch the current key")
    n = len(request.blinded_msgs)
    if n == 0:
        raise TokenRequestError("empty token request")
    if n > max_batch:
        raise TokenRequestError(f"{n} tokens requested, at most {max_batch} per request")
