"""Stopping and restarting either side loses nothing and duplicates nothing (1,000 messages each)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

import httpx

from phx.config import OutboxConfig
from phx.federation.outbox_store import DestinationRow
from phx.identifiers import Fqdn

from .harness import Net, Node, wait_for
from .scenario import Traffic

MESSAGES = 1000
FED: dict[str, Any] = {"probe_interval": 0.3, "lease": 1.0}


async def test_receiver_stopped_and_restarted(net: Net, tmp_path: Path) -> None:
    (a,) = await net.add("a.test", f"sqlite://{tmp_path / 'a'}.db", **FED)
    (b,) = await net.add("b.test", f"sqlite://{tmp_path / 'b'}.db", **FED)
    local = await a.register()
    remote = [await b.register() for _ in range(2)]
    traffic = Traffic(Fqdn("a.test"), [[local, *remote], [local, remote[0]]])
    await traffic.send([a.hs.qs], 100)
    await wait_for(lambda: traffic.complete(remote), 30)
    # b goes away in the middle of a stream of messages, and stays away while a keeps queueing.
    sending = asyncio.create_task(traffic.send([a.hs.qs], 400, start=100))
    await asyncio.sleep(0.3)
    await b.crash()
    await sending
    await asyncio.sleep(1.0)
    row = await destination(a)
    assert row.backlog > 0 and row.failures > 0  # a really is backing off from b
    metrics = await scrape(a)
    assert f'phx_federation_outbox_backlog{{destination="b.test"}} {row.backlog}' in metrics
    assert 'phx_federation_destination_failures{destination="b.test"} 0' not in metrics
    await b.start()
    for c in remote:
        c.qs = b.hs.qs
    recovered_in = await wait_for(lambda: traffic.complete(remote), 30)
    # The backlog flows within one probe interval plus delivery time, far inside the 30 s bound.
    assert recovered_in < 10
    await traffic.check([local, *remote])
    assert traffic.expected_count(remote[0]) == MESSAGES
    row = await destination(a)
    assert (row.backlog, row.failures, row.dropped_total) == (0, 0, 0)


async def test_sender_crashed_mid_delivery(net: Net, tmp_path: Path) -> None:
    # Small batches: more requests, so a crash lands between or during them.
    small = {"outbox": OutboxConfig(backoff_base=0.02, backoff_max=0.2, batch_size=10)}
    (a,) = await net.add("a.test", f"sqlite://{tmp_path / 'a'}.db", federation=small, **FED)
    (b,) = await net.add("b.test", f"sqlite://{tmp_path / 'b'}.db", **FED)
    local = await a.register()
    remote = [await b.register() for _ in range(3)]
    traffic = Traffic(Fqdn("a.test"), [[local, *remote], [local, remote[0], remote[1]], [local, remote[0]]])
    rng = random.Random(5)
    backlogs: list[int] = []
    start = 0
    for per_group in (110, 110, 114):  # remote[0] is in all three groups: 1,002 messages
        # The receiver is down while the round is accepted, so a backlog is certain to be in flight when
        # the sender crashes below, however fast the link.
        await b.stop()
        await traffic.send([a.hs.qs], per_group, start=start)
        start += per_group
        await b.start()
        for r in remote:
            r.qs = b.hs.qs
        # Crash once part of the round is through (or at the latest after a random pause).
        total = (await destination(a)).backlog
        target = int(total * rng.uniform(0.2, 0.8))

        async def partly_sent(target: int = target) -> bool:
            return (await destination(a)).backlog <= target

        with contextlib.suppress(AssertionError):
            await wait_for(partly_sent, 2, interval=0.002)
        backlogs.append((await destination(a)).backlog)
        await a.crash()  # whatever was in flight is lost with the process; the outbox is not
        await a.start()
        local.qs = a.hs.qs
    await wait_for(lambda: traffic.complete(remote), 60)
    await traffic.check([local, *remote])
    assert traffic.expected_count(remote[0]) >= MESSAGES
    assert a.starts == 4
    assert any(backlogs), backlogs  # the crashes did interrupt deliveries
    row = await destination(a)
    assert (row.backlog, row.dropped_total) == (0, 0)


async def destination(node: Node) -> DestinationRow:
    async with node.fed.db.transaction() as conn:
        (row,) = await node.fed.store.destinations(conn)
    return row


async def scrape(node: Node) -> str:
    """``GET /metrics`` over HTTPS, after making sure the gauges are fresh."""
    assert node.fed.sender is not None
    node.fed.sender.poll_soon()
    await asyncio.sleep(0.2)
    async with httpx.AsyncClient(verify=node.net.ca.client_context()) as http:
        r = await http.get(f"https://127.0.0.1:{node.port}/metrics")
    assert r.status_code == 200
    return r.text
