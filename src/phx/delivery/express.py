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

The request's Privacy Pass token is recorded as spent in that same transaction (checked before, written
by the guard for the messages whose group holds), so a message costs one transaction, not two. A token
already spent (a replay, or the same token twice in the batch) fails the guard too: the locked path then
tries to spend it and refuses the request. A message whose group fails the guard spends nothing here.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Hashable, Sequence
from typing import NamedTuple, Protocol, cast

from phx.privacypass.redeemer import Spend
from phx.storage import Connection

from .store import DsStore

__all__ = ["ExpressKey", "GroupGuard", "SpendingRedeemer"]


class SpendingRedeemer(Protocol):
    async def spend_in(self, conn: Connection, spends: Sequence[Spend]) -> list[bool]:
        """Record prepared tokens as spent in ``conn``'s transaction; per token, whether this call spent
        it (False: spent before, or earlier in ``spends``)."""
        ...


_serials = itertools.count()


class ExpressKey(NamedTuple):
    """What one application message's guard checks: its group's row version, and the token to spend."""

    group: bytes
    version: int
    spend: Spend | None
    #: Keeps two requests' keys apart even when all else is equal (a replayed request).
    serial: int

    @classmethod
    def of(cls, group: bytes, version: int, spend: Spend | None) -> ExpressKey:
        return cls(group, version, spend, next(_serials))


class GroupGuard:
    """:class:`phx.queuing.fanout.Guard` over keys (:class:`ExpressKey`): holds while the group's row has that
    version, no outbox and no deleted-queue reports (row share-locked on PostgreSQL), and its token was not
    spent before; records the tokens of the messages that hold as spent."""

    def __init__(self, store: DsStore, redeemer: SpendingRedeemer) -> None:
        self.store = store
        self.redeemer = redeemer

    async def hold(self, conn: Connection, keys: Collection[Hashable]) -> Collection[Hashable]:
        wanted = cast(Collection[ExpressKey], keys)
        rows = await self.store.share_groups(conn, sorted({k.group for k in wanted}))
        current = [k for k in wanted if rows.get(k.group) == (k.version, True)]
        paying = [k for k in current if k.spend is not None]
        if not paying:
            return current
        spent = await self.redeemer.spend_in(conn, [cast(Spend, k.spend) for k in paying])
        refused = {k.serial for k, ok in zip(paying, spent, strict=True) if not ok}
        return [k for k in current if k.serial not in refused]
