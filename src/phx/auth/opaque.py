"""OPAQUE (RFC 9807) through ``opaque_ke_py``: ristretto255 OPRF, TripleDH, SHA-512, Argon2.

Server functions map the library's ``ValueError`` to our tree: a message that does not parse is a
:class:`~phx.errors.ValidationError`, a failed login (wrong password, replayed or forged KE3) an
:class:`OpaqueAuthError`. The client functions (for the client library and the tests) keep the password
on the client; only the messages below ever travel.

The OPAQUE credential identifier is the encoding of the :class:`~phx.identifiers.UserId`, so a password
file is bound to its user id. ``opaque_ke_py`` fixes the Argon2 parameters (about 50 ms per client-side
finish step); it offers no cheaper test setting, so tests pay that cost per OPAQUE flow.
"""

from __future__ import annotations

from dataclasses import dataclass

import opaque_ke_py as ok

from phx.errors import AuthError, ValidationError
from phx.identifiers import UserId

__all__ = [
    "ClientLogin",
    "ClientRegistration",
    "OpaqueAuthError",
    "ServerSetup",
    "client_login_finish",
    "client_login_start",
    "client_registration_finish",
    "client_registration_start",
    "load_server_setup",
    "new_server_setup",
    "server_login_finish",
    "server_login_start",
    "server_registration_finish",
    "server_registration_start",
]

ServerSetup = ok.ServerSetupData


class OpaqueAuthError(AuthError):
    code = "password_authentication_failed"


def new_server_setup() -> bytes:
    """A fresh OPRF seed and server key pair, serialized (stored once per AS)."""
    return bytes(ok.server_setup().to_bytes())


def load_server_setup(data: bytes) -> ServerSetup:
    return ok.ServerSetupData.from_bytes(data)


def _identifier(user_id: UserId) -> bytes:
    return user_id.encode()


# --- server ------------------------------------------------------------------------------------------


def server_registration_start(setup: ServerSetup, request: bytes, user_id: UserId) -> bytes:
    try:
        return bytes(ok.server_registration_start(setup, request, _identifier(user_id)).get_message())
    except ValueError:
        raise ValidationError("malformed OPAQUE registration request") from None


def server_registration_finish(record: bytes) -> bytes:
    """Check a registration record (RFC 9807 RegistrationRecord) and return the password file to store."""
    try:
        return bytes(ok.server_registration_finish(record).get_password_file())
    except ValueError:
        raise ValidationError("malformed OPAQUE registration record") from None


def server_login_start(
    setup: ServerSetup, password_file: bytes, ke1: bytes, user_id: UserId
) -> tuple[bytes, bytes]:
    """Returns ``(ke2, server state)``; the state is kept until KE3 arrives."""
    try:
        result = ok.server_login_start(setup, password_file, ke1, _identifier(user_id))
    except ValueError:
        raise ValidationError("malformed OPAQUE KE1") from None
    return bytes(result.get_message()), bytes(result.get_state())


def server_login_finish(state: bytes, ke3: bytes) -> bytes:
    """Check KE3 against the stored state; returns the session key, raises OpaqueAuthError."""
    try:
        return bytes(ok.server_login_finish(state, ke3).get_session_key())
    except ValueError:
        raise OpaqueAuthError("OPAQUE login failed (wrong password or stale login)") from None


# --- client ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientRegistration:
    request: bytes
    state: bytes


@dataclass(frozen=True, slots=True)
class ClientLogin:
    ke1: bytes
    state: bytes


def client_registration_start(password: bytes) -> ClientRegistration:
    r = ok.client_registration_start(password)
    return ClientRegistration(bytes(r.get_message()), bytes(r.get_state()))


def client_registration_finish(password: bytes, registration: ClientRegistration, response: bytes) -> bytes:
    """Returns the registration record to upload."""
    try:
        return bytes(ok.client_registration_finish(password, registration.state, response).get_message())
    except ValueError:
        raise ValidationError("malformed OPAQUE registration response") from None


def client_login_start(password: bytes) -> ClientLogin:
    r = ok.client_login_start(password)
    return ClientLogin(bytes(r.get_message()), bytes(r.get_state()))


def client_login_finish(password: bytes, login: ClientLogin, ke2: bytes) -> bytes:
    """Returns KE3; raises OpaqueAuthError when the password is wrong (or the server is not ours)."""
    try:
        return bytes(ok.client_login_finish(password, login.state, ke2).get_message())
    except ValueError:
        raise OpaqueAuthError("OPAQUE login failed: wrong password or not the expected server") from None
