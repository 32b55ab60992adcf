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


@pytest.mark.parametrize("entry", ["ds", "qs"])
def test_bench_runs_and_every_message_arrives(entry: str) -> None:
    out = run_bench("--entry", entry)
    assert f"entry {entry} " in out
    assert f"{MESSAGES} messages (+{WARMUP[entry]} warm-up)" in out
    assert "rate limits off" in out
    total = MESSAGES + WARMUP[entry]
    if entry == "ds":
        assert re.search(rf"delivery: OK, .*\b{total} in each of the 5 b\.test queues", out), out
        # a.test queues miss their owner's own messages (a fifth of them).
        assert re.search(rf"\b{total * 4 // 5} in each a\.test queue", out), out
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
    queues = figure(r"queue encryption x(\d+)", out)[0]
    assert queues == (9 if entry == "ds" else 10)
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
