"""Application messages without the group lock: group commit with the QS's fan-outs.

An application message changes no group state, so it needs the group's state only to check the sender
(DsAuthToken) and the epoch, and to know the recipients. When the decrypted state is in the cache, the DS
checks the message against it right away, without lock or transaction of its own, and hands the fan-out
to the in-process QS's deliverer (:meth:`~phx.queuing.fanout.FanOutDeliverer.deliver_prepared`), which
delivers whatever fan-outs are waiting in one transaction (one commit, one fsync, one round of statements
for all of them). A :class:`GroupGuard` re-checks in that transaction that each group's row still has the
version the message was checked against and nothing pending (no outbox, no deleted-queue reports): a
commit that got in between, or another instance's change, fails the guard, nothing of the message is
written, and the DS takes the locked path (:meth:`~phx.delivery.service.DsService.handle`) instead, which
gives the authoritative answer.

Order per group: fan-outs of one group never run in two transactions at once (the deliverer's order key)
and commit in submission order; a request that changes the group holds its row ``FOR UPDATE``
(PostgreSQL), which conflicts with the guard's ``FOR SHARE``, so a commit's fan-out always comes after
the application messages accepted before it (SQLite's single writer gives the same). The sender gets its
answer only after the transaction holding every local delivery and the federation outbox rows committed.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import cast

from phx.storage import Connection

from .store import DsStore

__all__ = ["GroupGuard"]


class GroupGuard:
    """:class:`phx.queuing.fanout.Guard` over keys ``(group id bytes, version)``: holds while the group's
    row has that version, no outbox and no deleted-queue reports (row share-locked on PostgreSQL)."""

    def __init__(self, store: DsStore) -> None:
        self.store = store

    async def hold(self, conn: Connection, keys: Collection[Hashable]) -> Collection[Hashable]:
        wanted = cast(Collection[tuple[bytes, int]], keys)
        rows = await self.store.share_groups(conn, sorted({k[0] for k in wanted}))
        return [k for k in wanted if rows.get(k[0]) == (k[1], True)]
