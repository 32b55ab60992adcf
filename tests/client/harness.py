"""Homeservers for the client tests: the service wiring ``phx serve`` needs (proposed to the lead as
``build_services``; see the client report), started in-process over TLS by
:func:`phx.client.demo.local_homeservers`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from starlette.routing import BaseRoute

from phx.auth import AsCredentialSet, AsService
from phx.auth.messages import AsCredentialsResponse, AsRequest
from phx.cli.dev_setup import DevSetup, write_dev_setup
from phx.client.demo import AsyncServiceFactory, Homeserver, free_ports, local_homeservers
from phx.config import Config
from phx.delivery import DsService, LocalQsSink
from phx.errors import NotFound
from phx.federation.discovery import PeerClient
from phx.federation.keyring import KeyFetchError, Keyring
from phx.federation.service import FederationService
from phx.identifiers import Fqdn, Service
from phx.queuing.messages import QueueDeleted
from phx.queuing.routes import qs_routes
from phx.queuing.service import QsService
from phx.server import Registry
from phx.server import Service as ServerService
from phx.storage import Database, migrate_all


class RemoteAsCredentials:
    """The AS's :class:`~phx.auth.keys.AsCredentialSource` for other homeservers: ``get_as_credentials`` of
    ``as.<domain>`` over TLS, cached in a federation keyring."""

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


class QsServer:
    """The QS as a server :class:`~phx.server.Service`."""

    name = "qs"

    def __init__(self, qs: QsService) -> None:
        self.qs = qs

    def routes(self) -> Sequence[BaseRoute]:
        return qs_routes(self.qs)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class DsReports:
    """Where federation hands QueueDeleted reports from remote QSs: the local DS."""

    def __init__(self) -> None:
        self.ds: DsService | None = None

    async def queue_deleted(self, source: Fqdn, items: Sequence[QueueDeleted]) -> None:
        if self.ds is not None:
            await self.ds.queue_deleted(items)


async def phx_services(config: Config, db: Database, registry: Registry) -> Sequence[ServerService]:
    """AS, QS, DS and federation of one homeserver on one database, every piece explicit."""
    return await _services(config, db, registry)


async def rotating_services(config: Config, db: Database, registry: Registry) -> Sequence[ServerService]:
    """Like :func:`phx_services`, but every queue gets a ratchet key update before every message."""
    config = replace(config, qs=replace(config.qs, ratchet_key_rotation_interval=0))
    return await _services(config, db, registry)


async def _services(config: Config, db: Database, registry: Registry) -> Sequence[ServerService]:
    await migrate_all(db, ["core", "as", "qs", "ds", "federation"])
    domain = config.server.domain

    def clock() -> int:
        return int(time.time())

    reports = DsReports()
    fed = FederationService(
        config, db, registry=registry, sink=reports, poll_interval=0.5, probe_interval=1.0
    )
    as_service = AsService(
        db,
        domain,
        config.as_,
        clock=clock,
        max_clock_skew=config.server.max_clock_skew,
        remote_credentials=RemoteAsCredentials(fed.client, config.federation.key_cache_ttl),
        ratchet_rotation_interval=config.qs.ratchet_key_rotation_interval,
    )
    qs = await QsService.open(
        db, config.qs, domain, clock=clock, redeemer=as_service.redeemer, forwarder=fed.forwarder
    )
    fed.bind(qs)
    ds = await DsService.open(
        db, config.ds, domain, sink=LocalQsSink(qs), redeemer=as_service.redeemer, clock=clock
    )
    reports.ds = ds
    allow_responder_external_commit_info(ds)
    return [as_service, QsServer(qs), ds, fed]


def allow_responder_external_commit_info(ds: DsService) -> None:
    """Stand-in for a DS change the client needs (reported to the lead): the responder of a connection
    fetches the connection group's external commit information knowing only the EAR key (book:
    connection_establishment.md), like ``join_connection_group``; the DS still demands a member's
    DsAuthToken. Until the DS accepts it, the tests run the endpoint without sender authentication."""
    from phx.delivery.messages import Operation

    ops = ds._ops
    ops[Operation.EXTERNAL_COMMIT_INFO] = replace(ops[Operation.EXTERNAL_COMMIT_INFO], auth=None)


@dataclass(frozen=True, slots=True)
class Net:
    setup: DevSetup
    servers: list[Homeserver]

    @property
    def hosts(self) -> dict[str, str]:
        return {
            f"{service}.{domain}": f"127.0.0.1:{port}"
            for domain, port in self.setup.ports.items()
            for service in ("as", "ds", "qs")
        }


@asynccontextmanager
async def homeservers(
    directory: Path,
    domains: Sequence[str] = ("a.test", "b.test"),
    factory: AsyncServiceFactory = phx_services,
) -> AsyncIterator[Net]:
    setup = write_dev_setup(directory, domains, ports=free_ports(len(domains)))
    async with local_homeservers(list(setup.configs.values()), factory) as servers:
        yield Net(setup, servers)
