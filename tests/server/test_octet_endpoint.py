"""OctetEndpoint: bytes in, bytes out on the bare ASGI interface, with the app's error mapping and limits."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from starlette.routing import BaseRoute, Route

from phx.config import Config
from phx.errors import NotFound
from phx.server import Registry, create_app
from phx.server.http import OctetEndpoint


class Echo:
    name = "echo"

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    async def handle(self, body: bytes) -> bytes:
        if body == b"missing":
            raise NotFound("no such thing")
        self.seen.append(body)
        return body[::-1]

    def routes(self) -> list[BaseRoute]:
        return [Route("/echo/v1/reverse", OctetEndpoint(self.handle, 16), methods=["POST"])]

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def _client(service: Echo) -> httpx.AsyncClient:
    app = create_app(Config.default("a.test"), [service], metrics=Registry())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a.test")


async def test_answers_the_handlers_bytes_as_octets() -> None:
    service = Echo()
    async with _client(service) as client:
        response = await client.post("/echo/v1/reverse", content=b"abc")
    assert response.status_code == 200
    assert response.content == b"cba"
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-length"] == "3"
    assert service.seen == [b"abc"]


async def test_errors_map_like_any_route() -> None:
    async with _client(Echo()) as client:
        response = await client.post("/echo/v1/reverse", content=b"missing")
        assert (response.status_code, response.json()["error"]) == (404, "not_found")
        assert (await client.get("/echo/v1/reverse")).status_code == 405


async def test_bodies_over_the_limit_are_refused_declared_or_streamed() -> None:
    service = Echo()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"0123"

    async with _client(service) as client:
        declared = await client.post("/echo/v1/reverse", content=b"x" * 17)
        streamed = await client.post("/echo/v1/reverse", content=chunks())
        at_limit = await client.post("/echo/v1/reverse", content=b"y" * 16)
    assert (declared.status_code, declared.json()["error"]) == (413, "payload_too_large")
    assert (streamed.status_code, streamed.json()["error"]) == (413, "payload_too_large")
    assert at_limit.status_code == 200
    assert service.seen == [b"y" * 16]
