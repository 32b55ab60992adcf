"""Federation benchmark: two homeservers on this machine, one group of 10 members split 5/5.

    .venv/bin/python benchmarks/bench_federation.py [--entry ds|qs] [--messages N] [--window W]
                                                    [--engine sqlite|postgres] [--rate R] [--profile]
                                                    [--senders all|a]

``--entry ds`` (the default) measures the whole federated path as clients use it. a.test and b.test each
run ``phx serve``'s wiring (AS, DS, QS, federation; ``phx.server.wiring.build_homeserver``) in a process
of their own, over real HTTPS with a throw-away CA. Ten clients of the phx.client library (5 registered at
a.test, 5 at b.test) build a group hosted on ds.a.test through the real protocol (connections, create,
invites, joins). Then, untimed, the senders — all ten members (b.test's as federated clients of ds.a.test)
or, with ``--senders a``, the five of a.test — protect N (+20 warm-up) MLS application messages, get
Privacy Pass tokens from as.a.test's issuance endpoint and sign their DS requests. Timed: a separate
load-generator process sends them round robin to ds.a.test's ``send_message`` over one keep-alive TLS
connection per sender (HTTP/1.1 pipelined, W requests in flight; the server answers a connection's
requests one after the other, so each sender has one in the works). For each, a.test's DS checks the
token and the DsAuthToken and hands the fan-out to its QS, which enqueues into the other a.test members'
queues and, in the same transaction, spends the token and writes the outbox row for b.test; the DS
answers 2xx ("accepted"); a.test's sender signs, batches and posts it to b.test, which verifies it and
enqueues it into its members' queues ("enqueued everywhere": b.test's commit, which follows a.test's).

``--entry qs`` is the narrower benchmark: a.test runs only QS + federation in this process and N fan-outs
(to all 10 queues) are handed straight to its QS as the DS would (W in flight), with the same b.test side.

Printed: throughput from the first send to the last commit everywhere, p50/p99 latency per message (send
to commit at b.test; every process reads the same system clock) and, for ``ds``, send to the DS's answer;
the crypto-only bound measured in the same run — per message every signature operation of the servers
(for ``ds`` the DS's DsAuthToken check; the frame's signature and its verification), one Privacy Pass
token redemption and one queue encryption per queue copy (10 for ``qs``; 9 for ``ds``, the DS leaving out
the sender's own queue) — as a rate on one core (the primary figure) and with each homeserver on its own
core; CPU per message of each process (and of PostgreSQL's backends). After the
run every queue is drained and decrypted as its client would: each must hold exactly its messages, in
order, or the bench fails. Rate limits are off (the defaults allow 5 messages/s per queue, which would be
the figure measured).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import replace
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fed_common import (  # noqa: E402
    CS,
    MEMBERS,
    Databases,
    DeliveryError,
    Figures,
    Server,
    TimedQueues,
    check_queue,
    crypto_bound,
    fake_message,
    print_profile,
    private_ciphertext,
    report,
    write_certs,
)

from phx.config import Config, FederationConfig, HostPort, OutboxConfig, RateLimitConfig  # noqa: E402
from phx.federation.discovery import Resolver  # noqa: E402
from phx.federation.qs_bridge import QsQueues  # noqa: E402
from phx.federation.service import FederationService  # noqa: E402
from phx.identifiers import GroupId, QsCid  # noqa: E402
from phx.queues import QueueReader  # noqa: E402
from phx.queuing.messages import (  # noqa: E402
    ClientQueueConfig,
    CreateUserRecordParams,
    CreateUserRecordResponse,
    DequeueMessagesParams,
    DequeueMessagesResponse,
    FanOutMessage,
    FanOutQueuePayload,
    MessageContent,
    Operation,
    QsClientRequest,
    QueueConfig,
    seal_queue_config,
)
from phx.queuing.routes import qs_routes  # noqa: E402
from phx.queuing.service import QsService  # noqa: E402
from phx.server import Registry, create_app, run_event_loop, uvicorn_config  # noqa: E402
from phx.storage import Database, migrate, open_database  # noqa: E402

WARMUP = 20

# --- --entry qs: one QS + federation homeserver -------------------------------------------------------


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
    ucfg.timeout_graceful_shutdown = 1
    server = Server(ucfg)
    SERVING[server] = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return db, qs, fed, server


#: Each server's serve() task, awaited at shutdown (else its lifespan is cancelled with a traceback).
SERVING: dict[Server, asyncio.Task[None]] = {}


async def shut_down(db: Database, fed: FederationService, server: Server) -> None:
    await fed.stop()
    server.should_exit = True
    await SERVING.pop(server)
    await db.close()


def port_of(server: Server) -> int:
    return int(server.servers[0].sockets[0].getsockname()[1])


#: A registered queue: its id, the client's record key and the queue's decryption key.
Queue = tuple[QsCid, bytes, bytes]


async def register(qs: QsService, n: int) -> tuple[list[ClientQueueConfig], list[Queue]]:
    configs, queues = [], []
    for _ in range(n):
        sk, pk = CS.generate_signature_key_pair()
        queue_sk, queue_pk = CS.generate_hpke_key_pair()
        params = CreateUserRecordParams(pk, os.urandom(32), pk, queue_pk)
        body = QsClientRequest(params.encode(), None, b"pp").encode()
        cid = CreateUserRecordResponse.decode(await qs.handle(Operation.CREATE_USER_RECORD, body)).qs_cid
        configs.append(seal_queue_config(qs.queue_config_encryption_key, qs.domain, QueueConfig(None, cid)))
        queues.append((cid, sk, queue_sk))
    return configs, queues


def index_of(fan_out: FanOutMessage) -> int | None:
    return content_index(fan_out.message_content)


def content_index(content: MessageContent) -> int | None:
    ciphertext = private_ciphertext(content)
    assert ciphertext is not None
    head = ciphertext[:8]
    return None if head == b"warmup!!" else int.from_bytes(head, "big")


async def drain(qs: QsService, queues: list[Queue]) -> list[list[int]]:
    """Every queue's messages in order, decrypted as its client would (warm-up messages as -1)."""
    out = []
    for cid, sk, queue_sk in queues:
        reader, got = QueueReader(CS, [queue_sk]), []
        while True:
            params = DequeueMessagesParams(cid, reader.next_sequence, 500)
            body = QsClientRequest.signed(
                Operation.DEQUEUE_MESSAGES.value, params, cid, sk, int(time.time())
            ).encode()
            response = DequeueMessagesResponse.decode(await qs.handle(Operation.DEQUEUE_MESSAGES, body))
            for item in response.messages:
                plaintext = reader.read(item)
                if plaintext is not None:
                    i = content_index(FanOutQueuePayload.decode(plaintext).content)
                    got.append(-1 if i is None else i)
            if response.remaining_messages_number == 0 or not response.messages:
                break
        out.append(got)
    return out


# --- b.test for --entry qs (child process) ------------------------------------------------------------


def child(pipe: Pipe, tmp: str, db_url: str, n: int, profile: bool) -> None:
    run_event_loop(_child(pipe, Path(tmp), db_url, n, profile))


async def _child(pipe: Pipe, tmp: Path, db_url: str, n: int, profile: bool) -> None:
    overrides: dict[str, HostPort] = {}
    timed: list[TimedQueues] = []

    def factory(qs: QsService) -> TimedQueues:
        timed.append(TimedQueues(qs, index_of))
        return timed[0]

    db, qs, fed, server = await homeserver(config_for("b.test", tmp, db_url), overrides, factory)
    configs, queues = await register(qs, MEMBERS)
    pipe.send((port_of(server), [c.encode() for c in configs]))
    a_port = await asyncio.to_thread(pipe.recv)
    overrides["qs.a.test"] = HostPort("127.0.0.1", a_port)
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile(time.thread_time)  # CPU, not the idle waits
        prof.enable()
    cpu, loop_cpu = time.process_time(), time.thread_time()
    deadline = time.monotonic() + 600
    while len(timed[0].stamps) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
    if prof is not None:
        prof.disable()
        print_profile(prof, "b.test profile", n, cpu - loop_cpu)
    pipe.send((timed[0].stamps, cpu, timed[0].commits))
    if await asyncio.to_thread(pipe.recv) == "drain":
        pipe.send(await drain(qs, queues))
        await asyncio.to_thread(pipe.recv)
    await shut_down(db, fed, server)


# --- --entry qs: a.test (this process) ----------------------------------------------------------------


async def run_qs(args: argparse.Namespace) -> Figures:
    tmpdir = tempfile.TemporaryDirectory()
    tmp = Path(tmpdir.name)
    write_certs(tmp)
    dbs = Databases(args.engine, tmp)
    urls = await dbs.urls()
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
        a_configs, a_queues = await register(qs, MEMBERS)
        configs = [*a_configs, *(ClientQueueConfig.decode(c) for c in b_configs)]
        group = GroupId.random(qs.domain)
        for _ in range(WARMUP):  # warm-up: key fetch, connections, unsealed-config caches
            await qs.enqueue_fan_out(FanOutMessage(tuple(configs), fake_message(group, b"warmup!!")))
        accepted: dict[int, float] = {}
        sem = asyncio.Semaphore(args.window)
        fan_outs = [
            FanOutMessage(tuple(configs), fake_message(group, i.to_bytes(8, "big")))
            for i in range(args.messages)
        ]

        async def submit(i: int) -> None:
            try:
                assert await qs.enqueue_fan_out(fan_outs[i]) == []
                accepted[i] = time.time()
            finally:
                sem.release()

        pg0 = await dbs.backend_cpu()
        cpu0, loop0 = time.process_time(), time.thread_time()
        prof = None
        if args.profile:
            import cProfile

            prof = cProfile.Profile(time.thread_time)  # CPU, not the idle waits
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
        stamps, b_cpu, commits = await asyncio.to_thread(ours.recv)
        a_cpu, a_loop = time.process_time() - cpu0, time.thread_time() - loop0
        if prof is not None:
            prof.disable()
            print_profile(prof, "a.test profile", args.messages, a_cpu - a_loop)
        pg_cpu = await dbs.backend_cpu() - pg0
        ours.send("drain")
        b_got = await asyncio.to_thread(ours.recv)
        ours.send("stop")
        a_got = await drain(qs, a_queues)
        await shut_down(db, fed, server)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        await dbs.drop()
        tmpdir.cleanup()
    n = args.messages
    missing = n - len(stamps)
    if missing:
        raise DeliveryError(f"{missing} messages never committed at b.test")
    want = [-1] * WARMUP + list(range(n))
    for k, got in enumerate(a_got):
        check_queue(f"a.test queue {k}", got, want)
    for k, got in enumerate(b_got):
        check_queue(f"b.test queue {k}", got, want)
    cpu = {"a.test": a_cpu, "b.test": b_cpu}
    if args.engine == "postgres":
        cpu["PostgreSQL backends"] = pg_cpu
    return Figures(
        entry="qs",
        engine=args.engine,
        messages=n,
        warmup=WARMUP,
        window=args.window,
        rate=args.rate,
        connections=0,
        local_recipients=MEMBERS,
        remote_recipients=MEMBERS,
        # As before --entry ds existed: from acceptance by a.test's QS (the DS's hand-over returning).
        offered=accepted,
        enqueued=stamps,
        accepted={},
        cpu=cpu,
        bound=crypto_bound(),
        commits=commits,
        delivery=f"OK, every queue got exactly its messages in order ({n} + {WARMUP} warm-up in each of 10)",
        notes=[
            "rate limits off: federation per-domain and per-queue buckets 0 (unlimited); "
            "outbox batches of 200"
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entry", choices=["ds", "qs"], default="ds", help="where messages enter a.test")
    parser.add_argument("--messages", type=int, default=None, help="default: 5000")
    parser.add_argument("--window", type=int, default=64, help="requests (ds) or fan-outs (qs) in flight")
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--profile", action="store_true", help="cProfile a.test and b.test")
    parser.add_argument(
        "--senders",
        choices=["all", "a"],
        default="all",
        help="ds: who sends (all ten members, b.test's as federated clients; or a.test's five)",
    )
    parser.add_argument(
        "--rate", type=float, default=0, help="offered load in msg/s (default: as fast as accepted)"
    )
    args = parser.parse_args()
    if args.messages is None:
        args.messages = 5000
    try:
        if args.entry == "ds":
            from _fed_ds import run_ds

            figures = run_event_loop(
                run_ds(args.engine, args.messages, args.window, args.rate, args.profile, args.senders)
            )
        else:
            figures = run_event_loop(run_qs(args))
    except DeliveryError as e:
        print(f"bench-federation: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    report(figures)


if __name__ == "__main__":
    main()
