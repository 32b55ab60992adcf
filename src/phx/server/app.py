"""The app factory: one Starlette app per process, wired explicitly from the config and the services.

Middleware, outermost first: request metrics → JSON errors → body size limit → Starlette's routing. Every
service contributes its routes (``POST /<service>/v1/<operation>``, see docs/decisions.md) and is started
and stopped with the app's lifespan.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from phx import __version__
from phx.config import Config
from phx.errors import Unavailable
from phx.storage import Database

from .http import BodyLimitMiddleware, ErrorMiddleware, HttpMetrics, MetricsMiddleware, http_exception_handler
from .metrics import CONTENT_TYPE, Registry
from .routing import PathIndexedRouter

log = logging.getLogger("phx.server")


class Service(Protocol):
    """What a service (AS, DS, QS) hands the server."""

    @property
    def name(self) -> str:
        """``as``, ``ds`` or ``qs``; also the name of its migration set, if it ships one."""
        ...

    def routes(self) -> Sequence[BaseRoute]: ...

    async def start(self) -> None:
        """Called once before the first request (start background tasks here)."""
        ...

    async def stop(self) -> None:
        """Called once at shutdown, in reverse start order."""
        ...


def create_app(
    config: Config,
    services: Sequence[Service] = (),
    *,
    db: Database | None = None,
    metrics: Registry | None = None,
) -> Starlette:
    """Build the app. ``db`` (owned by the caller, who opens, migrates and closes it) is only used here for
    the health check; services receive their stores through their own constructors."""
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate services: {names}")
    registry = metrics if metrics is not None else Registry()
    http_metrics = HttpMetrics(registry)
    info = registry.gauge("phx_build_info", "Always 1; labels describe this server", ["version", "domain"])
    info.set(1, version=__version__, domain=str(config.server.domain))

    async def health(request: Request) -> Response:
        body: dict[str, object] = {
            "status": "ok",
            "domain": str(config.server.domain),
            "version": __version__,
            "services": sorted(names),
        }
        status = 200
        if db is not None:
            try:
                await db.ping()
                body["database"] = "ok"
            except Unavailable as e:
                log.warning("health: %s", e)
                body["database"] = "unavailable"
                body["status"] = "unavailable"
                status = 503
        return JSONResponse(body, status_code=status)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(registry.render(), media_type=CONTENT_TYPE)

    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    for service in services:
        routes.extend(service.routes())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started: list[Service] = []
        try:
            for service in services:
                await service.start()
                started.append(service)
                log.info("service %s started", service.name)
            yield
        finally:
            for service in reversed(started):
                try:
                    await service.stop()
                except Exception:
                    log.exception("service %s failed to stop cleanly", service.name)

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(MetricsMiddleware, metrics=http_metrics),
            Middleware(ErrorMiddleware),
            Middleware(BodyLimitMiddleware, max_body_size=config.server.max_request_size),
        ],
        exception_handlers={HTTPException: http_exception_handler},
        lifespan=lifespan,
    )
    # Before the first request builds the middleware stack around it.
    app.router = PathIndexedRouter(routes, lifespan=lifespan)
    return app
