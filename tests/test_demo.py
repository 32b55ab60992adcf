"""The demo runs to the end and its summary reflects what was actually received."""

from __future__ import annotations

import re
import subprocess
import sys

from phx.demo import run


def test_demo_delivers_every_message() -> None:
    lines: list[str] = []
    assert run(lines.append, now=1_700_000_000) == 0
    summary = lines[-1]
    m = re.match(r"demo: (\d+)/(\d+) messages delivered", summary)
    assert m is not None, summary
    assert m.group(1) == m.group(2) == "7"
    assert sum(1 for line in lines if " read from " in line) == 7


def test_cli_help_and_demo_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "phx.cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "demo" in out.stdout
