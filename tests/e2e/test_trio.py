"""Three homeservers over real HTTPS on loopback: groups spanning all three, messages from each."""

from __future__ import annotations

import asyncio
from pathlib import Path

from phx.identifiers import Fqdn
from tests.federation.helpers import Client, all_have, body_of, fan_out, new_group

from .harness import Net, wait_for

DOMAINS = ("a.test", "b.test", "c.test")


async def test_groups_spanning_three_homeservers(net: Net, tmp_path: Path) -> None:
    for d in DOMAINS:
        await net.add(d, f"sqlite://{tmp_path / d}.db")
    members: dict[str, list[Client]] = {
        d: [await n.register() for _ in range(2)] for d in DOMAINS for n in net.nodes[d]
    }
    everyone = [c for d in DOMAINS for c in members[d]]
    configs = [c.queue_config() for c in everyone]
    # One group per homeserver (its DS is there); each group's DS fans out through its own QS.
    groups = {d: new_group(Fqdn(d)) for d in DOMAINS}
    per_group = 40

    async def talk(domain: str) -> None:
        qs = net.nodes[domain][0].hs.qs
        for i in range(per_group):
            assert await qs.enqueue_fan_out(fan_out(configs, groups[domain], f"{domain}/{i}".encode())) == []

    await asyncio.gather(*(talk(d) for d in DOMAINS))
    total = per_group * len(DOMAINS)

    await wait_for(lambda: all_have(everyone, total), 30)
    for c in everyone:
        payloads = await c.read()
        assert len(payloads) == total  # exactly: nothing lost, nothing twice
        for d in DOMAINS:
            in_group = [body_of(p) for p in payloads if p.content.group_id() == groups[d]]
            assert in_group == [f"{d}/{i}".encode() for i in range(per_group)]
    for d in DOMAINS:
        fed = net.nodes[d][0].fed
        async with fed.db.transaction() as conn:
            assert await conn.fetchval("SELECT COUNT(*) FROM fed_outbox") == 0
            rows = await fed.store.destinations(conn)
        assert sorted(r.destination.value for r in rows) == sorted(x for x in DOMAINS if x != d)
        assert all(r.sent_total == per_group and r.dropped_total == 0 for r in rows)
