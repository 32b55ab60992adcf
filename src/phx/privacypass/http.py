"""Tokens on HTTP requests: RFC 9577 §2.2, ``Authorization: PrivateToken token="<base64url>"``.

Every service endpoint that costs a token reads it from this header (docs/decisions.md), so the request
body stays the operation's own struct and one helper serves the AS, DS and QS alike.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

from phx.errors import TokenError

from .tokens import Token

__all__ = ["AUTHORIZATION", "authorization_header", "token_from_headers"]

AUTHORIZATION = "authorization"
_SCHEME = "PrivateToken"
# auth-param: name = ( token / quoted-string ); base64url never needs escapes inside the quotes.
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"([^"\\]*)"|([A-Za-z0-9_.~+/=-]+))\s*')
# A Token is 162 bytes; the header must not make us base64-decode megabytes.
_MAX_VALUE = 512


def authorization_header(token: Token | bytes) -> str:
    """The header value presenting ``token`` (padded base64url, quoted, as RFC 9577 asks)."""
    raw = token.encode() if isinstance(token, Token) else token
    return f'{_SCHEME} token="{base64.urlsafe_b64encode(raw).decode("ascii")}"'


def token_from_headers(headers: Mapping[str, str]) -> bytes:
    """The raw token of a request's ``Authorization: PrivateToken`` header; TokenError if absent or bad.

    Unknown parameters are ignored (RFC 9577); padding is accepted with or without.
    """
    value = headers.get(AUTHORIZATION)
    if value is None:
        raise TokenError("this endpoint requires a Privacy Pass token (Authorization: PrivateToken)")
    if len(value) > _MAX_VALUE:
        raise TokenError("Authorization header too long")
    scheme, _, params = value.strip().partition(" ")
    if scheme.lower() != _SCHEME.lower():
        raise TokenError("Authorization scheme is not PrivateToken")
    encoded: str | None = None
    for part in params.split(","):
        if not part.strip():
            continue
        m = _PARAM.fullmatch(part)
        if m is None:
            raise TokenError("malformed PrivateToken parameters")
        if m.group(1).lower() == "token":
            if encoded is not None:
                raise TokenError("PrivateToken has two token parameters")
            encoded = m.group(2) if m.group(2) is not None else m.group(3)
    if not encoded:
        raise TokenError("PrivateToken credentials without a token parameter")
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise TokenError("PrivateToken token is not base64url") from None
