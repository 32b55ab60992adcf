"""Phoenix credentials and their chains (book: spec/authentication_service/credentials.md).

Chain: :class:`AsCredential` (self-signed root, long-lived) → :class:`IntermediateAsCredential` →
:class:`ClientCredential` → (per-group) :class:`LeafCredential`.

Every credential type has its own payload struct and its own signature labels, so a signature made for
one type or role never verifies as another (confusion attacks, book §"Credential Signing"):

=====================================  ===============================================================
label (after ``"phx 1.0 "``)            signed by / over
=====================================  ===============================================================
``AsCredentialPayload``                 AS key, self-signature over :class:`AsCredentialPayload`
``IntermediateAsCredentialPayload``     intermediate key, self-signature (the intermediate's CSR)
``IntermediateAsCredentialSelfSignedPayload``  AS key, over the intermediate's CSR
``ClientCredentialPayload``             client key, self-signature (the client's CSR)
``ClientCredentialSelfSignedPayload``   intermediate key, over the client's CSR
``LeafCredentialPayload``               client key, over a :class:`LeafCredentialPayload`
=====================================  ===============================================================

A credential's fingerprint is the hash (its own :class:`CredentialCiphersuite` hash) of its full
encoding, signatures included. Validity periods are inclusive ``[not_before, not_after]`` in Unix
seconds; a signed credential's period must lie within its signer's.

Nothing here does I/O or reads a clock: verification takes ``now``, the revocation list and the candidate
signer credentials as arguments, so the caller decides where keys come from (local keyring, a remote AS).

Errors: a bad signature is :class:`~phx.errors.SignatureError`; ``now`` outside a validity period is
:class:`~phx.errors.ExpiredError`; other chain failures are :class:`CredentialError` (revocation:
:class:`RevokedCredential`); an AS refusing to sign a CSR raises :class:`CsrError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from phx.codec import U8, U64, Struct, WireEnum
from phx.crypto import PHX_PREFIX, SUITE_1, CipherSuite
from phx.errors import AuthError, ExpiredError, PhxError, SignatureError, ValidationError
from phx.identifiers import ClientId, Fqdn

__all__ = [
    "DEFAULT_CREDENTIAL_CIPHERSUITE",
    "LABEL_AS_PAYLOAD",
    "LABEL_CLIENT_PAYLOAD",
    "LABEL_CLIENT_SIGNED",
    "LABEL_INTERMEDIATE_PAYLOAD",
    "LABEL_INTERMEDIATE_SIGNED",
    "LABEL_LEAF_PAYLOAD",
    "AsCredential",
    "AsCredentialPayload",
    "ClientCredential",
    "ClientCredentialPayload",
    "ClientCsr",
    "CredentialCiphersuite",
    "CredentialError",
    "CredentialFingerprint",
    "CsrError",
    "ExpirationData",
    "HashAlgorithm",
    "IntermediateAsCredential",
    "IntermediateAsCredentialPayload",
    "IntermediateAsCsr",
    "LeafCredential",
    "LeafCredentialPayload",
    "RevokedCredential",
    "SignatureScheme",
    "VerifiedClientChain",
    "create_intermediate_credential",
    "issue_client_credential",
    "issue_intermediate_credential",
    "new_as_credential",
    "new_client_csr",
    "new_intermediate_csr",
    "sign_leaf_credential",
    "verify_as_credential",
    "verify_client_credential",
    "verify_client_csr",
    "verify_intermediate_credential",
    "verify_leaf_credential",
]

LABEL_AS_PAYLOAD = b"AsCredentialPayload"
LABEL_INTERMEDIATE_PAYLOAD = b"IntermediateAsCredentialPayload"
LABEL_INTERMEDIATE_SIGNED = b"IntermediateAsCredentialSelfSignedPayload"
LABEL_CLIENT_PAYLOAD = b"ClientCredentialPayload"
LABEL_CLIENT_SIGNED = b"ClientCredentialSelfSignedPayload"
LABEL_LEAF_PAYLOAD = b"LeafCredentialPayload"


class CredentialError(AuthError):
    """A credential chain that does not verify for a reason other than a signature or the clock."""

    code = "bad_credential"


class RevokedCredential(CredentialError):
    code = "revoked"


class CsrError(ValidationError):
    """An AS refuses to sign a certificate signing request."""

    code = "bad_csr"


# --- primitives --------------------------------------------------------------------------------------


class HashAlgorithm(WireEnum):
    """TLS HashAlgorithm code points (RFC 5246 §7.4.1.4.1), uint8."""

    __wire_width__ = U8
    SHA256 = 4
    SHA384 = 5
    SHA512 = 6

    def digest(self, data: bytes) -> bytes:
        return hashlib.new(self.name.lower(), data).digest()


class SignatureScheme(WireEnum):
    """TLS SignatureScheme code points (as in MLS), uint16. Only Ed25519 is implemented."""

    ED25519 = 0x0807


# The signing primitive of each scheme; SignWithLabel itself is CipherSuite's, with the Phoenix prefix.
_SIGNERS: dict[SignatureScheme, CipherSuite] = {SignatureScheme.ED25519: SUITE_1}


@dataclass(frozen=True, slots=True)
class CredentialCiphersuite(Struct):
    hash: HashAlgorithm
    signature_scheme: SignatureScheme

    def _signer(self) -> CipherSuite:
        return _SIGNERS[self.signature_scheme]

    def generate_key_pair(self) -> tuple[bytes, bytes]:
        return self._signer().generate_signature_key_pair()

    def public_key(self, private_key: bytes) -> bytes:
        return self._signer().signature_public_key(private_key)

    def sign(self, private_key: bytes, label: bytes, content: bytes) -> bytes:
        return self._signer().sign_with_label(private_key, label, content, prefix=PHX_PREFIX)

    def verify(self, public_key: bytes, label: bytes, content: bytes, signature: bytes) -> bool:
        return self._signer().verify_with_label(public_key, label, content, signature, prefix=PHX_PREFIX)


DEFAULT_CREDENTIAL_CIPHERSUITE = CredentialCiphersuite(HashAlgorithm.SHA256, SignatureScheme.ED25519)


@dataclass(frozen=True, slots=True)
class ExpirationData(Struct):
    """Validity period, inclusive at both ends, in seconds since the Unix epoch."""

    not_before: Annotated[int, U64]
    not_after: Annotated[int, U64]

    @classmethod
    def starting(cls, now: int, lifetime: int) -> ExpirationData:
        return cls(now, now + lifetime)

    def is_valid_at(self, now: int) -> bool:
        return self.not_before <= now <= self.not_after

    def contains(self, inner: ExpirationData) -> bool:
        return self.not_before <= inner.not_before and inner.not_after <= self.not_after

    @property
    def lifetime(self) -> int:
        return self.not_after - self.not_before


@dataclass(frozen=True, slots=True, order=True)
class CredentialFingerprint(Struct):
    value: bytes

    def hex(self) -> str:
        return self.value.hex()


def _fingerprint(suite: CredentialCiphersuite, encoded: bytes) -> CredentialFingerprint:
    return CredentialFingerprint(suite.hash.digest(encoded))


# --- AS credential -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AsCredentialPayload(Struct):
    as_domain: Fqdn
    expiration_data: ExpirationData
    credential_ciphersuite: CredentialCiphersuite
    public_key: bytes


@dataclass(frozen=True, slots=True)
class AsCredential(Struct):
    """The root: self-signed only (there is no higher credential to sign it)."""

    payload: AsCredentialPayload
    self_signature: bytes

    @property
    def domain(self) -> Fqdn:
        return self.payload.as_domain

    @property
    def expiration_data(self) -> ExpirationData:
        return self.payload.expiration_data

    def fingerprint(self) -> CredentialFingerprint:
        return _fingerprint(self.payload.credential_ciphersuite, self.encode())


# --- intermediate AS credential ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntermediateAsCredentialPayload(Struct):
    expiration_data: ExpirationData
    credential_ciphersuite: CredentialCiphersuite
    public_key: bytes
    signer_fingerprint: CredentialFingerprint


@dataclass(frozen=True, slots=True)
class IntermediateAsCsr(Struct):
    """``IntermediateAsCredentialSelfSignedPayload``: what the AS root key signs."""

    payload: IntermediateAsCredentialPayload
    self_signature: bytes


@dataclass(frozen=True, slots=True)
class IntermediateAsCredential(Struct):
    signed_payload: IntermediateAsCsr
    signature: bytes

    @property
    def payload(self) -> IntermediateAsCredentialPayload:
        return self.signed_payload.payload

    @property
    def expiration_data(self) -> ExpirationData:
        return self.payload.expiration_data

    def fingerprint(self) -> CredentialFingerprint:
        return _fingerprint(self.payload.credential_ciphersuite, self.encode())


# --- client credential -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientCredentialPayload(Struct):
    client_id: ClientId
    expiration_data: ExpirationData
    credential_ciphersuite: CredentialCiphersuite
    public_key: bytes
    signer_fingerprint: CredentialFingerprint


@dataclass(frozen=True, slots=True)
class ClientCsr(Struct):
    """``ClientCredentialSelfSignedPayload``: the client's certificate signing request."""

    payload: ClientCredentialPayload
    self_signature: bytes


@dataclass(frozen=True, slots=True)
class ClientCredential(Struct):
    signed_payload: ClientCsr
    signature: bytes

    @property
    def payload(self) -> ClientCredentialPayload:
        return self.signed_payload.payload

    @property
    def client_id(self) -> ClientId:
        return self.payload.client_id

    @property
    def public_key(self) -> bytes:
        return self.payload.public_key

    @property
    def expiration_data(self) -> ExpirationData:
        return self.payload.expiration_data

    def fingerprint(self) -> CredentialFingerprint:
        return _fingerprint(self.payload.credential_ciphersuite, self.encode())


# --- leaf credential ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeafCredentialPayload(Struct):
    """The pseudonymous per-group credential; ``signer_fingerprint`` names the client credential."""

    identity: bytes
    expiration_data: ExpirationData
    credential_ciphersuite: CredentialCiphersuite
    public_key: bytes
    signer_fingerprint: CredentialFingerprint


@dataclass(frozen=True, slots=True)
class LeafCredential(Struct):
    """A leaf payload with the client credential's signature, encrypted under the signature encryption
    key (book: glossary, "Signature encryption key"). The encoding equals the book's flat struct."""

    payload: LeafCredentialPayload
    encrypted_signature: bytes


# --- shared checks -----------------------------------------------------------------------------------


def _check_key(suite: CredentialCiphersuite, private_key: bytes, public_key: bytes, what: str) -> None:
    # A mismatch is an operator/programming error, never bad input from a peer.
    if suite.public_key(private_key) != public_key:
        raise PhxError(f"private key does not match the {what} credential's public key")


def _check_signature(
    suite: CredentialCiphersuite, public_key: bytes, label: bytes, content: bytes, sig: bytes, what: str
) -> None:
    if not suite.verify(public_key, label, content, sig):
        raise SignatureError(f"invalid {what}")


def _check_period(exp: ExpirationData, what: str) -> None:
    if exp.not_before > exp.not_after:
        raise CredentialError(f"{what} has an empty validity period")


def _check_time(exp: ExpirationData, now: int, what: str) -> None:
    if now < exp.not_before:
        raise ExpiredError(f"{what} is not valid yet")
    if now > exp.not_after:
        raise ExpiredError(f"{what} has expired")


def _check_nested(inner: ExpirationData, outer: ExpirationData, what: str) -> None:
    if not outer.contains(inner):
        raise CredentialError(f"{what}'s validity period is not within its signer's")


def _check_revoked(fp: CredentialFingerprint, revoked: Collection[CredentialFingerprint], what: str) -> None:
    if fp in revoked:
        raise RevokedCredential(f"{what} {fp.hex()[:16]}… is revoked")


_Signer = TypeVar("_Signer", AsCredential, IntermediateAsCredential)


def _find_signer(fp: CredentialFingerprint, candidates: Iterable[_Signer], what: str) -> _Signer:
    for c in candidates:
        if c.fingerprint() == fp:
            return c
    raise CredentialError(f"no known {what} has fingerprint {fp.hex()[:16]}…")


# --- AS credential: create and verify ----------------------------------------------------------------


def new_as_credential(
    domain: Fqdn,
    validity: ExpirationData,
    suite: CredentialCiphersuite = DEFAULT_CREDENTIAL_CIPHERSUITE,
    private_key: bytes | None = None,
) -> tuple[AsCredential, bytes]:
    """Create a self-signed AS root credential; returns ``(credential, private key)``."""
    _check_period(validity, "AS credential")
    if private_key is None:
        private_key, public_key = suite.generate_key_pair()
    else:
        public_key = suite.public_key(private_key)
    payload = AsCredentialPayload(domain, validity, suite, public_key)
    sig = suite.sign(private_key, LABEL_AS_PAYLOAD, payload.encode())
    return AsCredential(payload, sig), private_key


def verify_as_credential(
    cred: AsCredential,
    *,
    now: int,
    revoked: Collection[CredentialFingerprint] = frozenset(),
    domain: Fqdn | None = None,
) -> None:
    """Check a root: self-signature, period, ``now``, revocation and (if given) the expected domain.

    Whether the root is *trusted* for its domain is the caller's business: it must have come from
    ``as.<domain>`` over TLS (book: federation, "Authentication key distribution").
    """
    p = cred.payload
    if domain is not None and p.as_domain != domain:
        raise CredentialError(f"AS credential is for {p.as_domain}, expected {domain}")
    _check_period(p.expiration_data, "AS credential")
    _check_signature(
        p.credential_ciphersuite,
        p.public_key,
        LABEL_AS_PAYLOAD,
        p.encode(),
        cred.self_signature,
        "AS credential self-signature",
    )
    _check_revoked(cred.fingerprint(), revoked, "AS credential")
    _check_time(p.expiration_data, now, "AS credential")


# --- intermediate: CSR, issue, verify ----------------------------------------------------------------


def new_intermediate_csr(
    signer: AsCredential,
    validity: ExpirationData,
    suite: CredentialCiphersuite = DEFAULT_CREDENTIAL_CIPHERSUITE,
    private_key: bytes | None = None,
) -> tuple[IntermediateAsCsr, bytes]:
    """A self-signed intermediate CSR naming ``signer``; returns ``(csr, private key)``."""
    if private_key is None:
        private_key, public_key = suite.generate_key_pair()
    else:
        public_key = suite.public_key(private_key)
    payload = IntermediateAsCredentialPayload(validity, suite, public_key, signer.fingerprint())
    sig = suite.sign(private_key, LABEL_INTERMEDIATE_PAYLOAD, payload.encode())
    return IntermediateAsCsr(payload, sig), private_key


def issue_intermediate_credential(
    csr: IntermediateAsCsr, *, as_credential: AsCredential, as_private_key: bytes, now: int
) -> IntermediateAsCredential:
    """The AS root signs an intermediate CSR after checking it."""
    verify_as_credential(as_credential, now=now)
    suite = as_credential.payload.credential_ciphersuite
    _check_key(suite, as_private_key, as_credential.payload.public_key, "AS")
    p = csr.payload
    _check_signature(
        p.credential_ciphersuite,
        p.public_key,
        LABEL_INTERMEDIATE_PAYLOAD,
        p.encode(),
        csr.self_signature,
        "intermediate CSR self-signature",
    )
    if p.signer_fingerprint != as_credential.fingerprint():
        raise CsrError("intermediate CSR names a different AS credential as its signer")
    if p.expiration_data.not_before > p.expiration_data.not_after:
        raise CsrError("intermediate CSR has an empty validity period")
    if not as_credential.expiration_data.contains(p.expiration_data):
        raise CsrError("intermediate CSR's validity period is not within the AS credential's")
    sig = suite.sign(as_private_key, LABEL_INTERMEDIATE_SIGNED, csr.encode())
    return IntermediateAsCredential(csr, sig)


def create_intermediate_credential(
    as_credential: AsCredential,
    as_private_key: bytes,
    validity: ExpirationData,
    *,
    now: int,
    suite: CredentialCiphersuite = DEFAULT_CREDENTIAL_CIPHERSUITE,
) -> tuple[IntermediateAsCredential, bytes]:
    """CSR and issuance in one step (the AS runs both sides); returns ``(credential, private key)``."""
    csr, private_key = new_intermediate_csr(as_credential, validity, suite)
    cred = issue_intermediate_credential(
        csr, as_credential=as_credential, as_private_key=as_private_key, now=now
    )
    return cred, private_key


def verify_intermediate_credential(
    cred: IntermediateAsCredential,
    *,
    as_credentials: Iterable[AsCredential],
    now: int,
    revoked: Collection[CredentialFingerprint] = frozenset(),
    domain: Fqdn | None = None,
) -> AsCredential:
    """Verify an intermediate against candidate roots; returns the root that signed it."""
    p = cred.payload
    root = _find_signer(p.signer_fingerprint, as_credentials, "AS credential")
    verify_as_credential(root, now=now, revoked=revoked, domain=domain)
    _check_period(p.expiration_data, "intermediate AS credential")
    _check_signature(
        p.credential_ciphersuite,
        p.public_key,
        LABEL_INTERMEDIATE_PAYLOAD,
        p.encode(),
        cred.signed_payload.self_signature,
        "intermediate AS credential self-signature",
    )
    root_p = root.payload
    _check_signature(
        root_p.credential_ciphersuite,
        root_p.public_key,
        LABEL_INTERMEDIATE_SIGNED,
        cred.signed_payload.encode(),
        cred.signature,
        "intermediate AS credential signature",
    )
    _check_nested(p.expiration_data, root_p.expiration_data, "intermediate AS credential")
    _check_revoked(cred.fingerprint(), revoked, "intermediate AS credential")
    _check_time(p.expiration_data, now, "intermediate AS credential")
    return root


# --- client: CSR, issue, verify ----------------------------------------------------------------------


def new_client_csr(
    client_id: ClientId,
    signer: IntermediateAsCredential,
    validity: ExpirationData,
    suite: CredentialCiphersuite = DEFAULT_CREDENTIAL_CIPHERSUITE,
    private_key: bytes | None = None,
) -> tuple[ClientCsr, bytes]:
    """A client's self-signed CSR naming the intermediate it chose; returns ``(csr, private key)``."""
    if private_key is None:
        private_key, public_key = suite.generate_key_pair()
    else:
        public_key = suite.public_key(private_key)
    payload = ClientCredentialPayload(client_id, validity, suite, public_key, signer.fingerprint())
    sig = suite.sign(private_key, LABEL_CLIENT_PAYLOAD, payload.encode())
    return ClientCsr(payload, sig), private_key


def verify_client_csr(csr: ClientCsr, *, domain: Fqdn, max_lifetime: int | None = None) -> None:
    """What an AS checks on a CSR before anything else: self-signature, own domain, sane period."""
    p = csr.payload
    _check_signature(
        p.credential_ciphersuite,
        p.public_key,
        LABEL_CLIENT_PAYLOAD,
        p.encode(),
        csr.self_signature,
        "client CSR self-signature",
    )
    if p.client_id.domain != domain:
        raise CsrError(f"client CSR is for domain {p.client_id.domain}, this AS serves {domain}")
    exp = p.expiration_data
    if exp.not_before > exp.not_after:
        raise CsrError("client CSR has an empty validity period")
    if max_lifetime is not None and exp.lifetime > max_lifetime:
        raise CsrError(f"client CSR asks for {exp.lifetime}s of validity, at most {max_lifetime}s allowed")


def issue_client_credential(
    csr: ClientCsr,
    *,
    intermediate: IntermediateAsCredential,
    intermediate_private_key: bytes,
    as_credential: AsCredential,
    now: int,
    max_lifetime: int | None = None,
) -> ClientCredential:
    """The AS signs a client CSR with one of its intermediates.

    Checks the CSR (:func:`verify_client_csr` against the root's domain), that it names this
    intermediate, that its period lies within the intermediate's and has not ended, and that the
    intermediate itself is valid under ``as_credential`` now.
    """
    verify_intermediate_credential(intermediate, as_credentials=(as_credential,), now=now)
    suite = intermediate.payload.credential_ciphersuite
    _check_key(suite, intermediate_private_key, intermediate.payload.public_key, "intermediate AS")
    verify_client_csr(csr, domain=as_credential.domain, max_lifetime=max_lifetime)
    p = csr.payload
    if p.signer_fingerprint != intermediate.fingerprint():
        raise CsrError("client CSR names a different intermediate credential as its signer")
    if not intermediate.expiration_data.contains(p.expiration_data):
        raise CsrError("client CSR's validity period is not within the intermediate credential's")
    if p.expiration_data.not_after < now:
        raise CsrError("client CSR's validity period has already ended")
    sig = suite.sign(intermediate_private_key, LABEL_CLIENT_SIGNED, csr.encode())
    return ClientCredential(csr, sig)


@dataclass(frozen=True, slots=True)
class VerifiedClientChain:
    client: ClientCredential
    intermediate: IntermediateAsCredential
    root: AsCredential


def verify_client_credential(
    cred: ClientCredential,
    *,
    intermediates: Iterable[IntermediateAsCredential],
    as_credentials: Iterable[AsCredential],
    now: int,
    revoked: Collection[CredentialFingerprint] = frozenset(),
) -> VerifiedClientChain:
    """Verify a client credential up to a root of the client's own domain.

    ``intermediates`` and ``as_credentials`` are candidates (typically everything the client's AS
    publishes); the signer is picked by fingerprint. The root must be for the domain in the client id,
    so one homeserver's AS can never vouch for another's users.
    """
    p = cred.payload
    inter = _find_signer(p.signer_fingerprint, intermediates, "intermediate AS credential")
    root = verify_intermediate_credential(
        inter, as_credentials=as_credentials, now=now, revoked=revoked, domain=p.client_id.domain
    )
    _check_period(p.expiration_data, "client credential")
    _check_signature(
        p.credential_ciphersuite,
        p.public_key,
        LABEL_CLIENT_PAYLOAD,
        p.encode(),
        cred.signed_payload.self_signature,
        "client credential self-signature",
    )
    ip = inter.payload
    _check_signature(
        ip.credential_ciphersuite,
        ip.public_key,
        LABEL_CLIENT_SIGNED,
        cred.signed_payload.encode(),
        cred.signature,
        "client credential signature",
    )
    _check_nested(p.expiration_data, ip.expiration_data, "client credential")
    _check_revoked(cred.fingerprint(), revoked, "client credential")
    _check_time(p.expiration_data, now, "client credential")
    return VerifiedClientChain(cred, inter, root)


# --- leaf credentials --------------------------------------------------------------------------------


def sign_leaf_credential(
    payload: LeafCredentialPayload, client_credential: ClientCredential, client_private_key: bytes
) -> bytes:
    """The client credential's signature over a leaf payload (the caller encrypts it)."""
    if payload.signer_fingerprint != client_credential.fingerprint():
        raise PhxError("leaf payload names a different client credential as its signer")
    suite = client_credential.payload.credential_ciphersuite
    _check_key(suite, client_private_key, client_credential.public_key, "client")
    return suite.sign(client_private_key, LABEL_LEAF_PAYLOAD, payload.encode())


def verify_leaf_credential(
    payload: LeafCredentialPayload,
    signature: bytes,
    client_credential: ClientCredential,
    *,
    now: int,
    revoked: Collection[CredentialFingerprint] = frozenset(),
) -> None:
    """Check a (decrypted) leaf signature against the client credential it names.

    The client credential's own chain is verified separately (:func:`verify_client_credential`).
    """
    if payload.signer_fingerprint != client_credential.fingerprint():
        raise CredentialError("leaf credential names a different client credential as its signer")
    cp = client_credential.payload
    _check_period(payload.expiration_data, "leaf credential")
    _check_signature(
        cp.credential_ciphersuite,
        cp.public_key,
        LABEL_LEAF_PAYLOAD,
        payload.encode(),
        signature,
        "leaf credential signature",
    )
    _check_nested(payload.expiration_data, cp.expiration_data, "leaf credential")
    _check_revoked(client_credential.fingerprint(), revoked, "client credential")
    _check_time(payload.expiration_data, now, "leaf credential")
