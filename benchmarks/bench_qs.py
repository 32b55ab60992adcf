"""QS fan-out benchmark: queue deliveries per second on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/bench_qs.py [--fan-outs N] [--queues Q] [--recipients R]
                                            [--concurrency C] [--engines sqlite,postgres] [--profile]

Registers Q clients (Q queues), builds Q groups whose R members are consecutive clients (so every queue
is in R groups, each with its own sealed queue config), then enqueues N fan-outs (round robin over the
groups) through ``QsService.enqueue_fan_out`` from C concurrent tasks, as a local DS would. Each
delivery is a real one: config unseal (cached after the first), ratchet step, AES-GCM, row lock, insert,
one transaction per fan-out. Prints deliveries/s per engine (the whole run is one measurement; the
setup is not timed). PostgreSQL comes from ``PHX_TEST_POSTGRES_URL`` (a fresh schema, dropped after).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import asyncpg  # noqa: E402
from _pg_cpu import backend_cpu as pg_backend_cpu  # noqa: E402

from phx.config import QsConfig  # noqa: E402
from phx.crypto import SUITE_1  # noqa: E402
from phx.identifiers import Fqdn, GroupId  # noqa: E402
from phx.mls.messages import MLSMessage, PrivateMessage  # noqa: E402
from phx.mls.messages.common import ContentType  # noqa: E402
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
from phx.queuing.service import QsService  # noqa: E402
from phx.storage import Database, migrate, open_database  # noqa: E402

CS = SUITE_1
DOMAIN = Fqdn("bench.test")
POSTGRES_URL = os.environ.get("PHX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


class AcceptAll:
    async def redeem(self, token: bytes, now: int) -> None:
        return None


async def setup(db: Database, queues: int, recipients: int) -> tuple[QsService, list[FanOutMessage]]:
    await migrate(db, "qs")
    service = await QsService.open(
        db, QsConfig(), DOMAIN, clock=lambda: int(time.time()), redeemer=AcceptAll()
    )
    sig_pk = CS.generate_signature_key_pair()[1]
    queue_pk = CS.generate_hpke_key_pair()[1]
    cids = []
    for _ in range(queues):
        params = CreateUserRecordParams(sig_pk, os.urandom(32), sig_pk, queue_pk)
        body = QsClientRequest(params.encode(), None, b"pp").encode()
        cids.append(
            CreateUserRecordResponse.decode(await service.handle(Operation.CREATE_USER_RECORD, body)).qs_cid
        )
    messages = []
    for g in range(queues):
        group = GroupId(uuid.uuid4(), DOMAIN)
        configs: list[ClientQueueConfig] = [
            seal_queue_config(
                service.queue_config_encryption_key, DOMAIN, QueueConfig(None, cids[(g + i) % queues])
            )
            for i in range(recipients)
        ]
        pm = PrivateMessage(group.encode(), 7, ContentType.APPLICATION, b"", os.urandom(40), os.urandom(160))
        messages.append(
            FanOutMessage(tuple(configs), MessageContent(MessageContentType.APPLICATION, MLSMessage(pm)))
        )
    return service, messages


async def run(
    service: QsService, messages: list[FanOutMessage], fan_outs: int, concurrency: int
) -> tuple[float, float, float]:
    """(wall, process CPU, event-loop thread CPU) seconds. CPU time is what the run costs whatever else
    the machine is doing; wall time also counts waiting for a busy core (or for PostgreSQL)."""
    counter = iter(range(fan_outs))

    async def worker() -> None:
        for i in counter:
            await service.enqueue_fan_out(messages[i % len(messages)])

    start, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, time.process_time() - cpu, time.thread_time() - loop_cpu


async def backend_cpu(application_name: str | None) -> float:
    """CPU seconds used so far by this run's PostgreSQL backends (0 when not on PostgreSQL)."""
    return await pg_backend_cpu(POSTGRES_URL, [application_name] if application_name is not None else [])


async def bench_engine(engine: str, args: argparse.Namespace) -> None:
    schema = None
    tmp = None
    if engine == "sqlite":
        tmp = tempfile.TemporaryDirectory()
        db = await open_database(f"sqlite://{tmp.name}/bench.db")
    else:
        schema = f"bench_{secrets.token_hex(6)}"
        admin = await asyncpg.connect(POSTGRES_URL)
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        await admin.close()
        sep = "&" if "?" in POSTGRES_URL else "?"
        # The application name finds this run's backends (their CPU time is reported too).
        db = await open_database(
            f"{POSTGRES_URL}{sep}search_path={schema}&application_name={schema}", pg_max_size=args.concurrency
        )
    try:
        service, messages = await setup(db, args.queues, args.recipients)
        # First pass: one fan-out per group, so every sealed config is unsealed once (HPKE open) and cached.
        first = min(len(messages), args.fan_outs)
        warm, _, _ = await run(service, messages, first, args.concurrency)
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        server_before = await backend_cpu(schema)
        steady, cpu, loop_cpu = await run(service, messages, args.fan_outs - first, args.concurrency)
        server_cpu = await backend_cpu(schema) - server_before
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats(args.sort).print_stats(40)
        elapsed = warm + steady
        deliveries = args.fan_outs * args.recipients
        n_steady = max(1, (args.fan_outs - first) * args.recipients)
        async with db.transaction() as conn:
            stored = await conn.fetchval("SELECT COUNT(*) FROM qs_queue_messages")
        assert int(stored) == deliveries + args.queues, (stored, deliveries)
        print(
            f"{engine:8s} {args.fan_outs} fan-outs x {args.recipients} recipients into {args.queues} queues: "
            f"{elapsed:.1f} s, {deliveries / elapsed:,.0f} deliveries/s "
            f"(first pass with config unsealing: {first * args.recipients / warm:,.0f}/s; "
            f"afterwards: {n_steady / max(steady, 1e-9):,.0f}/s; per delivery afterwards: "
            f"{steady / n_steady * 1e6:.1f} us wall, {cpu / n_steady * 1e6:.1f} us process CPU, "
            f"{loop_cpu / n_steady * 1e6:.1f} us event-loop CPU"
            + (f", {server_cpu / n_steady * 1e6:.1f} us PostgreSQL backend CPU" if schema else "")
            + f"; load average {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    finally:
        await db.close()
        if schema is not None:
            admin = await asyncpg.connect(POSTGRES_URL)
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await admin.close()
        if tmp is not None:
            tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fan-outs", type=int, default=100_000)
    parser.add_argument("--queues", type=int, default=1_000)
    parser.add_argument("--recipients", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument("--profile", action="store_true", help="profile the part after the first pass")
    parser.add_argument("--sort", default="tottime", help="profile sort key")
    args = parser.parse_args()
    for engine in args.engines.split(","):
        asyncio.run(bench_engine(engine.strip(), args))


if __name__ == "__main__":
    main()
