"""The one exception tree of phx, and the one place that maps it to HTTP.

::

    PhxError                         (500 internal_error — never raised for bad input)
    ├── BadRequest                   400 bad_request
    │   ├── DecodeError              400 decode_error        malformed wire bytes
    │   ├── PayloadTooLarge          413 payload_too_large
    │   └── ValidationError          400 invalid             well-formed but violates a protocol rule
    │       └── MlsError             400 mls_invalid
    │           └── WrongEpoch       409 wrong_epoch
    ├── AuthError                    401 unauthenticated
    │   ├── SignatureError           401 bad_signature
    │   ├── ExpiredError             401 expired
    │   └── TokenError               401 bad_token
    ├── Forbidden                    403 forbidden
    │   └── PolicyDenied             403 policy_denied       federation policy refuses a domain
    ├── NotFound                     404 not_found
    ├── Conflict                     409 conflict
    ├── RateLimited                  429 rate_limited        carries retry_after seconds
    ├── ConfigError                  (start-up only: names the offending key)
    └── Unavailable                  503 unavailable         a remote or a dependency failed

Internal code raises the most precise class; :func:`http_status` and :attr:`PhxError.code` are the only
translation to what a peer sees.
"""

from __future__ import annotations


class PhxError(Exception):
    """Root of every error phx raises on purpose."""

    status: int = 500
    code: str = "internal_error"


class BadRequest(PhxError):
    status = 400
    code = "bad_request"


class DecodeError(BadRequest):
    """Bytes that do not decode as the expected wire struct."""

    code = "decode_error"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "payload_too_large"


class ValidationError(BadRequest):
    """Well-formed input that breaks a protocol rule."""

    code = "invalid"


class MlsError(ValidationError):
    """An MLS message or state that fails RFC 9420 validation."""

    code = "mls_invalid"


class WrongEpoch(MlsError):
    status = 409
    code = "wrong_epoch"


class AuthError(PhxError):
    status = 401
    code = "unauthenticated"


class SignatureError(AuthError):
    code = "bad_signature"


class ExpiredError(AuthError):
    code = "expired"


class TokenError(AuthError):
    code = "bad_token"


class Forbidden(PhxError):
    status = 403
    code = "forbidden"


class PolicyDenied(Forbidden):
    code = "policy_denied"


class NotFound(PhxError):
    status = 404
    code = "not_found"


class Conflict(PhxError):
    status = 409
    code = "conflict"


class RateLimited(PhxError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str = "rate limited", retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigError(PhxError):
    code = "config_error"


class Unavailable(PhxError):
    status = 503
    code = "unavailable"


def http_status(err: PhxError) -> int:
    return err.status
