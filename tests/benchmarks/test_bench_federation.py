"""Smoke test of ``benchmarks/bench_federation.py``: both entry modes, 50 messages, SQLite. The bench itself
drains every queue after the run and exits non-zero unless each got exactly its messages in order; here the
printed figures must parse and be coherent."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_federation.py"
MESSAGES = 50
WARMUP = {"ds": 20, "qs": 20}


def figure(pattern: str, text: str) -> tuple[float, ...]:
    m = re.search(pattern, text)
    assert m is not None, f"no match for {pattern!r} in:\n{text}"
    return tuple(float(g.replace(",", "")) for g in m.groups())


def run_bench(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--messages", str(MESSAGES), "--engine", "sqlite", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize(("entry", "senders"), [("ds", "all"), ("ds", "a"), ("qs", "all")])
def test_bench_runs_and_every_message_arrives(entry: str, senders: str) -> None:
    out = run_bench("--entry", entry, "--senders", senders)
    assert f"entry {entry} " in out
    assert f"{MESSAGES} messages (+{WARMUP[entry]} warm-up)" in out
    assert "rate limits off" in out
    total = MESSAGES + WARMUP[entry]
    if entry == "ds" and senders == "all":
        # Every queue misses its owner's own messages (a tenth of them).
        assert (
            f"delivery: OK, every queue got exactly its messages in one order ({total * 9 // 10} of {total} "
            in out
        )
        assert "sent by all ten members" in out
    elif entry == "ds":
        # a.test queues miss their owner's own messages (a fifth of them), b.test's miss none.
        assert f"in one order ({total * 4 // 5} or {total} of {total} " in out
        assert "sent by the five a.test members" in out
    else:
        assert f"delivery: OK, every queue got exactly its messages in order ({MESSAGES} + 20 warm-up" in out
    throughput, seconds = figure(
        r"throughput accepted -> enqueued everywhere: ([\d,]+) msg/s \(([\d.]+) s", out
    )
    assert throughput > 0 and seconds > 0
    # seconds are printed to 0.01 s
    assert throughput == pytest.approx(MESSAGES / seconds, rel=0.01 + 0.006 / seconds, abs=1)
    p50, p99, worst = figure(
        r"latency to enqueued everywhere: p50 ([\d.]+) ms, p99 ([\d.]+) ms, max ([\d.]+)", out
    )
    assert 0 < p50 <= p99 <= worst <= seconds * 1000 + 6  # seconds rounded to 0.01
    bound, reached = figure(
        r"crypto-only bound \(primary: one core\): ([\d,]+) msg/s \((\d+)% reached\)", out
    )
    assert bound > 0
    assert reached == pytest.approx(100 * throughput / bound, abs=1)
    queues, local, remote = figure(r"queue encryption x(\d+): ([\d.]+) at a\.test, ([\d.]+) at b\.test", out)
    assert queues == (9 if entry == "ds" else 10)
    assert local + remote == queues
    assert (local, remote) == {("ds", "all"): (4.5, 4.5), ("ds", "a"): (4, 5), ("qs", "all"): (5, 5)}[
        entry, senders
    ]
    # The bound is every per-message crypto operation of the servers, on one core (printed rounded).
    sign, verify, encryption, redemption = figure(
        r"crypto per message: sign ([\d.]+) us, verify ([\d.]+) us, queue_encryption ([\d.]+) us, "
        r"token_redemption ([\d.]+) us",
        out,
    )
    without_auth = sign + verify + redemption + queues * encryption
    expected = 1e6 / (without_auth + (verify if entry == "ds" else 0))
    assert bound == pytest.approx(expected, rel=0.02)
    if entry == "ds":
        (without,) = figure(r"without the DsAuthToken check, .*: ([\d,]+) msg/s", out)
        assert without == pytest.approx(1e6 / without_auth, rel=0.02)
    a_cpu, b_cpu = figure(r"CPU per message: a\.test (\d+) us, b\.test (\d+) us", out)
    assert a_cpu > 0 and b_cpu > 0
    if entry == "ds":
        (load,) = figure(r"load generator (\d+) us", out)
        assert load > 0
        accepted_p50, accepted_p99 = figure(r"latency to accepted .*: p50 ([\d.]+) ms, p99 ([\d.]+) ms", out)
        assert 0 < accepted_p50 <= accepted_p99


def common() -> ModuleType:
    benchmarks = str(ROOT / "benchmarks")
    if benchmarks not in sys.path:  # _fed_common imports its sibling modules, as the scripts run it
        sys.path.append(benchmarks)
    spec = importlib.util.spec_from_file_location("_fed_common", ROOT / "benchmarks" / "_fed_common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_delivery_check_fails_loudly() -> None:
    c = common()
    c.check_queue("q", [0, 1, 2], range(3))
    for got in ([0, 2, 1], [0, 1], [0, 1, 2, 2], [0, 1, -1]):
        with pytest.raises(c.DeliveryError):
            c.check_queue("q", got, range(3))


def test_ds_delivery_check_fails_loudly() -> None:
    common()
    import _fed_ds  # noqa: PLC0415 (needs benchmarks/ on sys.path, which common() adds)
    from _fed_clients import A_MEMBERS, B_MEMBERS, Prepared  # noqa: PLC0415
    from _fed_common import DeliveryError  # noqa: PLC0415 (the module _fed_ds uses)

    senders = A_MEMBERS + B_MEMBERS
    total = 3 * len(senders)
    prepared = Prepared([], [], [], senders)

    def queues(order: list[int]) -> dict[str, list[int]]:
        return {a: [i for i in order if prepared.sender_of(i) != a] for a in senders}

    good = queues(list(range(total)))
    assert "OK" in _fed_ds.check_delivery(prepared, good, total)
    bad_cases = [
        {**good, senders[3]: good[senders[3]][1:]},  # one lost
        {**good, senders[3]: good[senders[3]] + good[senders[3]][-1:]},  # one duplicated
        {
            **good,
            senders[3]: [*good[senders[3]][1:2], *good[senders[3]][:1], *good[senders[3]][2:]],
        },  # swapped
        # every queue in the same order, but one sender's messages reordered
        queues([*range(10, 20), *range(10), *range(20, total)][::-1]),
    ]
    for bad in bad_cases:
        with pytest.raises(DeliveryError):
            _fed_ds.check_delivery(prepared, bad, total)
