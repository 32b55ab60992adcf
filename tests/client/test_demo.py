"""The demo scenario (``phx demo``), run in-process with the tests' service wiring."""

from __future__ import annotations

import time
from pathlib import Path

from phx.client.demo import run_demo

from .harness import phx_services


async def test_demo_delivers_every_message_across_two_homeservers(tmp_path: Path) -> None:
    lines: list[str] = []
    start = time.monotonic()
    delivered, total = await run_demo(tmp_path, phx_services, say=lines.append)
    assert (delivered, total) == (6, 6)
    assert time.monotonic() - start < 60
    text = "\n".join(lines)
    assert "registered alice@a.test" in text and "registered bob@b.test" in text
    assert "bob joined 'demo'; members: alice@a.test, bob@b.test" in text
    assert text.count("received:") == 6 and "DID NOT" not in text
