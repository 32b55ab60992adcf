"""The client library against two real homeservers (TLS on loopback, SQLite): every flow across them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from phx.client import Event, PhxClient

from .harness import Net, homeservers


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    async with homeservers(tmp_path / "dev") as n:
        yield n


def open_client(net: Net, home: Path) -> PhxClient:
    return PhxClient.open(home, ca_file=net.setup.ca_file, hosts=net.hosts)


async def sync_until(
    client: PhxClient, done: Callable[[list[Event]], bool], timeout: float = 15.0
) -> list[Event]:
    seen: list[Event] = []
    end = time.monotonic() + timeout
    while True:
        seen += await client.sync()
        if done(seen):
            return seen
        assert time.monotonic() < end, f"timed out; saw {[e.as_dict() for e in seen]}"
        await asyncio.sleep(0.1)


def kinds(kind: str) -> Callable[[list[Event]], bool]:
    return lambda events: any(e.kind == kind for e in events)


async def test_cross_homeserver_conversation(net: Net, tmp_path: Path) -> None:
    async with open_client(net, tmp_path / "alice") as alice, open_client(net, tmp_path / "bob") as bob:
        await alice.register("alice@a.test", b"pw-alice")
        await bob.register("bob@b.test", b"pw-bob")
        request = await alice.connect("bob@b.test")
        events = await sync_until(bob, kinds("request"))
        (incoming,) = [e for e in events if e.kind == "request"]
        assert incoming.sender == "alice@a.test"
        await bob.accept(incoming.request_id)
        events = await sync_until(alice, kinds("connected"))
        assert [e.sender for e in events if e.kind == "connected"] == ["bob@b.test"]
        assert request.id
        await sync_until(bob, lambda _: all(c.ready for c in bob.contacts()))
        assert [c.user for c in alice.contacts()] == ["bob@b.test"]
        await alice.create_group("team")
        await alice.invite("team", "bob@b.test")
        events = await sync_until(bob, kinds("joined"))
        assert [(e.group, e.sender) for e in events if e.kind == "joined"] == [("team", "alice@a.test")]
        assert bob.groups()[0].name == "team"
        await alice.send("team", "hello from a")
        await bob.send("team", "hello from b")
        got_b = await sync_until(bob, kinds("message"))
        got_a = await sync_until(alice, kinds("message"))
        assert [(e.sender, e.text) for e in got_b if e.kind == "message"] == [
            ("alice@a.test", "hello from a")
        ]
        assert [(e.sender, e.text) for e in got_a if e.kind == "message"] == [("bob@b.test", "hello from b")]
