"""PathIndexedRouter: exact paths found without trying every route; Starlette's answers kept otherwise."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from phx.server import run_event_loop
from phx.server.routing import PathIndexedRouter


class CountingRoute(Route):
    tried = 0

    def matches(self, scope: Any) -> Any:
        CountingRoute.tried += 1
        return super().matches(scope)


def _text(value: str) -> Any:
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse(value + request.path_params.get("name", ""))

    return endpoint


def _app() -> Starlette:
    routes = [CountingRoute(f"/svc/v1/op{i}", _text(f"op{i}"), methods=["POST"]) for i in range(50)]
    routes.append(CountingRoute("/svc/v1/both", _text("get"), methods=["GET"]))
    routes.append(CountingRoute("/svc/v1/both", _text("post"), methods=["POST"]))
    routes.append(CountingRoute("/svc/v1/hello/{name}", _text("hello "), methods=["GET"]))
    app = Starlette(routes=routes)
    app.router = PathIndexedRouter(routes)
    return app


async def _call(method: str, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.request(method, path)


async def test_exact_path_tries_only_its_own_routes() -> None:
    CountingRoute.tried = 0
    response = await _call("POST", "/svc/v1/op49")
    assert (response.status_code, response.text) == (200, "op49")
    assert CountingRoute.tried == 1


async def test_routes_sharing_a_path_are_told_apart_by_method() -> None:
    assert (await _call("GET", "/svc/v1/both")).text == "get"
    assert (await _call("POST", "/svc/v1/both")).text == "post"


async def test_wrong_method_unknown_path_and_parameters_fall_back_to_starlette() -> None:
    assert (await _call("GET", "/svc/v1/op3")).status_code == 405
    assert (await _call("POST", "/svc/v1/nope")).status_code == 404
    response = await _call("GET", "/svc/v1/hello/bob")
    assert (response.status_code, response.text) == (200, "hello bob")


def test_run_event_loop_returns_the_result_on_uvloop() -> None:
    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert run_event_loop(main()) == "uvloop"
