"""The app factory: one Starlette app per process, wired explicitly from the config and the services.

HTTP requests pass one layer (:class:`~phx.server.http.HttpMiddleware`: request metrics, body size
limit, JSON errors) on their way to the router; websockets and the lifespan take Starlette's usual path. Every
service contributes its routes (``POST /<service>/v1/<operation>``, see docs/decisions.md) and is started
and stopped with the app's lifespan.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from phx import __version__
from phx.config import Config
from phx.errors import Unavailable
from phx.storage import Database

from .http import HttpMetrics, HttpMiddleware
from .metrics import CONTENT_TYPE, Registry
from .routing import PathIndexedRouter

log = logging.getLogger("phx.server")


class PhxApp(Starlette):
    """Starlette with :class:`HttpMiddleware` as its whole HTTP middleware stack (Starlette would wrap it
    in its ServerErrorMiddleware and put its ExceptionMiddleware under it; ours answers every exception)."""

    def __init__(self, *, http_metrics: HttpMetrics, max_body_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.http_metrics = http_metrics
        self.max_body_size_limit = max_body_size

    def build_middleware_stack(self) -> ASGIApp:
        return HttpMiddleware(
            self.router,
            ExceptionMiddleware(self.router, handlers=dict(self.exception_handlers)),
            self.http_metrics,
            self.max_body_size_limit,
        )


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
) -> PhxApp:
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

    app = PhxApp(
        routes=routes,
        lifespan=lifespan,
        http_metrics=http_metrics,
        max_body_size=config.server.max_request_size,
    )
    # Before the first request builds the middleware stack around it.
    app.router = PathIndexedRouter(routes, lifespan=lifespan)
    return app
