"""Several homeservers on loopback with real HTTPS: a test CA (trustme), one uvicorn server per instance
(``phx.server.running``), resolver overrides pointing ``as./ds./qs.<domain>`` at the right port (or at a
fault-injecting proxy in front of it).

A :class:`Node` is one instance of one homeserver: its database, QS, federation service and HTTPS server.
:meth:`Node.crash` stops it the way a dying process would (the sender's in-flight work is cancelled and its
leases are left to lapse), :meth:`Node.start` brings up a fresh instance on the same database and port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trustme
import uvicorn

from phx.config import Config, HostPort
from phx.federation.discovery import Resolver
from phx.federation.instances import PgListenerRegistry
from phx.federation.service import FederationService
from phx.server import uvicorn_config
from phx.storage import Database, open_database
from tests.federation.helpers import Client, fast_config, make_homeserver

from .proxy import FaultProxy

__all__ = ["Net", "Node", "TestCA"]


class TestCA:
    __test__ = False  # not a pytest class

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.dir = directory
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def issue(self, domain: str) -> tuple[Path, Path]:
        leaf = self.ca.issue_cert(*(f"{s}.{domain}" for s in ("as", "ds", "qs")), "127.0.0.1")
        cert, key = self.dir / f"{domain}.crt", self.dir / f"{domain}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key

    def server_context(self, domain: str) -> ssl.SSLContext:
        cert, key = self.issue(domain)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


class Server(uvicorn.Server):
    """uvicorn in this event loop (signals left to pytest), with a short graceful shutdown and a crash."""

    def __init__(self, config: uvicorn.Config) -> None:
        # Peers' idle TLS keep-alive connections would otherwise hold a graceful shutdown for 10 s.
        config.timeout_graceful_shutdown = 1
        super().__init__(config)
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def begin(self) -> int:
        self._task = asyncio.create_task(self.serve())
        while not self.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.01)
        return int(self.servers[0].sockets[0].getsockname()[1])

    def crash(self) -> None:
        self.force_exit = True
        for server in self.servers:
            server.close()
        for conn in list(self.server_state.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()

    async def end(self) -> None:
        self.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await self._task


@dataclass
class Node:
    net: Net
    domain: str
    db_url: str
    config: Config
    fed_kwargs: dict[str, Any]
    port: int = 0
    db: Database | None = None
    hs: Any = None
    _stack: AsyncExitStack | None = None
    _server: Server | None = None
    starts: int = 0
    listeners: PgListenerRegistry | None = None

    @property
    def fed(self) -> FederationService:
        assert self.hs is not None
        return self.hs.fed  # type: ignore[no-any-return]

    @property
    def running(self) -> bool:
        return self._stack is not None

    async def start(self) -> None:
        assert self._stack is None
        stack = AsyncExitStack()
        try:
            db = await open_database(self.db_url)
            stack.push_async_callback(db.close)
            resolver = Resolver(self.net.overrides)
            kwargs = {"owner": f"{self.domain}#{id(self)}#{self.starts}", **self.fed_kwargs}
            hs = await make_homeserver(
                self.config,
                db,
                None,
                resolver=resolver,
                database_url=self.db_url,
                **kwargs,
            )
            app = hs.app()
            self._server = Server(uvicorn_config(app, self.config, port=self.port))
            self.port = await self._server.begin()
            stack.push_async_callback(self._server.end)
        except BaseException:
            await stack.aclose()
            raise
        self.db, self.hs, self._stack = db, hs, stack
        self.listeners = hs.fed.listeners
        self.starts += 1

    async def stop(self) -> None:
        """A clean shutdown (leases released)."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def crash(self) -> None:
        """Stop as a killed process would: in-flight sends cancelled, leases left to lapse, open
        connections aborted, no graceful anything."""
        if self.hs is not None:
            await self.hs.fed.stop(release=False)
        if self._server is not None:
            self._server.crash()
        await self.stop()

    async def register(self) -> Client:
        assert self.hs is not None
        return await self.hs.register()  # type: ignore[no-any-return]


@dataclass
class Net:
    """Homeservers by domain, sharing one resolver-override table (filled as servers bind)."""

    ca: TestCA
    tmp: Path
    overrides: dict[str, HostPort] = field(default_factory=dict)
    nodes: dict[str, list[Node]] = field(default_factory=dict)
    proxies: dict[str, FaultProxy] = field(default_factory=dict)

    def config(self, domain: str, **federation: Any) -> Config:
        cert, key = self.ca.issue(domain)
        base = fast_config(domain, ca_file=self.ca.ca_file, **federation)
        return replace(base, server=replace(base.server, tls_cert=cert, tls_key=key, plain_http=False))

    async def add(
        self,
        domain: str,
        db_url: str,
        *,
        instances: int = 1,
        federation: dict[str, Any] | None = None,
        **fed_kwargs: Any,
    ) -> list[Node]:
        config = self.config(domain, **(federation or {}))
        nodes = [Node(self, domain, db_url, config, fed_kwargs) for _ in range(instances)]
        for node in nodes:
            await node.start()
        self.nodes[domain] = nodes
        self.route(domain, ("127.0.0.1", nodes[0].port))
        return nodes

    def route(self, domain: str, target: tuple[str, int]) -> None:
        for service in ("as", "ds", "qs"):
            self.overrides[f"{service}.{domain}"] = HostPort(*target)

    async def proxy(self, domain: str, **kwargs: Any) -> FaultProxy:
        """Put a fault proxy in front of every instance of ``domain``; peers now reach it there."""
        upstreams = [("127.0.0.1", n.port) for n in self.nodes[domain]]
        proxy = FaultProxy(
            upstreams, f"qs.{domain}", self.ca.server_context(domain), self.ca.client_context(), **kwargs
        )
        await proxy.start()
        self.proxies[domain] = proxy
        self.route(domain, ("127.0.0.1", proxy.port))
        return proxy

    async def close(self) -> None:
        # Senders first: their keep-alive connections would hold the servers' graceful shutdown.
        for nodes in self.nodes.values():
            for node in nodes:
                if node.hs is not None and node.running:
                    with contextlib.suppress(Exception):
                        await node.hs.fed.stop()
        for proxy in self.proxies.values():
            await proxy.stop()
        for nodes in self.nodes.values():
            for node in nodes:
                with contextlib.suppress(Exception):
                    await node.stop()


@asynccontextmanager
async def network(tmp: Path) -> AsyncIterator[Net]:
    net = Net(TestCA(tmp), tmp)
    try:
        yield net
    finally:
        await net.close()


async def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> float:
    """Await ``predicate()`` until true; returns the seconds it took, fails after ``timeout``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await predicate():
        if loop.time() - start > timeout:
            raise AssertionError(f"not reached within {timeout} s")
        await asyncio.sleep(interval)
    return loop.time() - start
