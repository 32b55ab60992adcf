"""The Queuing Service: decode -> rules (:mod:`.core`) -> store (:mod:`.store`) -> encode.

Every client operation arrives as a :class:`~.messages.QsClientRequest` (see :meth:`QsService.handle`);
the local DS calls :meth:`QsService.enqueue_fan_out` in process. Collaborators are passed in:

* ``redeemer`` (:class:`TokenRedeemer`): Privacy Pass redemption, required on every client operation but
  dequeue and listen (book: "Authentication").
* ``forwarder`` (:class:`RemoteForwarder`): queue configs of other homeservers. It is called *inside* the
  fan-out's transaction so it can write its outbox in the same commit (no remote message without the local
  ones, no duplicate on a DS retry). The default refuses with 503 until federation exists.
* ``notifier`` (:class:`~.listeners.PushNotifier`) and ``listeners`` (:class:`~.listeners.ListenerRegistry`).
* ``clock``: returns unix seconds; the core never reads a clock.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from phx.codec import Struct
from phx.config import QsConfig
from phx.crypto import SUITE_1, CipherSuite
from phx.errors import Conflict, DecodeError, NotFound, TokenError, Unavailable, ValidationError
from phx.identifiers import Fqdn, QsCid, QsUid
from phx.queues import QueueMessage, Random
from phx.storage import Connection, Database

from . import core
from .fanout import (
    DEFAULT_BATCH,
    DEFAULT_CONFIG_CACHE,
    FanOutDeliverer,
    FederationUnavailable,
    RemoteForwarder,
)
from .listeners import ListenerRegistry, LocalListenerRegistry, LoggingPushNotifier, PushNotifier
from .messages import (
    AddPackage,
    AddPackageParams,
    AddPackageResponse,
    ClientRecordResponse,
    CreateClientRecordParams,
    CreateClientRecordResponse,
    CreateUserRecordParams,
    CreateUserRecordResponse,
    DeleteClientRecordParams,
    DeleteUserRecordParams,
    DequeueMessagesParams,
    DequeueMessagesResponse,
    FanOutMessage,
    KeyPackageBatch,
    LocalEnqueueResponse,
    Operation,
    PublishKeyPackagesParams,
    QsClientRequest,
    QueueConfigEncryptionKeyResponse,
    QueueDeleted,
    UpdateBlocklistParams,
    UpdateClientRecordParams,
    UpdateUserRecordParams,
    UserRecordParams,
    UserRecordResponse,
    VerifyingKeyResponse,
    WsParams,
)
from .store import QsStore

__all__ = [
    "FederationUnavailable",
    "QsService",
    "RemoteForwarder",
    "TokenRedeemer",
]

log = logging.getLogger("phx.queuing")

#: Most entries in one queue's blocklist.
MAX_BLOCKLIST = 10_000

_KEY_SIGNING = "signing_key"
_KEY_QUEUE_CONFIG = "queue_config_key"

S = TypeVar("S", bound=Struct)


class TokenRedeemer(Protocol):
    async def redeem(self, token: bytes, now: int) -> None:
        """Accept a Privacy Pass token once; raise :class:`~phx.errors.TokenError` otherwise."""
        ...


class QsService:
    def __init__(
        self,
        db: Database,
        config: QsConfig,
        domain: Fqdn,
        *,
        signing_key: bytes,
        queue_config_key: bytes,
        clock: Callable[[], int],
        redeemer: TokenRedeemer,
        forwarder: RemoteForwarder | None = None,
        notifier: PushNotifier | None = None,
        listeners: ListenerRegistry | None = None,
        random: Random = os.urandom,
        config_cache_size: int = DEFAULT_CONFIG_CACHE,
        fan_out_batch: int = DEFAULT_BATCH,
        cs: CipherSuite = SUITE_1,
    ) -> None:
        self.db = db
        self.config = config
        self.domain = domain
        self.cs = cs
        self.clock = clock
        self.redeemer = redeemer
        self.forwarder: RemoteForwarder = forwarder or FederationUnavailable()
        self.notifier: PushNotifier = notifier or LoggingPushNotifier()
        self.listeners: ListenerRegistry = listeners or LocalListenerRegistry()
        self.random = random
        self.store = QsStore()
        self._signing_key = signing_key
        self.verifying_key = cs.signature_public_key(signing_key)
        self._qc_private = queue_config_key
        self.queue_config_encryption_key = cs.hpke_public_key(queue_config_key)
        self.fan_out = FanOutDeliverer(
            db,
            self.store,
            config,
            domain,
            queue_config_key,
            cs=cs,
            clock=clock,
            forwarder=self.forwarder,
            listeners=self.listeners,
            notifier=self.notifier,
            random=random,
            cache_size=config_cache_size,
            batch=fan_out_batch,
        )
        self._handlers: dict[Operation, Callable[[QsClientRequest, int], Awaitable[Struct | None]]] = {
            Operation.CREATE_USER_RECORD: self.create_user_record,
            Operation.UPDATE_USER_RECORD: self.update_user_record,
            Operation.GET_USER_RECORD: self.get_user_record,
            Operation.DELETE_USER_RECORD: self.delete_user_record,
            Operation.CREATE_CLIENT_RECORD: self.create_client_record,
            Operation.UPDATE_CLIENT_RECORD: self.update_client_record,
            Operation.DELETE_CLIENT_RECORD: self.delete_client_record,
            Operation.UPDATE_BLOCKLIST: self.update_blocklist,
            Operation.PUBLISH_KEY_PACKAGES: self.publish_key_packages,
            Operation.GET_ADD_PACKAGES: self.get_add_packages,
            Operation.DEQUEUE_MESSAGES: self.dequeue_messages,
            Operation.QUEUE_CONFIG_ENCRYPTION_KEY: self.get_queue_config_encryption_key,
        }

    @classmethod
    async def open(
        cls,
        db: Database,
        config: QsConfig,
        domain: Fqdn,
        *,
        clock: Callable[[], int],
        redeemer: TokenRedeemer,
        forwarder: RemoteForwarder | None = None,
        notifier: PushNotifier | None = None,
        listeners: ListenerRegistry | None = None,
        random: Random = os.urandom,
        config_cache_size: int = DEFAULT_CONFIG_CACHE,
        fan_out_batch: int = DEFAULT_BATCH,
        cs: CipherSuite = SUITE_1,
    ) -> QsService:
        """Load the QS key pairs from the database, generating them on first start (the ``qs``
        migrations must have run). Two processes starting together end up with the same keys."""
        now = clock()
        store = QsStore()
        async with db.transaction() as conn:
            await store.put_key_if_absent(conn, _KEY_SIGNING, cs.generate_signature_key_pair()[0], now)
            await store.put_key_if_absent(conn, _KEY_QUEUE_CONFIG, cs.generate_hpke_key_pair()[0], now)
            signing = await store.get_key(conn, _KEY_SIGNING)
            qc = await store.get_key(conn, _KEY_QUEUE_CONFIG)
        if signing is None or qc is None:
            raise Unavailable("QS key pairs missing after creation")
        return cls(
            db,
            config,
            domain,
            signing_key=signing,
            queue_config_key=qc,
            clock=clock,
            redeemer=redeemer,
            forwarder=forwarder,
            notifier=notifier,
            listeners=listeners,
            random=random,
            config_cache_size=config_cache_size,
            fan_out_batch=fan_out_batch,
            cs=cs,
        )

    # --- dispatch -------------------------------------------------------------------------------------

    async def handle(self, operation: Operation, body: bytes) -> bytes:
        """Run one client operation on its encoded :class:`QsClientRequest`; returns the encoded response
        (empty for operations without one)."""
        handler = self._handlers.get(operation)
        if handler is None:
            raise NotFound(f"no QS operation {operation}")
        request = QsClientRequest.decode(body)
        result = await handler(request, self.clock())
        return b"" if result is None else result.encode()

    @property
    def signing_key(self) -> bytes:
        """The QS signing key's private half, for the federation layer to sign QS-to-QS frames."""
        return self._signing_key

    def verifying_key_response(self) -> VerifyingKeyResponse:
        return VerifyingKeyResponse(self.verifying_key)

    async def _redeem(self, request: QsClientRequest, now: int) -> None:
        if request.privacy_pass_token is None:
            raise TokenError("this operation needs a Privacy Pass token")
        await self.redeemer.redeem(request.privacy_pass_token, now)

    def _auth(
        self, request: QsClientRequest, op: Operation, who: QsUid | QsCid, key: bytes, now: int
    ) -> None:
        core.check_auth(self.cs, request, op.value, who, key, now, self.config.max_auth_token_age)

    @staticmethod
    def _params(request: QsClientRequest, cls: type[S]) -> S:
        return cls.decode(request.params)

    # --- user records ---------------------------------------------------------------------------------

    async def create_user_record(self, request: QsClientRequest, now: int) -> CreateUserRecordResponse:
        await self._redeem(request, now)
        p = self._params(request, CreateUserRecordParams)
        qs_uid = QsUid(uuid.UUID(bytes=self.random(16), version=4))
        qs_cid = QsCid(qs_uid, uuid.UUID(bytes=self.random(16), version=4))
        user = core.new_user_record(qs_uid, p.user_record_auth_key, p.friendship_token, now)
        client, state, items = core.new_client_record(
            self.cs,
            qs_cid,
            p.client_record_auth_key,
            p.queue_encryption_key,
            p.encrypted_push_token,
            now,
            random=self.random,
        )
        async with self.db.transaction() as conn:
            if await self.store.get_user_by_token(conn, p.friendship_token) is not None:
                raise Conflict("friendship token already in use")
            await self.store.insert_user(conn, user)
            await self.store.insert_client(conn, client)
            await self.store.queues.create(conn, client.queue_id, state, items)
        return CreateUserRecordResponse(qs_uid, qs_cid)

    async def update_user_record(self, request: QsClientRequest, now: int) -> None:
        await self._redeem(request, now)
        p = self._params(request, UpdateUserRecordParams)
        async with self.db.transaction() as conn:
            user = await self._user(conn, p.qs_uid, for_update=True)
            self._auth(request, Operation.UPDATE_USER_RECORD, p.qs_uid, user.auth_key, now)
            new = core.new_user_record(p.qs_uid, p.user_record_auth_key, p.friendship_token, user.created_at)
            if new.friendship_token != user.friendship_token:
                other = await self.store.get_user_by_token(conn, new.friendship_token)
                if other is not None:
                    raise Conflict("friendship token already in use")
            await self.store.update_user(conn, new)

    async def get_user_record(self, request: QsClientRequest, now: int) -> UserRecordResponse:
        await self._redeem(request, now)
        p = self._params(request, UserRecordParams)
        async with self.db.transaction(readonly=True) as conn:
            user = await self._user(conn, p.qs_uid)
            self._auth(request, Operation.GET_USER_RECORD, p.qs_uid, user.auth_key, now)
            clients = await self.store.clients_of_user(conn, p.qs_uid)
            records = []
            for c in clients:
                state = await self.store.queues.get(conn, c.queue_id)
                qek = state.encryption_key if state is not None else b""
                records.append(
                    ClientRecordResponse(c.qs_cid, c.auth_key, qek, c.encrypted_push_token, c.activity_time)
                )
        return UserRecordResponse(user.auth_key, user.friendship_token, tuple(records))

    async def delete_user_record(self, request: QsClientRequest, now: int) -> None:
        await self._redeem(request, now)
        p = self._params(request, DeleteUserRecordParams)
        async with self.db.transaction() as conn:
            user = await self._user(conn, p.qs_uid, for_update=True)
            self._auth(request, Operation.DELETE_USER_RECORD, p.qs_uid, user.auth_key, now)
            await self.store.delete_user(conn, p.qs_uid)

    async def _user(self, conn: Connection, qs_uid: QsUid, *, for_update: bool = False) -> core.UserRecord:
        user = await self.store.get_user(conn, qs_uid, for_update=for_update)
        if user is None:
            raise NotFound("no such QS user record")
        return user

    async def _client(
        self, conn: Connection, qs_cid: QsCid, *, for_update: bool = False
    ) -> core.ClientRecord:
        client = await self.store.get_client(conn, qs_cid, for_update=for_update)
        if client is None:
            raise NotFound("no such QS client record")
        return client

    # --- client records -------------------------------------------------------------------------------

    async def create_client_record(self, request: QsClientRequest, now: int) -> CreateClientRecordResponse:
        await self._redeem(request, now)
        p = self._params(request, CreateClientRecordParams)
        qs_cid = QsCid(p.qs_uid, uuid.UUID(bytes=self.random(16), version=4))
        client, state, items = core.new_client_record(
            self.cs,
            qs_cid,
            p.client_record_auth_key,
            p.queue_encryption_key,
            p.encrypted_push_token,
            now,
            random=self.random,
        )
        async with self.db.transaction() as conn:
            # Locking the user record serializes concurrent creations, so the limit holds.
            user = await self._user(conn, p.qs_uid, for_update=True)
            self._auth(request, Operation.CREATE_CLIENT_RECORD, p.qs_uid, user.auth_key, now)
            if await self.store.count_clients(conn, p.qs_uid) >= self.config.max_client_records_per_user:
                raise ValidationError(
                    f"a QS user record holds at most {self.config.max_client_records_per_user} client records"
                )
            await self.store.insert_client(conn, client)
            await self.store.queues.create(conn, client.queue_id, state, items)
        return CreateClientRecordResponse(qs_cid)

    async def update_client_record(self, request: QsClientRequest, now: int) -> None:
        await self._redeem(request, now)
        p = self._params(request, UpdateClientRecordParams)
        async with self.db.transaction() as conn:
            client = await self._client(conn, p.qs_cid, for_update=True)
            self._auth(request, Operation.UPDATE_CLIENT_RECORD, p.qs_cid, client.auth_key, now)
            state = await self.store.queues.get(conn, client.queue_id, for_update=True)
            if state is None:
                raise NotFound("no such queue")
            new_client, new_state, items = core.update_client_record(
                self.cs,
                client,
                state,
                p.client_record_auth_key,
                p.queue_encryption_key,
                p.encrypted_push_token,
                now,
                random=self.random,
            )
            await self.store.update_client(conn, new_client)
            await self.store.queues.save(
                conn, {client.queue_id: new_state}, [(client.queue_id, i) for i in items]
            )
        if items:
            self.listeners.notify(client.queue_id, new_state.next_sequence)

    async def delete_client_record(self, request: QsClientRequest, now: int) -> None:
        await self._redeem(request, now)
        p = self._params(request, DeleteClientRecordParams)
        async with self.db.transaction() as conn:
            client = await self._client(conn, p.qs_cid, for_update=True)
            self._auth(request, Operation.DELETE_CLIENT_RECORD, p.qs_cid, client.auth_key, now)
            await self.store.delete_client(conn, p.qs_cid)

    async def update_blocklist(self, request: QsClientRequest, now: int) -> None:
        await self._redeem(request, now)
        p = self._params(request, UpdateBlocklistParams)
        async with self.db.transaction() as conn:
            client = await self._client(conn, p.qs_cid, for_update=True)
            self._auth(request, Operation.UPDATE_BLOCKLIST, p.qs_cid, client.auth_key, now)
            new = core.update_blocklist(client, p.add, p.remove, max_entries=MAX_BLOCKLIST)
            await self.store.update_client(conn, new)

    # --- KeyPackages ----------------------------------------------------------------------------------

    async def publish_key_packages(self, request: QsClientRequest, now: int) -> None:
        await self._redeem(request, now)
        p = self._params(request, PublishKeyPackagesParams)
        checked = core.check_add_packages(
            p.add_packages,
            p.qs_cid,
            self.domain,
            self._qc_private,
            now,
            max_count=self.config.max_add_packages,
        )
        async with self.db.transaction() as conn:
            client = await self._client(conn, p.qs_cid, for_update=True)
            self._auth(request, Operation.PUBLISH_KEY_PACKAGES, p.qs_cid, client.auth_key, now)
            await self.store.replace_key_packages(
                conn, p.qs_cid, [(ap.encode(), last) for ap, last in checked]
            )

    async def get_add_packages(self, request: QsClientRequest, now: int) -> AddPackageResponse:
        await self._redeem(request, now)
        p = self._params(request, AddPackageParams)
        async with self.db.transaction() as conn:
            user = await self.store.get_user_by_token(conn, p.friendship_token)
            if user is None:
                raise NotFound("no QS user record with this friendship token")
            blobs = []
            for client in await self.store.clients_of_user(conn, user.qs_uid):
                blob = await self.store.take_add_package(conn, client.qs_cid)
                if blob is not None:
                    blobs.append(blob)
        packages = tuple(AddPackage.decode(b) for b in blobs)
        batch = KeyPackageBatch.sign(
            self.domain, now, tuple(ap.key_package for ap in packages), self._signing_key, cs=self.cs
        )
        return AddPackageResponse(packages, batch)

    # --- queues ---------------------------------------------------------------------------------------

    async def dequeue_messages(self, request: QsClientRequest, now: int) -> DequeueMessagesResponse:
        p = self._params(request, DequeueMessagesParams)
        limit = core.dequeue_limit(p.max_message_number, self.config.max_messages_per_dequeue)
        async with self.db.transaction() as conn:
            client = await self._client(conn, p.qs_cid)
            self._auth(request, Operation.DEQUEUE_MESSAGES, p.qs_cid, client.auth_key, now)
            state = await self.store.queues.get(conn, client.queue_id, for_update=True)
            if state is None:
                raise NotFound("no such queue")
            core.check_dequeue_start(p.sequence_number_start, state)
            items, remaining = await self.store.queues.dequeue(
                conn, client.queue_id, p.sequence_number_start, limit
            )
            await self.store.touch_client(conn, p.qs_cid, now)
        return DequeueMessagesResponse(tuple(items), remaining)

    async def authenticate_listen(self, body: bytes) -> tuple[QsCid, int]:
        """Check a websocket's opening frame; returns the client and its queue's next sequence number."""
        request = QsClientRequest.decode(body)
        p = self._params(request, WsParams)
        now = self.clock()
        async with self.db.transaction(readonly=True) as conn:
            client = await self._client(conn, p.qs_cid)
            self._auth(request, Operation.LISTEN, p.qs_cid, client.auth_key, now)
            state = await self.store.queues.get(conn, client.queue_id)
        if state is None:
            raise NotFound("no such queue")
        return p.qs_cid, state.next_sequence

    async def get_queue_config_encryption_key(
        self, request: QsClientRequest, now: int
    ) -> QueueConfigEncryptionKeyResponse:
        await self._redeem(request, now)
        if request.params:
            raise DecodeError("this operation takes no params")
        return QueueConfigEncryptionKeyResponse(self.queue_config_encryption_key)

    # --- fan-out from the DS --------------------------------------------------------------------------

    async def local_enqueue(self, body: bytes) -> bytes:
        """The local DS's call on wire bytes: a FanOutMessage in, a LocalEnqueueResponse out."""
        deleted = await self.enqueue_fan_out(FanOutMessage.decode(body))
        return LocalEnqueueResponse(tuple(deleted)).encode()

    async def enqueue_fan_out(self, fan_out: FanOutMessage) -> list[QueueDeleted]:
        """Deliver one fan-out (in one transaction, possibly shared with concurrent fan-outs); returns the
        configs whose queue does not exist."""
        return await self.fan_out.deliver(fan_out)

    # --- expiry ---------------------------------------------------------------------------------------

    async def expire(self, now: int) -> tuple[int, int]:
        """Delete client records inactive longer than the maximal age (and their queues and KeyPackages),
        then user records left without clients. Returns (client records, user records) deleted."""
        cutoff = core.expiry_cutoff(now, self.config.max_client_record_age)
        async with self.db.transaction() as conn:
            return await self.store.delete_expired(conn, cutoff)

    async def queue_items(self, qs_cid: QsCid) -> list[QueueMessage]:
        """Every item in a client's queue (operator tooling and tests; no authentication)."""
        async with self.db.transaction() as conn:
            state = await self.store.queues.get(conn, core.queue_id_of(qs_cid), for_update=True)
            if state is None:
                raise NotFound("no such queue")
            items, _ = await self.store.queues.dequeue(conn, core.queue_id_of(qs_cid), 0, 1 << 62)
        return items
