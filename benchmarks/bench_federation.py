"""Federation benchmark: two homeservers on this machine, one group of 10 members split 5/5.

    .venv/bin/python benchmarks/bench_federation.py [--messages N] [--window W] [--engine sqlite|postgres]

a.test runs in this process, b.test in a child process (each gets a core); they talk real HTTPS on
loopback with a throw-away CA. N application messages are fanned out through a.test's QS as the group's DS
would (W fan-outs in flight; the QS keeps their submission order): each goes into a.test's 5 queues and, in
the same transaction, into the outbox for b.test, whose sender signs it, batches it and posts it to b.test,
which verifies it and enqueues it into its 5 queues.

Printed: accepted -> enqueued-everywhere throughput (first acceptance at a.test to the last commit at
b.test), p50/p99 latency per message (acceptance at a.test to commit at b.test; both processes read the
same system clock), and the crypto-only bound measured in the same run: per message one frame signature
and verification, one Privacy Pass token redemption (the sender's DS request), and 10 queue encryptions.
Rate limits are off (the defaults allow 5 messages/s per queue, which would be the figure measured).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import asyncpg  # noqa: E402
import trustme  # noqa: E402
import uvicorn  # noqa: E402

from phx.config import Config, FederationConfig, HostPort, OutboxConfig, RateLimitConfig  # noqa: E402
from phx.crypto import PHX_PREFIX, SUITE_1  # noqa: E402
from phx.federation.discovery import Resolver  # noqa: E402
from phx.federation.messages import LABEL_QS_TO_QS, QsToQsMessage  # noqa: E402
from phx.federation.qs_bridge import EnqueueOutcome, QsQueues  # noqa: E402
from phx.federation.service import FederationService  # noqa: E402
from phx.identifiers import Fqdn, GroupId  # noqa: E402
from phx.mls.messages import MLSMessage, PrivateMessage  # noqa: E402
from phx.mls.messages.common import ContentType  # noqa: E402
from phx.privacypass import IssuerKey, finalize_tokens, phoenix_challenge, request_tokens  # noqa: E402
from phx.queues import enqueue, new_queue  # noqa: E402
from phx.queuing import core  # noqa: E402
from phx.queuing.messages import (  # noqa: E402
    ClientQueueConfig,
    CreateUserRecordParams,
    CreateUserRecordResponse,
    FanOutMessage,
    MessageContent,
    MessageContentType,
    Operation,
    QsClientRequest,
    QueueConfig,
    seal_queue_config,
)
from phx.queuing.routes import qs_routes  # noqa: E402
from phx.queuing.service import QsService  # noqa: E402
from phx.server import Registry, create_app, uvicorn_config  # noqa: E402
from phx.storage import Connection, Database, migrate, open_database  # noqa: E402

CS = SUITE_1
A, B = Fqdn("a.test"), Fqdn("b.test")
MEMBERS = 5
POSTGRES_URL = os.environ.get("PHX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


# --- one homeserver -----------------------------------------------------------------------------------


class AcceptAll:
    async def redeem(self, token: bytes, now: int) -> None:
        return None


class QsRoutes:
    name = "qs"

    def __init__(self, qs: QsService) -> None:
        self.qs = qs

    def routes(self) -> Any:
        return qs_routes(self.qs)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def config_for(domain: str, tmp: Path, db_url: str) -> Config:
    base = Config.default(domain, tls_cert=tmp / f"{domain}.crt", tls_key=tmp / f"{domain}.key")
    fed = FederationConfig(
        ca_file=tmp / "ca.pem",
        outbox=OutboxConfig(batch_size=200),
        rate_limit=RateLimitConfig(per_domain_rate=0, per_queue_rate=0),
    )
    return replace(
        base, server=replace(base.server, database_url=db_url, log_level="warning"), federation=fed
    )


async def homeserver(
    config: Config, overrides: dict[str, HostPort], queues_factory: Any = QsQueues
) -> tuple[Database, QsService, FederationService, Server]:
    db = await open_database(config.server.database_url)
    for service in ("qs", "federation"):
        await migrate(db, service)
    registry = Registry()
    fed = FederationService(config, db, registry=registry, resolver=Resolver(overrides))
    qs = await QsService.open(
        db,
        config.qs,
        config.server.domain,
        clock=lambda: int(time.time()),
        redeemer=AcceptAll(),
        forwarder=fed.forwarder,
    )
    fed.bind(queues_factory(qs))
    app = create_app(config, [QsRoutes(qs), fed], metrics=registry)
    ucfg = uvicorn_config(app, config, port=0)
    ucfg.access_log = False
    server = Server(ucfg)
    asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return db, qs, fed, server


def port_of(server: Server) -> int:
    return int(server.servers[0].sockets[0].getsockname()[1])


async def register(qs: QsService, n: int) -> list[ClientQueueConfig]:
    configs = []
    for _ in range(n):
        _, pk = CS.generate_signature_key_pair()
        _, queue_pk = CS.generate_hpke_key_pair()
        params = CreateUserRecordParams(pk, os.urandom(32), pk, queue_pk)
        body = QsClientRequest(params.encode(), None, b"pp").encode()
        cid = CreateUserRecordResponse.decode(await qs.handle(Operation.CREATE_USER_RECORD, body)).qs_cid
        configs.append(seal_queue_config(qs.queue_config_encryption_key, qs.domain, QueueConfig(None, cid)))
    return configs


def message(group: GroupId, body: bytes) -> MessageContent:
    pm = PrivateMessage(
        group.encode(), 7, ContentType.APPLICATION, b"", os.urandom(40), body + os.urandom(150)
    )
    return MessageContent(MessageContentType.APPLICATION, MLSMessage(pm))


def index_of(fan_out: FanOutMessage) -> int | None:
    body = fan_out.message_content.body
    assert isinstance(body, MLSMessage) and body.private_message is not None
    head = body.private_message.ciphertext[:8]
    return None if head == b"warmup!!" else int.from_bytes(head, "big")


# --- b.test (child process) ---------------------------------------------------------------------------


class TimedQueues(QsQueues):
    """Records when each measured message is committed into b.test's queues."""

    def __init__(self, qs: QsService) -> None:
        super().__init__(qs)
        self.stamps: dict[int, float] = {}
        self._pending: list[int] = []

    async def enqueue(
        self,
        conn: Connection,
        fan_outs: Sequence[FanOutMessage],
        now: int,
        contents: Sequence[bytes] | None = None,
    ) -> EnqueueOutcome:
        self._pending = [i for i in map(index_of, fan_outs) if i is not None]
        return await super().enqueue(conn, fan_outs, now, contents)

    async def after_commit(self, deliveries: Sequence[core.Delivery]) -> None:
        t = time.time()
        for i in self._pending:
            self.stamps.setdefault(i, t)
        self._pending = []
        await super().after_commit(deliveries)


def child(pipe: Pipe, tmp: str, db_url: str, n: int, profile: bool) -> None:
    if not profile:
        asyncio.run(_child(pipe, Path(tmp), db_url, n))
        return
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(_child(pipe, Path(tmp), db_url, n))
    prof.disable()
    print("=== b.test profile ===")
    pstats.Stats(prof).sort_stats("tottime").print_stats(30)


async def _child(pipe: Pipe, tmp: Path, db_url: str, n: int) -> None:
    overrides: dict[str, HostPort] = {}
    timed: list[TimedQueues] = []

    def factory(qs: QsService) -> TimedQueues:
        timed.append(TimedQueues(qs))
        return timed[0]

    db, qs, fed, server = await homeserver(config_for("b.test", tmp, db_url), overrides, factory)
    configs = await register(qs, MEMBERS)
    pipe.send((port_of(server), [c.encode() for c in configs]))
    a_port = await asyncio.to_thread(pipe.recv)
    overrides["qs.a.test"] = HostPort("127.0.0.1", a_port)
    deadline = time.monotonic() + 600
    while len(timed[0].stamps) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    cpu = time.process_time()
    pipe.send((timed[0].stamps, cpu))
    await asyncio.to_thread(pipe.recv)
    await fed.stop()
    server.should_exit = True
    await asyncio.sleep(0.2)
    await db.close()


# --- the crypto-only bound ----------------------------------------------------------------------------


def crypto_bound(samples: int = 400) -> dict[str, float]:
    """Seconds per message for each cryptographic step, measured here."""
    sk, pk = CS.generate_signature_key_pair()
    payload = FanOutMessage((), message(GroupId.random(A), b"x" * 8)).encode()
    frame = QsToQsMessage.sign_encoded(os.urandom(16), int(time.time()), A, B, payload, sk)
    msg, tbs = QsToQsMessage.split(frame)

    def timed(fn: Any, reps: int = samples) -> float:
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps

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
    redeem = timed(lambda: key.verify(tokens[next(it) % len(tokens)]), 200)
    return {"sign": sign, "verify": verify, "queue_encryption": queue, "token_redemption": redeem}


# --- a.test (this process) ----------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    tmpdir = tempfile.TemporaryDirectory()
    tmp = Path(tmpdir.name)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    for d in ("a.test", "b.test"):
        leaf = ca.issue_cert(f"qs.{d}", f"as.{d}", f"ds.{d}")
        (tmp / f"{d}.crt").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(tmp / f"{d}.key"))
    schemas: list[str] = []
    if args.engine == "postgres":
        admin = await asyncpg.connect(POSTGRES_URL)
        for _ in range(2):
            schemas.append(f"bench_{secrets.token_hex(5)}")
            await admin.execute(f'CREATE SCHEMA "{schemas[-1]}"')
        await admin.close()
        sep = "&" if "?" in POSTGRES_URL else "?"
        urls = [f"{POSTGRES_URL}{sep}search_path={s}" for s in schemas]
    else:
        urls = [f"sqlite://{tmp / 'a.db'}", f"sqlite://{tmp / 'b.db'}"]
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(
        target=child, args=(theirs, str(tmp), urls[1], args.messages, args.profile), daemon=True
    )
    proc.start()
    overrides: dict[str, HostPort] = {}
    try:
        db, qs, fed, server = await homeserver(config_for("a.test", tmp, urls[0]), overrides)
        b_port, b_configs = await asyncio.to_thread(ours.recv)
        overrides["qs.b.test"] = HostPort("127.0.0.1", b_port)
        ours.send(port_of(server))
        configs = [*await register(qs, MEMBERS), *(ClientQueueConfig.decode(c) for c in b_configs)]
        group = GroupId.random(A)
        for _ in range(20):  # warm-up: key fetch, connections, unsealed-config caches
            await qs.enqueue_fan_out(FanOutMessage(tuple(configs), message(group, b"warmup!!")))
        accepted: dict[int, float] = {}
        sem = asyncio.Semaphore(args.window)
        fan_outs = [
            FanOutMessage(tuple(configs), message(group, i.to_bytes(8, "big"))) for i in range(args.messages)
        ]

        async def submit(i: int) -> None:
            try:
                assert await qs.enqueue_fan_out(fan_outs[i]) == []
                accepted[i] = time.time()
            finally:
                sem.release()

        cpu0 = time.process_time()
        prof = None
        if args.profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        tasks = []
        start = time.monotonic()
        for i in range(args.messages):
            if args.rate:
                # Open loop at a fixed offered load: latency without the backlog of a saturated run.
                delay = start + i / args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await sem.acquire()
            tasks.append(asyncio.create_task(submit(i)))  # created in order: the QS keeps this order
        await asyncio.gather(*tasks)
        stamps, b_cpu = await asyncio.to_thread(ours.recv)
        a_cpu = time.process_time() - cpu0
        if prof is not None:
            import pstats

            prof.disable()
            print("=== a.test profile ===")
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        ours.send("stop")
        bound = crypto_bound()
        await fed.stop()
        server.should_exit = True
        await asyncio.sleep(0.2)
        await db.close()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        if schemas:
            admin = await asyncpg.connect(POSTGRES_URL)
            for s in schemas:
                await admin.execute(f'DROP SCHEMA "{s}" CASCADE')
            await admin.close()
        tmpdir.cleanup()
    n = args.messages
    missing = n - len(stamps)
    latencies = sorted(stamps[i] - accepted[i] for i in stamps)
    elapsed = max(stamps.values()) - min(accepted.values())
    throughput = len(stamps) / elapsed
    per_message = bound["sign"] + bound["verify"] + bound["token_redemption"] + 10 * bound["queue_encryption"]
    a_side = bound["sign"] + bound["token_redemption"] + MEMBERS * bound["queue_encryption"]
    b_side = bound["verify"] + MEMBERS * bound["queue_encryption"]
    single, dual = 1 / per_message, 1 / max(a_side, b_side)
    offered = f"offered {args.rate:.0f} msg/s" if args.rate else "saturated"
    print(
        f"bench-federation: {n} messages, group of {2 * MEMBERS} (5 on a.test, 5 on b.test), {args.engine}, "
        f"window {args.window}, {offered}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    if missing:
        print(f"  MISSING at b.test: {missing}")
    print(f"  throughput accepted -> enqueued everywhere: {throughput:,.0f} msg/s ({elapsed:.2f} s)")
    print(
        f"  latency p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {latencies[int(0.99 * (len(latencies) - 1))] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    print(
        "  crypto per message: "
        + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in bound.items())
        + " (queue encryption x10)"
    )
    print(
        f"  crypto-only bound: {single:,.0f} msg/s on one core ({throughput / single:.0%} reached), "
        f"{dual:,.0f} msg/s with a.test and b.test on a core each ({throughput / dual:.0%} reached)"
    )
    print(
        f"  CPU per message: a.test {a_cpu / n * 1e6:.0f} us (accepting and sending), "
        f"b.test {b_cpu / n * 1e6:.0f} us (receiving; whole process life)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--window", type=int, default=64, help="fan-outs in flight at a.test")
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--profile", action="store_true", help="cProfile both processes")
    parser.add_argument(
        "--rate", type=float, default=0, help="offered load in msg/s (default: as fast as accepted)"
    )
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
