"""A homeserver killed mid-delivery and started again sends at once: it does not wait for its own leases
(held under its configured ``federation.instance_name``) or, on SQLite, for any lease to lapse."""

from __future__ import annotations

import time

import pytest

from phx.config import parse_config
from phx.errors import ConfigError
from phx.identifiers import Fqdn
from phx.storage import Database

from .helpers import fast_config, make_homeserver

B = Fqdn("b.test")
LEASE_MS = 3_600_000


async def test_a_restarted_instance_takes_back_its_own_lease(db: Database) -> None:
    config = fast_config("a.test", instance_name="a1.example.net")
    first = await make_homeserver(config, db, transport=None, lease=3600.0)
    owner = first.fed.sender.owner if first.fed.sender is not None else ""
    assert owner == "a1.example.net"
    now_ms = int(time.time() * 1000)
    async with db.transaction() as conn:
        assert (await first.fed.store.claim(conn, B, owner, now_ms, LEASE_MS, probe=False)).ok
        # Killed here: the lease stays for an hour. Another name is kept out...
        assert not (await first.fed.store.claim(conn, B, "someone-else", now_ms, LEASE_MS, probe=False)).ok
    # ...but the same instance, started again, is not.
    again = await make_homeserver(config, db, transport=None, lease=3600.0)
    assert again.fed.sender is not None and again.fed.sender.owner == owner
    async with db.transaction() as conn:
        assert (await again.fed.store.claim(conn, B, owner, now_ms + 1, LEASE_MS, probe=False)).ok


async def test_on_sqlite_start_forgets_a_dead_predecessors_leases(db: Database, db_url: str) -> None:
    config = fast_config("a.test")
    server = await make_homeserver(config, db, transport=None, lease=3600.0, database_url=db_url)
    now_ms = int(time.time() * 1000)
    async with db.transaction() as conn:
        assert (await server.fed.store.claim(conn, B, "dead-instance", now_ms, LEASE_MS, probe=False)).ok
    await server.fed.start()
    try:
        async with db.transaction() as conn:
            (row,) = [r for r in await server.fed.store.destinations(conn) if r.destination == B]
    finally:
        await server.fed.stop()
    if db.engine == "sqlite":
        assert row.lease_owner is None
    else:  # several instances may share PostgreSQL: a live one's lease must stand
        assert row.lease_owner == "dead-instance"


def test_instance_names_are_checked() -> None:
    base = '[server]\ndomain = "a.test"\nplain_http = true\n[federation]\n'
    assert parse_config(base).federation.instance_name == ""
    assert parse_config(base + 'instance_name = "a-1.example:8443"').federation.instance_name
    with pytest.raises(ConfigError, match="^federation.instance_name:"):
        parse_config(base + 'instance_name = "two words"')
