"""Issuer and client without a database: batch issuance, finalization, header form, bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phx.errors import DecodeError, TokenError
from phx.identifiers import Fqdn
from phx.privacypass import (
    AmortizedBatchTokenRequest,
    AmortizedBatchTokenResponse,
    IssuerKey,
    Token,
    TokenChallenge,
    TokenRequestError,
    UnknownTokenKey,
    finalize_tokens,
    phoenix_challenge,
    request_tokens,
)
from phx.privacypass.tokens import TOKEN_TYPE

KEY = IssuerKey(b"\x07" * 32)
OTHER = IssuerKey(b"\x08" * 32)
CHALLENGE = phoenix_challenge(Fqdn("example.com"))


def test_phoenix_challenge_names_the_as_and_the_domain() -> None:
    c = phoenix_challenge(Fqdn("example.com"))
    assert c.issuer_name == b"as.example.com"
    assert c.origin_info == b"example.com"
    assert c.redemption_context == b""
    assert TokenChallenge.decode(c.encode()) == c
    assert c.digest() != phoenix_challenge(Fqdn("example.org")).digest()


def test_batch_round_trip_yields_valid_distinct_tokens() -> None:
    pending = request_tokens(KEY.public_key, CHALLENGE, 5)
    assert pending.request.truncated_token_key_id == KEY.key_id[-1]
    wire = AmortizedBatchTokenRequest.decode(pending.request.encode())
    response = AmortizedBatchTokenResponse.decode(KEY.issue(wire, max_batch=100).encode())
    tokens = finalize_tokens(pending, response)
    assert len(tokens) == 5
    assert len({t.nonce for t in tokens}) == 5
    for t in tokens:
        assert len(t.encode()) == 162
        assert t.challenge_digest == CHALLENGE.digest()
        assert KEY.verify(t)
        assert not OTHER.verify(t)


def test_client_rejects_a_response_under_another_key() -> None:
    """An issuer answering with a different (say, per-client) key fails the proof check."""
    pending = request_tokens(KEY.public_key, CHALLENGE, 3)
    forged = AmortizedBatchTokenRequest(TOKEN_TYPE, OTHER.truncated_key_id, pending.request.blinded_msgs)
    response = OTHER.issue(forged, max_batch=100)
    with pytest.raises(TokenError):
        finalize_tokens(pending, response)


def test_client_rejects_truncated_or_tampered_responses() -> None:
    pending = request_tokens(KEY.public_key, CHALLENGE, 3)
    response = KEY.issue(pending.request, max_batch=100)
    with pytest.raises(TokenError):
        finalize_tokens(
            pending, AmortizedBatchTokenResponse(response.evaluated_msgs[:2], response.evaluated_proof)
        )
    swapped = (response.evaluated_msgs[1], response.evaluated_msgs[0], response.evaluated_msgs[2])
    with pytest.raises(TokenError):
        finalize_tokens(pending, AmortizedBatchTokenResponse(swapped, response.evaluated_proof))


def test_issuer_request_checks() -> None:
    pending = request_tokens(KEY.public_key, CHALLENGE, 3)
    req = pending.request
    with pytest.raises(UnknownTokenKey):
        OTHER.issue(req, max_batch=100)
    with pytest.raises(TokenRequestError):
        KEY.issue(
            AmortizedBatchTokenRequest(0x0001, req.truncated_token_key_id, req.blinded_msgs), max_batch=100
        )
    with pytest.raises(TokenRequestError, match="at most 2"):
        KEY.issue(req, max_batch=2)
    with pytest.raises(TokenRequestError, match="empty"):
        KEY.issue(AmortizedBatchTokenRequest(TOKEN_TYPE, req.truncated_token_key_id, ()), max_batch=100)
    bad = (b"\xff" * 32, *req.blinded_msgs[1:])
    with pytest.raises(TokenRequestError, match="valid ristretto255"):
        KEY.issue(AmortizedBatchTokenRequest(TOKEN_TYPE, req.truncated_token_key_id, bad), max_batch=100)
    identity = (b"\x00" * 32,)
    with pytest.raises(TokenRequestError):
        KEY.issue(AmortizedBatchTokenRequest(TOKEN_TYPE, req.truncated_token_key_id, identity), max_batch=100)


def test_tampered_token_does_not_verify() -> None:
    pending = request_tokens(KEY.public_key, CHALLENGE, 1)
    (token,) = finalize_tokens(pending, KEY.issue(pending.request, max_batch=1))
    for field in ("nonce", "challenge_digest", "authenticator"):
        value = getattr(token, field)
        changed = Token(
            **{
                f: (value[:-1] + bytes([value[-1] ^ 1]) if f == field else getattr(token, f))
                for f in ("token_type", "nonce", "challenge_digest", "token_key_id", "authenticator")
            }
        )
        assert not KEY.verify(changed)
    assert KEY.verify(token)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_decoders_raise_only_decode_error(data: bytes) -> None:
    for cls in (Token, TokenChallenge, AmortizedBatchTokenRequest, AmortizedBatchTokenResponse):
        try:
            cls.decode(data)
        except DecodeError:
            pass
