"""Traffic for the end-to-end tests: groups hosted on one homeserver with members on others, fanned out
through the hosting QS as its DS would, and exact checks of what every queue holds."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from phx.identifiers import Fqdn, GroupId
from phx.queuing.service import QsService
from tests.federation.helpers import Client, body_of, fan_out, new_group

__all__ = ["Traffic"]


@dataclass
class Traffic:
    """``groups`` groups hosted on ``home``; group ``g`` has the members ``members[g]``."""

    home: Fqdn
    members: list[list[Client]]

    def __post_init__(self) -> None:
        self.groups: list[GroupId] = [new_group(self.home) for _ in self.members]
        self.sent: list[list[bytes]] = [[] for _ in self.members]

    async def send(self, qs_of: Sequence[QsService], per_group: int, *, start: int = 0) -> None:
        """``per_group`` messages into every group, each group sequentially (as its DS would), groups in
        parallel; fan-outs go through the given QS instances in turn (several instances of one homeserver)."""

        async def one_group(g: int) -> None:
            configs = [c.queue_config() for c in self.members[g]]
            for i in range(start, start + per_group):
                body = f"g{g}/{i}".encode()
                qs = qs_of[(g + i) % len(qs_of)]
                assert await qs.enqueue_fan_out(fan_out(configs, self.groups[g], body)) == []
                self.sent[g].append(body)

        await asyncio.gather(*(one_group(g) for g in range(len(self.members))))

    def expected(self, client: Client) -> dict[GroupId, list[bytes]]:
        return {self.groups[g]: list(self.sent[g]) for g, ms in enumerate(self.members) if client in ms}

    def expected_count(self, client: Client) -> int:
        return sum(len(v) for v in self.expected(client).values())

    async def complete(self, clients: Sequence[Client], *others: Traffic) -> bool:
        for c in clients:
            want = self.expected_count(c) + sum(o.expected_count(c) for o in others)
            if len(await c.bodies()) < want:
                return False
        return True

    async def check(self, clients: Sequence[Client], *others: Traffic) -> None:
        """Every client holds exactly what was sent to its groups (here and in ``others``): nothing lost,
        nothing twice, each group's messages in the order they were sent."""
        for c in clients:
            payloads = await c.read()
            want = self.expected(c)
            for o in others:
                want.update(o.expected(c))
            assert len(payloads) == sum(len(v) for v in want.values())
            got: dict[GroupId, list[bytes]] = {}
            for p in payloads:
                got.setdefault(p.content.group_id(), []).append(body_of(p))
            assert got == want
