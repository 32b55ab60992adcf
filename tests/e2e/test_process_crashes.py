"""Homeservers as real processes (``phx serve``), killed with SIGKILL in the middle of a federation backlog
and restarted on the same database: 0 lost, 0 duplicated, per-group order kept, over 1,000 messages.

Four users of a.test each host a group on ds.a.test with bob of b.test (carol's group also has alice of
a.test); each sends 250 messages into it through ds.a.test over HTTPS with the client library, in
parallel, while b.test hangs (SIGSTOP): a.test's outbox for b.test holds a backlog of exactly 1,000
acknowledged messages. b.test resumes and, once part of the backlog is through (the victim's ``/metrics``),
a victim is killed and restarted with the same config:

* the sender, at the worst moment: frozen (SIGSTOP) until the receiver holds a batch whose answer the
  sender has not processed (compared in the two databases), then killed; its restarted successor must send
  that batch again and have it answered as duplicates;
* the receiver, at the worst moment: frozen until it is caught inside a write transaction taking a batch
  (its database's write lock, or PostgreSQL's row locks, are held), then killed; its database must then
  hold some of the backlog, not all.

SQLite runs each scenario; PostgreSQL runs both kills on one backlog. Every member's client finally reads
its queue, decrypting, and must find every message of its groups exactly once, in send order; the
receiver must have recorded each message exactly once and the sender's outbox must be empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import secrets
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from phx.client import Event, PhxClient
from phx.federation.outbox_store import DestinationRow, FederationStore
from phx.identifiers import Fqdn
from phx.storage import open_database, sqlite_path
from tests.fixtures.db import POSTGRES_URL, require_postgres, with_search_path

from .processes import Homeserver, ProcessNet, homeservers, wait_until, write_configs

SENDERS = ("alice", "carol", "dave", "erin")
#: Local members besides the sender: a.test's own queues must hold everything too.
EXTRA = {"carol": ("alice",)}
PER_GROUP = 250
MESSAGES = PER_GROUP * len(SENDERS)  # every one of them goes to bob@b.test
#: 40 requests to drain the backlog: a wide window for the kill.
BATCH = 25
#: Kill once this share of the backlog is through (the second kill of a test: twice this share); the
#: checks do not depend on it being exact.
KILL_AT = 0.3
TIMEOUT = 120.0
#: Attempts at freezing a victim at the worst moment: the sender (each lets one more batch through), the
#: receiver (a few per batch).
FREEZES = 15
#: The restarted sender must resume well inside the lease it left behind (60 s).
RESUME_WITHIN = 30.0
RECEIVER_FREEZES = 300
SERVERS = ("a.test", "b.test")
B = Fqdn("b.test")


@pytest.fixture
async def database_urls(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """One fresh database per homeserver: SQLite files, or PostgreSQL schemas dropped afterwards."""
    if request.param == "sqlite":
        yield {d: f"sqlite://{tmp_path / d}.sqlite3" for d in SERVERS}
        return
    await require_postgres()
    schemas = {d: f"test_proc_{d[0]}_{secrets.token_hex(4)}" for d in SERVERS}
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        for s in schemas.values():
            await admin.execute(f'CREATE SCHEMA "{s}"')
    finally:
        await admin.close()
    try:
        yield {d: with_search_path(POSTGRES_URL, s) for d, s in schemas.items()}
    finally:
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            for s in schemas.values():
                await admin.execute(f'DROP SCHEMA "{s}" CASCADE')
        finally:
            await admin.close()


@pytest.fixture
def client_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the clients keep their state: in memory (tmpfs) when there is one. A client commits its
    SQLite state with fsync several times per message sent, which on a slow disk makes the 1,000 sends
    the bulk of a test; the clients' durability is not what these tests are about (the servers' databases
    stay on disk)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path / "clients"
        return
    path = Path(tempfile.mkdtemp(prefix="phx-test-clients-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def address(name: str) -> str:
    return f"{name}@{'b.test' if name == 'bob' else 'a.test'}"


@dataclass
class Group:
    sender: str
    members: tuple[str, ...]
    #: The texts the DS acknowledged to the sender, in send order.
    sent: list[str] = field(default_factory=list)


@dataclass
class Chat:
    clients: dict[str, PhxClient]
    #: group id -> group
    groups: dict[str, Group] = field(default_factory=dict)
    #: Every event each client has seen, in order.
    events: dict[str, list[Event]] = field(default_factory=dict)

    def expected(self, name: str) -> dict[str, list[str]]:
        return {gid: g.sent for gid, g in self.groups.items() if name in g.members and name != g.sender}

    def read(self, name: str) -> dict[str, list[str]]:
        got: dict[str, list[str]] = {}
        for e in self.events.get(name, []):
            if e.kind == "message":
                got.setdefault(e.group_id, []).append(e.text)
        return got

    async def sync_until(self, name: str, done: Callable[[list[Event]], bool], what: str) -> None:
        seen = self.events.setdefault(name, [])

        async def check() -> bool:
            seen.extend(await self.clients[name].sync())
            return done(seen)

        await wait_until(check, TIMEOUT, what=f"{name}: {what}", interval=0.1)

    async def aclose(self) -> None:
        for c in self.clients.values():
            with contextlib.suppress(Exception):
                await c.aclose()


def kinds(kind: str, n: int) -> Callable[[list[Event]], bool]:
    return lambda events: sum(e.kind == kind for e in events) >= n


async def open_chat(directory: Path, net: ProcessNet) -> Chat:
    """Register everyone, connect every group member to its group's sender, create the groups."""
    names = ("bob", *SENDERS)
    chat = Chat({n: PhxClient.open(directory / n, ca_file=net.ca_file, hosts=net.hosts) for n in names})
    await asyncio.gather(*(chat.clients[n].register(address(n), b"pw of " + n.encode()) for n in names))
    members = {s: ("bob", *EXTRA.get(s, ())) for s in SENDERS}
    pairs = [(s, m) for s, ms in members.items() for m in ms]
    for sender, member in pairs:
        await chat.clients[sender].connect(address(member))
    requested = Counter(s for s, _ in pairs)
    accepting = Counter(m for _, m in pairs)

    async def accept(name: str, n: int) -> None:
        await chat.sync_until(name, kinds("request", n), "connection requests")
        for e in chat.events[name]:
            if e.kind == "request":
                await chat.clients[name].accept(e.request_id)

    await asyncio.gather(*(accept(name, n) for name, n in accepting.items()))
    await asyncio.gather(
        *(chat.sync_until(name, kinds("connected", n), "acceptances") for name, n in requested.items())
    )
    await asyncio.gather(
        *(chat.sync_until(name, kinds("ready", n), "friendship keys") for name, n in accepting.items())
    )

    async def create(sender: str) -> None:
        client = chat.clients[sender]
        row = await client.create_group(f"g-{sender}")
        for m in members[sender]:
            await client.invite(f"g-{sender}", address(m))
        chat.groups[str(row.group_id)] = Group(sender, (sender, *members[sender]))

    await asyncio.gather(*(create(s) for s in SENDERS))
    joining = Counter(m for _, m in pairs)

    async def joined(name: str, n: int) -> None:
        await chat.sync_until(name, kinds("joined", n), "Welcomes")

    await asyncio.gather(*(joined(name, n) for name, n in joining.items()))
    return chat


async def send_all(chat: Chat) -> None:
    """PER_GROUP messages into each group, the senders in parallel."""

    async def run(gid: str, group: Group) -> None:
        for i in range(PER_GROUP):
            text = f"{group.sender}/{i}"
            await chat.clients[group.sender].send(f"g-{group.sender}", text)
            group.sent.append(text)  # acknowledged by the DS

    await asyncio.gather(*(run(gid, g) for gid, g in chat.groups.items()))


async def count(url: str, sql: str, *args: str) -> int:
    """A count read straight from a homeserver's database (final once its process is dead)."""
    db = await open_database(url)
    try:
        async with db.transaction(readonly=True) as conn:
            return int(await conn.fetchval(sql, *args))
    finally:
        await db.close()


async def outbox(urls: dict[str, str]) -> int:
    """a.test's backlog for b.test."""
    return await count(urls["a.test"], "SELECT COUNT(*) FROM fed_outbox WHERE destination = $1", "b.test")


async def received(urls: dict[str, str]) -> int:
    """Messages from a.test that b.test has recorded (and enqueued, in the same transaction)."""
    return await count(urls["b.test"], "SELECT COUNT(*) FROM fed_received WHERE source = $1", "a.test")


async def queued(urls: dict[str, str]) -> int:
    """Items ever put into b.test's queues: the sum of their next sequence numbers."""
    return await count(urls["b.test"], "SELECT COALESCE(SUM(next_sequence), 0) FROM qs_queues")


async def destination(url: str, *, reset: bool = False) -> DestinationRow:
    """a.test's state for b.test, as ``phx admin destinations`` shows it (``--reset b.test`` first)."""
    store = FederationStore()
    db = await open_database(url)
    try:
        if reset:
            async with db.transaction() as conn:
                assert await store.reset(conn, B)
        async with db.transaction(readonly=True) as conn:
            (row,) = await store.destinations(conn)
    finally:
        await db.close()
    assert row.destination == B
    return row


CASES = [
    pytest.param(("sender",), "sqlite", id="sender-sqlite"),
    pytest.param(("receiver",), "sqlite", id="receiver-sqlite"),
    # Both kills in one backlog: PostgreSQL gets each scenario without a second slow test.
    pytest.param(
        ("sender", "receiver"), "postgres", id="sender-receiver-postgres", marks=pytest.mark.postgres
    ),
]


@pytest.mark.parametrize(("victims", "database_urls"), CASES, indirect=["database_urls"])
async def test_killed_mid_delivery(
    victims: tuple[str, ...], database_urls: dict[str, str], tmp_path: Path, client_dir: Path
) -> None:
    net = write_configs(tmp_path / "net", database_urls, batch_size=BATCH)
    async with homeservers(net) as servers:
        a, b = servers["a.test"], servers["b.test"]
        try:
            await asyncio.gather(a.start(), b.start())
            chat = await open_chat(client_dir, net)
            try:
                await kill_mid_delivery(victims, chat, a, b, database_urls)
            finally:
                await chat.aclose()
        except BaseException:
            for hs in servers.values():
                print(f"--- {hs.domain} log (last lines):\n{hs.log_tail()}")
            raise


async def kill_mid_delivery(
    victims: tuple[str, ...], chat: Chat, a: Homeserver, b: Homeserver, urls: dict[str, str]
) -> None:
    async def outbox_empty() -> bool:
        return await outbox(urls) == 0

    # The set-up's own traffic is through; b.test hangs (SIGSTOP) and a backlog builds up for it.
    await wait_until(outbox_empty, TIMEOUT, what="the set-up's deliveries")
    base = await received(urls)
    queued_before = await queued(urls)
    received_before = (await b.metrics()).get("phx_federation_received_total", status="accepted")
    b.pause()
    await send_all(chat)
    assert await outbox(urls) == MESSAGES  # all acknowledged to their senders, all waiting for b.test
    sent_before = (await a.metrics()).get("phx_federation_sent_total", destination="b.test")
    b.resume()
    for i, victim in enumerate(victims, 1):
        if victim == "sender":
            await kill_sender(a, b, urls, base, sent_before, at=KILL_AT * i)
        else:
            await kill_receiver(b, urls, base, received_before, at=KILL_AT * i)
    # Every member's client reads its queue until it has as many messages as were sent to it...
    for name in chat.clients:
        want = sum(len(v) for v in chat.expected(name).values())

        def complete(events: list[Event], name: str = name, want: int = want) -> bool:
            return sum(len(v) for v in chat.read(name).values()) >= want

        await chat.sync_until(name, complete, "messages")
    # ... and holds exactly those: nothing lost, nothing twice, each group in send order.
    for name, events in chat.events.items():
        assert [e.as_dict() for e in events if e.kind == "warning"] == [], name
        assert chat.read(name) == chat.expected(name), name
    assert sum(len(v) for v in chat.expected("bob").values()) == MESSAGES
    # The outbox drains (a batch whose answer was lost is answered as a duplicate when sent again), and
    # the receiver recorded each message exactly once.
    await wait_until(outbox_empty, TIMEOUT, what="a.test's outbox to drain")
    assert await received(urls) - base == MESSAGES
    assert await queued(urls) - queued_before == MESSAGES  # bob's queue: each message once, nothing else
    row = await destination(urls["a.test"])
    assert row.dropped_total == 0, row


async def kill_sender(
    a: Homeserver, b: Homeserver, urls: dict[str, str], base: int, sent_before: float, *, at: float
) -> None:
    """SIGKILL a.test at the worst moment, once a share ``at`` of the backlog is through: b.test has
    accepted a batch whose answer a.test has not processed."""

    async def sent() -> float:
        return (await a.metrics()).get("phx_federation_sent_total", destination="b.test") - sent_before

    await wait_until(lambda: more_than(sent, MESSAGES * at), TIMEOUT, what="part of the backlog sent")
    # Freeze the sender (SIGSTOP) and let the receiver finish what it is doing: if the receiver then holds
    # more than the sender's outbox says was answered, a batch is in flight: kill now. Otherwise the
    # freeze fell between two batches: let the sender run one more batch and try again.
    for _ in range(FREEZES):
        a.pause()
        await idle(b)
        left = await outbox(urls)
        unanswered = await received(urls) - base - (MESSAGES - left)
        if unanswered > 0:
            break
        a.resume()
        done = await sent()
        await wait_until(functools.partial(more_than, sent, done), TIMEOUT, what="one more batch")
    else:
        raise AssertionError("never froze the sender with a batch in flight")
    assert a.proc is not None
    killed_at = time.time()
    a.kill()
    # Mid-delivery, as the dead sender's database shows: part of the backlog answered, not all, and the
    # lease on b.test held by the killed process (it is kept only while a backlog drains). Read again now
    # that it is dead: a frozen SQLite writer may have had a commit on disk that readers only see once the
    # WAL index is rebuilt, so the batch seen in flight may in fact have been answered.
    left = await outbox(urls)
    unanswered = await received(urls) - base - (MESSAGES - left)
    assert 0 < left < MESSAGES and unanswered >= 0, (left, unanswered)
    row = await destination(urls["a.test"])
    assert row.lease_owner == "a.test-1", row
    assert row.lease_until_ms > killed_at * 1000 + RESUME_WITHIN * 1000, row
    # The restarted process takes its lease back at once (same federation.instance_name; on SQLite every
    # lease is cleared at start): no operator reset, no waiting for the dead process's lease to lapse.
    duplicates_before = await duplicates(b)
    await a.start()
    restarted = time.monotonic()

    # The restarted sender begins with what the receiver took without it knowing: answered as duplicates
    # (and, as the clients check at the end, not enqueued twice).
    async def answered_as_duplicates() -> bool:
        return await duplicates(b) - duplicates_before >= unanswered

    await wait_until(answered_as_duplicates, TIMEOUT, what="the unanswered batch to be sent again")
    assert time.monotonic() - restarted < RESUME_WITHIN, "the restarted sender waited for its old lease"


async def duplicates(server: Homeserver) -> float:
    return (await server.metrics()).get("phx_federation_received_total", status="duplicate")


async def kill_receiver(
    b: Homeserver, urls: dict[str, str], base: int, received_before: float, *, at: float
) -> None:
    """SIGKILL b.test at the worst moment, once a share ``at`` of the backlog is through: frozen (SIGSTOP)
    inside a write transaction taking a batch, which its death must roll back."""

    async def accepted() -> float:
        m = await b.metrics()
        return m.get("phx_federation_received_total", status="accepted") - received_before

    await wait_until(lambda: more_than(accepted, MESSAGES * at), TIMEOUT, what="part of the backlog")
    # Freeze it at random moments (a few per batch) until one falls inside a write transaction.
    rng = random.Random(at)
    async with write_probe(urls["b.test"]) as writing:
        for _ in range(RECEIVER_FREEZES):
            b.pause()
            if await writing():
                break
            b.resume()
            await asyncio.sleep(rng.uniform(0.001, 0.01))
        else:
            raise AssertionError("never froze the receiver inside a transaction")
    b.kill()
    # Mid-delivery, as the dead receiver's database shows: it had taken part of the backlog, not all.
    got = await received(urls) - base
    assert 0 < got < MESSAGES, got
    await b.start()


@asynccontextmanager
async def write_probe(url: str) -> AsyncIterator[Callable[[], Awaitable[bool]]]:
    """Whether some connection holds a write transaction open in the database at ``url``: on SQLite, the
    write lock (every write transaction takes it with its first statement); on PostgreSQL, a row-exclusive
    lock on a table of the URL's schema (taken by a transaction's first INSERT/UPDATE/DELETE there)."""
    if url.startswith("sqlite://"):
        path = sqlite_path(url)

        async def sqlite_writing() -> bool:
            conn = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError as e:
                assert "locked" in str(e), e
                return True
            finally:
                conn.close()

        yield sqlite_writing
        return
    (schema,) = parse_qs(urlsplit(url).query)["search_path"]
    admin = await asyncpg.connect(POSTGRES_URL)

    async def postgres_writing() -> bool:
        locks = await admin.fetchval(
            "SELECT COUNT(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND l.mode = 'RowExclusiveLock' AND l.granted",
            schema,
        )
        return bool(locks)

    try:
        yield postgres_writing
    finally:
        await admin.close()


async def more_than(value: Callable[[], Awaitable[float]], threshold: float) -> bool:
    return await value() > threshold


async def idle(server: Homeserver) -> None:
    """Until the server's received counters stay the same for a moment (it has answered what it got)."""
    previous: dict[str, float] = {}

    async def unchanged() -> bool:
        m = await server.metrics()
        now = {k: m.get("phx_federation_received_total", status=k) for k in ("accepted", "duplicate")}
        same = now == previous
        previous.clear()
        previous.update(now)
        return same

    await wait_until(unchanged, TIMEOUT, what="the receiver to go idle", interval=0.3)
