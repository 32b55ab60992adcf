"""One request at a time per group: racing commits for one epoch, in one process and across processes."""

from __future__ import annotations

import asyncio

import pytest

from phx.delivery.messages import Operation, SendMessageParams
from phx.delivery.service import DsService
from phx.errors import PhxError, WrongEpoch
from phx.storage import Database
from tests.delivery.helpers import DOMAIN, Client, Harness


async def race(h: Harness, services: list[DsService], committers: list[Client]) -> list[PhxError | None]:
    params = [h.update_params(c) for c in committers]

    async def one(service: DsService, c: Client, p: object) -> PhxError | None:
        h.service = service
        try:
            await h.as_member(Operation.UPDATE_CLIENT, p, c)  # type: ignore[arg-type]
        except PhxError as e:
            return e
        return None

    return list(
        await asyncio.gather(*(one(s, c, p) for s, c, p in zip(services, committers, params, strict=True)))
    )


@pytest.mark.parametrize("processes", [1, 2])
async def test_racing_commits_for_one_epoch(db: Database, processes: int) -> None:
    h = await Harness.start(db)
    alice, bob, carol = Client.new("alice"), Client.new("bob"), Client.new("carol")
    await h.create(alice)
    await h.add(alice, [bob], [carol])
    main = h.service
    # a second DS process on the same database: its own cache and locks, only the row lock in common
    other = await DsService.open(db, main.config, DOMAIN, sink=h.sink, redeemer=h.redeemer, clock=h.clock)
    services = [main, other if processes == 2 else main]
    for _ in range(3):
        h.sink.take()
        results = await race(h, services, [bob, carol])
        winners = [i for i, r in enumerate(results) if r is None]
        losers = [r for r in results if r is not None]
        assert len(winners) == 1, results
        assert len(losers) == 1 and isinstance(losers[0], WrongEpoch), losers
        winner, loser = [bob, carol][winners[0]], [carol, bob][winners[0]]
        winner.g.merge_pending_commit()
        loser.g.clear_pending_commit()
        commit = h.sink.take()[0].message_content.body
        for c in (alice, loser):
            c.g.process(commit, now=h.now)  # type: ignore[arg-type]
        # both processes continue from the winner's epoch
        for s in services:
            h.service = s
            await h.as_member(Operation.SEND_MESSAGE, SendMessageParams(alice.g.send(b"x"), h.ear_key), alice)
        h.service = main
    assert alice.g.epoch == bob.g.epoch == carol.g.epoch == 4
