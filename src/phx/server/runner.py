"""Serving an app with uvicorn: the production path (``phx serve``) and an in-process one for tests.

:func:`serve` owns the database for the life of the process: open, migrate (``core`` first, then every
running service that ships migrations), build the app, serve until SIGINT/SIGTERM, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from starlette.applications import Starlette

from phx.config import Config
from phx.storage import Database, available_services, engine_of, migrate_all, open_database, sqlite_path

from .app import Service, create_app
from .metrics import Registry

log = logging.getLogger("phx.server")

T = TypeVar("T")


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is installed (a dependency; it halves the event loop's cost per
    request), else on asyncio's own loop. Used by every long-running command (serve, demo)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; kept for unusual platforms
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


#: Builds the services this process runs from the config, the open database and the metrics registry.
ServiceFactory = Callable[[Config, Database, Registry], Awaitable[Sequence[Service]]]


def uvicorn_config(app: Starlette, config: Config, *, port: int | None = None) -> uvicorn.Config:
    """uvicorn settings from ``[server]``; ``port`` overrides ``listen_port`` (0 = any free port)."""
    server = config.server
    return uvicorn.Config(
        app,
        host=server.listen_host,
        port=server.listen_port if port is None else port,
        ssl_certfile=str(server.tls_cert) if server.tls_cert is not None else None,
        ssl_keyfile=str(server.tls_key) if server.tls_key is not None else None,
        lifespan="on",
        # Logging is configured by the caller (phx serve), not replaced by uvicorn's dictConfig.
        log_config=None,
        log_level=server.log_level,
        # Forwarded-for headers are only trustworthy behind a known proxy; none is configured.
        proxy_headers=False,
        server_header=False,
        # Peers keep idle keep-alive TLS connections open; waiting for them would hold every shutdown
        # for the whole timeout. An interrupted request rolls back and its sender retries, so 3 s is safe.
        timeout_graceful_shutdown=3,
    )


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner (pytest, or :func:`serve`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_checked(server: uvicorn.Server) -> None:
    # uvicorn reports a failed start-up (port in use, lifespan failure) with sys.exit(); a SystemExit inside
    # an asyncio task would escape the event loop and end the whole process.
    try:
        await server.serve()
    except SystemExit as e:
        raise StartupFailed(f"server failed to start (exit status {e.code})") from None
    if not server.started:
        raise StartupFailed("server stopped before it started")


class StartupFailed(RuntimeError):
    """uvicorn could not start (see its log line just before: typically the address is in use)."""


def bound_port(server: uvicorn.Server) -> int:
    """The TCP port a started server listens on (useful with port 0)."""
    for s in server.servers:
        for sock in s.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("server has no listening socket")


@asynccontextmanager
async def running(app: Starlette, config: Config, *, port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` in this event loop until the block exits; yields the base URL (``https://`` when TLS
    is configured). Meant for tests and in-process federation setups."""
    server = _EmbeddedServer(uvicorn_config(app, config, port=port))
    task = asyncio.create_task(_serve_checked(server))
    try:
        while not server.started:
            if task.done():
                task.result()  # re-raises the start-up failure
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.01)
        scheme = "https" if config.server.tls else "http"
        host = config.server.listen_host
        host = f"[{host}]" if ":" in host else host
        yield f"{scheme}://{host}:{bound_port(server)}"
    finally:
        server.should_exit = True
        await task


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _request_exit(server: uvicorn.Server) -> None:
    if server.should_exit:
        server.force_exit = True  # a second signal: stop without waiting for open connections
    server.should_exit = True


def _prepare_sqlite_dir(url: str) -> None:
    if engine_of(url) == "sqlite":
        path = sqlite_path(url)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


async def serve(config: Config, build_services: ServiceFactory | None = None) -> None:
    """Run the homeserver until it is told to stop. Raises ConfigError / Unavailable on start-up failures."""
    _prepare_sqlite_dir(config.server.database_url)
    db = await open_database(config.server.database_url)
    try:
        registry = Registry()
        services = list(await build_services(config, db, registry)) if build_services is not None else []
        missing = sorted(str(n) for n in config.server.services if str(n) not in {s.name for s in services})
        if missing:
            log.warning("configured services not available in this build: %s", ", ".join(missing))
        shipped = set(available_services())
        migration_sets = ["core", *(s.name for s in services if s.name in shipped)]
        for service_name, applied in (await migrate_all(db, migration_sets)).items():
            if applied:
                log.info("migrated %s to version %d", service_name, applied[-1])
        app = create_app(config, services, db=db, metrics=registry)
        server = _EmbeddedServer(uvicorn_config(app, config))
        log.info(
            "phx %s serving %s (%s) on %s:%d",
            "TLS" if config.server.tls else "plain HTTP",
            config.server.domain,
            ", ".join(sorted(s.name for s in services)) or "no services",
            config.server.listen_host,
            config.server.listen_port,
        )
        # Our own handlers rather than uvicorn's: uvicorn re-raises the signal once it has stopped, which for
        # SIGTERM would kill the process before the database is closed.
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, _request_exit, server)
        try:
            await _serve_checked(server)
        finally:
            for sig in _STOP_SIGNALS:
                loop.remove_signal_handler(sig)
    finally:
        await db.close()
