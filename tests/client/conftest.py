"""Fixtures for the client tests: two homeservers and clients on them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from phx.client import Event, PhxClient

from .harness import Net, homeservers


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    async with homeservers(tmp_path / "dev") as n:
        yield n


class Clients:
    """Opens clients on ``net``; closes them all at the end."""

    def __init__(self, net: Net, root: Path) -> None:
        self.net = net
        self.root = root
        self.open: list[PhxClient] = []

    def client(self, name: str, transport: httpx.AsyncBaseTransport | None = None) -> PhxClient:
        c = PhxClient.open(
            self.root / name, ca_file=self.net.setup.ca_file, hosts=self.net.hosts, transport=transport
        )
        self.open.append(c)
        return c

    async def user(self, address: str) -> PhxClient:
        c = self.client(address.split("@")[0])
        await c.register(address, f"password of {address}".encode())
        return c

    async def close(self) -> None:
        for c in self.open:
            await c.aclose()


@pytest.fixture
async def clients(net: Net, tmp_path: Path) -> AsyncIterator[Clients]:
    c = Clients(net, tmp_path / "homes")
    yield c
    await c.close()


async def sync_until(
    client: PhxClient, done: Callable[[list[Event]], bool], timeout: float = 20.0
) -> list[Event]:
    seen: list[Event] = []
    end = time.monotonic() + timeout
    while True:
        seen += await client.sync()
        if done(seen):
            return seen
        assert time.monotonic() < end, f"timed out; saw {[e.as_dict() for e in seen]}"
        await asyncio.sleep(0.1)


def has(kind: str, **fields: object) -> Callable[[list[Event]], bool]:
    def check(events: list[Event]) -> bool:
        return any(e.kind == kind and all(getattr(e, k) == v for k, v in fields.items()) for e in events)

    return check


async def connect(a: PhxClient, b: PhxClient) -> None:
    """``a`` asks, ``b`` accepts, both hold each other's friendship keys."""
    b_name = b.whoami()["user"]
    a_name = a.whoami()["user"]
    await a.connect(str(b_name))
    events = await sync_until(b, has("request", sender=a_name))
    request = next(e for e in events if e.kind == "request" and e.sender == a_name)
    await b.accept(request.request_id)
    await sync_until(a, has("connected", sender=b_name))
    await sync_until(b, has("ready", sender=a_name))
