"""Client-side helpers for talking to an AS: request envelopes, signed connection packages.

Pure functions over the wire structs of :mod:`phx.auth.messages`; the HTTP transport is the caller's.
OPAQUE client steps are in :mod:`phx.auth.opaque`, Privacy Pass client steps in :mod:`phx.privacypass`.
"""

from __future__ import annotations

from phx.codec import Struct
from phx.credentials import DEFAULT_CREDENTIAL_CIPHERSUITE, ClientCredential
from phx.errors import SignatureError
from phx.identifiers import Fqdn, GroupId

from .core import (
    LABEL_ALIAS_AUTH,
    LABEL_CLIENT_AUTH,
    LABEL_CONNECTION_ESTABLISHMENT,
    LABEL_CONNECTION_PACKAGE,
    auth_tbs,
)
from .messages import (
    AliasAuth,
    AsRequest,
    ClientCredentialAuth,
    ConnectionEstablishmentPackage,
    ConnectionEstablishmentPackageTbs,
    ConnectionPackage,
    ConnectionPackagePayload,
    ConnectionPackageTbs,
)

__all__ = [
    "alias_request",
    "client_request",
    "plain_request",
    "sign_connection_establishment_package",
    "sign_connection_package",
    "verify_connection_establishment_package",
]


def plain_request(params: Struct, *, token: bytes | None = None) -> AsRequest:
    """A request for an operation without client or alias authentication."""
    return AsRequest(params.encode(), None, None, token)


def client_request(
    operation: str,
    params: Struct,
    *,
    as_domain: Fqdn,
    credential: ClientCredential,
    private_key: bytes,
    now: int,
    token: bytes | None = None,
) -> AsRequest:
    """A Client Credential (or, with the OPAQUE KE3 in the params, Client 2FA) request."""
    encoded = params.encode()
    suite = credential.payload.credential_ciphersuite
    sig = suite.sign(private_key, LABEL_CLIENT_AUTH, auth_tbs(as_domain, operation, now, encoded))
    return AsRequest(encoded, ClientCredentialAuth(credential, now, sig), None, token)


def alias_request(
    operation: str,
    params: Struct,
    *,
    as_domain: Fqdn,
    alias_private_key: bytes,
    now: int,
    token: bytes | None = None,
) -> AsRequest:
    """A request authenticated with the alias auth key (Ed25519)."""
    encoded = params.encode()
    tbs = auth_tbs(as_domain, operation, now, encoded)
    sig = DEFAULT_CREDENTIAL_CIPHERSUITE.sign(alias_private_key, LABEL_ALIAS_AUTH, tbs)
    return AsRequest(encoded, None, AliasAuth(now, sig), token)


def sign_connection_package(
    payload: ConnectionPackagePayload, credential: ClientCredential, private_key: bytes
) -> ConnectionPackage:
    tbs = ConnectionPackageTbs(payload, credential).encode()
    sig = credential.payload.credential_ciphersuite.sign(private_key, LABEL_CONNECTION_PACKAGE, tbs)
    return ConnectionPackage(payload, credential, sig)


def sign_connection_establishment_package(
    credential: ClientCredential,
    private_key: bytes,
    group_id: GroupId,
    group_ear_key: bytes,
    group_credential_key: bytes,
) -> ConnectionEstablishmentPackage:
    tbs = ConnectionEstablishmentPackageTbs(credential, group_id, group_ear_key, group_credential_key)
    sig = credential.payload.credential_ciphersuite.sign(
        private_key, LABEL_CONNECTION_ESTABLISHMENT, tbs.encode()
    )
    return ConnectionEstablishmentPackage(credential, group_id, group_ear_key, group_credential_key, sig)


def verify_connection_establishment_package(package: ConnectionEstablishmentPackage) -> None:
    """The sender's signature (the credential's chain is checked separately against its AS)."""
    cred = package.sender_client_credential
    suite = cred.payload.credential_ciphersuite
    if not suite.verify(
        cred.public_key, LABEL_CONNECTION_ESTABLISHMENT, package.tbs().encode(), package.signature
    ):
        raise SignatureError("connection establishment package signature does not verify")
