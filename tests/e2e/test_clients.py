"""Three homeservers, real clients (phx.client), the production wiring (phx.server.wiring) over HTTPS:
connections across homeservers (by user id and by alias), a group on one homeserver joined by clients of
the two others, messages and a departure from every side."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from phx.cli.dev_setup import write_dev_setup
from phx.client import Event, PhxClient
from phx.client.demo import free_ports, local_homeservers
from phx.config import Config
from phx.server import Registry, Service
from phx.server.wiring import build_homeserver
from phx.storage import Database

DOMAINS = ["a.test", "b.test", "c.test"]


async def services(config: Config, db: Database, registry: Registry) -> Sequence[Service]:
    """The production wiring, with federation timings for tests."""
    hs = await build_homeserver(config, db, registry, poll_interval=0.5, probe_interval=1.0)
    return hs.services


async def sync_until(
    client: PhxClient, done: Callable[[list[Event]], bool], timeout: float = 30.0
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


async def test_three_homeservers_with_real_clients(tmp_path: Path) -> None:
    setup = write_dev_setup(tmp_path / "dev", DOMAINS, ports=free_ports(len(DOMAINS)))
    hosts = {f"{s}.{d}": f"127.0.0.1:{p}" for d, p in setup.ports.items() for s in ("as", "ds", "qs")}
    async with local_homeservers(list(setup.configs.values()), services):
        opened: list[PhxClient] = []

        async def user(address: str) -> PhxClient:
            c = PhxClient.open(tmp_path / address, ca_file=setup.ca_file, hosts=hosts)
            opened.append(c)
            await c.register(address, b"pw " + address.encode())
            return c

        try:
            alice, bob, carol = (
                await user("alice@a.test"),
                await user("bob@b.test"),
                await user("carol@c.test"),
            )
            # Connection establishment across homeservers: by user id (a -> b) and by alias (c -> a).
            await alice.connect("bob@b.test")
            events = await sync_until(bob, has("request", sender="alice@a.test"))
            await bob.accept(next(e.request_id for e in events if e.kind == "request"))
            await sync_until(alice, has("connected", sender="bob@b.test"))
            await sync_until(bob, has("ready", sender="alice@a.test"))
            alias = await alice.add_alias("Alice A")
            await carol.connect_alias(alias)
            events = await sync_until(alice, has("request"))
            await alice.accept(next(e.request_id for e in events if e.kind == "request"))
            await sync_until(carol, has("connected", sender="alice@a.test"))
            await sync_until(alice, has("ready", sender="carol@c.test"))
            # A group on a.test's DS, joined by clients of b.test and c.test.
            await alice.create_group("trio")
            await alice.invite("trio", "bob@b.test")
            await alice.invite("trio", "carol@c.test")
            # carol's addition is a commit after bob's Welcome: it may reach bob in a later sync.
            await sync_until(
                bob,
                lambda seen: has("joined", group="trio")(seen) and has("added", sender="carol@c.test")(seen),
            )
            await sync_until(carol, has("joined", group="trio"))
            assert bob.groups()[0].members == ["alice@a.test", "bob@b.test", "carol@c.test"]
            # Everyone talks through ds.a.test; fan-outs reach qs.b.test and qs.c.test through federation.
            for c, text in ((alice, "from a"), (bob, "from b"), (carol, "from c")):
                await c.send("trio", text)
            for c in (alice, bob, carol):
                mine = {alice: "from a", bob: "from b", carol: "from c"}[c]
                want = {"from a", "from b", "from c"} - {mine}

                def got_all(events: list[Event], want: set[str] = want) -> bool:
                    return want <= {e.text for e in events if e.kind == "message"}

                events = await sync_until(c, got_all)
                # Each exactly once, from a sender of the right homeserver (a member who is not a contact
                # may show as <uuid>@domain until its name is learnt).
                got = sorted((e.text, e.sender.rsplit("@", 1)[1]) for e in events if e.kind == "message")
                assert got == sorted(
                    (t, {"from a": "a.test", "from b": "b.test", "from c": "c.test"}[t]) for t in want
                )
            # A remote member leaves: its proposal is committed by the admin on a.test, seen everywhere.
            await carol.leave("trio")
            await sync_until(alice, has("removed", sender="carol@c.test"))
            await sync_until(bob, has("removed", sender="carol@c.test"))
            await sync_until(carol, has("left", group="trio"))
            assert alice.groups()[0].members == ["alice@a.test", "bob@b.test"]
        finally:
            for c in opened:
                await c.aclose()
