"""DS benchmarks: one command, prints medians of the DS's time per request.

    .venv/bin/python benchmarks/bench_ds.py [--repeat N] [--commits N] [--sizes 10,100,1000]
                                            [--engines sqlite,postgres] [--profile NAME]

Groups are built through the DS's own endpoints (create, then add-users commits of up to 100 users each,
every client with a real QS queue), on SQLite (a temporary file) and, when asked, PostgreSQL
(``PHX_TEST_POSTGRES_URL``, a fresh schema dropped afterwards). What is timed is ``DsService.handle`` on an
encoded request, as a route would call it: decode, Privacy Pass (an accept-all double here), DsAuthToken,
the locked transaction, the rules, re-encryption and storage, and the hand-over to the QS.

* ``application message``: the DS alone (the QS replaced by a sink that takes the FanOutMessage and
  returns), then with the real in-process QS enqueueing into every member's queue (the QS's own work:
  unsealing configs, ratchet steps, inserts, its commit), then the DS alone with its state cache emptied
  before every message (the cold start: decrypt and decode the roster, no tree).
* ``add-user`` / ``update`` commits: the DS alone, then with the real QS (commit fan-out, WelcomeBundle).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import asyncpg  # noqa: E402
from _pg_cpu import backend_cpu as pg_backend_cpu  # noqa: E402

from phx.codec import Struct  # noqa: E402
from phx.config import DsConfig, QsConfig  # noqa: E402
from phx.crypto import SUITE_1  # noqa: E402
from phx.delivery.fanout import LocalQsSink  # noqa: E402
from phx.delivery.messages import (  # noqa: E402
    ROLES_EXTENSION_TYPE,
    AddUsersParams,
    AddUsersParamsAad,
    CreateGroupParams,
    DsRequest,
    DsSenderId,
    GroupInfoUpdate,
    Operation,
    RequestGroupIdResponse,
    SendMessageParams,
    UpdateClientParams,
    UpdateClientParamsAad,
    UserCredentialInformation,
    WelcomeAttributionCiphertexts,
    make_roles_extension,
)
from phx.delivery.service import DsService  # noqa: E402
from phx.identifiers import Fqdn, GroupId  # noqa: E402
from phx.mls.group import Group  # noqa: E402
from phx.mls.group_commit import build_group_info  # noqa: E402
from phx.mls.key_package import create_key_package, default_capabilities  # noqa: E402
from phx.mls.messages import Credential, CredentialType, make_external_senders_extension  # noqa: E402
from phx.privacypass import TokenClass  # noqa: E402
from phx.privacypass.redeemer import Spend  # noqa: E402
from phx.queuing.messages import (  # noqa: E402
    QUEUE_CONFIG_EXTENSION_TYPE,
    ClientQueueConfig,
    CreateUserRecordParams,
    CreateUserRecordResponse,
    FanOutMessage,
    QsClientRequest,
    QueueConfig,
    QueueDeleted,
    make_queue_config_extension,
    seal_queue_config,
)
from phx.queuing.messages import Operation as QsOperation  # noqa: E402
from phx.queuing.service import QsService  # noqa: E402
from phx.storage import Connection, Database, migrate, open_database  # noqa: E402

CS = SUITE_1
DOMAIN = Fqdn("bench.example")
NOW = 1_767_225_600
CAPS = default_capabilities(
    CS, CredentialType.BASIC, extensions=[ROLES_EXTENSION_TYPE, QUEUE_CONFIG_EXTENSION_TYPE]
)
BATCH = 100
GOAL_APP_100 = 0.002


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


class AcceptAll:
    async def redeem(self, token: bytes, now: int) -> None:
        return None


class AcceptLocal:
    """The DS's redeemer double: every token is a local client's."""

    async def prepare(self, token: bytes, now: int) -> tuple[TokenClass, Spend]:
        return TokenClass.LOCAL, (token, b"", 0)

    async def spend(self, spend: Spend) -> None:
        return None

    async def spend_in(self, conn: Connection, spends: Sequence[Spend]) -> list[bool]:
        return [True] * len(spends)


class NullSink:
    """The QS's side of the hand-over only: take the message, answer "nothing deleted"."""

    def __init__(self) -> None:
        self.recipients = 0

    async def fan_out(self, message: FanOutMessage, now: int) -> list[QueueDeleted]:
        self.recipients += len(message.client_queue_configs)
        return []


@dataclass(frozen=True, slots=True)
class Request:
    op: str
    body: bytes


class Bench:
    def __init__(self, db: Database, ds: DsService, qs: QsService, clock: Clock) -> None:
        self.db, self.ds, self.qs, self.clock = db, ds, qs, clock
        self.ear_key = os.urandom(32)
        self.gid: GroupId | None = None
        self.alice: Group | None = None
        self.alice_priv = b""
        self.members = 0

    async def queue_config(self) -> ClientQueueConfig:
        """Register a QS user with one client; its sealed queue config."""
        user_sk, user_pk = CS.generate_signature_key_pair()
        client_sk, client_pk = CS.generate_signature_key_pair()
        _, queue_pk = CS.generate_hpke_key_pair()
        params = CreateUserRecordParams(user_pk, os.urandom(32), client_pk, queue_pk, None)
        body = QsClientRequest(params.encode(), None, b"pp").encode()
        resp = CreateUserRecordResponse.decode(await self.qs.handle(QsOperation.CREATE_USER_RECORD, body))
        return seal_queue_config(self.qs.queue_config_encryption_key, DOMAIN, QueueConfig(None, resp.qs_cid))

    def request(self, op: Operation, params: Struct) -> Request:
        """The encoded request a client sends (built outside the timed region)."""
        assert self.gid is not None
        req = DsRequest.signed(
            op.value, params, self.gid, DsSenderId.leaf(0), self.alice_priv, self.clock.now,
            privacy_pass_token=os.urandom(16),
        )  # fmt: skip
        return Request(op.value, req.encode())

    async def call(self, op: Operation, params: Struct) -> bytes:
        r = self.request(op, params)
        return await self.ds.handle(r.op, r.body)

    def gi_update(self) -> GroupInfoUpdate:
        assert self.alice is not None and self.alice._pending is not None
        gi = build_group_info(
            CS, self.alice._pending.state, self.alice._sig_priv, ratchet_tree=False, external_pub=True
        )
        return GroupInfoUpdate(gi.signature, gi.extensions)

    async def create(self) -> None:
        body = DsRequest.unsigned(privacy_pass_token=os.urandom(16)).encode()
        self.gid = RequestGroupIdResponse.decode(await self.ds.handle("request_group_id", body)).group_id
        self.alice_priv, _ = CS.generate_signature_key_pair()
        ds_sender = self.ds.verifying_key_response().external_sender
        extensions = [make_external_senders_extension([ds_sender]), make_roles_extension((0,))]
        self.alice = Group.create(
            CS, Credential.basic(b"alice"), self.alice_priv, now=self.clock.now, group_id=self.gid.to_mls(),
            capabilities=CAPS, extensions=extensions,
        )  # fmt: skip
        gi = self.alice.group_info(ratchet_tree=True, external_pub=True).group_info
        assert gi is not None
        qc = await self.queue_config()
        await self.call(Operation.CREATE_GROUP, CreateGroupParams(self.gid, b"cred", qc, gi, self.ear_key))
        self.members = 1

    async def add_params(self, count: int) -> AddUsersParams:
        assert self.alice is not None
        kps = []
        for _ in range(count):
            priv, _ = CS.generate_signature_key_pair()
            qc = await self.queue_config()
            kps.append(
                create_key_package(
                    CS, Credential.basic(os.urandom(8)), priv, now=self.clock.now, capabilities=CAPS,
                    extensions=[make_queue_config_extension(qc)],
                ).key_package
            )  # fmt: skip
        aad = AddUsersParamsAad(tuple(UserCredentialInformation((os.urandom(200),)) for _ in kps))
        res = self.alice.commit(
            now=self.clock.now, add=kps, authenticated_data=aad.encode(), ratchet_tree_in_welcome=False
        )
        assert res.welcome is not None
        infos = tuple(WelcomeAttributionCiphertexts(os.urandom(100), os.urandom(60)) for _ in kps)
        return AddUsersParams(res.commit, self.ear_key, self.gi_update(), res.welcome, infos)

    async def grow(self, n: int) -> None:
        assert self.alice is not None
        while self.members < n:
            count = min(BATCH, n - self.members)
            await self.call(Operation.ADD_USERS, await self.add_params(count))
            self.alice.merge_pending_commit()
            self.members += count

    def app_params(self) -> SendMessageParams:
        assert self.alice is not None
        return SendMessageParams(self.alice.send(os.urandom(200)), self.ear_key)

    def update_params(self) -> UpdateClientParams:
        assert self.alice is not None
        aad = UpdateClientParamsAad(None).encode()
        res = self.alice.commit(now=self.clock.now, path=True, authenticated_data=aad)
        return UpdateClientParams(res.commit, self.ear_key, self.gi_update())


async def timed(
    b: Bench,
    repeat: int,
    op: Operation,
    prepare: Callable[[], Awaitable[Struct] | Struct],
    before: Callable[[], None] | None = None,
    after: Callable[[], None] | None = None,
    profile: cProfile.Profile | None = None,
) -> float:
    """Median wall time of ``DsService.handle`` on ``repeat`` requests built by ``prepare`` (and, in
    ``CPU``, the median process CPU time of the same calls: the DS's own work, all threads, without the
    waiting a loaded machine adds)."""
    times, cpu = [], []
    for _ in range(repeat):
        p = prepare()
        params = await p if asyncio.iscoroutine(p) else p
        assert isinstance(params, Struct)
        r = b.request(op, params)
        if before is not None:
            before()
        if profile is not None:
            profile.enable()
        t0, c0 = time.perf_counter(), time.process_time()
        await b.ds.handle(r.op, r.body)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if profile is not None:
            profile.disable()
        if after is not None:
            after()
    CPU[0] = statistics.median(cpu)
    return statistics.median(times)


CPU = [0.0]
POSTGRES_URL = os.environ.get("PHX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def timed_concurrent(
    b: Bench,
    count: int,
    concurrency: int,
    before: Callable[[], None] | None = None,
    profile: cProfile.Profile | None = None,
) -> float:
    """Wall time per application message of ``count`` messages sent by ``concurrency`` tasks at once (as
    many clients of one group would; the requests are built first). ``CPU`` gets the process CPU time per
    message of the whole run."""
    requests = [b.request(Operation.SEND_MESSAGE, b.app_params()) for _ in range(count)]
    pending = iter(requests)
    if before is not None:
        before()

    async def worker() -> None:
        for r in pending:
            await b.ds.handle(r.op, r.body)

    if profile is not None:
        profile.enable()
    server0 = await backend_cpu()
    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    SERVER[0] = (await backend_cpu() - server0) / count
    if profile is not None:
        profile.disable()
    CPU[0] = cpu / count
    return wall / count


#: The PostgreSQL application name of this run's connections (None on SQLite).
APPLICATION: list[str | None] = [None]
SERVER = [0.0]


async def backend_cpu() -> float:
    """CPU seconds used so far by this run's PostgreSQL backends (0 on SQLite)."""
    name = APPLICATION[0]
    return await pg_backend_cpu(POSTGRES_URL, [name] if name is not None else [])


def report(name: str, seconds: float, goal: float | None = None) -> None:
    """One line: the median wall time, the median CPU time of the same calls, the goal if any."""
    verdict = ""
    if goal is not None:
        verdict = f"   goal <= {goal * 1000:.0f} ms: {'OK' if seconds <= goal else 'MISSED'}"
    print(f"  {name:<58}{seconds * 1000:9.3f} ms  (cpu {CPU[0] * 1000:8.3f} ms){verdict}", flush=True)


def profiler(wanted: str | None, name: str) -> cProfile.Profile | None:
    return cProfile.Profile() if wanted == name else None


def show(prof: cProfile.Profile | None) -> None:
    if prof is not None:
        sort = os.environ.get("PHX_BENCH_SORT", "tottime")
        pstats.Stats(prof).sort_stats(sort).print_stats(int(os.environ.get("PHX_BENCH_LINES", "25")))


async def bench_size(
    db: Database, n: int, repeat: int, commits: int, profile: str | None, concurrency: int
) -> None:
    clock = Clock()
    qs = await QsService.open(db, QsConfig(), DOMAIN, clock=clock, redeemer=AcceptAll())
    qs_sink = LocalQsSink(qs)
    ds = await DsService.open(db, DsConfig(), DOMAIN, sink=qs_sink, redeemer=AcceptLocal(), clock=clock)
    b = Bench(db, ds, qs, clock)
    t0 = time.perf_counter()
    await b.create()
    await b.grow(n)
    print(f"  ({n} members: built through the DS in {time.perf_counter() - t0:.1f} s)", flush=True)
    real, null = ds.sink, NullSink()
    app = Operation.SEND_MESSAGE

    def to_null() -> None:
        ds.sink = null

    def to_qs() -> None:
        ds.sink = real

    def uncached() -> None:
        ds.sink = null
        ds.cache.clear()

    def merge() -> None:
        assert b.alice is not None
        b.alice.merge_pending_commit()

    async def one_user() -> Struct:
        return await b.add_params(1)

    await timed(b, 5, app, b.app_params, to_null)  # warm up
    prof = profiler(profile, f"app{n}")
    t = await timed(b, repeat, app, b.app_params, to_null, profile=prof)
    show(prof)
    report(f"application message, {n} members (DS)", t, GOAL_APP_100 if n == 100 else None)
    prof = profiler(profile, f"appqs{n}")
    t = await timed(b, max(5, repeat // 10), app, b.app_params, to_qs, profile=prof)
    show(prof)
    report(f"application message, {n} members (DS + in-process QS)", t)
    t = await timed(b, max(5, repeat // 10), app, b.app_params, uncached)
    report(f"application message, {n} members (DS, state not cached)", t)
    if concurrency > 1:
        for label, sink in (("DS", to_null), ("DS + in-process QS", to_qs)):
            await timed_concurrent(b, concurrency, concurrency, sink)  # warm up
            name = f"capp{n}" if sink is to_null else f"cappqs{n}"
            prof = profiler(profile, name)
            t = await timed_concurrent(b, repeat, concurrency, sink, profile=prof)
            show(prof)
            extra = f", PostgreSQL backend cpu {SERVER[0] * 1000:.3f} ms" if APPLICATION[0] else ""
            report(f"application message, {n} members, {concurrency} at once ({label}){extra}", t)
    if n < 100:
        return
    for label, sink in (("DS", to_null), ("DS + in-process QS", to_qs)):
        prof = profiler(profile, f"add{n}") if sink is to_null else None
        t = await timed(b, commits, Operation.ADD_USERS, one_user, sink, after=merge, profile=prof)
        show(prof)
        report(f"add-user commit, {n} members ({label})", t)
        prof = profiler(profile, f"update{n}") if sink is to_null else None
        t = await timed(b, commits, Operation.UPDATE_CLIENT, b.update_params, sink, after=merge, profile=prof)
        show(prof)
        report(f"update commit, {n} members ({label})", t)


async def run_engine(
    url: str, sizes: list[int], repeat: int, commits: int, profile: str | None, concurrency: int
) -> None:
    db = await open_database(url)
    try:
        for service in ("qs", "ds"):
            await migrate(db, service)
        for n in sizes:
            await bench_size(db, n, repeat, commits, profile, concurrency)
    finally:
        await db.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=200, help="application messages per size")
    ap.add_argument("--commits", type=int, default=10, help="commits per kind and size")
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--engines", default="sqlite")
    ap.add_argument(
        "--profile",
        default=None,
        help="cProfile one measurement: app<N> / appqs<N> (one at a time, DS / DS + QS), capp<N> / cappqs<N> "
        "(concurrent), add<N> or update<N> (PHX_BENCH_SORT, PHX_BENCH_LINES: sort key and length)",
    )
    ap.add_argument(
        "--concurrency", type=int, default=64, help="also send application messages this many at once"
    )
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    for engine in args.engines.split(","):
        print(f"DS on {engine}:", flush=True)
        if engine == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                await run_engine(
                    f"sqlite://{tmp}/ds.db", sizes, args.repeat, args.commits, args.profile, args.concurrency
                )
        else:
            base = POSTGRES_URL
            schema = f"bench_{secrets.token_hex(4)}"
            APPLICATION[0] = schema
            admin = await asyncpg.connect(base)
            await admin.execute(f'CREATE SCHEMA "{schema}"')
            try:
                sep = "&" if "?" in base else "?"
                await run_engine(
                    f"{base}{sep}search_path={schema}&application_name={schema}",
                    sizes,
                    args.repeat,
                    args.commits,
                    args.profile,
                    args.concurrency,
                )
            finally:
                await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
                await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
