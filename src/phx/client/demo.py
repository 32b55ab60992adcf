"""``phx demo``: two federating homeservers on loopback and a conversation across them, checked end to end.

Steps: a local CA, certificates and configs (:func:`phx.cli.dev_setup.write_dev_setup`) in a temporary
directory; ``a.test`` and ``b.test`` served in this process over TLS on free loopback ports, each with
SQLite; alice@a.test and bob@b.test register; alice connects to bob and bob accepts; alice creates a
group on a.test and invites bob (his client lives on b.test, so every message to him crosses the
federation, and his own messages go to a remote DS); three messages each way. The summary counts what
the clients actually received and decrypted, and the exit status is 0 only if everything arrived.

:func:`local_homeservers` is reusable: it starts any number of homeservers from their configs with a
given service factory, the way ``phx serve`` does (open the database, build the services, migrate,
serve), but in one event loop.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from phx.config import Config, load_config
from phx.errors import PhxError
from phx.federation.discovery import PeerClient
from phx.server import Registry, Service, create_app, run_event_loop, running
from phx.storage import Database, available_services, migrate_all, open_database

from .client import PhxClient
from .session import Event

__all__ = ["AsyncServiceFactory", "Homeserver", "free_ports", "local_homeservers", "main", "run", "run_demo"]

#: Builds a homeserver's services (may open them asynchronously); ``phx serve``'s factory adapts to it.
AsyncServiceFactory = Callable[[Config, Database, Registry], Awaitable[Sequence[Service]]]
DEADLINE = 45.0


@dataclass(frozen=True, slots=True)
class Homeserver:
    domain: str
    config: Config
    url: str
    services: Sequence[Service]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on loopback right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


async def serve_factory(config: Config, db: Database, registry: Registry) -> Sequence[Service]:
    """``phx serve``'s own wiring (:func:`phx.cli.serve.build_services`)."""
    from phx.cli.serve import build_services

    return await build_services(config, db, registry)


@asynccontextmanager
async def local_homeservers(
    configs: Sequence[Path], factory: AsyncServiceFactory = serve_factory
) -> AsyncIterator[list[Homeserver]]:
    """Serve every config's homeserver in this event loop until the block exits."""
    async with AsyncExitStack() as stack:
        servers = []
        for path in configs:
            config = load_config(path)
            config.check_files()
            url = config.server.database_url
            if url.startswith("sqlite://") and ":memory:" not in url:
                Path(url.removeprefix("sqlite://")).parent.mkdir(parents=True, exist_ok=True)
            db = await open_database(url)
            stack.push_async_callback(db.close)
            registry = Registry()
            services = list(await factory(config, db, registry))
            wanted = {str(s) for s in config.server.services}
            missing = wanted - {s.name for s in services}
            if missing:
                raise PhxError(
                    f"{config.server.domain}: this build wires no {', '.join(sorted(missing))} service "
                    "(phx.cli.serve.build_services)"
                )
            shipped = set(available_services())
            await migrate_all(db, ["core", *(s.name for s in services if s.name in shipped)])
            app = create_app(config, services, db=db, metrics=registry)
            base = await stack.enter_async_context(running(app, config, port=config.server.listen_port))
            servers.append(Homeserver(str(config.server.domain), config, base, services))
        try:
            yield servers
        finally:
            # Idle keep-alive TLS connections between the homeservers would hold each server's graceful
            # shutdown until it times out (nobody reads the close_notify): close the peer clients first.
            for hs in servers:
                for service in hs.services:
                    client = getattr(service, "client", None)
                    if isinstance(client, PeerClient):
                        await client.aclose()


# --- the demo ----------------------------------------------------------------------------------------


class DemoFailed(PhxError):
    pass


async def until(
    client: PhxClient, found: Callable[[list[Event]], bool], what: str, *, deadline: float
) -> list[Event]:
    """Sync ``client`` until ``found`` holds for the events seen so far (federation is asynchronous)."""
    seen: list[Event] = []
    while True:
        seen += await client.sync()
        if found(seen):
            return seen
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def run_demo(
    directory: Path, factory: AsyncServiceFactory = serve_factory, *, say: Callable[[str], None] = print
) -> tuple[int, int]:
    """Run the scenario in ``directory``; returns (messages received, messages sent)."""
    from phx.cli.dev_setup import write_dev_setup

    deadline = time.monotonic() + DEADLINE
    setup = write_dev_setup(directory / "dev", ["a.test", "b.test"], ports=free_ports(2))
    say(f"dev-setup: local CA and TLS certificates for a.test and b.test in {setup.directory}")
    async with local_homeservers(list(setup.configs.values()), factory) as servers:
        for hs in servers:
            say(f"homeserver {hs.domain}: AS, DS, QS and federation at {hs.url} (SQLite)")
        hosts = {
            h: f"127.0.0.1:{p}" for d, p in setup.ports.items() for h in (f"as.{d}", f"ds.{d}", f"qs.{d}")
        }

        def client(name: str) -> PhxClient:
            return PhxClient.open(directory / name, ca_file=setup.ca_file, hosts=hosts)

        async with client("alice") as alice, client("bob") as bob:
            await alice.register("alice@a.test", b"alice's demo password")
            await bob.register("bob@b.test", b"bob's demo password")
            for c in (alice, bob):
                me = c.whoami()
                say(f"registered {me['user']}: client credential {str(me['fingerprint'])[:16]}…")
            request = await alice.connect("bob@b.test")
            say(f"alice → bob: connection request #{request.id} through as.b.test")
            events = await until(
                bob, lambda es: any(e.kind == "request" for e in es), "bob's request", deadline=deadline
            )
            incoming = next(e for e in events if e.kind == "request")
            request_id = incoming.request_id
            say(f"bob sees request #{request_id} from {incoming.sender} and accepts (joins on ds.a.test)")
            await bob.accept(request_id)
            await until(
                alice, lambda es: any(e.kind == "connected" for e in es), "the acceptance", deadline=deadline
            )
            say("alice learns that bob accepted; friendship keys exchanged")
            await until(
                bob,
                lambda _: all(c.ready for c in bob.contacts()),
                "alice's friendship keys",
                deadline=deadline,
            )
            group = await alice.create_group("demo")
            say(f"alice creates group {group.name!r} on ds.a.test ({group.group_id})")
            await alice.invite("demo", "bob@b.test")
            say("alice invites bob: his KeyPackage from qs.b.test, his Welcome back through federation")
            await until(
                bob, lambda es: any(e.kind == "joined" for e in es), "bob's Welcome", deadline=deadline
            )
            say(f"bob joined {group.name!r}; members: {', '.join(bob.groups()[0].members)}")
            sent: list[tuple[str, str]] = []
            lines = [
                (alice, "alice", "hi bob, this crossed two homeservers"),
                (bob, "bob", "hi alice! mine go to ds.a.test, a remote DS for me"),
                (alice, "alice", "and the QS-to-QS federation brings mine to you"),
                (bob, "bob", "every credential chain checked out"),
                (alice, "alice", "MLS epochs match on both sides"),
                (bob, "bob", "see you on the other homeserver"),
            ]
            for c, name, text in lines:
                await c.send("demo", text)
                sent.append((name, text))
                say(f"{name} → demo: {text}")
            received = {"alice": [], "bob": []}  # type: dict[str, list[tuple[str, str]]]

            def collect(who: str) -> Callable[[list[Event]], bool]:
                def done(events: list[Event]) -> bool:
                    got = [(e.sender.split("@")[0], e.text) for e in events if e.kind == "message"]
                    received[who] = got
                    return len(got) >= 3

                return done

            for who, c in (("bob", bob), ("alice", alice)):
                try:
                    await until(c, collect(who), f"{who}'s messages", deadline=deadline)
                except DemoFailed as e:
                    say(f"warning: {e}")
            delivered = 0
            for sender, text in sent:
                reader = "bob" if sender == "alice" else "alice"
                ok = (sender, text) in received[reader]
                delivered += ok
                say(f"{reader} {'received' if ok else 'DID NOT receive'}: {sender}: {text}")
            return delivered, len(sent)


async def _main(factory: AsyncServiceFactory) -> int:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="phx-demo-") as tmp:
        delivered, total = await run_demo(Path(tmp), factory)
    print(f"(finished in {time.monotonic() - start:.1f}s)")
    print(f"demo: {delivered}/{total} messages delivered across 2 homeservers")
    return 0 if delivered == total else 1


def run(factory: AsyncServiceFactory = serve_factory) -> int:
    try:
        return run_event_loop(_main(factory))
    except (PhxError, OSError) as e:
        print(f"demo: failed: {e}", file=sys.stderr)
        return 1


def main() -> int:
    return run()
