"""The ``phx`` entry point lists its commands."""

from __future__ import annotations

import subprocess
import sys


def test_help_lists_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "phx.cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("demo", "serve", "client", "dev-setup", "admin"):
        assert command in out.stdout
