"""Client side of batched issuance: blind a batch, then finalize the issuer's response into tokens.

The pending state holds ``voprf`` client objects (the blinds) and cannot be serialized: a client that
loses it simply requests again. A response whose batch proof does not verify under the public key the
client fetched is refused with :class:`~phx.errors.TokenError` (it is the only guard against an issuer
tagging clients with per-client keys, so the key must come from the public key endpoint, not from the
response).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from voprf import ristretto

from phx.errors import TokenError

from .tokens import (
    NONCE_SIZE,
    TOKEN_TYPE,
    AmortizedBatchTokenRequest,
    AmortizedBatchTokenResponse,
    Token,
    TokenChallenge,
    token_input,
    token_key_id,
)

__all__ = ["PendingTokens", "finalize_tokens", "request_tokens"]


@dataclass(frozen=True, slots=True)
class PendingTokens:
    request: AmortizedBatchTokenRequest
    public_key: bytes
    challenge_digest: bytes
    nonces: tuple[bytes, ...]
    _clients: tuple[ristretto.Client, ...]


def request_tokens(public_key: bytes, challenge: TokenChallenge, count: int) -> PendingTokens:
    """Blind ``count`` fresh token inputs for the issuer key ``public_key``."""
    if count < 1:
        raise ValueError("count must be positive")
    if challenge.token_type != TOKEN_TYPE:
        raise ValueError("challenge is for another token type")
    try:
        ristretto.PublicKey.deserialize(public_key)
    except ValueError:
        raise TokenError("issuer public key is not a valid ristretto255 element") from None
    key_id = token_key_id(public_key)
    digest = challenge.digest()
    nonces: list[bytes] = []
    clients: list[ristretto.Client] = []
    blinded: list[bytes] = []
    for _ in range(count):
        nonce = secrets.token_bytes(NONCE_SIZE)
        client, blind = ristretto.Client.blind(token_input(TOKEN_TYPE, nonce, digest, key_id))
        nonces.append(nonce)
        clients.append(client)
        blinded.append(blind.serialize())
    request = AmortizedBatchTokenRequest(TOKEN_TYPE, key_id[-1], tuple(blinded))
    return PendingTokens(request, public_key, digest, tuple(nonces), tuple(clients))


def finalize_tokens(pending: PendingTokens, response: AmortizedBatchTokenResponse) -> list[Token]:
    """Verify the batch proof and unblind (FinalizeBatch); raises TokenError if anything is off."""
    if len(response.evaluated_msgs) != len(pending.nonces):
        raise TokenError(f"issuer answered {len(response.evaluated_msgs)} of {len(pending.nonces)} tokens")
    raw = response.evaluated_proof + b"".join(response.evaluated_msgs)
    try:
        output = ristretto.VerifiableBatchOutput.deserialize(raw)
        outputs = ristretto.Client.finalize_batch(
            list(pending._clients), output, ristretto.PublicKey.deserialize(pending.public_key)
        )
    except (KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit):
        raise
    except BaseException:
        # voprf reports a failed proof by panicking (pyo3's PanicException derives from BaseException).
        raise TokenError("the issuer's batch proof does not verify") from None
    key_id = token_key_id(pending.public_key)
    return [
        Token(TOKEN_TYPE, nonce, pending.challenge_digest, key_id, bytes(out))
        for nonce, out in zip(pending.nonces, outputs, strict=True)
    ]
