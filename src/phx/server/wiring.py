"""Explicit construction of one homeserver's services: the only place that knows how they connect.

::

    AS ──redeemer──▶ QS, DS           (Privacy Pass tokens of this homeserver's AS; the DS refuses
                                       group creation to tokens of the federated class)
    DS ──fan-out──▶ QS                (in process; over HTTP when the QS runs elsewhere)
    QS ──remote configs──▶ federation outbox ──QS-to-QS──▶ remote QS
    federation ──QueueDeleted from remote QSs──▶ DS
    AS ──remote client credentials──▶ federation peer client ──▶ as.<their domain>

``phx serve`` and the in-process homeservers of the demo and the tests all build through
:func:`build_services`, so what is tested is what runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from phx.auth import AsCredentialSet, AsService
from phx.auth.messages import AsCredentialsResponse, AsRequest
from phx.config import Config
from phx.delivery import DsService, FanOutSink, LocalQsSink
from phx.errors import ConfigError, NotFound
from phx.federation.discovery import PeerClient
from phx.federation.keyring import KeyFetchError, Keyring
from phx.federation.service import FederationService
from phx.identifiers import Fqdn, Service
from phx.privacypass import TokenRedeemer
from phx.queuing.messages import QueueDeleted
from phx.queuing.routes import QsHttp
from phx.queuing.service import QsService
from phx.server.app import Service as ServerService
from phx.server.metrics import Registry
from phx.storage import Database, migrate_all

__all__ = ["Homeserver", "RemoteAsCredentials", "build_homeserver", "build_services"]


def _wall_clock() -> int:
    return int(time.time())


class RemoteAsCredentials:
    """The AS's source of other homeservers' AS credentials: ``get_as_credentials`` at ``as.<domain>`` over
    verified TLS, cached in a federation keyring (expiry, single flight, bounded refetch)."""

    def __init__(self, client: PeerClient, ttl: float) -> None:
        self.keyring: Keyring[AsCredentialsResponse] = Keyring(self._fetch, clock=time.time, ttl=ttl)
        self.client = client

    async def _fetch(self, domain: Fqdn) -> AsCredentialsResponse | None:
        body = AsRequest(b"", None, None, None).encode()
        response = await self.client.post(domain, Service.AS, "get_as_credentials", body)
        if response.status == 404:
            raise NotFound(f"as.{domain} publishes no credentials")
        if not response.ok:
            raise KeyFetchError(f"as.{domain} answered {response.status} for its credentials")
        return AsCredentialsResponse.decode(response.body)

    async def credentials_for(self, domain: Fqdn, now: int) -> AsCredentialSet:
        r = await self.keyring.get(domain)
        return AsCredentialSet(
            domain, r.as_credentials, r.as_intermediate_credentials, frozenset(r.revoked_certs)
        )


class _QsTokens:
    """The QS's view of the AS's redeemer: it serves clients of every homeserver alike, so it spends
    tokens of either class and ignores which (the DS is the one that tells them apart)."""

    def __init__(self, redeemer: TokenRedeemer) -> None:
        self.redeemer = redeemer

    async def redeem(self, token: bytes, now: int) -> None:
        await self.redeemer.redeem(token, now)


class _DsReports:
    """Where federation hands ``QueueDeleted`` reports coming back from remote QSs: the local DS."""

    def __init__(self) -> None:
        self.ds: DsService | None = None

    async def queue_deleted(self, source: Fqdn, items: Sequence[QueueDeleted]) -> None:
        if self.ds is not None:
            # A QS may only declare its own queues deleted: reports about others' queues are dropped.
            await self.ds.queue_deleted(items, source=source)


@dataclass
class Homeserver:
    """Every service of one homeserver instance (those not configured are None)."""

    config: Config
    auth: AsService
    queuing: QsService | None = None
    delivery: DsService | None = None
    federation: FederationService | None = None
    services: list[ServerService] = field(default_factory=list)


async def build_homeserver(
    config: Config,
    db: Database,
    registry: Registry,
    *,
    clock: Callable[[], int] = _wall_clock,
    poll_interval: float = 2.0,
    probe_interval: float = 15.0,
) -> Homeserver:
    """Migrate the database and construct the configured services.

    The AS is always built (the QS and DS redeem its tokens; its routes are served only when ``as`` is
    configured). The DS needs the QS in the same process for its fan-out (a split deployment's HTTP sink
    is :class:`phx.delivery.HttpQsSink`); federation runs wherever the QS runs.
    """
    wanted = {str(s) for s in config.server.services}
    if "ds" in wanted and "qs" not in wanted:
        raise ConfigError("server.services: the DS needs the QS in the same process in this release")
    sets = ["core", "as"] + [s for s in ("qs", "ds") if s in wanted]
    if "qs" in wanted:
        sets.append("federation")
    await migrate_all(db, sets)

    domain = config.server.domain
    reports = _DsReports()
    fed: FederationService | None = None
    if "qs" in wanted:
        fed = FederationService(
            config,
            db,
            registry=registry,
            sink=reports,
            database_url=config.server.database_url,
            poll_interval=poll_interval,
            probe_interval=probe_interval,
        )
    auth = AsService(
        db,
        domain,
        config.as_,
        clock=clock,
        max_clock_skew=config.server.max_clock_skew,
        remote_credentials=RemoteAsCredentials(fed.client, config.federation.key_cache_ttl) if fed else None,
        ratchet_rotation_interval=config.qs.ratchet_key_rotation_interval,
    )
    hs = Homeserver(config, auth, federation=fed)
    if "as" in wanted:
        hs.services.append(auth)
    if fed is not None:
        qs = await QsService.open(
            db,
            config.qs,
            domain,
            clock=clock,
            redeemer=_QsTokens(auth.redeemer),
            forwarder=fed.forwarder,
            # On PostgreSQL, live-listen wake-ups reach a client connected to any instance.
            listeners=fed.listeners,
        )
        fed.bind(qs)
        hs.queuing = qs
        hs.services.append(QsHttp(qs))
        if "ds" in wanted:
            sink: FanOutSink = LocalQsSink(qs)
            ds = await DsService.open(db, config.ds, domain, sink=sink, redeemer=auth.redeemer, clock=clock)
            reports.ds = ds
            hs.delivery = ds
            hs.services.append(ds)
        hs.services.append(fed)
    return hs


async def build_services(config: Config, db: Database, registry: Registry) -> Sequence[ServerService]:
    """``phx serve``'s service factory."""
    return (await build_homeserver(config, db, registry)).services
