"""What clients exchange with each other (never read by a server), and the client-side crypto around it.

The book names these structs but leaves their encodings and encryption open (docs/decisions.md, "Client
wire formats"):

* :class:`WelcomeAttributionInfo` (book: glossary) — signed by the inviter's client credential over the
  payload, the group id and the Welcome; encrypted under the joiner's welcome-attribution-info key.
* :class:`CredentialInformation` — what the DS stores per member as "encrypted credential information":
  the member's :class:`~phx.credentials.ClientCredential` and the signature encryption key of its leaf
  credential, encrypted under the group's credential encryption key. In an AddPackage the two halves are
  encrypted separately under the owner's friendship encryption key.
* Leaf credentials (book: credentials.md) travel as an MLS credential of type
  :data:`LEAF_CREDENTIAL_TYPE` whose body is the encoded :class:`~phx.credentials.LeafCredential`.
* :class:`FriendshipPackage` — the friendship keys two users exchange inside their connection group.
* :class:`ClientMessage` — every application message: text, friendship packages, a declined connection.
* The group's name is a GroupContext extension (:data:`GROUP_METADATA_EXTENSION_TYPE`) holding
  :class:`GroupMetadata` encrypted under the credential encryption key, so it travels with the group to
  every member and the DS only sees ciphertext.

Symmetric encryption is the suite's AEAD under a key derived from a 32-byte secret with the Phoenix
label prefix (``phx 1.0 <label>``), random nonce in front; a label per use keeps the uses apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Self

from phx.codec import U8, MaxLen, Reader, Struct, WireEnum, Writer
from phx.credentials import (
    DEFAULT_CREDENTIAL_CIPHERSUITE,
    ClientCredential,
    ExpirationData,
    LeafCredential,
    LeafCredentialPayload,
    sign_leaf_credential,
    verify_leaf_credential,
)
from phx.crypto import PHX_PREFIX, SUITE_1, CipherSuite, HpkeError
from phx.delivery.messages import ROLES_EXTENSION_TYPE, GroupInfoUpdate
from phx.errors import DecodeError, MlsError, ValidationError
from phx.identifiers import ClientId, GroupId
from phx.mls.group import Group
from phx.mls.key_package import KeyPackageBundle, create_key_package, default_capabilities
from phx.mls.messages import Credential, Extension, HPKECiphertext, find_extension
from phx.queuing.messages import QUEUE_CONFIG_EXTENSION_TYPE, AddPackage, ClientQueueConfig

__all__ = [
    "CAPABILITIES",
    "GROUP_METADATA_EXTENSION_TYPE",
    "LEAF_CREDENTIAL_TYPE",
    "SECRET_LENGTH",
    "ClientMessage",
    "ClientMessageType",
    "CredentialInformation",
    "FriendshipPackage",
    "GroupMetadata",
    "LeafKeys",
    "UserProfile",
    "WelcomeAttributionInfo",
    "WelcomeAttributionInfoPayload",
    "WelcomeAttributionInfoTbs",
    "group_metadata",
    "leaf_credential_of",
    "make_add_package",
    "make_metadata_extension",
    "new_leaf",
    "new_secret",
    "open_add_package",
    "open_connection_establishment",
    "open_credential_information",
    "open_symmetric",
    "pending_group_info_update",
    "seal_connection_establishment",
    "seal_credential_information",
    "seal_symmetric",
    "verify_member",
]

CS = SUITE_1
#: MLS credential type of Phoenix leaf credentials (private-use range, RFC 9420 §17.5).
LEAF_CREDENTIAL_TYPE = 0xF0C1
#: GroupContext extension with the encrypted group metadata (private-use range, RFC 9420 §17.3).
GROUP_METADATA_EXTENSION_TYPE = 0xF0A3
#: Every symmetric secret the client samples (credential key, friendship keys, signature encryption key).
SECRET_LENGTH = 32
#: Leaf credentials live at most this long (and never beyond the client credential).
LEAF_LIFETIME = 90 * 86_400

CAPABILITIES = default_capabilities(
    CS,
    LEAF_CREDENTIAL_TYPE,
    extensions=[ROLES_EXTENSION_TYPE, QUEUE_CONFIG_EXTENSION_TYPE, GROUP_METADATA_EXTENSION_TYPE],
)

LABEL_CREDENTIAL_INFO = b"CredentialInformation"
LABEL_ADD_PACKAGE_CREDENTIAL = b"AddPackage client credential"
LABEL_ADD_PACKAGE_SIG_KEY = b"AddPackage signature encryption key"
LABEL_LEAF_SIGNATURE = b"LeafCredential signature"
LABEL_WAI = b"WelcomeAttributionInfo"
LABEL_WAI_CREDENTIAL_KEY = b"WelcomeBundle credential encryption key"
LABEL_GROUP_METADATA = b"GroupMetadata"
LABEL_CONNECTION_ESTABLISHMENT = b"ConnectionEstablishmentPackage"

Blob = Annotated[bytes, MaxLen(1 << 16)]


def new_secret() -> bytes:
    return os.urandom(SECRET_LENGTH)


# --- symmetric encryption ----------------------------------------------------------------------------


def _opaque(b: bytes) -> bytes:
    w = Writer()
    w.opaque(b)
    return w.getvalue()


def _aead_key(secret: bytes, label: bytes, cs: CipherSuite) -> bytes:
    info = cs.aead.nk.to_bytes(2, "big") + _opaque(PHX_PREFIX + label) + _opaque(b"")
    return cs.expand(secret, info, cs.aead.nk)


def seal_symmetric(
    secret: bytes, label: bytes, plaintext: bytes, aad: bytes = b"", *, cs: CipherSuite = CS
) -> bytes:
    """``nonce || AEAD(key(secret, label), nonce, aad, plaintext)``."""
    nonce = os.urandom(cs.aead.nn)
    return nonce + cs.seal(_aead_key(secret, label, cs), nonce, aad, plaintext)


def open_symmetric(
    secret: bytes, label: bytes, data: bytes, aad: bytes = b"", *, cs: CipherSuite = CS
) -> bytes:
    nn = cs.aead.nn
    if len(data) <= nn:
        raise ValidationError(f"{label.decode()} ciphertext is too short")
    try:
        return cs.open(_aead_key(secret, label, cs), data[:nn], aad, data[nn:])
    except HpkeError as e:
        raise ValidationError(f"{label.decode()} does not decrypt") from e


# --- profiles and application messages ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserProfile(Struct):
    """What a client stores as its user profile at the AS: the user name its user id derives from."""

    user_name: Annotated[str, MaxLen(256)]


@dataclass(frozen=True, slots=True)
class FriendshipPackage(Struct):
    """A user's friendship keys, sent to a connection inside the connection group (and again after a
    token rotation). ``user_name`` is checked against the sender's user id."""

    user_name: Annotated[str, MaxLen(256)]
    friendship_token: Annotated[bytes, MaxLen(256)]
    friendship_encryption_key: Annotated[bytes, MaxLen(64)]
    wai_encryption_key: Annotated[bytes, MaxLen(64)]


class ClientMessageType(WireEnum):
    __wire_width__ = U8
    TEXT = 1
    FRIENDSHIP = 2
    CONNECTION_DECLINED = 3


@dataclass(frozen=True, slots=True)
class ClientMessage(Struct):
    """``enum { text(opaque), friendship(FriendshipPackage), connection_declined }``: a u8 tag, then the
    body (nothing for ``connection_declined``)."""

    message_type: ClientMessageType
    text: str = ""
    friendship: FriendshipPackage | None = None

    @classmethod
    def of_text(cls, text: str) -> ClientMessage:
        return cls(ClientMessageType.TEXT, text=text)

    def _write(self, w: Writer) -> None:
        w.u8(self.message_type)
        if self.message_type == ClientMessageType.TEXT:
            w.opaque(self.text.encode("utf-8"))
        elif self.message_type == ClientMessageType.FRIENDSHIP:
            assert self.friendship is not None
            self.friendship._write(w)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        kind = ClientMessageType.read(r)
        if kind == ClientMessageType.TEXT:
            try:
                return cls(kind, text=r.opaque().decode("utf-8"))
            except UnicodeDecodeError:
                raise DecodeError("text message is not UTF-8") from None
        if kind == ClientMessageType.FRIENDSHIP:
            return cls(kind, friendship=FriendshipPackage.read(r))
        return cls(kind)


# --- group metadata ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupMetadata(Struct):
    name: Annotated[str, MaxLen(1024)]


def make_metadata_extension(credential_key: bytes, group_id: GroupId, metadata: GroupMetadata) -> Extension:
    sealed = seal_symmetric(credential_key, LABEL_GROUP_METADATA, metadata.encode(), group_id.encode())
    return Extension(GROUP_METADATA_EXTENSION_TYPE, sealed)


def group_metadata(
    extensions: tuple[Extension, ...], credential_key: bytes, group_id: GroupId
) -> GroupMetadata | None:
    ext = find_extension(extensions, GROUP_METADATA_EXTENSION_TYPE)
    if ext is None:
        return None
    plain = open_symmetric(credential_key, LABEL_GROUP_METADATA, ext.extension_data, group_id.encode())
    return GroupMetadata.decode(plain)


# --- leaf credentials and credential information -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class CredentialInformation(Struct):
    client_credential: ClientCredential
    signature_encryption_key: Annotated[bytes, MaxLen(64)]


@dataclass(frozen=True, slots=True)
class LeafKeys:
    """A fresh leaf credential with its private signature key and signature encryption key."""

    credential: Credential
    signature_private_key: bytes
    signature_encryption_key: bytes

    def information(self, client_credential: ClientCredential) -> CredentialInformation:
        return CredentialInformation(client_credential, self.signature_encryption_key)


def new_leaf(client_credential: ClientCredential, client_private_key: bytes, now: int) -> LeafKeys:
    """A pseudonymous leaf credential signed by the client credential (signature encrypted)."""
    suite = DEFAULT_CREDENTIAL_CIPHERSUITE
    sig_priv, sig_pub = CS.generate_signature_key_pair()
    outer = client_credential.expiration_data
    validity = ExpirationData(max(now - 60, outer.not_before), min(now + LEAF_LIFETIME, outer.not_after))
    payload = LeafCredentialPayload(os.urandom(16), validity, suite, sig_pub, client_credential.fingerprint())
    signature = sign_leaf_credential(payload, client_credential, client_private_key)
    sig_key = new_secret()
    encrypted = seal_symmetric(sig_key, LABEL_LEAF_SIGNATURE, signature, payload.encode())
    leaf = LeafCredential(payload, encrypted)
    return LeafKeys(Credential(LEAF_CREDENTIAL_TYPE, data=leaf.encode()), sig_priv, sig_key)


def leaf_credential_of(credential: Credential) -> LeafCredential:
    if credential.credential_type != LEAF_CREDENTIAL_TYPE:
        raise ValidationError("member does not carry a Phoenix leaf credential")
    try:
        return LeafCredential.decode(credential.data)
    except DecodeError as e:
        raise ValidationError(f"malformed leaf credential: {e}") from e


def verify_member(
    credential: Credential, signature_key: bytes, info: CredentialInformation, now: int
) -> ClientCredential:
    """A member's leaf credential is signed by the client credential in its credential information and
    names the leaf's signature key. The client credential's own chain is checked by the caller."""
    leaf = leaf_credential_of(credential)
    if leaf.payload.public_key != signature_key:
        raise ValidationError("leaf credential is for another signature key than the leaf's")
    signature = open_symmetric(
        info.signature_encryption_key, LABEL_LEAF_SIGNATURE, leaf.encrypted_signature, leaf.payload.encode()
    )
    verify_leaf_credential(leaf.payload, signature, info.client_credential, now=now)
    return info.client_credential


def seal_credential_information(
    credential_key: bytes, group_id: GroupId, info: CredentialInformation
) -> bytes:
    return seal_symmetric(credential_key, LABEL_CREDENTIAL_INFO, info.encode(), group_id.encode())


def open_credential_information(
    credential_key: bytes, group_id: GroupId, data: bytes
) -> CredentialInformation:
    plain = open_symmetric(credential_key, LABEL_CREDENTIAL_INFO, data, group_id.encode())
    try:
        return CredentialInformation.decode(plain)
    except DecodeError as e:
        raise ValidationError(f"malformed credential information: {e}") from e


# --- AddPackages -------------------------------------------------------------------------------------


def make_add_package(
    client_credential: ClientCredential,
    client_private_key: bytes,
    friendship_key: bytes,
    queue_config: ClientQueueConfig,
    now: int,
    *,
    last_resort: bool = False,
    lifetime: int = 30 * 86_400,
) -> tuple[AddPackage, KeyPackageBundle, bytes]:
    """An AddPackage (book: glossary) with a fresh leaf; returns it, the KeyPackage's private keys and the
    leaf's signature encryption key."""
    from phx.queuing.messages import make_queue_config_extension

    leaf = new_leaf(client_credential, client_private_key, now)
    bundle = create_key_package(
        CS,
        leaf.credential,
        leaf.signature_private_key,
        now=now,
        lifetime=lifetime,
        capabilities=CAPABILITIES,
        extensions=[make_queue_config_extension(queue_config)],
        last_resort=last_resort,
    )
    kp = bundle.key_package.encode()
    package = AddPackage(
        bundle.key_package,
        seal_symmetric(friendship_key, LABEL_ADD_PACKAGE_CREDENTIAL, client_credential.encode(), kp),
        seal_symmetric(friendship_key, LABEL_ADD_PACKAGE_SIG_KEY, leaf.signature_encryption_key, kp),
    )
    return package, bundle, leaf.signature_encryption_key


def open_add_package(package: AddPackage, friendship_key: bytes, now: int) -> CredentialInformation:
    """Decrypt an AddPackage of a connection and check its leaf credential against the client credential
    inside (the client credential's chain is the caller's next check)."""
    kp = package.key_package.encode()
    cred = ClientCredential.decode(
        open_symmetric(friendship_key, LABEL_ADD_PACKAGE_CREDENTIAL, package.encrypted_client_credential, kp)
    )
    sig_key = open_symmetric(
        friendship_key, LABEL_ADD_PACKAGE_SIG_KEY, package.encrypted_signature_encryption_key, kp
    )
    info = CredentialInformation(cred, sig_key)
    leaf = package.key_package.leaf_node
    verify_member(leaf.credential, leaf.signature_key, info, now)
    return info


# --- welcome attribution -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WelcomeAttributionInfoPayload(Struct):
    sender_client_id: ClientId
    group_credential_encryption_key: Annotated[bytes, MaxLen(64)]


@dataclass(frozen=True, slots=True)
class WelcomeAttributionInfoTbs(Struct):
    payload: WelcomeAttributionInfoPayload
    group_id: GroupId
    welcome: bytes


@dataclass(frozen=True, slots=True)
class WelcomeAttributionInfo(Struct):
    payload: WelcomeAttributionInfoPayload
    signature: Annotated[bytes, MaxLen(128)]

    LABEL = b"WelcomeAttributionInfoTbs"

    @classmethod
    def sign(
        cls,
        payload: WelcomeAttributionInfoPayload,
        group_id: GroupId,
        welcome: bytes,
        credential: ClientCredential,
        private_key: bytes,
    ) -> WelcomeAttributionInfo:
        tbs = WelcomeAttributionInfoTbs(payload, group_id, welcome).encode()
        return cls(payload, credential.payload.credential_ciphersuite.sign(private_key, cls.LABEL, tbs))

    def verify(self, group_id: GroupId, welcome: bytes, sender: ClientCredential) -> None:
        from phx.errors import SignatureError

        if sender.client_id != self.payload.sender_client_id:
            raise ValidationError("welcome attribution names another client than the signer")
        tbs = WelcomeAttributionInfoTbs(self.payload, group_id, welcome).encode()
        if not sender.payload.credential_ciphersuite.verify(
            sender.public_key, self.LABEL, tbs, self.signature
        ):
            raise SignatureError("welcome attribution signature does not verify")

    def seal(self, wai_key: bytes, group_id: GroupId) -> bytes:
        return seal_symmetric(wai_key, LABEL_WAI, self.encode(), group_id.encode())

    @classmethod
    def open(cls, wai_key: bytes, group_id: GroupId, data: bytes) -> WelcomeAttributionInfo:
        try:
            return cls.decode(open_symmetric(wai_key, LABEL_WAI, data, group_id.encode()))
        except DecodeError as e:
            raise ValidationError(f"malformed welcome attribution info: {e}") from e


def seal_bundle_credential_key(wai_key: bytes, group_id: GroupId, credential_key: bytes) -> bytes:
    return seal_symmetric(wai_key, LABEL_WAI_CREDENTIAL_KEY, credential_key, group_id.encode())


# --- connection establishment ------------------------------------------------------------------------


def _cep_info() -> bytes:
    return _opaque(PHX_PREFIX + LABEL_CONNECTION_ESTABLISHMENT)


def seal_connection_establishment(encryption_key: bytes, package: bytes, *, cs: CipherSuite = CS) -> bytes:
    """HPKE (base mode) to the connection package's encryption key; the encoding of an HPKECiphertext."""
    try:
        kem_output, ct = cs.hpke.seal(encryption_key, _cep_info(), b"", package)
    except (HpkeError, ValueError) as e:
        raise ValidationError(f"unusable connection encryption key: {e}") from e
    return HPKECiphertext(kem_output, ct).encode()


def open_connection_establishment(private_key: bytes, data: bytes, *, cs: CipherSuite = CS) -> bytes:
    try:
        c = HPKECiphertext.decode(data)
        return cs.hpke.open(c.kem_output, private_key, _cep_info(), b"", c.ciphertext)
    except (HpkeError, DecodeError, ValueError) as e:
        raise ValidationError("connection establishment package does not decrypt") from e


# --- MLS glue ----------------------------------------------------------------------------------------


def pending_group_info_update(group: Group) -> GroupInfoUpdate:
    """The committer's signature over the GroupInfo of its pending commit's epoch (with ``external_pub``,
    without the tree), which the DS rebuilds and stores."""
    try:
        gi = group.pending_group_info()
    except MlsError as e:
        raise ValidationError("no pending commit") from e
    return GroupInfoUpdate(gi.signature, gi.extensions)


def pending_context(group: Group) -> bytes:
    """The encoded GroupContext the pending commit (or external join) would move the group to."""
    try:
        return group.pending_context.encode()
    except MlsError as e:
        raise ValidationError("no pending commit") from e
