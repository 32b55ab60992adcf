"""A faulty link between two homeservers: every fault over 1,000 messages, 0 lost, 0 duplicated, per-group
order kept. The proxy sits in front of b.test's QS and hits 30 % of the federation requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from phx.identifiers import Fqdn

from .harness import Net, wait_for
from .proxy import FAULTS
from .scenario import Traffic

MESSAGES = 1000
GROUPS = 4


@pytest.mark.parametrize("fault", FAULTS)
async def test_faulty_link_loses_and_duplicates_nothing(net: Net, tmp_path: Path, fault: str) -> None:
    (a,) = await net.add("a.test", f"sqlite://{tmp_path / 'a'}.db")
    (b,) = await net.add("b.test", f"sqlite://{tmp_path / 'b'}.db")
    proxy = await net.proxy("b.test", fault=fault, rate=0.3, seed=hash(fault) & 0xFFFF)
    local = await a.register()
    b1, b2, b3 = [await b.register() for _ in range(3)]
    # b1 is in every group, b2 in half of them, b3 in one; a's own member in all.
    members = [[local, b1, b2, b3], [local, b1], [local, b1, b2], [local, b1]]
    traffic = Traffic(Fqdn("a.test"), members)
    await traffic.send([a.hs.qs], MESSAGES // GROUPS)
    remote = [b1, b2, b3]
    await wait_for(lambda: traffic.complete(remote), 90)
    await traffic.check([local, *remote])
    assert traffic.expected_count(b1) == MESSAGES
    # Faults really happened, and were absorbed rather than dropped.
    injected = sum(n for k, n in proxy.counts.items() if k != "forwarded")
    assert injected >= 3, proxy.counts

    # Every message arrived; batches whose answer was lost are still in the outbox until their retry is
    # answered (as a duplicate), so wait for the outbox to drain rather than reading it at once.
    async def outbox_empty() -> bool:
        async with a.fed.db.transaction() as conn:
            return bool(await conn.fetchval("SELECT COUNT(*) FROM fed_outbox") == 0)

    await wait_for(outbox_empty, 30)
    async with a.fed.db.transaction() as conn:
        (row,) = await a.fed.store.destinations(conn)
    assert row.dropped_total == 0
    # Batches the peer processed but whose answer was lost were sent again and answered as duplicates
    # (and, as checked above, not enqueued twice).
    duplicates = b.fed.metrics.received.get(status="duplicate")
    after = proxy.counts["drop_response"] + proxy.counts["reset_after"] + proxy.counts["503_after"]
    assert (duplicates > 0) == (after > 0), (duplicates, proxy.counts)
    # Each message was accepted once by the receiver and acknowledged once to the sender.
    assert b.fed.metrics.received.get(status="accepted") == MESSAGES
    assert row.sent_total == MESSAGES
