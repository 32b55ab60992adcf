"""Test doubles and a small client for the QS tests (the client library will do this for real)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

from phx.codec import Struct
from phx.config import QsConfig
from phx.crypto import SUITE_1
from phx.errors import TokenError
from phx.identifiers import Fqdn, GroupId, QsCid, QsUid
from phx.mls.key_package import create_key_package
from phx.mls.messages import Credential, MLSMessage, PrivateMessage
from phx.mls.messages.common import ContentType
from phx.queues import QueueReader
from phx.queuing.listeners import LocalListenerRegistry
from phx.queuing.messages import (
    AddPackage,
    ClientQueueConfig,
    CreateUserRecordParams,
    CreateUserRecordResponse,
    FanOutMessage,
    FanOutQueuePayload,
    MessageContent,
    MessageContentType,
    Operation,
    PushOperator,
    PushToken,
    QsClientRequest,
    QueueConfig,
    encrypt_push_token,
    make_queue_config_extension,
    seal_queue_config,
)
from phx.queuing.service import QsService
from phx.storage import Database, migrate

cs = SUITE_1
DOMAIN = Fqdn("qs-home.test")
T0 = 1_700_000_000


class FakeClock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class AcceptAll:
    """Privacy Pass double: accepts any non-empty token, refuses ``b"bad"``."""

    def __init__(self) -> None:
        self.redeemed: list[bytes] = []

    async def redeem(self, token: bytes, now: int) -> None:
        if token == b"bad":
            raise TokenError("token refused")
        self.redeemed.append(token)


class RecordingNotifier:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[PushToken] = []
        self.fail = fail

    async def notify(self, push_token: PushToken) -> None:
        if self.fail:
            raise TokenError("push provider refused")
        self.sent.append(push_token)


async def make_service(
    db: Database, clock: FakeClock | None = None, *, config: QsConfig | None = None, **kwargs: object
) -> QsService:
    await migrate(db, "qs")
    return await QsService.open(
        db,
        config or QsConfig(),
        DOMAIN,
        clock=clock or FakeClock(),
        redeemer=kwargs.pop("redeemer", AcceptAll()),  # type: ignore[arg-type]
        notifier=kwargs.pop("notifier", RecordingNotifier()),  # type: ignore[arg-type]
        listeners=kwargs.pop("listeners", LocalListenerRegistry()),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


@dataclass
class Client:
    """One client of one user, holding every private key."""

    service: QsService
    user_sk: bytes
    client_sk: bytes
    queue_sk: bytes
    queue_pk: bytes
    friendship_token: bytes
    push_key: bytes | None = None
    qs_uid: QsUid = field(default_factory=QsUid.random)
    qs_cid: QsCid | None = None
    reader: QueueReader | None = None

    @property
    def cid(self) -> QsCid:
        assert self.qs_cid is not None
        return self.qs_cid

    def request(
        self,
        op: Operation,
        params: Struct,
        *,
        as_user: bool = False,
        now: int | None = None,
        token: bytes | None = b"pp",
        key: bytes | None = None,
    ) -> bytes:
        sender: QsUid | QsCid = self.qs_uid if as_user else self.cid
        sk = key or (self.user_sk if as_user else self.client_sk)
        when = self.service.clock() if now is None else now
        return QsClientRequest.signed(op.value, params, sender, sk, when, privacy_pass_token=token).encode()

    async def call(self, op: Operation, params: Struct, **kw: object) -> bytes:
        return await self.service.handle(op, self.request(op, params, **kw))  # type: ignore[arg-type]

    def queue_config(self) -> ClientQueueConfig:
        qc = QueueConfig(self.push_key, self.cid)
        return seal_queue_config(self.service.queue_config_encryption_key, DOMAIN, qc)

    def add_package(
        self, *, last_resort: bool = False, config: ClientQueueConfig | None = None
    ) -> AddPackage:
        sig_sk, _ = cs.generate_signature_key_pair()
        bundle = create_key_package(
            cs,
            Credential.basic(os.urandom(8)),
            sig_sk,
            now=self.service.clock(),
            extensions=[make_queue_config_extension(config or self.queue_config())],
            last_resort=last_resort,
        )
        return AddPackage(bundle.key_package, os.urandom(48), os.urandom(48))

    async def read_queue(self) -> list[FanOutQueuePayload]:
        """Every message in the queue so far, decrypted (the dequeue API is tested separately)."""
        if self.reader is None:
            self.reader = QueueReader(cs, [self.queue_sk])
        items = await self.service.queue_items(self.cid)
        return [FanOutQueuePayload.decode(p) for p in self.reader.read_all(items)]


def push_token_ciphertext(key: bytes) -> bytes:
    return encrypt_push_token(key, PushToken(PushOperator.APPLE, b"device-token"), os.urandom(12))


async def register(service: QsService, *, push: bool = False) -> Client:
    user_sk, user_pk = cs.generate_signature_key_pair()
    client_sk, client_pk = cs.generate_signature_key_pair()
    queue_sk, queue_pk = cs.generate_hpke_key_pair()
    push_key = os.urandom(16) if push else None
    c = Client(service, user_sk, client_sk, queue_sk, queue_pk, os.urandom(32), push_key)
    params = CreateUserRecordParams(
        user_pk,
        c.friendship_token,
        client_pk,
        queue_pk,
        push_token_ciphertext(push_key) if push_key else None,
    )
    body = QsClientRequest(params.encode(), None, b"pp").encode()
    resp = CreateUserRecordResponse.decode(await service.handle(Operation.CREATE_USER_RECORD, body))
    c.qs_uid, c.qs_cid = resp.qs_uid, resp.qs_cid
    return c


def group_message(group: GroupId, body: bytes = b"ciphertext") -> MessageContent:
    pm = PrivateMessage(group.encode(), 1, ContentType.APPLICATION, b"", b"sender", body)
    return MessageContent(MessageContentType.APPLICATION, MLSMessage(pm))


def fan_out(
    configs: list[ClientQueueConfig], group: GroupId | None = None, body: bytes = b"ct"
) -> FanOutMessage:
    return FanOutMessage(tuple(configs), group_message(group or GroupId(uuid.uuid4(), DOMAIN), body))
