"""``bench_federation.py --entry ds``: the whole federated path, entering at a.test's DS over HTTPS.

Processes (each homeserver gets its own, so each can have a core):

* a.test — ``phx serve``'s wiring (:func:`phx.server.wiring.build_homeserver`: AS, DS, QS, federation)
  behind uvicorn with TLS;
* b.test — the same, for its own five clients;
* this one — the ten clients (set-up, preparation and the checks after the run), then idle;
* the load generator (:mod:`_fed_load`), which alone sends during the timed phase.

A server child answers commands on its pipe: ``("watch", ciphertext prefixes)`` (name the measured
messages, by index), ``("go", profile)`` (start counting CPU, and profiling), ``("collect", count)`` (wait
until ``count`` watched messages were committed here; answer their commit times and the CPU since
``go``), ``("stop",)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import multiprocessing as mp
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import _fed_load
from _fed_clients import A_MEMBERS, B_MEMBERS, Members, Prepared
from _fed_common import (
    MEMBERS,
    A,
    B,
    Databases,
    DeliveryError,
    Figures,
    Server,
    TimedQueues,
    check_queue,
    crypto_bound,
    print_profile,
    private_ciphertext,
    write_certs,
)

from phx.client.demo import free_ports
from phx.config import Config, FederationConfig, HostPort, OutboxConfig, RateLimitConfig
from phx.queuing.messages import FanOutMessage
from phx.server import Registry, create_app, run_event_loop, uvicorn_config
from phx.server.wiring import build_homeserver
from phx.storage import open_database

PREFIX = 16  # bytes of a PrivateMessage's ciphertext that name a measured message
WARMUP = 4 * MEMBERS
TOKEN_ALLOWANCE = 10_000_000


def bench_config(domain: str, tmp: Path, db_url: str, ports: dict[str, int]) -> Config:
    """Defaults, except: rate limits off (federation's per-domain and per-queue buckets would be what is
    measured), an AS token allowance large enough for the run, outbox batches of 200 (as ``--entry qs``)."""
    base = Config.default(domain, tls_cert=tmp / f"{domain}.crt", tls_key=tmp / f"{domain}.key")
    overrides = {f"{s}.{d}": HostPort("127.0.0.1", p) for d, p in ports.items() for s in ("as", "ds", "qs")}
    fed = FederationConfig(
        ca_file=tmp / "ca.pem",
        resolver_overrides=overrides,
        outbox=OutboxConfig(batch_size=200),
        rate_limit=RateLimitConfig(per_domain_rate=0, per_queue_rate=0),
    )
    server = replace(base.server, database_url=db_url, log_level="warning", listen_port=ports[domain])
    as_ = replace(
        base.as_,
        token_allowance=TOKEN_ALLOWANCE,
        domain_token_allowance=TOKEN_ALLOWANCE,
        new_domain_token_allowance=TOKEN_ALLOWANCE,
    )
    return replace(base, server=server, federation=fed, as_=as_)


# --- a homeserver (child process) ---------------------------------------------------------------------


def serve_child(pipe: Pipe, domain: str, tmp: str, db_url: str, ports: dict[str, int]) -> None:
    run_event_loop(_serve(pipe, domain, Path(tmp), db_url, ports))


async def _serve(pipe: Pipe, domain: str, tmp: Path, db_url: str, ports: dict[str, int]) -> None:
    loop = asyncio.get_running_loop()
    config = bench_config(domain, tmp, db_url, ports)
    db = await open_database(db_url)
    registry = Registry()
    hs = await build_homeserver(config, db, registry)
    assert hs.queuing is not None and hs.federation is not None
    names: dict[bytes, int] = {}

    def index_of(fan_out: FanOutMessage) -> int | None:
        ct = private_ciphertext(fan_out.message_content)
        return None if ct is None else names.get(ct[:PREFIX])

    timed = TimedQueues(hs.queuing, index_of)
    hs.federation.bind(timed)  # before start: the receiver now reports commits to ``timed``
    app = create_app(config, hs.services, db=db, metrics=registry)
    ucfg = uvicorn_config(app, config)
    ucfg.access_log = False
    ucfg.timeout_graceful_shutdown = 1
    server = Server(ucfg)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
            raise RuntimeError(f"{domain} stopped during start-up")
        await asyncio.sleep(0.01)
    pipe.send("ready")
    cpu0, loop0, prof = time.process_time(), time.thread_time(), None
    try:
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command[0] == "watch":
                names.update((p, i) for i, p in enumerate(command[1]))
                pipe.send("ok")
            elif command[0] == "cpu":
                pipe.send(time.process_time())
            elif command[0] == "go":
                timed.commits = 0
                cpu0, loop0 = time.process_time(), time.thread_time()
                if command[1]:
                    # CPU time of the event loop's thread (wall time would count the idle epoll waits).
                    prof = cProfile.Profile(time.thread_time)
                    prof.enable()
                pipe.send("ok")
            elif command[0] == "collect":
                count, deadline = command[1], time.monotonic() + 300
                while len(timed.stamps) < count and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop0
                if prof is not None:
                    prof.disable()
                    print_profile(prof, f"{domain} profile", command[2], cpu - loop_cpu)
                    prof = None
                pipe.send((dict(timed.stamps), cpu, timed.commits))
            else:
                break
    finally:
        await hs.federation.stop()  # its peer connections first, or the other side's shutdown waits
        server.should_exit = True
        await serving
        await db.close()


class Child:
    """A child process and its pipe."""

    def __init__(self, ctx: Any, target: Any, *args: Any) -> None:
        self.pipe, theirs = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(theirs, *args), daemon=True)
        self.process.start()

    def ask(self, *command: Any, timeout: float = 600) -> Any:
        self.pipe.send(command)
        return self.receive(timeout)

    def receive(self, timeout: float = 600) -> Any:
        end = time.monotonic() + timeout
        while not self.pipe.poll(0.05):
            if not self.process.is_alive():
                raise RuntimeError(f"child process {self.process.pid} died (exit {self.process.exitcode})")
            if time.monotonic() > end:
                raise TimeoutError("child process did not answer")
        return self.pipe.recv()

    async def aask(self, *command: Any, timeout: float = 600) -> Any:
        return await asyncio.to_thread(self.ask, *command, timeout=timeout)

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self.pipe.send(("stop",))

    def join(self) -> None:
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


# --- the run (this process) ---------------------------------------------------------------------------


def check_delivery(prepared: Prepared, delivered: dict[str, list[int]], total: int) -> str:
    """Each queue holds exactly the messages its owner did not send; all queues hold them in one order (the
    DS's: every queue agrees with two references that together hold every message); each sender's
    messages are in the order it sent them."""
    everyone = A_MEMBERS + B_MEMBERS
    for address in everyone:
        expected = [i for i in range(total) if prepared.sender_of(i) != address]
        check_queue(address, sorted(delivered[address]), expected)
    references = [delivered[everyone[0]], delivered[everyone[-1]]]
    for address in everyone:
        got = set(delivered[address])
        for ref in references:
            common = set(ref) & got
            check_queue(
                f"{address} against a reference",
                [i for i in delivered[address] if i in common],
                [i for i in ref if i in common],
            )
    for sender in prepared.senders:
        reference = delivered[everyone[0] if sender != everyone[0] else everyone[-1]]
        mine = [i for i in reference if prepared.sender_of(i) == sender]
        check_queue(f"{sender}'s messages", mine, sorted(mine))
    counts = sorted({len(delivered[a]) for a in everyone})
    return (
        f"OK, every queue got exactly its messages in one order ({' or '.join(map(str, counts))} of {total} "
        "per queue: the DS leaves out the sender's own queue)"
    )


async def drain_all(members: Members, prepared: Prepared) -> dict[str, list[int]]:
    by_ct = {ct: i for i, ct in enumerate(prepared.ciphertexts)}
    out: dict[str, list[int]] = {}
    for address in A_MEMBERS + B_MEMBERS:
        got = []
        for content in await members.drain(address):
            ct = private_ciphertext(content)
            i = -1 if ct is None else by_ct.get(ct, -1)
            if i >= 0 and content.body.encode() != prepared.messages[i]:
                raise DeliveryError(f"{address}: message {i} arrived altered")
            got.append(i)
        out[address] = got
    return out


def split(requests: Sequence[tuple[int, int, bytes]], warmup: int) -> tuple[list[Any], list[Any]]:
    return list(requests[:warmup]), list(requests[warmup:])


async def run_ds(
    engine: str, messages: int, window: int, rate: float, profile: bool, senders: str = "all"
) -> Figures:
    total = WARMUP + messages
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        ca_file = write_certs(tmp)
        dbs = Databases(engine, tmp)
        urls = await dbs.urls()
        ports = dict(zip((str(A), str(B)), free_ports(2), strict=True))
        ctx = mp.get_context("spawn")
        children: list[Child] = []
        members: Members | None = None
        try:
            a = Child(ctx, serve_child, str(A), str(tmp), urls[0], ports)
            children.append(a)
            b = Child(ctx, serve_child, str(B), str(tmp), urls[1], ports)
            children.append(b)
            load = Child(ctx, _fed_load.main)  # started now: a spawned process takes a while to import
            children.append(load)
            for child in (a, b):
                assert await asyncio.to_thread(child.receive, 120) == "ready"
            hosts = {f"{s}.{d}": f"127.0.0.1:{p}" for d, p in ports.items() for s in ("as", "ds", "qs")}
            members = Members(tmp / "clients", ca_file, hosts)
            t0 = time.monotonic()
            await members.build()
            built = time.monotonic() - t0
            t0 = time.monotonic()
            sending = A_MEMBERS + B_MEMBERS if senders == "all" else A_MEMBERS
            prepared = await members.prepare(total, 100, sending)
            print(
                f"(set-up: group of 10 built through the protocol in {built:.1f} s; {total} messages, tokens "
                f"and requests prepared in {time.monotonic() - t0:.1f} s)",
                flush=True,
            )
            assert await load.aask("connect", ports[str(A)], f"ds.{A}", str(ca_file), len(sending)) == "ready"
            prefixes = [ct[:PREFIX] for ct in prepared.ciphertexts]
            assert len(set(prefixes)) == total
            assert await b.aask("watch", prefixes) == "ok"
            warm, timed = split(prepared.requests, WARMUP)
            # Warm-up through the whole path: connections, key fetches, the DS's state cache, QS caches.
            result = await load.aask("send", warm, window, 0)
            if result.failures:
                raise DeliveryError(f"warm-up failed: {result.failures[:3]}")
            await b.aask("collect", WARMUP, 1)
            idle0 = [await child.aask("cpu") for child in (a, b)]
            await asyncio.sleep(1.0)
            idle = [await child.aask("cpu") - c0 for child, c0 in zip((a, b), idle0, strict=True)]
            cpu_pg = await dbs.backend_cpu()
            for child in (a, b):
                assert await child.aask("go", profile) == "ok"
            result = await load.aask("send", timed, window, rate)
            if result.failures:
                raise DeliveryError(f"{len(result.failures)} requests failed: {result.failures[:3]}")
            stamps, b_cpu, commits = await b.aask("collect", total, messages)
            _, a_cpu, _ = await a.aask("collect", 0, messages)
            cpu_pg = await dbs.backend_cpu() - cpu_pg
            measured = set(range(WARMUP, total))
            missing = measured - set(stamps)
            if missing:
                raise DeliveryError(f"{len(missing)} messages never committed at b.test")
            delivery = check_delivery(prepared, await drain_all(members, prepared), total)
        finally:
            if members is not None:
                await members.aclose()
            # All at once: each homeserver closes its connections to the other before its server stops.
            for child in children:
                child.stop()
            for child in children:
                await asyncio.to_thread(child.join)
            await dbs.drop()
    cpu = {"a.test": a_cpu, "b.test": b_cpu, "load generator": result.cpu}
    if engine == "postgres":
        cpu["PostgreSQL backends"] = cpu_pg
    return Figures(
        entry="ds",
        engine=engine,
        messages=messages,
        warmup=WARMUP,
        window=window,
        rate=rate,
        connections=len(sending),
        # A member's own queue gets no copy: an a.test sender's message has one local copy fewer.
        local_recipients=MEMBERS - sum(a in A_MEMBERS for a in sending) / len(sending),
        remote_recipients=MEMBERS - sum(a in B_MEMBERS for a in sending) / len(sending),
        senders="all ten members (b.test's as federated clients of ds.a.test)"
        if senders == "all"
        else "the five a.test members",
        offered={i - WARMUP: result.sent[i] for i in measured},
        enqueued={i - WARMUP: stamps[i] for i in measured},
        accepted={i - WARMUP: result.answered[i] for i in measured},
        cpu=cpu,
        bound=crypto_bound(),
        delivery=delivery,
        commits=commits,
        idle={"a.test": idle[0], "b.test": idle[1]},
        notes=[
            "rate limits off: federation per-domain and per-queue buckets 0 (unlimited), AS token allowance "
            f"{TOKEN_ALLOWANCE:,} per client; outbox batches of 200",
            "each sender has its own keep-alive TLS connection to ds.a.test (HTTP/1.1, pipelined); "
            "requests, DsAuthTokens, Privacy Pass tokens (issued by as.a.test) and MLS messages prepared "
            "before timing",
        ],
    )
