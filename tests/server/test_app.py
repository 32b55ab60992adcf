"""The app shell through httpx's ASGI transport: health, metrics, error mapping, body limits."""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

import phx.errors
from phx.config import Config
from phx.errors import PhxError, RateLimited, Unavailable
from phx.server import Registry, create_app, read_body
from phx.storage import Database

ERRORS: list[type[PhxError]] = sorted(
    (c for c in vars(phx.errors).values() if inspect.isclass(c) and issubclass(c, PhxError)),
    key=lambda c: c.__name__,
)


class Probe:
    """A service whose endpoints misbehave on demand."""

    name = "probe"

    def __init__(self) -> None:
        self.events: list[str] = []

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/probe/v1/raise/{name}", self.raise_named, methods=["POST"]),
            Route("/probe/v1/crash", self.crash, methods=["POST"]),
            Route("/probe/v1/echo", self.echo, methods=["POST"]),
            Route("/probe/v1/echo_small", self.echo_small, methods=["POST"]),
            Route("/probe/v1/body", self.starlette_body, methods=["POST"]),
        ]

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")

    async def raise_named(self, request: Request) -> Response:
        cls = getattr(phx.errors, request.path_params["name"])
        if cls is RateLimited:
            raise RateLimited("slow down", retry_after=2.2)
        raise cls(f"{cls.__name__} happened")

    async def crash(self, request: Request) -> Response:
        raise KeyError("secret internal detail")

    async def echo(self, request: Request) -> Response:
        return Response(await read_body(request), media_type="application/octet-stream")

    async def echo_small(self, request: Request) -> Response:
        return Response(await read_body(request, limit=10), media_type="application/octet-stream")

    async def starlette_body(self, request: Request) -> Response:
        # Endpoints that use Starlette's own reader are still bounded by the app-wide limit.
        return Response(await request.body(), media_type="application/octet-stream")


def config(max_request_size: int = 4096) -> Config:
    base = Config.default("a.test")
    return dataclasses.replace(
        base, server=dataclasses.replace(base.server, max_request_size=max_request_size)
    )


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
async def client(probe: Probe, registry: Registry) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(config(), [probe], metrics=registry)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a.test") as c:
        yield c


async def test_health_without_database(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "domain": "a.test", "version": phx.__version__, "services": ["probe"]}


async def test_health_with_database(db: Database) -> None:
    app = create_app(config(), [], db=db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a.test") as c:
        r = await c.get("/health")
    assert r.status_code == 200
    assert r.json()["database"] == "ok" and r.json()["services"] == []


class DownDatabase(Database):
    engine = "sqlite"

    def transaction(self, *, readonly: bool = False) -> object:  # type: ignore[override]
        raise AssertionError("not used")

    async def ping(self) -> None:
        raise Unavailable("database went away")

    async def close(self) -> None:
        pass


async def test_health_reports_unavailable_database() -> None:
    app = create_app(config(), [], db=DownDatabase())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a.test") as c:
        r = await c.get("/health")
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable" and r.json()["database"] == "unavailable"


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
async def test_every_error_class_maps_to_its_status_and_code(
    client: httpx.AsyncClient, cls: type[PhxError], caplog: pytest.LogCaptureFixture
) -> None:
    r = await client.post(f"/probe/v1/raise/{cls.__name__}")
    assert r.headers["content-type"] == "application/json"
    if cls.status == 500:
        # The root class and start-up-only errors are our bugs: no details leak, the log has them.
        assert r.status_code == 500
        assert r.json() == {"error": "internal_error", "message": "internal server error"}
        assert any(rec.exc_info and rec.exc_info[0] is cls for rec in caplog.records)
    else:
        assert r.status_code == cls.status == phx.errors.http_status(cls())
        body = r.json()
        assert body["error"] == cls.code
        expected = "slow down" if cls is RateLimited else f"{cls.__name__} happened"
        assert body["message"] == expected


async def test_rate_limited_sets_retry_after(client: httpx.AsyncClient) -> None:
    r = await client.post("/probe/v1/raise/RateLimited")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "3"  # 2.2 s rounded up: never invite a retry too early


async def test_unexpected_exception_is_500_json_and_logged(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="phx.server"):
        r = await client.post("/probe/v1/crash")
    assert r.status_code == 500
    assert r.json() == {"error": "internal_error", "message": "internal server error"}
    assert "secret" not in r.text
    assert any(rec.exc_info and rec.exc_info[0] is KeyError for rec in caplog.records)


async def test_unknown_route_and_wrong_method_are_json(client: httpx.AsyncClient) -> None:
    r = await client.post("/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = await client.get("/probe/v1/echo")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    assert "POST" in r.headers["allow"]


async def test_body_within_limit_is_read(client: httpx.AsyncClient) -> None:
    data = bytes(range(256)) * 16  # exactly the 4096-byte limit
    r = await client.post("/probe/v1/echo", content=data)
    assert r.status_code == 200 and r.content == data


@pytest.mark.parametrize("path", ["/probe/v1/echo", "/probe/v1/body"])
async def test_oversized_body_by_content_length_is_413(client: httpx.AsyncClient, path: str) -> None:
    r = await client.post(path, content=b"x" * 4097)
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"


@pytest.mark.parametrize("path", ["/probe/v1/echo", "/probe/v1/body"])
async def test_oversized_streamed_body_is_413(client: httpx.AsyncClient, path: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000

    r = await client.post(path, content=chunks())
    assert "content-length" not in r.request.headers  # really chunked: the limit is enforced while reading
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"


async def test_per_endpoint_limit(client: httpx.AsyncClient) -> None:
    assert (await client.post("/probe/v1/echo_small", content=b"0123456789")).status_code == 200
    r = await client.post("/probe/v1/echo_small", content=b"0123456789a")
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


async def test_invalid_content_length_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/probe/v1/echo", content=b"abc", headers={"content-length": "x3"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"


async def test_metrics_endpoint_counts_requests(client: httpx.AsyncClient, registry: Registry) -> None:
    await client.get("/health")
    await client.post("/probe/v1/raise/NotFound")
    await client.post("/probe/v1/crash")
    await client.get("/no/such/path")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    assert 'phx_http_requests_total{method="GET",route="/health",status="200"} 1' in text
    assert 'phx_http_requests_total{method="POST",route="Probe.raise_named",status="404"} 1' in text
    assert 'phx_http_requests_total{method="POST",route="/probe/v1/crash",status="500"} 1' in text
    assert 'phx_http_requests_total{method="GET",route="unmatched",status="404"} 1' in text
    assert 'phx_build_info{version="' + phx.__version__ + '",domain="a.test"} 1' in text
    # The request being answered is in progress while the page is rendered.
    assert "phx_http_requests_in_progress 1" in text


def test_duplicate_services_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        create_app(config(), [Probe(), Probe()])
