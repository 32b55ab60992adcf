"""The AS's pure rules: which operation needs which authentication, and every check on a request.

Nothing here does I/O or reads a clock; ``now`` is passed in. The service (:mod:`phx.auth.service`) loads
state from the store, calls these functions and writes the result back.

Operations (``POST /as/v1/<name>``) and their authentication, from the book's chapter; "token" means a
Privacy Pass token is required (``Authorization: PrivateToken``):

=====================================  ==================  =====  =====================================
operation                              authentication      token  note
=====================================  ==================  =====  =====================================
init_user_registration                 None                no     book: exempt
finish_user_registration               pending credential  no     no client entry yet → no tokens yet
initiate_2fa_authentication            Client Credential   yes
init_client_addition                   Client Password     no     a new device has no tokens yet
finish_client_addition                 Client Password     no
delete_client                          Client 2FA          yes
delete_user                            Client 2FA          yes
update_user_profile                    Client Credential   yes
fetch_user_profile                     None                yes
upload_user_id_connection_packages     Client Credential   yes
get_user_id_connection_package         None                yes
dequeue_messages                       Client Credential   yes
enqueue_message                        None                yes
get_as_credentials                     None                no     needed before any token exists
register_alias                         None                yes
delete_alias                           Alias auth key      yes
dequeue_alias_messages                 Alias auth key      yes
enqueue_alias_message                  None                yes
upload_alias_connection_packages       Alias auth key      yes
get_alias_connection_package           None                yes
request_tokens                         Client Credential   no     book: exempt; remote clients too
get_token_keys                         None                no     both issuer keys, fetched anonymously
=====================================  ==================  =====  =====================================
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from phx.codec import Struct
from phx.credentials import (
    DEFAULT_CREDENTIAL_CIPHERSUITE,
    ClientCredential,
    ClientCsr,
    CsrError,
    verify_client_csr,
)
from phx.errors import ExpiredError, RateLimited, SignatureError, ValidationError
from phx.identifiers import Fqdn

from .messages import (
    AliasAuth,
    AliasClientsParams,
    AuthTbs,
    ClientCredentialAuth,
    ConnectionPackage,
    ConnectionPackagePayload,
    DeleteAlias,
    DeleteClientParams,
    DeleteUserParams,
    DequeueAliasMessagesParams,
    DequeueMessagesParams,
    Empty,
    EnqueueAliasMessageParams,
    EnqueueMessageParams,
    FinishClientAdditionParams,
    FinishUserRegistrationParams,
    InitClientAdditionParams,
    Initiate2FaAuthenticationParams,
    InitUserRegistrationParams,
    RegisterAlias,
    RequestToken,
    UpdateUserProfileParams,
    UploadAliasPackages,
    UploadUserIdPackages,
    UserClientsParams,
    UserProfileParams,
)

__all__ = [
    "LABEL_ALIAS_AUTH",
    "LABEL_CLIENT_AUTH",
    "LABEL_CONNECTION_ESTABLISHMENT",
    "LABEL_CONNECTION_PACKAGE",
    "MAX_CONNECTION_ESTABLISHMENT_CTXT",
    "MAX_ENCRYPTION_KEY",
    "MAX_USER_PROFILE",
    "OPERATIONS",
    "AuthMode",
    "Operation",
    "StoredPackage",
    "auth_tbs",
    "check_alias_auth_key",
    "check_connection_package",
    "check_csr",
    "check_login_failures",
    "check_payload",
    "check_queue_keys",
    "check_timestamp",
    "choose_package",
    "frame_end",
    "tokens_after_charge",
    "verify_alias_request",
    "verify_client_request",
]

LABEL_CLIENT_AUTH = b"AsClientAuth"
LABEL_ALIAS_AUTH = b"AsAliasAuth"
LABEL_CONNECTION_PACKAGE = b"ConnectionPackageTbs"
LABEL_CONNECTION_ESTABLISHMENT = b"ConnectionEstablishmentPackageTbs"

#: Size limits on opaque fields (the request body limit bounds everything else).
MAX_USER_PROFILE = 64 * 1024
MAX_CONNECTION_ESTABLISHMENT_CTXT = 64 * 1024
MAX_ENCRYPTION_KEY = 256
ALIAS_AUTH_KEY_SIZE = 32  # Ed25519, the scheme of the default credential ciphersuite
#: Online password guessing: at most this many failed OPAQUE logins per user and window, then 429.
MAX_LOGIN_FAILURES = 10
LOGIN_FAILURE_WINDOW = 3600


class AuthMode(enum.Enum):
    NONE = "none"
    CLIENT_CREDENTIAL = "client_credential"
    CLIENT_PASSWORD = "client_password"
    CLIENT_2FA = "client_2fa"
    PENDING_CLIENT = "pending_client"
    ALIAS = "alias_auth_key"


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    params: type[Struct]
    auth: AuthMode
    token: bool


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("init_user_registration", InitUserRegistrationParams, AuthMode.NONE, False),
        Operation("finish_user_registration", FinishUserRegistrationParams, AuthMode.PENDING_CLIENT, False),
        Operation(
            "initiate_2fa_authentication", Initiate2FaAuthenticationParams, AuthMode.CLIENT_CREDENTIAL, True
        ),
        Operation("init_client_addition", InitClientAdditionParams, AuthMode.CLIENT_PASSWORD, False),
        Operation("finish_client_addition", FinishClientAdditionParams, AuthMode.CLIENT_PASSWORD, False),
        Operation("delete_client", DeleteClientParams, AuthMode.CLIENT_2FA, True),
        Operation("delete_user", DeleteUserParams, AuthMode.CLIENT_2FA, True),
        Operation("update_user_profile", UpdateUserProfileParams, AuthMode.CLIENT_CREDENTIAL, True),
        Operation("fetch_user_profile", UserProfileParams, AuthMode.NONE, True),
        Operation(
            "upload_user_id_connection_packages", UploadUserIdPackages, AuthMode.CLIENT_CREDENTIAL, True
        ),
        Operation("get_user_id_connection_package", UserClientsParams, AuthMode.NONE, True),
        Operation("dequeue_messages", DequeueMessagesParams, AuthMode.CLIENT_CREDENTIAL, True),
        Operation("enqueue_message", EnqueueMessageParams, AuthMode.NONE, True),
        Operation("get_as_credentials", Empty, AuthMode.NONE, False),
        Operation("register_alias", RegisterAlias, AuthMode.NONE, True),
        Operation("delete_alias", DeleteAlias, AuthMode.ALIAS, True),
        Operation("dequeue_alias_messages", DequeueAliasMessagesParams, AuthMode.ALIAS, True),
        Operation("enqueue_alias_message", EnqueueAliasMessageParams, AuthMode.NONE, True),
        Operation("upload_alias_connection_packages", UploadAliasPackages, AuthMode.ALIAS, True),
        Operation("get_alias_connection_package", AliasClientsParams, AuthMode.NONE, True),
        Operation("request_tokens", RequestToken, AuthMode.CLIENT_CREDENTIAL, False),
        Operation("get_token_keys", Empty, AuthMode.NONE, False),
    )
}


# --- request authentication --------------------------------------------------------------------------


def check_timestamp(timestamp: int, now: int, *, max_age: int, max_skew: int) -> None:
    """A signed timestamp must be at most ``max_age`` old and at most ``max_skew`` in the future."""
    if timestamp > now + max_skew:
        raise ExpiredError("request timestamp lies in the future")
    if timestamp + max_age < now:
        raise ExpiredError("request timestamp is too old")


def auth_tbs(domain: Fqdn, operation: str, timestamp: int, params: bytes) -> bytes:
    return AuthTbs(domain, operation, timestamp, params).encode()


def verify_client_request(
    auth: ClientCredentialAuth,
    params: bytes,
    *,
    domain: Fqdn,
    operation: str,
    now: int,
    max_age: int,
    max_skew: int,
) -> ClientCredential:
    """Check the signature and timestamp of a Client Credential request; returns the (still unverified)
    credential. Its chain and its registration are the caller's next checks."""
    check_timestamp(auth.timestamp, now, max_age=max_age, max_skew=max_skew)
    cred = auth.client_credential
    suite = cred.payload.credential_ciphersuite
    tbs = auth_tbs(domain, operation, auth.timestamp, params)
    if not suite.verify(cred.public_key, LABEL_CLIENT_AUTH, tbs, auth.signature):
        raise SignatureError("request signature does not verify under the client credential")
    return cred


def verify_alias_request(
    auth: AliasAuth,
    params: bytes,
    auth_key: bytes,
    *,
    domain: Fqdn,
    operation: str,
    now: int,
    max_age: int,
    max_skew: int,
) -> None:
    check_timestamp(auth.timestamp, now, max_age=max_age, max_skew=max_skew)
    tbs = auth_tbs(domain, operation, auth.timestamp, params)
    if not DEFAULT_CREDENTIAL_CIPHERSUITE.verify(auth_key, LABEL_ALIAS_AUTH, tbs, auth.signature):
        raise SignatureError("request signature does not verify under the alias auth key")


# --- credentials and keys ----------------------------------------------------------------------------


def check_csr(csr: ClientCsr, *, domain: Fqdn, now: int, max_skew: int, max_lifetime: int) -> None:
    """A CSR this AS may sign: self-signed, for this domain, a sane period that covers ``now``."""
    verify_client_csr(csr, domain=domain, max_lifetime=max_lifetime)
    exp = csr.payload.expiration_data
    if exp.not_after < now:
        raise CsrError("client CSR's validity period has already ended")
    if exp.not_before > now + max_skew:
        raise CsrError("client CSR's validity period starts in the future")


def check_alias_auth_key(key: bytes) -> None:
    if len(key) != ALIAS_AUTH_KEY_SIZE:
        raise ValidationError(f"alias auth key must be a {ALIAS_AUTH_KEY_SIZE}-byte Ed25519 public key")


def check_queue_keys(queue_encryption_key: bytes, initial_ratchet_key: bytes) -> None:
    if not 0 < len(queue_encryption_key) <= MAX_ENCRYPTION_KEY:
        raise ValidationError("queue encryption key is empty or too long")
    if not 0 < len(initial_ratchet_key) <= MAX_ENCRYPTION_KEY:
        raise ValidationError("initial queue ratchet key is empty or too long")


# --- connection packages -----------------------------------------------------------------------------


def check_payload(payload: ConnectionPackagePayload, now: int) -> None:
    if not 0 < len(payload.encryption_key) <= MAX_ENCRYPTION_KEY:
        raise ValidationError("connection encryption key is empty or too long")
    lifetime = payload.lifetime
    if lifetime.not_before > lifetime.not_after:
        raise ValidationError("connection package has an empty lifetime")
    if lifetime.not_after < now:
        raise ValidationError("connection package has already expired")


def check_connection_package(package: ConnectionPackage, owner: ClientCredential, now: int) -> None:
    """A package uploaded under a user id: the uploader's own credential, its signature, a live lifetime
    within the credential's."""
    if package.client_credential != owner:
        raise ValidationError("connection package carries another client credential than the uploader's")
    suite = owner.payload.credential_ciphersuite
    if not suite.verify(
        owner.public_key, LABEL_CONNECTION_PACKAGE, package.tbs().encode(), package.signature
    ):
        raise SignatureError("connection package signature does not verify")
    check_payload(package.payload, now)
    if not owner.expiration_data.contains(package.payload.lifetime):
        raise ValidationError("connection package outlives its client credential")


@dataclass(frozen=True, slots=True)
class StoredPackage:
    id: int
    owner: str
    not_after: int


def choose_package(packages: Sequence[StoredPackage], now: int) -> tuple[StoredPackage, bool] | None:
    """The package to hand out and whether it is consumed.

    Each owner (client, or alias) keeps its last live package as a last resort: it is handed out without
    being consumed. Packages of owners with spares go first, oldest first, so one client's last resort is
    not reused while another client still has fresh packages.
    """
    live = [p for p in packages if p.not_after >= now]
    if not live:
        return None
    counts = Counter(p.owner for p in live)
    spare = [p for p in live if counts[p.owner] > 1]
    if spare:
        return min(spare, key=lambda p: p.id), True
    return min(live, key=lambda p: p.id), False


# --- token allowance ---------------------------------------------------------------------------------


def check_login_failures(failures: int, window_start: int | None, now: int) -> None:
    """Refuse a new password login while the user's failures in the current window reached the maximum."""
    if window_start is None or now >= window_start + LOGIN_FAILURE_WINDOW:
        return
    if failures >= MAX_LOGIN_FAILURES:
        raise RateLimited(
            "too many failed password logins for this user; try again later",
            retry_after=window_start + LOGIN_FAILURE_WINDOW - now,
        )


def frame_end(now: int, frame: int) -> int:
    """First second of the next time frame."""
    return (now // frame + 1) * frame


def tokens_after_charge(
    issued: int,
    record_epoch: int | None,
    *,
    epoch: int,
    requested: int,
    allowance: int,
    now: int,
    frame: int,
    scope: str = "this client",
) -> int:
    """The new issued count for this frame, or RateLimited (retry at the next frame)."""
    current = issued if record_epoch == epoch else 0
    if current + requested > allowance:
        left = max(0, allowance - current)
        raise RateLimited(
            f"token allowance of {scope} exhausted: {left} of {allowance} left in this time frame, "
            f"{requested} requested",
            retry_after=frame_end(now, frame) - now,
        )
    return current + requested
