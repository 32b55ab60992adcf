"""``phx admin destinations`` on a database with a backed-off destination."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import time
from dataclasses import replace
from pathlib import Path

from phx.cli.admin import add_parser, describe, run_destinations
from phx.federation.outbox_store import DestinationRow, FederationStore
from phx.identifiers import Fqdn
from phx.storage import migrate, open_database

B = Fqdn("b.test")


async def seed(url: str, now: int) -> None:
    db = await open_database(url)
    try:
        await migrate(db, "federation")
        s = FederationStore()
        async with db.transaction() as conn:
            for age in (30, 10):
                await s.enqueue(conn, B, os.urandom(16), now - age, b"x")
            await s.claim(conn, B, "i1", now * 1000, 1000, probe=False)
            await s.complete(
                conn,
                B,
                "i1",
                delete_ids=[],
                sent=5,
                dropped=1,
                failures=4,
                retry_at_ms=(now + 100) * 1000,
                last_error="503 unavailable",
                now=now,
                release=True,
            )
    finally:
        await db.close()


def config_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "phx.toml"
    path.write_text(f'[server]\ndomain = "a.test"\nplain_http = true\ndatabase_url = "{url}"\n')
    return path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="phx")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = await asyncio.to_thread(run_destinations, parse(argv), out)
    return code, out.getvalue()


async def test_lists_backlog_age_and_backoff_then_resets(tmp_path: Path, db_url: str) -> None:
    now = int(time.time())
    await seed(db_url, now)
    cfg = str(config_file(tmp_path, db_url))
    code, text = await run(["admin", "destinations", "--config", cfg, "--json"])
    assert code == 0
    (item,) = json.loads(text)
    assert item["destination"] == "b.test" and item["backlog"] == 2
    assert 29 <= item["oldest_age_seconds"] <= 40
    assert (item["state"], item["failures"], item["last_error"]) == ("backoff", 4, "503 unavailable")
    assert 0 < item["retry_in_seconds"] <= 100
    assert (item["sent_total"], item["dropped_total"]) == (5, 1)
    code, text = await run(["admin", "destinations", "--config", cfg])
    assert code == 0 and "b.test" in text and "backoff" in text and "BACKLOG" in text
    code, text = await run(["admin", "destinations", "--config", cfg, "--reset", "B.test", "--json"])
    assert code == 0
    item = json.loads(text.split("\n", 1)[1])[0]
    assert (item["state"], item["failures"], item["retry_in_seconds"]) == ("pending", 0, 0)
    code, _ = await run(["admin", "destinations", "--config", cfg, "--reset", "nobody.test"])
    assert code == 1


async def test_database_without_federation(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'empty.db'}"
    code, _ = await run(["admin", "destinations", "--config", str(config_file(tmp_path, url))])
    assert code == 1


def test_describe_states() -> None:
    base = DestinationRow(B, 0, None, 0, 0, "", 0, None, 0, 0, 0)
    assert describe(base, 100.0)["state"] == "idle"
    assert describe(replace(base, backlog=3, oldest_created_at=50), 100.0)["state"] == "pending"
    assert describe(replace(base, lease_owner="x", lease_until_ms=200_000), 100.0)["state"] == "sending"
    assert describe(replace(base, retry_at_ms=150_000), 100.0)["state"] == "throttled"
