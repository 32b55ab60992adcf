"""Homeservers for federation tests: a QS plus federation on one database, reachable through an httpx
transport (in-process ASGI, or real HTTPS in tests/e2e)."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from starlette.routing import BaseRoute

from phx.config import Config, FederationConfig, OutboxConfig, RateLimitConfig
from phx.crypto import SUITE_1
from phx.federation.service import FederationService
from phx.identifiers import Fqdn, GroupId, QsCid
from phx.mls.messages import MLSMessage, PrivateMessage
from phx.mls.messages.common import ContentType
from phx.queues import QueueReader
from phx.queuing.listeners import ListenerRegistry
from phx.queuing.messages import (
    ClientQueueConfig,
    CreateUserRecordParams,
    CreateUserRecordResponse,
    FanOutMessage,
    FanOutQueuePayload,
    MessageContent,
    MessageContentType,
    Operation,
    QsClientRequest,
    QueueConfig,
    seal_queue_config,
)
from phx.queuing.routes import qs_routes
from phx.queuing.service import QsService
from phx.server import Registry, create_app
from phx.storage import Database, migrate

cs = SUITE_1


class AcceptAll:
    async def redeem(self, token: bytes, now: int) -> None:
        return None


class QsRoutes:
    """The QS as a :class:`phx.server.Service` (the lead's wiring does this for real)."""

    name = "qs"

    def __init__(self, qs: QsService) -> None:
        self.qs = qs

    def routes(self) -> Sequence[BaseRoute]:
        return qs_routes(self.qs)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def fast_config(domain: str, **federation: Any) -> Config:
    """Defaults, with retry timings small enough for tests and rate limits off unless given."""
    config = Config.default(domain)
    fed = FederationConfig(
        outbox=OutboxConfig(backoff_base=0.02, backoff_max=0.2, batch_size=50),
        rate_limit=RateLimitConfig(per_domain_rate=0, per_queue_rate=0),
    )
    return replace(config, federation=replace(fed, **federation))


@dataclass
class Homeserver:
    domain: Fqdn
    config: Config
    db: Database
    qs: QsService
    fed: FederationService
    registry: Registry
    clients: list[Client] = field(default_factory=list)

    _app: Any = None

    def app(self) -> Any:
        """The homeserver's app (one per homeserver: its metrics are registered once)."""
        if self._app is None:
            self._app = create_app(self.config, [QsRoutes(self.qs), self.fed], metrics=self.registry)
        return self._app

    async def register(self) -> Client:
        client = await register(self.qs)
        self.clients.append(client)
        return client


async def make_homeserver(
    config: Config,
    db: Database,
    transport: httpx.AsyncBaseTransport | None,
    *,
    listeners: ListenerRegistry | None = None,
    **fed_kwargs: Any,
) -> Homeserver:
    """``transport`` None: real HTTPS from the config (TLS verified against ``federation.ca_file``)."""
    await migrate(db, "qs")
    await migrate(db, "federation")
    fed_kwargs.setdefault("rng", random.Random(1))
    fed_kwargs.setdefault("probe_interval", 0.2)
    fed_kwargs.setdefault("poll_interval", 0.2)
    fed_kwargs.setdefault("lease", 2.0)
    registry = Registry()
    fed = FederationService(config, db, transport=transport, registry=registry, **fed_kwargs)
    qs = await QsService.open(
        db,
        config.qs,
        config.server.domain,
        clock=lambda: int(time.time()),
        redeemer=AcceptAll(),
        forwarder=fed.forwarder,
        listeners=listeners if listeners is not None else fed.listeners,
    )
    fed.bind(qs)
    return Homeserver(config.server.domain, config, db, qs, fed, registry)


@dataclass
class Client:
    qs: QsService
    qs_cid: QsCid
    queue_sk: bytes
    reader: QueueReader | None = None
    seen: list[FanOutQueuePayload] = field(default_factory=list)

    def queue_config(self) -> ClientQueueConfig:
        return seal_queue_config(
            self.qs.queue_config_encryption_key, self.qs.domain, QueueConfig(None, self.qs_cid)
        )

    async def read(self) -> list[FanOutQueuePayload]:
        """Every message enqueued so far, decrypted, in queue order."""
        if self.reader is None:
            self.reader = QueueReader(cs, [self.queue_sk])
        items = await self.qs.queue_items(self.qs_cid)
        # The reader skips what it has read already, so keep what it returned before.
        self.seen.extend(FanOutQueuePayload.decode(p) for p in self.reader.read_all(items))
        return list(self.seen)

    async def bodies(self) -> list[bytes]:
        return [body_of(p) for p in await self.read()]


def body_of(payload: FanOutQueuePayload) -> bytes:
    """The test's message text (carried as the PrivateMessage ciphertext)."""
    body = payload.content.body
    assert isinstance(body, MLSMessage) and body.private_message is not None
    return body.private_message.ciphertext


async def all_have(clients: Sequence[Client], count: int) -> bool:
    for c in clients:
        if len(await c.bodies()) < count:
            return False
    return True


async def register(qs: QsService) -> Client:
    _, pk = cs.generate_signature_key_pair()
    queue_sk, queue_pk = cs.generate_hpke_key_pair()
    params = CreateUserRecordParams(pk, os.urandom(32), pk, queue_pk)
    body = QsClientRequest(params.encode(), None, b"pp").encode()
    resp = CreateUserRecordResponse.decode(await qs.handle(Operation.CREATE_USER_RECORD, body))
    return Client(qs, resp.qs_cid, queue_sk)


def message(group: GroupId, body: bytes) -> MessageContent:
    pm = PrivateMessage(group.encode(), 1, ContentType.APPLICATION, b"", b"sender", body)
    return MessageContent(MessageContentType.APPLICATION, MLSMessage(pm))


def fan_out(configs: Sequence[ClientQueueConfig], group: GroupId, body: bytes) -> FanOutMessage:
    return FanOutMessage(tuple(configs), message(group, body))


def new_group(domain: Fqdn) -> GroupId:
    return GroupId(uuid.uuid4(), domain)


class HostRouter(httpx.AsyncBaseTransport):
    """Dispatches by host name (``qs.b.test``) to per-homeserver transports; unknown hosts fail to
    connect, like a network would."""

    def __init__(self) -> None:
        self.routes: dict[str, httpx.AsyncBaseTransport] = {}
        self.requests: list[httpx.Request] = []

    def add(self, domain: Fqdn, transport: httpx.AsyncBaseTransport) -> None:
        for service in ("as", "ds", "qs"):
            self.routes[f"{service}.{domain}"] = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        target = self.routes.get(request.url.host)
        if target is None:
            raise httpx.ConnectError(f"no route to {request.url.host}", request=request)
        return await target.handle_async_request(request)
