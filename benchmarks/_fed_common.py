"""What both modes of ``bench_federation.py`` share: certificates, databases, the measured b.test hook, the
crypto-only bound, delivery checks, profiles and the printed report."""

from __future__ import annotations

import contextlib
import cProfile
import os
import pstats
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import trustme
import uvicorn
from _pg_cpu import backend_cpu as pg_backend_cpu

from phx.crypto import PHX_PREFIX, SUITE_1
from phx.federation.messages import LABEL_QS_TO_QS, QsToQsMessage
from phx.federation.qs_bridge import EnqueueOutcome, QsQueues
from phx.identifiers import Fqdn, GroupId
from phx.mls.messages import MLSMessage, PrivateMessage
from phx.mls.messages.common import ContentType
from phx.privacypass import IssuerKey, finalize_tokens, phoenix_challenge, request_tokens
from phx.queues import enqueue, new_queue
from phx.queuing import core
from phx.queuing.messages import FanOutMessage, MessageContent, MessageContentType
from phx.queuing.service import QsService
from phx.storage import Connection

CS = SUITE_1
A, B = Fqdn("a.test"), Fqdn("b.test")
MEMBERS = 5
POSTGRES_URL = os.environ.get("PHX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


class Server(uvicorn.Server):
    """uvicorn in the caller's event loop; signals are left to the caller."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def write_certs(tmp: Path) -> Path:
    """A throw-away CA (``ca.pem``) and a certificate for as./ds./qs. of each domain; returns the CA file."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    for d in (A, B):
        leaf = ca.issue_cert(f"qs.{d}", f"as.{d}", f"ds.{d}")
        (tmp / f"{d}.crt").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(tmp / f"{d}.key"))
    return tmp / "ca.pem"


class Databases:
    """One database per homeserver: SQLite files in ``tmp``, or fresh PostgreSQL schemas (dropped at the
    end) whose backends carry the schema as ``application_name`` so their CPU time can be read."""

    def __init__(self, engine: str, tmp: Path) -> None:
        self.engine = engine
        self.tmp = tmp
        self.schemas: list[str] = []

    async def urls(self) -> list[str]:
        if self.engine == "sqlite":
            return [f"sqlite://{self.tmp / 'a.db'}", f"sqlite://{self.tmp / 'b.db'}"]
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            for _ in range(2):
                self.schemas.append(f"bench_{secrets.token_hex(5)}")
                await admin.execute(f'CREATE SCHEMA "{self.schemas[-1]}"')
        finally:
            await admin.close()
        sep = "&" if "?" in POSTGRES_URL else "?"
        return [f"{POSTGRES_URL}{sep}search_path={s}&application_name={s}" for s in self.schemas]

    async def backend_cpu(self) -> float:
        """CPU seconds used so far by this run's PostgreSQL backends (0 on SQLite)."""
        return await pg_backend_cpu(POSTGRES_URL, self.schemas)

    async def drop(self) -> None:
        if not self.schemas:
            return
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            for s in self.schemas:
                await admin.execute(f'DROP SCHEMA "{s}" CASCADE')
        finally:
            await admin.close()


# --- the measured commit at b.test --------------------------------------------------------------------


class TimedQueues(QsQueues):
    """The federation receiver's view of the QS, recording when each measured message is committed into
    the local queues (``index_of`` names a message by its content; None for others)."""

    def __init__(self, qs: QsService, index_of: Callable[[FanOutMessage], int | None]) -> None:
        super().__init__(qs)
        self.index_of = index_of
        self.stamps: dict[int, float] = {}
        #: Commits that carried measured messages (how well the outbox batched).
        self.commits = 0
        self._pending: list[int] = []

    async def enqueue(
        self,
        conn: Connection,
        fan_outs: Sequence[FanOutMessage],
        now: int,
        contents: Sequence[bytes] | None = None,
    ) -> EnqueueOutcome:
        self._pending = [i for i in map(self.index_of, fan_outs) if i is not None]
        return await super().enqueue(conn, fan_outs, now, contents)

    async def after_commit(self, deliveries: Sequence[core.Delivery]) -> None:
        t = time.time()
        self.commits += bool(self._pending)
        for i in self._pending:
            self.stamps.setdefault(i, t)
        self._pending = []
        await super().after_commit(deliveries)


def private_ciphertext(content: MessageContent) -> bytes | None:
    body = content.body
    if isinstance(body, MLSMessage) and body.private_message is not None:
        return body.private_message.ciphertext
    return None


# --- the crypto-only bound ----------------------------------------------------------------------------


def fake_message(group: GroupId, body: bytes) -> MessageContent:
    pm = PrivateMessage(
        group.encode(), 7, ContentType.APPLICATION, b"", os.urandom(40), body + os.urandom(150)
    )
    return MessageContent(MessageContentType.APPLICATION, MLSMessage(pm))


def crypto_bound(samples: int = 500) -> dict[str, float]:
    """Seconds per message for each cryptographic step, measured here (single-threaded, this process)."""
    sk, pk = CS.generate_signature_key_pair()
    payload = FanOutMessage((), fake_message(GroupId.random(A), b"x" * 8)).encode()
    frame = QsToQsMessage.sign_encoded(os.urandom(16), int(time.time()), A, B, payload, sk)
    msg, tbs = QsToQsMessage.split(frame)

    def timed(fn: Any, reps: int = samples) -> float:
        # The median of five batches: other work on the machine inflates single batches.
        batches = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(reps // 5):
                fn()
            batches.append((time.perf_counter() - t) / (reps // 5))
        return statistics.median(batches)

    sign = timed(lambda: QsToQsMessage.sign_encoded(msg.message_id, msg.created_at, A, B, payload, sk))
    verify = timed(lambda: CS.verify_with_label(pk, LABEL_QS_TO_QS, tbs, msg.signature, prefix=PHX_PREFIX))
    state, _ = new_queue(CS, CS.generate_hpke_key_pair()[1], int(time.time()))
    item = payload[:300]
    holder = [state]

    def one_queue() -> None:
        holder[0], _ = enqueue(CS, holder[0], (item,), int(time.time()), rotation_interval=86400)

    queue = timed(one_queue, samples * 5)
    key = IssuerKey(secrets.token_bytes(32))
    pending = request_tokens(key.public_key, phoenix_challenge(A), 50)
    tokens = finalize_tokens(pending, key.issue(pending.request, max_batch=100))
    it = iter(range(10**9))
    redeem = timed(lambda: key.verify(tokens[next(it) % len(tokens)]), 250)
    return {"sign": sign, "verify": verify, "queue_encryption": queue, "token_redemption": redeem}


# --- delivery checks ----------------------------------------------------------------------------------


class DeliveryError(AssertionError):
    """A queue did not get exactly its messages, in order."""


def check_queue(name: str, got: Sequence[int], want: Sequence[int]) -> None:
    if list(got) == list(want):
        return
    missing = len(set(want) - set(got))
    extra = len(got) - len(set(got))
    first = next(
        (k for k, (g, w) in enumerate(zip(got, want, strict=False)) if g != w), min(len(got), len(want))
    )
    raise DeliveryError(
        f"{name}: got {len(got)} messages, want {len(want)} ({missing} missing, {extra} duplicated, "
        f"first difference at position {first})"
    )


# --- profiles -----------------------------------------------------------------------------------------

#: (label, substrings of a profile entry's file name or function text), first match wins.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("HTTP: uvicorn/starlette/h11/httpx", ("uvicorn", "starlette", "h11", "httpx", "httpcore", "phx/server")),
    ("TLS", ("ssl.py", "sslproto", "_ssl.", "SSLObject", "SSLSocket")),
    ("token redemption", ("phx/privacypass", "phx/auth")),
    ("DS", ("phx/delivery",)),
    ("QS", ("phx/queuing", "phx/queues")),
    ("outbox/sender/receiver", ("phx/federation",)),
    ("DB driver", ("sqlite3", "aiosqlite", "asyncpg", "phx/storage")),
    ("MLS/codec", ("phx/mls", "phx/codec", "phx/identifiers", "phx/credentials")),
    ("crypto", ("phx/crypto", "nacl", "sodium", "cryptography", "hashlib", "hmac", "_hashlib", "ristretto")),
    ("event loop", ("asyncio", "selectors", "select.epoll", "threading", "queue.py", "concurrent")),
    ("imports at run time", ("importlib", "_distutils_hack")),
)


def profile_group(key: tuple[str, int, str]) -> str:
    text = f"{key[0]}:{key[2]}"
    for label, needles in GROUPS:
        if any(n in text for n in needles):
            return label
    return "other"


def print_profile(
    prof: cProfile.Profile, title: str, messages: int, other_threads: float | None = None, top: int = 15
) -> None:
    """The top entries by own time, then own time per message grouped by subsystem (and the CPU of the
    process's other threads, which the profile of the event loop's thread does not see)."""
    stats = pstats.Stats(prof)
    dump = Path(tempfile.gettempdir()) / f"bench-federation-{title.split()[0]}.prof"
    prof.dump_stats(dump)
    print(f"=== {title}: top {top} by tottime (whole profile: {dump}) ===")
    stats.sort_stats("tottime").print_stats(top)
    groups: dict[str, float] = {}
    raw: Mapping[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for key, (_, _, tottime, _, callers) in raw.items():
        label = profile_group(key)
        if label == "other" and callers and key[0] == "~":
            # A builtin (len, dict.get, socket.recv, …) counts for whoever called it.
            edges = {c: e[2] for c, e in callers.items()}
            whole = sum(edges.values()) or 1.0
            for caller, t in edges.items():
                group = profile_group(caller)
                groups[group] = groups.get(group, 0.0) + tottime * t / whole
            continue
        groups[label] = groups.get(label, 0.0) + tottime
    total = sum(groups.values())
    print(f"=== {title}: own time by subsystem, per message (cProfile inflates it) ===")
    for label, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {label:<36}{t / messages * 1e6:9.0f} us  {t / total:5.0%}")
    if other_threads is not None:
        print(f"  (other threads, e.g. the SQLite driver's: {other_threads / messages * 1e6:.0f} us CPU)")


# --- the report ---------------------------------------------------------------------------------------


@dataclass
class Figures:
    entry: str
    engine: str
    messages: int
    warmup: int
    window: int
    rate: float
    connections: int
    #: Queue copies per message (the DS leaves out the sender's own queue) and where they are, on average.
    local_recipients: float
    remote_recipients: float
    #: Per measured message: when it was offered and when it was committed at b.test.
    offered: dict[int, float]
    enqueued: dict[int, float]
    accepted: dict[int, float]
    cpu: dict[str, float]
    bound: dict[str, float]
    delivery: str
    notes: list[str] = field(default_factory=list)
    #: Who sends, for the first line (``ds``).
    senders: str = ""
    #: b.test commits that carried measured messages.
    commits: int = 0
    #: CPU seconds per second of each homeserver while idle, just before the timed phase.
    idle: dict[str, float] = field(default_factory=dict)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[int(q * (len(sorted_values) - 1))]


def report(f: Figures) -> None:
    n = f.messages
    recipients = f.local_recipients + f.remote_recipients
    latencies = sorted(f.enqueued[i] - f.offered[i] for i in f.enqueued)
    elapsed = max(f.enqueued.values()) - min(f.offered.values())
    throughput = len(f.enqueued) / elapsed
    b = f.bound
    # Every signature operation of the servers per message: the DS's DsAuthToken check (entry ds only),
    # the frame's signature at a.test and its verification at b.test.
    auth = b["verify"] if f.entry == "ds" else 0.0
    per_message = auth + b["sign"] + b["verify"] + b["token_redemption"] + recipients * b["queue_encryption"]
    a_side = auth + b["sign"] + b["token_redemption"] + f.local_recipients * b["queue_encryption"]
    b_side = b["verify"] + f.remote_recipients * b["queue_encryption"]
    single, dual = 1 / per_message, 1 / max(a_side, b_side)
    offered = f"offered {f.rate:.0f} msg/s" if f.rate else "saturated"
    path = {
        "ds": "client HTTPS -> a.test DS send_message (AS token redemption) -> QS -> federation -> b.test QS",
        "qs": "a.test QS fan-out (as the DS would hand it) -> federation -> b.test QS",
    }[f.entry]
    print(
        f"bench-federation: entry {f.entry} ({path}); {n} messages (+{f.warmup} warm-up), group of "
        f"{2 * MEMBERS} (5 on a.test, 5 on b.test)"
        + (f", sent by {f.senders}" if f.senders else "")
        + f", {f.engine}, window {f.window}"
        + (f" on {f.connections} TLS connections" if f.connections else "")
        + f", {offered}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    for note in f.notes:
        print(f"  {note}")
    print(f"  delivery: {f.delivery}")
    print(
        f"  throughput accepted -> enqueued everywhere: {throughput:,.0f} msg/s ({elapsed:.2f} s, first "
        "send to last commit everywhere)"
    )
    print(
        f"  latency to enqueued everywhere: p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    if f.accepted:
        answered = sorted(f.accepted[i] - f.offered[i] for i in f.accepted)
        print(
            "  latency to accepted (the DS's 2xx at the client): "
            f"p50 {statistics.median(answered) * 1000:.1f} ms, p99 {percentile(answered, 0.99) * 1000:.1f} ms"
        )
    print(
        "  crypto per message: "
        + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in b.items())
        + f" (queue encryption x{recipients:g}: {f.local_recipients:g} at a.test, "
        f"{f.remote_recipients:g} at b.test)"
    )
    what = "DsAuthToken check, frame signature and its check" if auth else "frame signature and its check"
    print(
        f"  crypto-only bound (primary: one core): {single:,.0f} msg/s ({throughput / single:.0%} reached); "
        f"{dual:,.0f} msg/s with a.test and b.test on a core each ({throughput / dual:.0%} reached); "
        f"per message: {what}, token redemption, {recipients:g} queue encryptions"
    )
    if auth:
        without = 1 / (per_message - auth)
        print(
            f"  (without the DsAuthToken check, as runs before 2026-11-26 counted it: {without:,.0f} msg/s, "
            f"{throughput / without:.0%} reached)"
        )
    print("  CPU per message: " + ", ".join(f"{k} {v / n * 1e6:.0f} us" for k, v in f.cpu.items()))
    if f.idle:
        print(
            "  CPU while idle (1 s before the timed phase): "
            + ", ".join(f"{k} {v * 1000:.0f} ms/s" for k, v in f.idle.items())
        )
    if f.commits:
        print(
            f"  b.test committed the {n} messages in {f.commits} transactions "
            f"({n / f.commits:.1f} per commit; the outbox batches up to 200 per request)"
        )
