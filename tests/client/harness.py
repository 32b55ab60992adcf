"""Homeservers for the client tests: built by :mod:`phx.server.wiring` (as ``phx serve`` does) and started
in-process over TLS by :func:`phx.client.demo.local_homeservers`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from phx.cli.dev_setup import DevSetup, write_dev_setup
from phx.client.demo import AsyncServiceFactory, Homeserver, free_ports, local_homeservers
from phx.config import Config
from phx.queuing.routes import QsHttp
from phx.queuing.service import QsService
from phx.server import Registry
from phx.server import Service as ServerService
from phx.server.wiring import Homeserver as WiredHomeserver
from phx.server.wiring import build_homeserver
from phx.storage import Database


async def phx_services(config: Config, db: Database, registry: Registry) -> Sequence[ServerService]:
    """The homeserver exactly as ``phx serve`` builds it (:mod:`phx.server.wiring`), with federation retries
    quick enough for tests."""
    return (await _homeserver(config, db, registry)).services


async def rotating_services(config: Config, db: Database, registry: Registry) -> Sequence[ServerService]:
    """Like :func:`phx_services`, but every queue gets a ratchet key update before every message."""
    config = replace(config, qs=replace(config.qs, ratchet_key_rotation_interval=0))
    return (await _homeserver(config, db, registry)).services


async def _homeserver(config: Config, db: Database, registry: Registry) -> WiredHomeserver:
    return await build_homeserver(config, db, registry, poll_interval=0.5, probe_interval=1.0)


def queuing_service(server: Homeserver) -> QsService:
    return next(s.service for s in server.services if isinstance(s, QsHttp))


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
