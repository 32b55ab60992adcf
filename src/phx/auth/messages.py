"""Wire structs of the Authentication Service (book: spec/authentication_service.md and sub-chapters).

Names follow the book. Where the book leaves a type open we chose (docs/decisions.md):

* OPAQUE messages (``OpaqueKe1`` …, ``OpaqueRegistrationRecord``) are ``opaque<V>`` holding opaque-ke's
  serialization (ristretto255, TripleDH, SHA-512, Argon2).
* ``HpkePublicKey``, ``RatchetKey``, ``ConnectionEncryptionKey``, ``AliasAuthKey`` are ``opaque<V>``.
* Every request body is an :class:`AsRequest`: the operation's encoded params, the authentication the
  operation asks for (:class:`ClientCredentialAuth` for Client Credential / Client 2FA, :class:`AliasAuth`
  for the alias auth key) and the Privacy Pass token, as the QS's ``QsClientRequest`` does. Signatures
  cover :class:`AuthTbs` — the AS domain, the operation name, the timestamp and the exact params bytes —
  so a signed request cannot be replayed to another AS, another operation or with other params.
* ``UploadUserIdPackages`` carries full :class:`ConnectionPackage` structs (the AS checks each signature);
  the book's ``Vec<Vec<u8>>`` "ctxt" would leave the AS unable to check anything.
* Token issuance carries the batched-tokens draft's request/response structs.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Annotated, Self

from phx.codec import U64, MaxLen, Reader, Struct, Writer
from phx.credentials import (
    AsCredential,
    ClientCredential,
    ClientCsr,
    CredentialFingerprint,
    ExpirationData,
    IntermediateAsCredential,
)
from phx.errors import DecodeError, ValidationError
from phx.identifiers import ClientId, Fqdn, GroupId, UserId
from phx.privacypass import AmortizedBatchTokenRequest, AmortizedBatchTokenResponse
from phx.queues import QueueMessage

__all__ = [
    "MAX_ALIAS_BYTES",
    "Alias",
    "AliasAuth",
    "AliasClientsParams",
    "AliasClientsResponse",
    "AsCredentialsResponse",
    "AsRequest",
    "AuthTbs",
    "ClientCredentialAuth",
    "ConnectionEstablishmentPackage",
    "ConnectionEstablishmentPackageTbs",
    "ConnectionPackage",
    "ConnectionPackagePayload",
    "ConnectionPackageTbs",
    "DeleteAlias",
    "DeleteClientParams",
    "DeleteUserParams",
    "DequeueAliasMessagesParams",
    "DequeueMessagesParams",
    "DequeueMessagesResponse",
    "Empty",
    "EnqueueAliasMessageParams",
    "EnqueueMessageParams",
    "FinishClientAdditionParams",
    "FinishClientAdditionResponse",
    "FinishUserRegistrationParams",
    "InitClientAdditionParams",
    "InitClientAdditionResponse",
    "InitUserRegistrationParams",
    "InitUserRegistrationResponse",
    "Initiate2FaAuthenticationParams",
    "Initiate2FaAuthenticationResponse",
    "RegisterAlias",
    "RequestToken",
    "TokenKeysResponse",
    "TokenResponse",
    "UpdateUserProfileParams",
    "UploadAliasPackages",
    "UploadUserIdPackages",
    "UserClientsParams",
    "UserClientsResponse",
    "UserProfileParams",
    "UserProfileResponse",
]

#: Longest alias, in UTF-8 bytes.
MAX_ALIAS_BYTES = 256
#: Most connection packages (or payloads) one upload may carry.
MAX_PACKAGES_PER_UPLOAD = 1000


def _alias_problem(value: str) -> str | None:
    if not value:
        return "alias is empty"
    if len(value.encode("utf-8")) > MAX_ALIAS_BYTES:
        return f"alias longer than {MAX_ALIAS_BYTES} bytes"
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        return "alias contains control characters"
    if not unicodedata.is_normalized("NFC", value):
        # Two spellings of one name would be two aliases; clients normalise, the AS only checks.
        return "alias is not in Unicode normalization form C"
    return None


@dataclass(frozen=True, slots=True)
class Alias(Struct):
    """An alias (book: glossary): a UTF-8 string in NFC, 1..256 bytes, no control characters."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str):
            raise ValidationError("Alias must be a str")
        problem = _alias_problem(self.value)
        if problem is not None:
            raise ValidationError(problem)

    def _write(self, w: Writer) -> None:
        w.opaque(self.value.encode("utf-8"))

    @classmethod
    def _read(cls, r: Reader) -> Self:
        raw = r.opaque(MAX_ALIAS_BYTES)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("alias is not UTF-8") from None
        problem = _alias_problem(text)
        if problem is not None:
            raise DecodeError(problem)
        return cls(text)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Empty(Struct):
    """Params of operations that take none (their body is empty)."""


# --- authentication envelopes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthTbs(Struct):
    """What Client Credential and Alias auth key signatures cover."""

    as_domain: Fqdn
    operation: str
    timestamp: Annotated[int, U64]
    params: bytes


@dataclass(frozen=True, slots=True)
class ClientCredentialAuth(Struct):
    client_credential: ClientCredential
    timestamp: Annotated[int, U64]
    signature: bytes


@dataclass(frozen=True, slots=True)
class AliasAuth(Struct):
    """The alias is in the params (every alias operation names it); the key is the one registered."""

    timestamp: Annotated[int, U64]
    signature: bytes


@dataclass(frozen=True, slots=True)
class AsRequest(Struct):
    """The body of every AS call."""

    params: Annotated[bytes, MaxLen(1 << 24)]
    client_auth: ClientCredentialAuth | None
    alias_auth: AliasAuth | None
    privacy_pass_token: Annotated[bytes, MaxLen(256)] | None


# --- connection packages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionPackagePayload(Struct):
    encryption_key: bytes
    lifetime: ExpirationData


@dataclass(frozen=True, slots=True)
class ConnectionPackageTbs(Struct):
    payload: ConnectionPackagePayload
    client_credential: ClientCredential


@dataclass(frozen=True, slots=True)
class ConnectionPackage(Struct):
    payload: ConnectionPackagePayload
    client_credential: ClientCredential
    signature: bytes

    def tbs(self) -> ConnectionPackageTbs:
        return ConnectionPackageTbs(self.payload, self.client_credential)


@dataclass(frozen=True, slots=True)
class ConnectionEstablishmentPackageTbs(Struct):
    sender_client_credential: ClientCredential
    connection_group_id: GroupId
    connection_group_ear_key: bytes
    connection_group_credential_key: bytes


@dataclass(frozen=True, slots=True)
class ConnectionEstablishmentPackage(Struct):
    sender_client_credential: ClientCredential
    connection_group_id: GroupId
    connection_group_ear_key: bytes
    connection_group_credential_key: bytes
    signature: bytes

    def tbs(self) -> ConnectionEstablishmentPackageTbs:
        return ConnectionEstablishmentPackageTbs(
            self.sender_client_credential,
            self.connection_group_id,
            self.connection_group_ear_key,
            self.connection_group_credential_key,
        )


# --- registration, client addition, 2FA --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InitUserRegistrationParams(Struct):
    client_csr: ClientCsr
    opaque_registration_request: bytes


@dataclass(frozen=True, slots=True)
class InitUserRegistrationResponse(Struct):
    client_credential: ClientCredential
    opaque_registration_response: bytes


@dataclass(frozen=True, slots=True)
class FinishUserRegistrationParams(Struct):
    queue_encryption_key: bytes
    initial_queue_ratchet_key: bytes
    connection_packages: Annotated[tuple[ConnectionPackage, ...], MaxLen(MAX_PACKAGES_PER_UPLOAD)]
    opaque_registration_record: bytes


@dataclass(frozen=True, slots=True)
class Initiate2FaAuthenticationParams(Struct):
    opaque_ke1: bytes


@dataclass(frozen=True, slots=True)
class Initiate2FaAuthenticationResponse(Struct):
    opaque_ke2: bytes


@dataclass(frozen=True, slots=True)
class InitClientAdditionParams(Struct):
    """Client Password: the new client's CSR (naming its user) and the first OPAQUE login message."""

    client_csr: ClientCsr
    opaque_ke1: bytes


@dataclass(frozen=True, slots=True)
class InitClientAdditionResponse(Struct):
    opaque_ke2: bytes


@dataclass(frozen=True, slots=True)
class FinishClientAdditionParams(Struct):
    client_id: ClientId
    opaque_ke3: bytes
    queue_encryption_key: bytes
    initial_queue_ratchet_key: bytes


@dataclass(frozen=True, slots=True)
class FinishClientAdditionResponse(Struct):
    client_credential: ClientCredential


@dataclass(frozen=True, slots=True)
class DeleteClientParams(Struct):
    """Client 2FA: remove ``client_id`` (the caller itself or another client of the same user)."""

    client_id: ClientId
    opaque_ke3: bytes


@dataclass(frozen=True, slots=True)
class DeleteUserParams(Struct):
    opaque_ke3: bytes


# --- profiles ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpdateUserProfileParams(Struct):
    new_user_profile: bytes


@dataclass(frozen=True, slots=True)
class UserProfileParams(Struct):
    user_id: UserId


@dataclass(frozen=True, slots=True)
class UserProfileResponse(Struct):
    user_profile: bytes


# --- connection packages by user id ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UploadUserIdPackages(Struct):
    connection_packages: Annotated[tuple[ConnectionPackage, ...], MaxLen(MAX_PACKAGES_PER_UPLOAD)]


@dataclass(frozen=True, slots=True)
class UserClientsParams(Struct):
    user_id: UserId


@dataclass(frozen=True, slots=True)
class UserClientsResponse(Struct):
    connection_package: ConnectionPackage


# --- direct queues -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DequeueMessagesParams(Struct):
    sequence_number_start: Annotated[int, U64]
    max_message_number: Annotated[int, U64]


@dataclass(frozen=True, slots=True)
class DequeueMessagesResponse(Struct):
    """Ratcheted queue items (phx.queues) and how many more are waiting after them."""

    messages: tuple[QueueMessage, ...]
    remaining_messages_number: Annotated[int, U64]


@dataclass(frozen=True, slots=True)
class EnqueueMessageParams(Struct):
    client_id: ClientId
    connection_establishment_ctxt: bytes


# --- AS credentials ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AsCredentialsResponse(Struct):
    as_credentials: tuple[AsCredential, ...]
    as_intermediate_credentials: tuple[IntermediateAsCredential, ...]
    revoked_certs: tuple[CredentialFingerprint, ...]


# --- aliases -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterAlias(Struct):
    alias: Alias
    alias_auth_key: bytes
    queue_encryption_key: bytes
    initial_queue_ratchet_key: bytes


@dataclass(frozen=True, slots=True)
class DeleteAlias(Struct):
    alias: Alias


@dataclass(frozen=True, slots=True)
class DequeueAliasMessagesParams(Struct):
    alias: Alias
    sequence_number_start: Annotated[int, U64]
    max_message_number: Annotated[int, U64]


@dataclass(frozen=True, slots=True)
class EnqueueAliasMessageParams(Struct):
    alias: Alias
    connection_establishment_ctxt: bytes


@dataclass(frozen=True, slots=True)
class UploadAliasPackages(Struct):
    alias: Alias
    connection_packages: Annotated[tuple[ConnectionPackagePayload, ...], MaxLen(MAX_PACKAGES_PER_UPLOAD)]


@dataclass(frozen=True, slots=True)
class AliasClientsParams(Struct):
    alias: Alias


@dataclass(frozen=True, slots=True)
class AliasClientsResponse(Struct):
    connection_package: ConnectionPackagePayload


# --- Privacy Pass ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestToken(Struct):
    token_request: AmortizedBatchTokenRequest


@dataclass(frozen=True, slots=True)
class TokenResponse(Struct):
    token_response: AmortizedBatchTokenResponse


@dataclass(frozen=True, slots=True)
class TokenKeysResponse(Struct):
    """The issuer keys tokens are issued under now, and the last second they are used for issuance:
    ``public_key`` for clients of this homeserver, ``federated_public_key`` for clients of other
    homeservers (a client verifies the issuance proof under the key of its class, :meth:`key_for`)."""

    public_key: bytes
    federated_public_key: bytes
    not_after: Annotated[int, U64]

    def key_for(self, client_domain: Fqdn, as_domain: Fqdn) -> bytes:
        """The key ``as.<as_domain>`` issues to a client of ``client_domain`` under."""
        return self.public_key if client_domain == as_domain else self.federated_public_key
