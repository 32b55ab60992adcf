"""Privacy Pass with the batched ristretto255 token type (0x0005) for Phoenix rate limiting.

::

    issuer side (AS)                 client side                      redeemer side (AS, DS, QS)
    ────────────────                 ───────────                      ──────────────────────────
    keyring.current(now) ─ pk ─────▶ request_tokens(pk, challenge, n)
    key.issue(request)   ◀─ request ─┘
          └─ response ─────────────▶ finalize_tokens(pending, resp)
                                      └─ token in a request ──────────▶ redeemer.redeem(token, now)
                                                                          └─▶ TokenClass

The AS picks ``key`` by the requesting client's homeserver: ``keyring.current(now).key_for(cls)``.

* :mod:`.tokens` — wire structs (TokenChallenge, Token, AmortizedBatchTokenRequest/Response) and the one
  challenge of a homeserver.
* :mod:`.issuer` — :class:`IssuerKey` (pure): batch evaluation with one proof, token verification;
  :class:`TokenClass`: local or federated (a key per class and frame).
* :mod:`.keys` — :class:`IssuerKeyring`: one key pair per time frame, agreed through the database.
* :mod:`.redeemer` — :class:`TokenRedeemer`: current-or-previous key, spent-token store, purge; tells
  the caller the token's class.
* :mod:`.client` — blind a batch, verify the proof and unblind.

A token travels inside the request body (each service's request envelope has an optional
``privacy_pass_token``; docs/decisions.md) as the 162-byte encoding of :class:`Token`.

The tables live in the ``as`` migrations (``pp_issuer_keys``, ``pp_spent_tokens``): a DS or QS redeeming
tokens needs the AS schema migrated in its database.
"""

from __future__ import annotations

from .client import PendingTokens, finalize_tokens, request_tokens
from .issuer import IssuerKey, TokenClass, TokenRequestError, UnknownTokenKey
from .keys import ClassKey, IssuerKeyring, KeyEpoch
from .redeemer import TokenRedeemer
from .tokens import (
    TOKEN_TYPE,
    AmortizedBatchTokenRequest,
    AmortizedBatchTokenResponse,
    Token,
    TokenChallenge,
    phoenix_challenge,
    token_key_id,
)

__all__ = [
    "TOKEN_TYPE",
    "AmortizedBatchTokenRequest",
    "AmortizedBatchTokenResponse",
    "ClassKey",
    "IssuerKey",
    "IssuerKeyring",
    "KeyEpoch",
    "PendingTokens",
    "Token",
    "TokenChallenge",
    "TokenClass",
    "TokenRedeemer",
    "TokenRequestError",
    "UnknownTokenKey",
    "finalize_tokens",
    "phoenix_challenge",
    "request_tokens",
    "token_key_id",
]
