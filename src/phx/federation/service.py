"""The federation service: every federation part of one homeserver instance, wired explicitly.

::

    fed = FederationService(config, db, registry=registry)       # policy, store, keyring, client, sender
    qs = await QsService.open(db, config.qs, domain, ..., forwarder=fed.forwarder)
    fed.bind(qs)                                                  # receiver + signing key from the QS
    # (on PostgreSQL also pass listeners=fed.listeners to QsService.open: wake-ups across instances)
    services = [qs_service, fed, ...]                             # fed.routes(): /qs/v1/federated_enqueue

It is a :class:`phx.server.Service` named ``federation`` (its migrations are ``federation``); ``start``
runs the sender, the maintenance loop (de-duplication records past ``federation.dedup_retention`` and
outbox rows past ``federation.outbox.max_age`` are deleted) and, on PostgreSQL, the ``LISTEN`` session
that wakes this instance's sender whenever any instance queues a message.

Everything that talks to peers goes through one :class:`~.discovery.PeerClient` whose ``transport`` may
be replaced (tests: in-process ASGI, fault injection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from phx.config import Config
from phx.errors import Unavailable
from phx.identifiers import Fqdn
from phx.queuing.service import QsService
from phx.server.http import read_body
from phx.server.metrics import Registry
from phx.storage import Database

from .discovery import PeerClient, Resolver, https_transport
from .instances import PgListenerRegistry
from .keyring import Keyring, qs_key_fetcher
from .metrics import FederationMetrics
from .outbox import OutboxPolicy
from .outbox_store import OUTBOX_CHANNEL, FederationStore
from .pgnotify import PgListener
from .policy import FederationPolicy
from .qs_bridge import LocalQueues, OutboxForwarder, QsQueues
from .receiver import Receiver
from .sender import QueueDeletedSink, Sender

__all__ = ["FEDERATED_ENQUEUE_PATH", "FederationService"]

log = logging.getLogger("phx.federation")

FEDERATED_ENQUEUE_PATH = "/qs/v1/federated_enqueue"
OCTETS = "application/octet-stream"


class FederationService:
    name = "federation"

    def __init__(
        self,
        config: Config,
        db: Database,
        *,
        registry: Registry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        owner: str | None = None,
        sink: QueueDeletedSink | None = None,
        database_url: str | None = None,
        probe_interval: float = 15.0,
        poll_interval: float = 2.0,
        lease: float | None = None,
        max_concurrency: int = 16,
        maintenance_interval: float = 300.0,
    ) -> None:
        fed = config.federation
        self.config = config
        self.db = db
        self.home: Fqdn = config.server.domain
        self.clock = clock
        self.policy = FederationPolicy.from_config(self.home, fed)
        self.store = FederationStore()
        self.metrics = FederationMetrics(registry)
        self.client = PeerClient(
            resolver if resolver is not None else Resolver.from_config(fed),
            transport if transport is not None else https_transport(fed),
            connect_timeout=fed.connect_timeout,
            request_timeout=fed.request_timeout,
        )
        self.keyring: Keyring[bytes] = Keyring(
            qs_key_fetcher(self.client), clock=clock, ttl=fed.key_cache_ttl
        )
        out = fed.outbox
        self.outbox_policy = OutboxPolicy(
            backoff_base=out.backoff_base,
            backoff_max=out.backoff_max,
            batch_size=out.batch_size,
            max_age=out.max_age,
            probe_interval=probe_interval,
            linger=out.linger,
        )
        self.forwarder = OutboxForwarder(self.store, self.policy, clock, self._enqueued)
        self._rng = rng
        self._owner = owner if owner is not None else (config.federation.instance_name or None)
        self._sink = sink
        self._database_url = database_url if database_url is not None else config.server.database_url
        self._poll_interval = poll_interval
        self._lease = lease if lease is not None else max(60.0, 2 * fed.request_timeout)
        self._max_concurrency = max_concurrency
        self._maintenance_interval = maintenance_interval
        #: On PostgreSQL: the QS's listener registry for several instances (pass it to ``QsService.open``
        #: as ``listeners``); started and stopped with this service. None on SQLite (one process).
        self.listeners: PgListenerRegistry | None = (
            PgListenerRegistry(self._database_url) if db.engine == "postgres" else None
        )
        self.queues: LocalQueues | None = None
        self.sender: Sender | None = None
        self.receiver: Receiver | None = None
        self._listener: PgListener | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._stopped = False

    def bind(self, qs: QsService | LocalQueues) -> None:
        """Attach the local QS: frames are signed with its key and delivered into its queues."""
        queues: LocalQueues = QsQueues(qs) if isinstance(qs, QsService) else qs
        self.queues = queues
        fed = self.config.federation
        self.sender = Sender(
            db=self.db,
            store=self.store,
            client=self.client,
            home=self.home,
            signing_key=lambda: queues.signing_key,
            policy=self.outbox_policy,
            clock=self.clock,
            sink=self._sink,
            metrics=self.metrics,
            rng=self._rng,
            owner=self._owner,
            poll_interval=self._poll_interval,
            max_concurrency=self._max_concurrency,
            lease=self._lease,
        )
        self.receiver = Receiver(
            db=self.db,
            store=self.store,
            queues=queues,
            policy=self.policy,
            keyring=self.keyring,
            rate_limit=fed.rate_limit,
            clock=self.clock,
            dedup_retention=fed.dedup_retention,
            max_clock_skew=self.config.server.max_clock_skew,
            on_contact=self._contacted,
            metrics=self.metrics,
        )

    def _enqueued(self, destination: Fqdn) -> None:
        if self.sender is not None:
            self.sender.notify_enqueued(destination)

    def _contacted(self, source: Fqdn) -> None:
        if self.sender is None:
            return
        self.sender.contacted(source)
        # Other instances back off from this peer too: end it in the shared state.
        asyncio.ensure_future(self._contacted_db(source))

    async def _contacted_db(self, source: Fqdn) -> None:
        try:
            async with self.db.transaction() as conn:
                woke = await self.store.contacted(conn, source, int(self.clock() * 1000))
            if woke and self._listener is not None and self.sender is not None:
                self.sender.poll_soon()
        except Exception as e:  # best effort: the probes find the peer anyway
            log.debug("could not record contact from %s: %s", source, e)

    # --- Service ----------------------------------------------------------------------------------------

    def routes(self) -> Sequence[BaseRoute]:
        async def federated_enqueue(request: Request) -> Response:
            if self.receiver is None:
                raise Unavailable("federation is not ready")
            body = await read_body(request)
            return Response(await self.receiver.handle(body), media_type=OCTETS)

        return [Route(FEDERATED_ENQUEUE_PATH, federated_enqueue, methods=["POST"])]

    async def start(self) -> None:
        if self.sender is None:
            raise RuntimeError("FederationService.bind(qs) must be called before start()")
        sender = self.sender
        if self.db.engine == "sqlite":
            # One process per SQLite database: any lease left is a killed predecessor's.
            async with self.db.transaction() as conn:
                await self.store.release_every_lease(conn)
        if self.db.engine == "postgres":

            def woken(payload: str) -> None:
                with contextlib.suppress(ValueError):
                    sender.notify_enqueued(Fqdn(payload))

            self._listener = PgListener(
                self._database_url, {OUTBOX_CHANNEL: woken}, on_reconnect=sender.poll_soon
            )
            await self._listener.start()
            if self.listeners is not None:
                await self.listeners.start()
        sender.start()
        self._maintenance = asyncio.create_task(self._maintain(), name="phx-federation-maintenance")

    async def stop(self, *, release: bool = True) -> None:
        """Stop the background work. ``release=False`` leaves this instance's leases to lapse, as a crash
        would (tests). A second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        if self.sender is not None:
            await self.sender.stop(release=release)
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self.listeners is not None:
            await self.listeners.stop()
        await self.client.aclose()

    async def maintain(self) -> tuple[int, dict[Fqdn, int]]:
        """One maintenance round: (de-duplication records forgotten, expired outbox rows by destination)."""
        now = int(self.clock())
        fed = self.config.federation
        async with self.db.transaction() as conn:
            forgotten = await self.store.forget_received(conn, now - fed.dedup_retention)
            expired = await self.store.expire(conn, now - fed.outbox.max_age)
        if self.receiver is not None:
            # Its own short transaction: deleting buckets must not hold rows a receiver is waiting for.
            async with self.db.transaction() as conn:
                await self.receiver.limits.expire(conn, self.clock())
        for dest, n in expired.items():
            self.metrics.dropped.inc(n, destination=dest.value, reason="expired")
            log.warning("dropped %d expired message(s) for %s", n, dest)
        return forgotten, expired

    async def _maintain(self) -> None:
        while True:
            try:
                await self.maintain()
            except Exception as e:
                log.warning("federation maintenance failed: %s", e)
            await asyncio.sleep(self._maintenance_interval)
