"""Wire structs of the Delivery Service (book: delivery_service.md, glossary.md), named as in the book.

The QS structs the DS fills (:class:`~phx.queuing.messages.ClientQueueConfig`,
:class:`~phx.queuing.messages.FanOutMessage`, :class:`~phx.queuing.messages.WelcomeBundle`, ...) live in
:mod:`phx.queuing.messages` and are only re-used here.

Where the book leaves the shape open or its struct cannot work as written we chose (docs/decisions.md,
"DS wire details"):

* :class:`DsRequest` frames every call: the operation's encoded params, an optional
  :class:`DsAuthToken`, whose signature covers group id, timestamp, sender id, the operation name and a
  hash of the params (:class:`DsAuthTbs`), and the Privacy Pass token (as the AS and QS requests do).
* :class:`GroupInfoUpdate` carries the GroupInfo extensions the committer signed (``external_pub``, which
  the DS cannot derive) next to the signature.
* :class:`AddUsersParams` groups the encrypted credential information per added user (the DS must know
  which clients form one user) and takes per-joiner Welcome ciphertexts instead of a KeyPackage list (the
  KeyPackages are the commit's Adds).
* :class:`JoinConnectionGroupParams` carries the joiner's :class:`ClientQueueConfig`.
* ``credential_chains`` are typed (:class:`MemberCredential` per leaf) instead of opaque bytes.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Annotated, Self

from phx.codec import U8, U32, U64, Fixed, MaxLen, Reader, Struct, WireEnum, Writer
from phx.crypto import PHX_PREFIX, SUITE_1, CipherSuite, HpkeError
from phx.errors import DecodeError, ValidationError
from phx.identifiers import GroupId
from phx.mls.messages import Extension, ExternalSender, GroupInfo, HPKECiphertext, MLSMessage
from phx.queuing.messages import ClientQueueConfig

__all__ = [
    "EAR_KEY_LENGTH",
    "LABEL_AUTH_TOKEN",
    "ROLES_EXTENSION_TYPE",
    "AddUsersParams",
    "AddUsersParamsAad",
    "ClientInactivityRemoval",
    "CreateGroupParams",
    "DeleteGroupParams",
    "DsAuthTbs",
    "DsAuthToken",
    "DsRequest",
    "DsSenderId",
    "DsVerifyingKeyResponse",
    "ExternalCommitInfoParams",
    "ExternalCommitInfoResponse",
    "GroupInfoUpdate",
    "JoinConnectionGroupParams",
    "JoinConnectionGroupParamsAad",
    "MemberCredential",
    "Operation",
    "QueueDeletionRemoval",
    "RemoveUsersParams",
    "RequestGroupIdResponse",
    "ResyncClientParams",
    "RolesExtension",
    "SelfRemoveUserParams",
    "SendMessageParams",
    "UpdateClientParams",
    "UpdateClientParamsAad",
    "UpdateQueueInfoParams",
    "UserCredentialInformation",
    "WelcomeAttributionCiphertexts",
    "WelcomeInfoParams",
    "WelcomeInfoResponse",
    "decrypt_ear_key",
    "encrypt_ear_key",
    "make_roles_extension",
    "parse_roles_extension",
]

#: GroupContext extension listing admins and members (private-use range of RFC 9420 §17.3).
ROLES_EXTENSION_TYPE = 0xF0A2
#: GroupStateEarKey: a 256-bit symmetric key sampled by the group's creator.
EAR_KEY_LENGTH = 32
LABEL_AUTH_TOKEN = b"DsAuthToken"
_LABEL_EAR_KEY = PHX_PREFIX + b"GroupStateEarKey"

#: Structural caps enforced while decoding.
MAX_ADDS = 1000
MAX_MEMBERS = 100_000
Blob = Annotated[bytes, MaxLen(1 << 16)]
EarKey = Annotated[bytes, Fixed(EAR_KEY_LENGTH)]
Epoch = Annotated[int, U64]
LeafIndex = Annotated[int, U32]


class Operation(enum.StrEnum):
    """DS operation names: ``POST /ds/v1/<name>`` and the ``operation`` an auth token signs."""

    REQUEST_GROUP_ID = "request_group_id"
    CREATE_GROUP = "create_group"
    UPDATE_QUEUE_INFO = "update_queue_info"
    WELCOME_INFO = "welcome_info"
    EXTERNAL_COMMIT_INFO = "external_commit_info"
    ADD_USERS = "add_users"
    REMOVE_USERS = "remove_users"
    UPDATE_CLIENT = "update_client"
    JOIN_CONNECTION_GROUP = "join_connection_group"
    RESYNC_CLIENT = "resync_client"
    SELF_REMOVE_USER = "self_remove_user"
    SEND_MESSAGE = "send_message"
    DELETE_GROUP = "delete_group"


# --- authentication ----------------------------------------------------------------------------------


class _SenderKind(WireEnum):
    __wire_width__ = U8
    LEAF_INDEX = 1
    KEY_PACKAGE_REF = 2


@dataclass(frozen=True, slots=True)
class DsSenderId(Struct):
    """``enum DsSenderId { LeafIndex(u32), KeyPackageRef(KeyPackageRef) }``: a u8 tag then the value."""

    leaf_index: int | None = None
    key_package_ref: bytes | None = None

    def __post_init__(self) -> None:
        if (self.leaf_index is None) == (self.key_package_ref is None):
            raise ValueError("a DsSenderId is either a leaf index or a KeyPackageRef")

    @classmethod
    def leaf(cls, leaf_index: int) -> DsSenderId:
        return cls(leaf_index=leaf_index)

    @classmethod
    def key_package(cls, ref: bytes) -> DsSenderId:
        return cls(key_package_ref=ref)

    def _write(self, w: Writer) -> None:
        if self.leaf_index is not None:
            w.u8(_SenderKind.LEAF_INDEX)
            w.u32(self.leaf_index)
        else:
            assert self.key_package_ref is not None
            w.u8(_SenderKind.KEY_PACKAGE_REF)
            w.opaque(self.key_package_ref)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        if _SenderKind.read(r) == _SenderKind.LEAF_INDEX:
            return cls(leaf_index=r.u32())
        return cls(key_package_ref=r.opaque(64))


@dataclass(frozen=True, slots=True)
class DsAuthToken(Struct):
    group_id: GroupId
    timestamp: Annotated[int, U64]
    sender_id: DsSenderId
    signature: Annotated[bytes, MaxLen(128)]


@dataclass(frozen=True, slots=True)
class DsAuthTbs(Struct):
    """What a :class:`DsAuthToken` signs (label ``DsAuthToken``, prefix ``phx 1.0 ``): the book's fields
    plus the operation and a hash of the params, so a token authorizes exactly one request."""

    group_id: GroupId
    timestamp: Annotated[int, U64]
    sender_id: DsSenderId
    operation: Annotated[str, MaxLen(64)]
    params_hash: Annotated[bytes, MaxLen(64)]

    @classmethod
    def of(
        cls, group_id: GroupId, timestamp: int, sender_id: DsSenderId, operation: str, params: bytes
    ) -> DsAuthTbs:
        return cls(group_id, timestamp, sender_id, operation, hashlib.sha256(params).digest())


@dataclass(frozen=True, slots=True)
class DsRequest(Struct):
    """The body of every DS call: the operation's encoded params, where required an auth token, and the
    Privacy Pass token every endpoint asks for."""

    params: Annotated[bytes, MaxLen(1 << 26)]
    auth_token: DsAuthToken | None
    privacy_pass_token: Annotated[bytes, MaxLen(256)] | None

    @classmethod
    def signed(
        cls,
        operation: str,
        params: Struct,
        group_id: GroupId,
        sender: DsSenderId,
        signature_private_key: bytes,
        now: int,
        *,
        privacy_pass_token: bytes | None = None,
        cs: CipherSuite = SUITE_1,
    ) -> DsRequest:
        """Client-side helper: ``params`` authenticated by the key of ``sender`` (its leaf or KeyPackage)."""
        encoded = params.encode()
        tbs = DsAuthTbs.of(group_id, now, sender, operation, encoded).encode()
        sig = cs.sign_with_label(signature_private_key, LABEL_AUTH_TOKEN, tbs, prefix=PHX_PREFIX)
        return cls(encoded, DsAuthToken(group_id, now, sender, sig), privacy_pass_token)

    @classmethod
    def unsigned(cls, params: Struct | None = None, *, privacy_pass_token: bytes | None = None) -> DsRequest:
        return cls(b"" if params is None else params.encode(), None, privacy_pass_token)


# --- roles ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RolesExtension(Struct):
    admins: Annotated[tuple[LeafIndex, ...], MaxLen(MAX_MEMBERS)]
    members: Annotated[tuple[LeafIndex, ...], MaxLen(MAX_MEMBERS)]


def make_roles_extension(admins: tuple[int, ...], members: tuple[int, ...] = ()) -> Extension:
    return Extension(ROLES_EXTENSION_TYPE, RolesExtension(admins, members).encode())


def parse_roles_extension(ext: Extension) -> RolesExtension:
    return RolesExtension.decode(ext.extension_data)


# --- shared pieces ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupInfoUpdate(Struct):
    """The committer's signature over the new epoch's GroupInfo and the GroupInfo extensions it signed."""

    signature: Annotated[bytes, MaxLen(128)]
    extensions: Annotated[tuple[Extension, ...], MaxLen(16)]


@dataclass(frozen=True, slots=True)
class MemberCredential(Struct):
    """One member's encrypted credential information (only members can decrypt it)."""

    leaf_index: LeafIndex
    encrypted_credential_information: Blob


# --- group creation ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestGroupIdResponse(Struct):
    group_id: GroupId


@dataclass(frozen=True, slots=True)
class CreateGroupParams(Struct):
    """The GroupInfo must carry the one-member ratchet tree (ratchet_tree extension)."""

    group_id: GroupId
    encrypted_credential_chain: Blob
    creator_queue_config: ClientQueueConfig
    group_info: GroupInfo
    initial_ear_key: EarKey


@dataclass(frozen=True, slots=True)
class UpdateQueueInfoParams(Struct):
    group_id: GroupId
    group_state_ear_key: EarKey
    new_queue_config: ClientQueueConfig


# --- information for joiners ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WelcomeInfoParams(Struct):
    group_id: GroupId
    group_state_ear_key: EarKey
    epoch: Epoch


@dataclass(frozen=True, slots=True)
class WelcomeInfoResponse(Struct):
    """``public_tree`` is the encoded ``ratchet_tree`` of the requested epoch."""

    public_tree: bytes
    credential_chains: Annotated[tuple[MemberCredential, ...], MaxLen(MAX_MEMBERS)]


@dataclass(frozen=True, slots=True)
class ExternalCommitInfoParams(Struct):
    group_id: GroupId
    group_state_ear_key: EarKey


@dataclass(frozen=True, slots=True)
class ExternalCommitInfoResponse(Struct):
    group_info: GroupInfo
    public_tree: bytes
    credential_chains: Annotated[tuple[MemberCredential, ...], MaxLen(MAX_MEMBERS)]


# --- commits -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WelcomeAttributionCiphertexts(Struct):
    """What the inviter encrypts for one joiner (under the joiner's friendship keys); the DS adds the
    EAR key, encrypted to the joiner's init key, to build the WelcomeBundle."""

    encrypted_welcome_attribution_info: Blob
    encrypted_credential_encryption_key: Blob


@dataclass(frozen=True, slots=True)
class AddUsersParams(Struct):
    commit: MLSMessage
    group_state_ear_key: EarKey
    group_info_update: GroupInfoUpdate
    welcome: MLSMessage
    welcome_attribution_info: Annotated[tuple[WelcomeAttributionCiphertexts, ...], MaxLen(MAX_ADDS)]


@dataclass(frozen=True, slots=True)
class UserCredentialInformation(Struct):
    """The encrypted credential information of one added user's clients, in the order of their Adds."""

    clients: Annotated[tuple[Blob, ...], MaxLen(MAX_ADDS)]


@dataclass(frozen=True, slots=True)
class AddUsersParamsAad(Struct):
    """The commit's authenticated data: one entry per added user; flattened, the clients are in the
    order of the commit's Add proposals."""

    encrypted_credential_information: Annotated[tuple[UserCredentialInformation, ...], MaxLen(MAX_ADDS)]


@dataclass(frozen=True, slots=True)
class RemoveUsersParams(Struct):
    commit: MLSMessage
    group_state_ear_key: EarKey
    group_info_update: GroupInfoUpdate


@dataclass(frozen=True, slots=True)
class UpdateClientParams(Struct):
    commit: MLSMessage
    group_state_ear_key: EarKey
    group_info_update: GroupInfoUpdate


@dataclass(frozen=True, slots=True)
class UpdateClientParamsAad(Struct):
    option_encrypted_credential_information: Blob | None


@dataclass(frozen=True, slots=True)
class JoinConnectionGroupParams(Struct):
    external_commit: MLSMessage
    group_state_ear_key: EarKey
    group_info_update: GroupInfoUpdate
    client_queue_config: ClientQueueConfig


@dataclass(frozen=True, slots=True)
class JoinConnectionGroupParamsAad(Struct):
    encrypted_credential_information: Blob


@dataclass(frozen=True, slots=True)
class ResyncClientParams(Struct):
    external_commit: MLSMessage
    group_state_ear_key: EarKey
    group_info_update: GroupInfoUpdate


@dataclass(frozen=True, slots=True)
class SelfRemoveUserParams(Struct):
    remove_proposal: MLSMessage
    group_state_ear_key: EarKey


@dataclass(frozen=True, slots=True)
class SendMessageParams(Struct):
    application_message: MLSMessage
    group_state_ear_key: EarKey


@dataclass(frozen=True, slots=True)
class DeleteGroupParams(Struct):
    commit: MLSMessage
    group_state_ear_key: EarKey


# --- DS-induced removals -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientInactivityRemoval(Struct):
    proposals: tuple[MLSMessage, ...]


@dataclass(frozen=True, slots=True)
class QueueDeletionRemoval(Struct):
    proposals: tuple[MLSMessage, ...]


@dataclass(frozen=True, slots=True)
class DsVerifyingKeyResponse(Struct):
    """The DS's external-sender entry: groups list it in their external_senders extension."""

    external_sender: ExternalSender


# --- the EAR key in a WelcomeBundle ------------------------------------------------------------------


def _ear_key_info(group_id: GroupId) -> bytes:
    w = Writer()
    w.opaque(_LABEL_EAR_KEY)
    w.opaque(group_id.encode())
    return w.getvalue()


def encrypt_ear_key(
    init_key: bytes, group_id: GroupId, ear_key: bytes, *, cs: CipherSuite = SUITE_1
) -> bytes:
    """DS side: the group's EAR key sealed (HPKE base mode) to a joiner's KeyPackage init key; the
    encoding of an ``HPKECiphertext``."""
    kem_output, ct = cs.hpke.seal(init_key, _ear_key_info(group_id), b"", ear_key)
    return HPKECiphertext(kem_output, ct).encode()


def decrypt_ear_key(
    init_private_key: bytes, group_id: GroupId, ciphertext: bytes, *, cs: CipherSuite = SUITE_1
) -> bytes:
    """Joiner side: open :func:`encrypt_ear_key`; ValidationError if it does not open."""
    try:
        c = HPKECiphertext.decode(ciphertext)
        key = cs.hpke.open(c.kem_output, init_private_key, _ear_key_info(group_id), b"", c.ciphertext)
    except (HpkeError, DecodeError, ValueError) as e:
        raise ValidationError("encrypted GroupStateEarKey does not open") from e
    if len(key) != EAR_KEY_LENGTH:
        raise ValidationError("encrypted GroupStateEarKey has the wrong length")
    return key
