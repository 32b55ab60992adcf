"""The command-line client itself (subprocesses) through a full conversation across two homeservers."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from phx.cli.client import main
from tests.client.harness import Net, homeservers


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    async with homeservers(tmp_path / "dev") as n:
        yield n


class Cli:
    def __init__(self, net: Net, home: Path) -> None:
        self.net = net
        self.home = home
        self.first = True

    async def run(self, *args: str, stdin: str | None = None, ok: bool = True) -> tuple[int, str, str]:
        argv = [sys.executable, "-m", "phx.cli.client", "--home", str(self.home)]
        if self.first:
            # The CA and the loopback addresses are given once and remembered in the home.
            argv += ["--ca", str(self.net.setup.ca_file), "--hosts", str(self.net.setup.hosts_file)]
            self.first = False
        proc = await asyncio.create_subprocess_exec(
            *argv,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        t0 = time.monotonic()
        out, err = await proc.communicate(None if stdin is None else stdin.encode())
        print(f"{time.monotonic() - t0:6.2f}s {self.home.name} {' '.join(args)}", file=sys.stderr)
        code = proc.returncode
        assert code is not None
        if ok:
            assert code == 0, f"{args}: exit {code}\n{err.decode()}"
        return code, out.decode(), err.decode()

    async def json(self, *args: str, stdin: str | None = None) -> list[dict[str, Any]]:
        _, out, _ = await self.run("--json", *args, stdin=stdin)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    async def wait_for(
        self, kind: str, timeout: float = 20.0
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``sync --json --wait`` until an event of ``kind`` arrives (messages are on stdout, every other
        event on stderr); returns (messages, events)."""
        messages: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        end = time.monotonic() + timeout
        while not any(e["event"] == kind for e in events):
            assert time.monotonic() < end, f"timed out waiting for {kind}; got {messages} {events}"
            _, out, err = await self.run("--json", "sync", "--wait", "5")
            got = [json.loads(line) for line in out.splitlines() if line.strip()]
            messages += got
            events += [{"event": "message", **m} for m in got]
            events += [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        return messages, events


async def test_full_conversation_through_the_cli(net: Net, tmp_path: Path) -> None:
    alice, bob = Cli(net, tmp_path / "alice"), Cli(net, tmp_path / "bob")
    ((reg,), (me,)) = await asyncio.gather(
        alice.json("register", "alice@a.test", "--password-stdin", stdin="pw-a\n"),
        bob.json("register", "bob@b.test", "--password-stdin", stdin="pw-b\n"),
    )
    assert reg["user"] == "alice@a.test" and len(reg["fingerprint"]) == 64
    assert me["user"] == "bob@b.test" and me["registered"] is True

    (sent,) = await alice.json("connect", "bob@b.test")
    assert sent["to"] == "bob@b.test"
    _, events = await bob.wait_for("request")
    (request,) = await bob.json("requests")
    assert request["from"] == "alice@a.test" and request["id"] == events[0]["request_id"]
    (accepted,) = await bob.json("accept", str(request["id"]))
    assert accepted["contact"] == "alice@a.test"
    # alice learns the answer; both exchange friendship keys
    _, events = await alice.wait_for("connected")
    assert [e["sender"] for e in events if e["event"] == "connected"] == ["bob@b.test"]
    await bob.wait_for("ready")

    (group,) = await alice.json("group", "create", "book club")
    assert group["group"] == "book club"
    await alice.json("group", "invite", "book club", "bob@b.test")
    _, events = await bob.wait_for("joined")
    assert [(e["group"], e["sender"]) for e in events if e["event"] == "joined"] == [
        ("book club", "alice@a.test")
    ]
    (g,) = await bob.json("groups")
    assert g["group"] == "book club" and g["group_id"] == group["group_id"]
    assert sorted(g["members"]) == ["alice@a.test", "bob@b.test"]

    await alice.json("send", "book club", "first chapter done?")
    await bob.json("send", g["group_id"], "almost, give me a day")  # by id works as well
    got, _ = await bob.wait_for("message")
    assert [(m["group"], m["sender"], m["text"]) for m in got] == [
        ("book club", "alice@a.test", "first chapter done?")
    ]
    got, _ = await alice.wait_for("message")
    assert [(m["group"], m["sender"], m["text"]) for m in got] == [
        ("book club", "bob@b.test", "almost, give me a day")
    ]


def test_errors_are_one_line_and_exit_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    home = ["--home", str(tmp_path / "home")]
    assert main([*home, "send", "no such group", "x"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        "phx client: error: no group named 'no such group' (see: phx client groups)"
    ]
    assert main([*home, "--json", "whoami"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "phx client: error: this client is not registered (run: phx client register USER@DOMAIN)"
    ]
    assert main([*home, "disconnect", "not an address"]) == 1
    assert "expected USER@DOMAIN" in capsys.readouterr().err
    assert main([*home, "register", "alice@a.test", "--password-stdin"]) == 1  # stdin is empty
    assert capsys.readouterr().err.splitlines() == ["phx client: error: the password is empty"]
    with pytest.raises(SystemExit) as e:
        main([*home, "frobnicate"])
    assert e.value.code == 2
