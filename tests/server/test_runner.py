"""Serving for real: in-process uvicorn (plain and TLS) and ``phx serve`` in a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
import trustme
from starlette.routing import BaseRoute

from phx.config import Config
from phx.server import StartupFailed, create_app, running
from phx.storage import open_database


class Lifecycle:
    name = "life"

    def __init__(self) -> None:
        self.events: list[str] = []

    def routes(self) -> Sequence[BaseRoute]:
        return []

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")


def plain_config(domain: str = "a.test") -> Config:
    return Config.default(domain)


async def test_in_process_server_serves_health_and_runs_lifespan() -> None:
    svc = Lifecycle()
    app = create_app(plain_config(), [svc])
    async with running(app, plain_config()) as base:
        assert base.startswith("http://127.0.0.1:")
        assert svc.events == ["start"]
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{base}/health")
        assert r.status_code == 200
        assert r.json()["services"] == ["life"] and r.json()["domain"] == "a.test"
        assert "server" not in r.headers  # no server banner
    assert svc.events == ["start", "stop"]


async def test_in_process_server_over_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "a.test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    config = Config.default("a.test", tls_cert=cert, tls_key=key)
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    async with running(create_app(config), config) as base:
        assert base.startswith("https://")
        async with httpx.AsyncClient(verify=trust) as client:
            r = await client.get(f"{base}/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        # Not trusted without our CA: TLS really is on.
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{base}/health")


async def test_port_in_use_fails_start_up() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupFailed):
            async with running(create_app(plain_config()), plain_config(), port=port):
                pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# `phx serve` without depending on its hook in phx.cli.main.
SERVE = (
    "import sys, argparse; from phx.cli.serve import run; "
    "sys.exit(run(argparse.Namespace(config=sys.argv[1])))"
)


def start_serve(config_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", SERVE, str(config_path)],
        cwd=config_path.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(f"phx serve exited with {proc.returncode}:\n{out}")
            try:
                return await client.get(url)
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise AssertionError("phx serve did not become healthy in time")


async def test_phx_serve_subprocess(tmp_path: Path, db_url: str) -> None:
    """`phx serve` loads the config, migrates the database, serves /health and exits 0 on SIGTERM."""
    port = free_port()
    config_path = tmp_path / "phx.toml"
    config_path.write_text(
        f"""
[server]
domain = "a.test"
listen_host = "127.0.0.1"
listen_port = {port}
plain_http = true
database_url = "{db_url}"
log_level = "warning"
"""
    )
    proc = start_serve(config_path)
    try:
        r = await wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        assert r.status_code == 200
        assert r.json()["status"] == "ok" and r.json()["database"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    db = await open_database(db_url)
    try:
        async with db.transaction(readonly=True) as conn:
            assert (
                await conn.fetchval("SELECT MAX(version) FROM schema_migrations WHERE service = $1", "core")
                == 1
            )
    finally:
        await db.close()


async def test_phx_serve_default_sqlite_in_data_dir(tmp_path: Path) -> None:
    """Without database_url the SQLite file is created under data_dir beside the config."""
    port = free_port()
    config_path = tmp_path / "phx.toml"
    config_path.write_text(
        f'[server]\ndomain = "a.test"\nlisten_port = {port}\nplain_http = true\nlog_level = "error"\n'
    )
    proc = start_serve(config_path)
    try:
        assert (await wait_healthy(f"http://127.0.0.1:{port}/health", proc)).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    with sqlite3.connect(tmp_path / "data" / "phx.sqlite3") as conn:
        applied = conn.execute("SELECT DISTINCT service FROM schema_migrations ORDER BY service").fetchall()
        assert [s for (s,) in applied] == ["as", "core", "ds", "federation", "qs"]
    conn.close()


def test_phx_serve_bad_config_exits_2(tmp_path: Path) -> None:
    config_path = tmp_path / "phx.toml"
    config_path.write_text('[server]\ndomain = "a.test"\nlisten_port = "x"\nplain_http = true\n')
    done = subprocess.run([sys.executable, "-c", SERVE, str(config_path)], capture_output=True, timeout=60)
    assert done.returncode == 2
    assert b"server.listen_port" in done.stderr


def test_phx_serve_unreachable_database_exits_1(tmp_path: Path) -> None:
    config_path = tmp_path / "phx.toml"
    config_path.write_text(
        '[server]\ndomain = "a.test"\nplain_http = true\n'
        'database_url = "postgresql://postgres@127.0.0.1:1/test"\n'
    )
    done = subprocess.run([sys.executable, "-c", SERVE, str(config_path)], capture_output=True, timeout=60)
    assert done.returncode == 1
    assert b"PostgreSQL" in done.stderr


def test_phx_serve_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config_path = tmp_path / "phx.toml"
        config_path.write_text(
            f'[server]\ndomain = "a.test"\nlisten_port = {port}\nplain_http = true\nlog_level = "error"\n'
        )
        done = subprocess.run(
            [sys.executable, "-c", SERVE, str(config_path)], capture_output=True, timeout=60
        )
    assert done.returncode == 1
    assert b"failed to start" in done.stderr
