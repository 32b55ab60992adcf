"""``phx admin``: operator commands against a homeserver's database.

``phx admin destinations --config FILE`` lists, per federation destination, the backlog, the age of the
oldest queued message and the back-off state (the same figures as the ``phx_federation_*`` metrics);
``--reset DOMAIN`` forgets a destination's failures and back-off (and any lease) so that every instance
sends to it again at its next poll; ``--json`` prints machine-readable output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from phx.config import load_config
from phx.errors import ConfigError, Unavailable, ValidationError
from phx.federation.outbox_store import DestinationRow, FederationStore
from phx.identifiers import Fqdn
from phx.storage import current_version, open_database

__all__ = ["add_parser", "describe", "render_table", "run_destinations"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("admin", help="operator commands (federation destinations, ...)")
    admin = parser.add_subparsers(dest="admin_command", required=True, metavar="ADMIN_COMMAND")
    dest = admin.add_parser("destinations", help="federation outbox per destination; reset a back-off")
    dest.add_argument("--config", required=True, metavar="FILE", help="TOML configuration file")
    dest.add_argument("--reset", metavar="DOMAIN", help="clear the back-off of DOMAIN and retry it now")
    dest.add_argument("--json", action="store_true", help="print JSON instead of a table")
    dest.set_defaults(func=run_destinations)
    return parser


def describe(row: DestinationRow, now: float) -> dict[str, Any]:
    retry_in = max(0.0, row.retry_at_ms / 1000 - now)
    leased = row.lease_owner is not None and row.lease_until_ms / 1000 > now
    if row.failures and retry_in > 0:
        state = "backoff"
    elif retry_in > 0:
        state = "throttled"
    elif leased:
        state = "sending"
    elif row.backlog:
        state = "pending"
    else:
        state = "idle"
    return {
        "destination": row.destination.value,
        "backlog": row.backlog,
        "oldest_age_seconds": None
        if row.oldest_created_at is None
        else max(0, int(now) - row.oldest_created_at),
        "state": state,
        "failures": row.failures,
        "retry_in_seconds": round(retry_in, 3),
        "lease_owner": row.lease_owner if leased else None,
        "last_error": row.last_error,
        "last_success": row.last_success or None,
        "sent_total": row.sent_total,
        "dropped_total": row.dropped_total,
    }


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def render_table(items: Sequence[dict[str, Any]]) -> str:
    header = [
        "DESTINATION",
        "BACKLOG",
        "OLDEST",
        "STATE",
        "FAILURES",
        "RETRY IN",
        "SENT",
        "DROPPED",
        "LAST ERROR",
    ]
    rows = [header]
    for d in items:
        rows.append(
            [
                d["destination"],
                str(d["backlog"]),
                _age(d["oldest_age_seconds"]),
                d["state"],
                str(d["failures"]),
                _age(d["retry_in_seconds"]) if d["retry_in_seconds"] else "-",
                str(d["sent_total"]),
                str(d["dropped_total"]),
                d["last_error"][:60] or "-",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


async def _destinations(url: str, reset: Fqdn | None, as_json: bool, out: TextIO, now: float) -> int:
    db = await open_database(url)
    try:
        if await current_version(db, "federation") == 0:
            print(
                "phx admin: federation tables missing (the server has not run with federation)",
                file=sys.stderr,
            )
            return 1
        store = FederationStore()
        if reset is not None:
            async with db.transaction() as conn:
                if not await store.reset(conn, reset):
                    print(f"phx admin: no destination {reset}", file=sys.stderr)
                    return 1
            print(f"reset {reset}: it is retried at the next poll of every instance", file=out)
        async with db.transaction(readonly=True) as conn:
            rows = await store.destinations(conn)
    finally:
        await db.close()
    items = [describe(r, now) for r in rows]
    if as_json:
        json.dump(items, out, indent=2)
        out.write("\n")
    elif items:
        print(render_table(items), file=out)
    else:
        print("no federation destinations", file=out)
    return 0


def run_destinations(args: argparse.Namespace, out: TextIO | None = None) -> int:
    try:
        config = load_config(args.config)
        reset = Fqdn.parse(args.reset) if args.reset else None
    except (ConfigError, ValidationError) as e:
        print(f"phx admin: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(
            _destinations(config.server.database_url, reset, args.json, out or sys.stdout, time.time())
        )
    except (ConfigError, Unavailable) as e:
        print(f"phx admin: {e}", file=sys.stderr)
        return 1
