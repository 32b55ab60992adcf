"""Wire structs of the Queuing Service (book: queuing_service.md, glossary.md), named as in the book.

Additions where the book leaves the shape open (docs/decisions.md, "QS wire details"):

* :class:`QsClientRequest` frames every client call: the operation's params, an optional
  :class:`QsAuthToken` and an optional Privacy Pass token. The token's signature covers the sender id, the
  timestamp, the operation name and a hash of the params (:class:`QsAuthTbs`).
* :class:`AddPackageResponse` carries a :class:`KeyPackageBatch` signed with the QS signing key, so a DS can
  check that KeyPackages came from the user's QS recently.
* :class:`ClientRecordResponse`, the client-record and blocklist params, :class:`DequeueMessagesResponse`,
  :class:`QsQueueUpdate` (the websocket event), :class:`LocalEnqueueResponse` and the key responses.

The sealed queue config is HPKE (base mode) of :class:`QueueConfig` to the QS's QueueConfig encryption key;
see :func:`seal_queue_config`.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Annotated, Self

from phx.codec import U8, U64, MaxLen, Reader, Struct, WireEnum, Writer
from phx.crypto import PHX_PREFIX, SUITE_1, CipherSuite, HpkeError
from phx.errors import DecodeError, ValidationError
from phx.identifiers import Fqdn, GroupId, QsCid, QsUid
from phx.mls.messages import Extension, KeyPackage, MLSMessage, Welcome, find_extension
from phx.mls.messages.refs import make_key_package_ref
from phx.queues import QueueMessage

__all__ = [
    "LABEL_AUTH_TOKEN",
    "LABEL_KEY_PACKAGE_BATCH",
    "MAX_ADD_PACKAGES",
    "MAX_BLOCKLIST_CHANGE",
    "MAX_QUEUE_CONFIGS",
    "PUSH_TOKEN_KEY_LENGTH",
    "QUEUE_CONFIG_EXTENSION_TYPE",
    "AddPackage",
    "AddPackageParams",
    "AddPackageResponse",
    "ClientQueueConfig",
    "ClientRecordResponse",
    "CreateClientRecordParams",
    "CreateClientRecordResponse",
    "CreateUserRecordParams",
    "CreateUserRecordResponse",
    "DeleteClientRecordParams",
    "DeleteUserRecordParams",
    "DequeueMessagesParams",
    "DequeueMessagesResponse",
    "FanOutMessage",
    "FanOutQueuePayload",
    "KeyPackageBatch",
    "LocalEnqueueResponse",
    "MessageContent",
    "MessageContentType",
    "PublishKeyPackagesParams",
    "PushOperator",
    "PushToken",
    "QsAuthTbs",
    "QsAuthToken",
    "QsClientRequest",
    "QsQueueUpdate",
    "QsSenderId",
    "QueueConfig",
    "QueueConfigEncryptionKeyResponse",
    "QueueDeleted",
    "QueueMessage",
    "SealedQueueConfig",
    "UpdateBlocklistParams",
    "UpdateClientRecordParams",
    "UpdateUserRecordParams",
    "UserRecordParams",
    "UserRecordResponse",
    "VerifyingKeyResponse",
    "WelcomeBundle",
    "WsParams",
    "blocklist_hash",
    "decrypt_push_token",
    "encrypt_push_token",
    "make_queue_config_extension",
    "parse_queue_config_extension",
    "queue_config_of",
    "seal_queue_config",
    "unseal_queue_config",
]

#: KeyPackage extension carrying a :class:`ClientQueueConfig` (private-use range of RFC 9420 §17.3).
QUEUE_CONFIG_EXTENSION_TYPE = 0xF0A1

#: Structural caps enforced while decoding (the configured limits are checked by the core).
MAX_ADD_PACKAGES = 1000
MAX_QUEUE_CONFIGS = 10_000
MAX_BLOCKLIST_CHANGE = 1000
PUSH_TOKEN_KEY_LENGTH = 16

LABEL_AUTH_TOKEN = b"QsAuthToken"
LABEL_KEY_PACKAGE_BATCH = b"KeyPackageBatch"
_LABEL_QUEUE_CONFIG = b"QueueConfig"
_PUSH_TOKEN_AAD = PHX_PREFIX + b"push token"
_BLOCKLIST_LABEL = PHX_PREFIX + b"group blocklist"

Key = Annotated[bytes, MaxLen(256)]
Token = Annotated[bytes, MaxLen(256)]
Blob = Annotated[bytes, MaxLen(1 << 16)]


# --- authentication ----------------------------------------------------------------------------------


class _SenderKind(WireEnum):
    __wire_width__ = U8
    QS_UID = 1
    QS_CID = 2


@dataclass(frozen=True, slots=True)
class QsSenderId(Struct):
    """``enum QsSenderId { QsUid(QsUid), QsCid(QsCid) }``: a u8 tag then the id."""

    value: QsUid | QsCid

    def _write(self, w: Writer) -> None:
        if isinstance(self.value, QsUid):
            w.u8(_SenderKind.QS_UID)
        else:
            w.u8(_SenderKind.QS_CID)
        self.value._write(w)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        kind = _SenderKind.read(r)
        if kind == _SenderKind.QS_UID:
            return cls(QsUid.read(r))
        return cls(QsCid.read(r))


@dataclass(frozen=True, slots=True)
class QsAuthToken(Struct):
    sender_id: QsSenderId
    timestamp: Annotated[int, U64]
    signature: Annotated[bytes, MaxLen(128)]


@dataclass(frozen=True, slots=True)
class QsAuthTbs(Struct):
    """What a :class:`QsAuthToken` signs (label ``QsAuthToken``, prefix ``phx 1.0 ``)."""

    sender_id: QsSenderId
    timestamp: Annotated[int, U64]
    operation: Annotated[str, MaxLen(64)]
    params_hash: Annotated[bytes, MaxLen(64)]

    @classmethod
    def of(cls, sender_id: QsSenderId, timestamp: int, operation: str, params: bytes) -> QsAuthTbs:
        return cls(sender_id, timestamp, operation, hashlib.sha256(params).digest())


@dataclass(frozen=True, slots=True)
class QsClientRequest(Struct):
    """The body of every client call: the operation's encoded params plus its credentials."""

    params: Annotated[bytes, MaxLen(1 << 24)]
    auth_token: QsAuthToken | None
    privacy_pass_token: Token | None

    @classmethod
    def signed(
        cls,
        operation: str,
        params: Struct,
        sender: QsUid | QsCid,
        signature_private_key: bytes,
        now: int,
        *,
        privacy_pass_token: bytes | None = None,
        cs: CipherSuite = SUITE_1,
    ) -> QsClientRequest:
        """A request authenticated by the record key of ``sender`` (client-side helper)."""
        encoded = params.encode()
        sid = QsSenderId(sender)
        tbs = QsAuthTbs.of(sid, now, operation, encoded).encode()
        sig = cs.sign_with_label(signature_private_key, LABEL_AUTH_TOKEN, tbs, prefix=PHX_PREFIX)
        return cls(encoded, QsAuthToken(sid, now, sig), privacy_pass_token)


# --- queue configs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealedQueueConfig(Struct):
    kem_output: Annotated[bytes, MaxLen(256)]
    ciphertext: Annotated[bytes, MaxLen(1024)]


@dataclass(frozen=True, slots=True)
class ClientQueueConfig(Struct):
    client_homeserver_domain: Fqdn
    sealed_config: SealedQueueConfig


@dataclass(frozen=True, slots=True)
class QueueConfig(Struct):
    option_push_token_key: Annotated[bytes, MaxLen(64)] | None
    pseudonymous_client_id: QsCid


def _qc_info(domain: Fqdn) -> bytes:
    w = Writer()
    w.opaque(PHX_PREFIX + _LABEL_QUEUE_CONFIG)
    domain._write(w)
    return w.getvalue()


def seal_queue_config(
    encryption_key: bytes, domain: Fqdn, config: QueueConfig, *, cs: CipherSuite = SUITE_1
) -> ClientQueueConfig:
    """Client side: seal ``config`` to the QS of ``domain`` (fresh HPKE randomness, so unlinkable)."""
    kem_output, ct = cs.hpke.seal(encryption_key, _qc_info(domain), b"", config.encode())
    return ClientQueueConfig(domain, SealedQueueConfig(kem_output, ct))


def unseal_queue_config(
    private_key: bytes, domain: Fqdn, sealed: SealedQueueConfig, *, cs: CipherSuite = SUITE_1
) -> QueueConfig:
    """QS side: open a sealed config addressed to ``domain``; ValidationError if it does not open."""
    try:
        plaintext = cs.hpke.open(sealed.kem_output, private_key, _qc_info(domain), b"", sealed.ciphertext)
    except (HpkeError, ValueError) as e:
        raise ValidationError("sealed queue config does not open") from e
    try:
        return QueueConfig.decode(plaintext)
    except DecodeError as e:
        raise ValidationError(f"sealed queue config holds no QueueConfig: {e}") from e


def make_queue_config_extension(config: ClientQueueConfig) -> Extension:
    return Extension(QUEUE_CONFIG_EXTENSION_TYPE, config.encode())


def parse_queue_config_extension(ext: Extension) -> ClientQueueConfig:
    return ClientQueueConfig.decode(ext.extension_data)


def queue_config_of(key_package: KeyPackage) -> ClientQueueConfig | None:
    """The KeyPackage's QueueConfig extension, None when absent (DecodeError when malformed)."""
    ext = find_extension(key_package.extensions, QUEUE_CONFIG_EXTENSION_TYPE)
    return None if ext is None else parse_queue_config_extension(ext)


# --- push tokens -------------------------------------------------------------------------------------


class PushOperator(WireEnum):
    __wire_width__ = U8
    APPLE = 1
    GOOGLE = 2
    WEB_PUSH = 3


@dataclass(frozen=True, slots=True)
class PushToken(Struct):
    operator: PushOperator
    token: Annotated[bytes, MaxLen(4096)]


def encrypt_push_token(key: bytes, token: PushToken, nonce: bytes, *, cs: CipherSuite = SUITE_1) -> bytes:
    """Client side: ``nonce || AEAD(key, nonce, aad, PushToken)``; ``nonce`` must be fresh random."""
    if len(key) != cs.aead.nk or len(nonce) != cs.aead.nn:
        raise ValidationError("push token key or nonce has the wrong length")
    return nonce + cs.seal(key, nonce, _PUSH_TOKEN_AAD, token.encode())


def decrypt_push_token(key: bytes, ciphertext: bytes, *, cs: CipherSuite = SUITE_1) -> PushToken:
    nn = cs.aead.nn
    if len(key) != cs.aead.nk or len(ciphertext) <= nn:
        raise ValidationError("push token key or ciphertext has the wrong length")
    try:
        plaintext = cs.open(key, ciphertext[:nn], _PUSH_TOKEN_AAD, ciphertext[nn:])
    except HpkeError as e:
        raise ValidationError("push token does not decrypt") from e
    return PushToken.decode(plaintext)


# --- fan-out -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WelcomeBundle(Struct):
    welcome: Welcome
    encrypted_welcome_attribution_info: Blob
    encrypted_group_state_ear_key: Blob
    encrypted_credential_encryption_key: Blob
    group_id: GroupId


class MessageContentType(WireEnum):
    __wire_width__ = U8
    COMMIT = 1
    APPLICATION = 2
    WELCOME_BUNDLE = 3


@dataclass(frozen=True, slots=True)
class MessageContent(Struct):
    """``enum MessageContent { Commit(MlsMessage), Application(MlsMessage), WelcomeBundle(…) }``."""

    content_type: MessageContentType
    body: MLSMessage | WelcomeBundle

    def __post_init__(self) -> None:
        want = WelcomeBundle if self.content_type == MessageContentType.WELCOME_BUNDLE else MLSMessage
        if not isinstance(self.body, want):
            raise ValueError(f"{self.content_type.name} content must be a {want.__name__}")

    def _write(self, w: Writer) -> None:
        w.u8(self.content_type)
        self.body._write(w)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        ct = MessageContentType.read(r)
        body: MLSMessage | WelcomeBundle
        body = WelcomeBundle.read(r) if ct == MessageContentType.WELCOME_BUNDLE else MLSMessage.read(r)
        return cls(ct, body)

    def group_id(self) -> GroupId:
        """The Phoenix group the content belongs to (DecodeError if it names none)."""
        body = self.body
        if isinstance(body, WelcomeBundle):
            return body.group_id
        pub, priv = body.public_message, body.private_message
        if pub is not None:
            return GroupId.from_mls(pub.content.group_id)
        if priv is not None:
            return GroupId.from_mls(priv.group_id)
        raise DecodeError("commit/application content must be a PublicMessage or PrivateMessage")


@dataclass(frozen=True, slots=True)
class FanOutMessage(Struct):
    client_queue_configs: Annotated[tuple[ClientQueueConfig, ...], MaxLen(MAX_QUEUE_CONFIGS)]
    message_content: MessageContent


@dataclass(frozen=True, slots=True)
class FanOutQueuePayload(Struct):
    """The plaintext of a fan-out queue item: when the QS enqueued it and what."""

    timestamp: Annotated[int, U64]
    content: MessageContent


@dataclass(frozen=True, slots=True)
class QueueDeleted(Struct):
    client_queue_config: ClientQueueConfig
    group_id: GroupId


@dataclass(frozen=True, slots=True)
class LocalEnqueueResponse(Struct):
    queue_deleted: tuple[QueueDeleted, ...]


def blocklist_hash(salt: bytes, group_id: GroupId, *, cs: CipherSuite = SUITE_1) -> bytes:
    """The salted group-id hash stored in a queue's blocklist."""
    return cs.mac(salt, _BLOCKLIST_LABEL + group_id.encode())


# --- user and client records -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateUserRecordParams(Struct):
    user_record_auth_key: Key
    friendship_token: Token
    client_record_auth_key: Key
    queue_encryption_key: Key
    encrypted_push_token: Blob | None = None


@dataclass(frozen=True, slots=True)
class CreateUserRecordResponse(Struct):
    qs_uid: QsUid
    qs_cid: QsCid


@dataclass(frozen=True, slots=True)
class UpdateUserRecordParams(Struct):
    qs_uid: QsUid
    user_record_auth_key: Key
    friendship_token: Token


@dataclass(frozen=True, slots=True)
class UserRecordParams(Struct):
    qs_uid: QsUid


@dataclass(frozen=True, slots=True)
class ClientRecordResponse(Struct):
    qs_cid: QsCid
    client_record_auth_key: Key
    queue_encryption_key: Key
    encrypted_push_token: Blob | None
    activity_time: Annotated[int, U64]


@dataclass(frozen=True, slots=True)
class UserRecordResponse(Struct):
    user_record_auth_key: Key
    friendship_token: Token
    client_records: tuple[ClientRecordResponse, ...]


@dataclass(frozen=True, slots=True)
class DeleteUserRecordParams(Struct):
    qs_uid: QsUid


@dataclass(frozen=True, slots=True)
class CreateClientRecordParams(Struct):
    qs_uid: QsUid
    client_record_auth_key: Key
    queue_encryption_key: Key
    encrypted_push_token: Blob | None = None


@dataclass(frozen=True, slots=True)
class CreateClientRecordResponse(Struct):
    qs_cid: QsCid


@dataclass(frozen=True, slots=True)
class UpdateClientRecordParams(Struct):
    """Overwrites the record's keys and push token. A new queue encryption key triggers a key update."""

    qs_cid: QsCid
    client_record_auth_key: Key
    queue_encryption_key: Key
    encrypted_push_token: Blob | None


@dataclass(frozen=True, slots=True)
class DeleteClientRecordParams(Struct):
    qs_cid: QsCid


@dataclass(frozen=True, slots=True)
class UpdateBlocklistParams(Struct):
    qs_cid: QsCid
    add: Annotated[tuple[GroupId, ...], MaxLen(MAX_BLOCKLIST_CHANGE)]
    remove: Annotated[tuple[GroupId, ...], MaxLen(MAX_BLOCKLIST_CHANGE)]


# --- KeyPackages -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddPackage(Struct):
    key_package: KeyPackage
    encrypted_client_credential: Blob
    encrypted_signature_encryption_key: Blob


@dataclass(frozen=True, slots=True)
class PublishKeyPackagesParams(Struct):
    qs_cid: QsCid
    add_packages: Annotated[tuple[AddPackage, ...], MaxLen(MAX_ADD_PACKAGES)]


@dataclass(frozen=True, slots=True)
class AddPackageParams(Struct):
    friendship_token: Token


@dataclass(frozen=True, slots=True)
class KeyPackageBatch(Struct):
    """The QS's signature over the KeyPackages it handed out (label ``KeyPackageBatch``)."""

    homeserver_domain: Fqdn
    timestamp: Annotated[int, U64]
    key_package_refs: tuple[Annotated[bytes, MaxLen(64)], ...]
    signature: Annotated[bytes, MaxLen(128)]

    def tbs(self) -> bytes:
        w = Writer()
        self.homeserver_domain._write(w)
        w.u64(self.timestamp)
        w.vector(self.key_package_refs, lambda w2, ref: w2.opaque(ref))
        return w.getvalue()

    @classmethod
    def sign(
        cls,
        domain: Fqdn,
        timestamp: int,
        key_packages: tuple[KeyPackage, ...],
        signing_key: bytes,
        *,
        cs: CipherSuite = SUITE_1,
    ) -> KeyPackageBatch:
        refs = tuple(make_key_package_ref(cs, kp.encode()) for kp in key_packages)
        unsigned = cls(domain, timestamp, refs, b"")
        sig = cs.sign_with_label(signing_key, LABEL_KEY_PACKAGE_BATCH, unsigned.tbs(), prefix=PHX_PREFIX)
        return cls(domain, timestamp, refs, sig)

    def verify(
        self, verifying_key: bytes, key_packages: tuple[KeyPackage, ...], *, cs: CipherSuite = SUITE_1
    ) -> None:
        """SignatureError unless signed by ``verifying_key`` over exactly these KeyPackages."""
        refs = tuple(make_key_package_ref(cs, kp.encode()) for kp in key_packages)
        if refs != self.key_package_refs:
            raise ValidationError("KeyPackageBatch does not match the KeyPackages")
        cs.check_signature(
            verifying_key, LABEL_KEY_PACKAGE_BATCH, self.tbs(), self.signature, prefix=PHX_PREFIX
        )


@dataclass(frozen=True, slots=True)
class AddPackageResponse(Struct):
    add_packages: tuple[AddPackage, ...]
    key_package_batch: KeyPackageBatch


# --- queues ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DequeueMessagesParams(Struct):
    qs_cid: QsCid
    sequence_number_start: Annotated[int, U64]
    max_message_number: Annotated[int, U64]


@dataclass(frozen=True, slots=True)
class DequeueMessagesResponse(Struct):
    messages: tuple[QueueMessage, ...]
    remaining_messages_number: Annotated[int, U64]


@dataclass(frozen=True, slots=True)
class WsParams(Struct):
    qs_cid: QsCid


@dataclass(frozen=True, slots=True)
class QsQueueUpdate(Struct):
    """Sent over the websocket when the queue grew: items up to ``next_sequence_number - 1`` exist."""

    next_sequence_number: Annotated[int, U64]


# --- public keys -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifyingKeyResponse(Struct):
    verifying_key: Key


@dataclass(frozen=True, slots=True)
class QueueConfigEncryptionKeyResponse(Struct):
    encryption_key: Key


class Operation(enum.StrEnum):
    """Client operation names: ``POST /qs/v1/<name>`` and the ``operation`` an auth token signs."""

    CREATE_USER_RECORD = "create_user_record"
    UPDATE_USER_RECORD = "update_user_record"
    GET_USER_RECORD = "get_user_record"
    DELETE_USER_RECORD = "delete_user_record"
    CREATE_CLIENT_RECORD = "create_client_record"
    UPDATE_CLIENT_RECORD = "update_client_record"
    DELETE_CLIENT_RECORD = "delete_client_record"
    UPDATE_BLOCKLIST = "update_blocklist"
    PUBLISH_KEY_PACKAGES = "publish_key_packages"
    GET_ADD_PACKAGES = "get_add_packages"
    DEQUEUE_MESSAGES = "dequeue_messages"
    LISTEN = "listen"
    QUEUE_CONFIG_ENCRYPTION_KEY = "queue_config_encryption_key"
    VERIFYING_KEY = "verifying_key"
