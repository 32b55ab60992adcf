"""The durable side of federation, on SQLite and PostgreSQL (schema: migrations/federation/<engine>/).

* ``fed_outbox`` — messages waiting for a destination. :meth:`FederationStore.enqueue` runs inside the
  fan-out's transaction (the QS hands us its connection), so a fan-out is accepted with its remote copies
  or not at all. On PostgreSQL it also ``NOTIFY``\\ s :data:`OUTBOX_CHANNEL` with the destination: the
  notification is delivered at commit, to every instance, which is what wakes their senders.
* ``fed_destinations`` — per destination: the persisted back-off (``failures``, ``retry_at_ms``) so a
  restarted sender does not hammer a dead peer, and the **lease** that lets exactly one instance send to a
  destination at a time. :meth:`claim` takes it with one conditional ``UPDATE`` (row-locked on PostgreSQL,
  serialized by the single writer on SQLite); it lapses at ``lease_until_ms`` if its holder dies. Holding
  a lease, not a row lock, keeps transactions short while a request is in flight.
* ``fed_received`` — ids of messages received, with a digest of their content and the first answer.

Times: the outbox and the de-duplication records use unix seconds like every other table; back-off and
lease times are unix **milliseconds** (``*_ms``) because test and recovery timings are sub-second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from phx.identifiers import Fqdn
from phx.queues.store import in_args, in_clause
from phx.storage import Connection, Row

__all__ = [
    "OUTBOX_CHANNEL",
    "Claim",
    "DestinationRow",
    "FederationStore",
    "QueuedMessage",
    "ReceivedRecord",
]

#: PostgreSQL NOTIFY channel: payload is ``<schema> <destination domain>``.
OUTBOX_CHANNEL = "phx_federation_outbox"


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: int
    destination: Fqdn
    message_id: bytes
    created_at: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    ok: bool
    #: Persisted back-off of the destination at claim time.
    failures: int
    retry_at_ms: int
    #: When someone else's lease lapses (``ok`` False because of a lease).
    lease_until_ms: int
    #: ``ok`` False because the back-off is not over (and this is not a probe).
    backing_off: bool


@dataclass(frozen=True, slots=True)
class DestinationRow:
    destination: Fqdn
    backlog: int
    oldest_created_at: int | None
    failures: int
    retry_at_ms: int
    last_error: str
    last_success: int
    lease_owner: str | None
    lease_until_ms: int
    sent_total: int
    dropped_total: int


@dataclass(frozen=True, slots=True)
class ReceivedRecord:
    message_id: bytes
    digest: bytes
    result: bytes


def _dest_row(r: Row) -> DestinationRow:
    return DestinationRow(
        Fqdn(str(r[0])),
        int(r[1]),
        None if r[2] is None else int(r[2]),
        int(r[3]),
        int(r[4]),
        str(r[5]),
        int(r[6]),
        None if r[7] is None else str(r[7]),
        int(r[8]),
        int(r[9]),
        int(r[10]),
    )


class FederationStore:
    def __init__(self) -> None:
        # Destinations whose fed_destinations row this process has made sure of (rows are never deleted).
        self._known: set[Fqdn] = set()

    # --- outbox -----------------------------------------------------------------------------------------

    async def enqueue(
        self, conn: Connection, destination: Fqdn, message_id: bytes, created_at: int, payload: bytes
    ) -> None:
        await self.enqueue_many(conn, [(destination, message_id, created_at, payload)])

    async def enqueue_many(self, conn: Connection, rows: Sequence[tuple[Fqdn, bytes, int, bytes]]) -> None:
        """:meth:`enqueue` for several ``(destination, message_id, created_at, payload)`` rows, in order, in
        one statement per 200 rows on PostgreSQL (one database round trip instead of one per row)."""
        for dest in {r[0] for r in rows} - self._known:
            await conn.execute(
                "INSERT INTO fed_destinations (destination) VALUES ($1) ON CONFLICT (destination) DO NOTHING",
                dest.value,
            )
            self._known.add(dest)
        if conn.engine == "sqlite":
            # In-process statements: single-row ones cost SQLite about half of a multi-row VALUES per row.
            await conn.executemany(
                "INSERT INTO fed_outbox (destination, message_id, created_at, payload) "
                "VALUES ($1, $2, $3, $4)",
                [
                    (dest.value, message_id, created_at, payload)
                    for dest, message_id, created_at, payload in rows
                ],
            )
            return
        for start in range(0, len(rows), 200):
            chunk = rows[start : start + 200]
            values = ", ".join(
                f"(${4 * i + 1}, ${4 * i + 2}, ${4 * i + 3}, ${4 * i + 4})" for i in range(len(chunk))
            )
            args: list[object] = []
            for dest, message_id, created_at, payload in chunk:
                args += [dest.value, message_id, created_at, payload]
            insert = f"INSERT INTO fed_outbox (destination, message_id, created_at, payload) VALUES {values}"
            n = len(args) + 1
            await conn.fetch(
                f"WITH ins AS ({insert} RETURNING destination) "
                f"SELECT pg_notify(${n}, current_schema() || ' ' || d) "
                "FROM (SELECT DISTINCT destination AS d FROM ins) AS x",
                *args,
                OUTBOX_CHANNEL,
            )

    async def head(self, conn: Connection, destination: Fqdn, limit: int) -> list[QueuedMessage]:
        rows = await conn.fetch(
            "SELECT id, message_id, created_at, payload FROM fed_outbox WHERE destination = $1 "
            "ORDER BY id LIMIT $2",
            destination.value,
            limit,
        )
        return [QueuedMessage(int(r[0]), destination, bytes(r[1]), int(r[2]), bytes(r[3])) for r in rows]

    async def delete(self, conn: Connection, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        if conn.engine == "postgres":
            return await conn.execute("DELETE FROM fed_outbox WHERE id = ANY($1::bigint[])", list(ids))
        total = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join(f"${i}" for i in range(1, len(chunk) + 1))
            total += await conn.execute(f"DELETE FROM fed_outbox WHERE id IN ({marks})", *chunk)
        return total

    async def expire(self, conn: Connection, before: int) -> dict[Fqdn, int]:
        """Drop every message queued before ``before`` (the retry window is over); counts by destination."""
        rows = await conn.fetch(
            "SELECT destination, COUNT(*) FROM fed_outbox WHERE created_at < $1 GROUP BY destination", before
        )
        if not rows:
            return {}
        await conn.execute("DELETE FROM fed_outbox WHERE created_at < $1", before)
        counts = {Fqdn(str(r[0])): int(r[1]) for r in rows}
        for dest, n in counts.items():
            await conn.execute(
                "UPDATE fed_destinations SET dropped_total = dropped_total + $2 WHERE destination = $1",
                dest.value,
                n,
            )
        return counts

    # --- destinations and leases ------------------------------------------------------------------------

    async def claim(
        self, conn: Connection, destination: Fqdn, owner: str, now_ms: int, lease_ms: int, *, probe: bool
    ) -> Claim:
        """Take (or renew) the sending lease, unless another live instance holds it or — for a full attempt
        — the persisted back-off is not over."""
        await conn.execute(
            "INSERT INTO fed_destinations (destination) VALUES ($1) ON CONFLICT (destination) DO NOTHING",
            destination.value,
        )
        changed = await conn.execute(
            "UPDATE fed_destinations SET lease_owner = $2, lease_until_ms = $3 "
            "WHERE destination = $1 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until_ms < $4) "
            "AND (retry_at_ms <= $4 OR $5 = 1)",
            destination.value,
            owner,
            now_ms + lease_ms,
            now_ms,
            1 if probe else 0,
        )
        r = await conn.fetchrow(
            "SELECT failures, retry_at_ms, lease_owner, lease_until_ms FROM fed_destinations "
            "WHERE destination = $1",
            destination.value,
        )
        assert r is not None
        failures, retry_at_ms, lease_owner, lease_until_ms = int(r[0]), int(r[1]), r[2], int(r[3])
        if changed:
            return Claim(True, failures, retry_at_ms, lease_until_ms, False)
        held = lease_owner is not None and lease_owner != owner and lease_until_ms >= now_ms
        return Claim(False, failures, retry_at_ms, lease_until_ms if held else 0, not held)

    async def complete(
        self,
        conn: Connection,
        destination: Fqdn,
        owner: str,
        *,
        delete_ids: Sequence[int],
        sent: int,
        dropped: int,
        failures: int,
        retry_at_ms: int,
        last_error: str,
        now: int,
        release: bool,
    ) -> None:
        """Record an attempt's outcome: answered rows go, the back-off is persisted, the lease is kept or
        released. Rows are deleted even if our lease lapsed meanwhile: the peer has them either way."""
        await self.delete(conn, delete_ids)
        await conn.execute(
            "UPDATE fed_destinations SET failures = $2, retry_at_ms = $3, last_error = $4, "
            "sent_total = sent_total + $5, dropped_total = dropped_total + $6, "
            "last_success = CASE WHEN CAST($7 AS BIGINT) > 0 THEN CAST($7 AS BIGINT) ELSE last_success END "
            "WHERE destination = $1",
            destination.value,
            failures,
            retry_at_ms,
            last_error[:500],
            sent,
            dropped,
            now if failures == 0 and (sent or dropped) else 0,
        )
        if release:
            await self.release(conn, destination, owner)

    async def release(self, conn: Connection, destination: Fqdn, owner: str) -> None:
        await conn.execute(
            "UPDATE fed_destinations SET lease_owner = NULL, lease_until_ms = 0 "
            "WHERE destination = $1 AND lease_owner = $2",
            destination.value,
            owner,
        )

    async def release_all(self, conn: Connection, owner: str) -> None:
        await conn.execute(
            "UPDATE fed_destinations SET lease_owner = NULL, lease_until_ms = 0 WHERE lease_owner = $1", owner
        )

    async def release_every_lease(self, conn: Connection) -> None:
        """Forget every sending lease: for a database only one instance uses (SQLite), at its start, so the
        leases of a killed predecessor do not hold its backlog until they lapse."""
        await conn.execute(
            "UPDATE fed_destinations SET lease_owner = NULL, lease_until_ms = 0 WHERE lease_owner IS NOT NULL"
        )

    async def contacted(self, conn: Connection, destination: Fqdn, now_ms: int) -> bool:
        """The peer reached us: end its back-off (for every instance). True if it was backing off."""
        changed = await conn.execute(
            "UPDATE fed_destinations SET retry_at_ms = $2 WHERE destination = $1 AND retry_at_ms > $2 "
            "AND failures > 0",
            destination.value,
            now_ms,
        )
        return changed > 0

    async def reset(self, conn: Connection, destination: Fqdn) -> bool:
        """Operator reset: forget failures, back-off and any lease."""
        changed = await conn.execute(
            "UPDATE fed_destinations SET failures = 0, retry_at_ms = 0, last_error = '', lease_owner = NULL, "
            "lease_until_ms = 0 WHERE destination = $1",
            destination.value,
        )
        return changed > 0

    async def pending(self, conn: Connection) -> list[tuple[Fqdn, bool, int, int]]:
        """(destination, has backlog, failures, retry_at_ms) for every known destination: one index probe
        each, cheap enough to poll."""
        rows = await conn.fetch(
            "SELECT d.destination, EXISTS (SELECT 1 FROM fed_outbox o WHERE o.destination = d.destination), "
            "d.failures, d.retry_at_ms FROM fed_destinations d"
        )
        return [(Fqdn(str(r[0])), bool(r[1]), int(r[2]), int(r[3])) for r in rows]

    async def destinations(self, conn: Connection) -> list[DestinationRow]:
        """Everything the admin command and the metrics show (counts the backlog: not for hot paths)."""
        rows = await conn.fetch(
            "SELECT d.destination, COALESCE(o.n, 0), o.oldest, d.failures, d.retry_at_ms, d.last_error, "
            "d.last_success, d.lease_owner, d.lease_until_ms, d.sent_total, d.dropped_total "
            "FROM fed_destinations d LEFT JOIN (SELECT destination, COUNT(*) AS n, MIN(created_at) AS oldest "
            "FROM fed_outbox GROUP BY destination) o ON o.destination = d.destination ORDER BY d.destination"
        )
        return [_dest_row(r) for r in rows]

    # --- de-duplication ---------------------------------------------------------------------------------

    async def received(
        self, conn: Connection, source: Fqdn, ids: Sequence[bytes]
    ) -> dict[bytes, ReceivedRecord]:
        if not ids:
            return {}
        unique = sorted(set(ids))
        rows = await conn.fetch(
            "SELECT message_id, digest, result FROM fed_received "
            f"WHERE source = $1 AND message_id {in_clause(conn.engine, len(unique), 2)}",
            source.value,
            *in_args(conn.engine, unique),
        )
        return {bytes(r[0]): ReceivedRecord(bytes(r[0]), bytes(r[1]), bytes(r[2])) for r in rows}

    async def remember(
        self, conn: Connection, source: Fqdn, message_id: bytes, digest: bytes, now: int, result: bytes
    ) -> bool:
        """Record a received id; False if it was recorded meanwhile (a concurrent copy of the message won,
        so this one must not be enqueued)."""
        inserted = await conn.execute(
            "INSERT INTO fed_received (source, message_id, digest, received_at, result) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (source, message_id) DO NOTHING",
            source.value,
            message_id,
            digest,
            now,
            result,
        )
        return inserted > 0

    async def remember_many(
        self, conn: Connection, source: Fqdn, records: Sequence[tuple[bytes, bytes]], now: int
    ) -> set[bytes]:
        """Record received ``(message_id, digest)`` pairs (on PostgreSQL in one statement per 500); returns
        the ids recorded now (an id missing from the result was recorded meanwhile by a concurrent copy of
        its message, which must then not be enqueued)."""
        if conn.engine == "sqlite":
            # One single-row statement each: cheaper per row on SQLite than a multi-row VALUES.
            return {m for m, digest in records if await self.remember(conn, source, m, digest, now, b"")}
        inserted: set[bytes] = set()
        for start in range(0, len(records), 500):
            chunk = records[start : start + 500]
            values = ", ".join(f"($1, ${2 * i + 4}, ${2 * i + 5}, $2, $3)" for i in range(len(chunk)))
            args: list[object] = [source.value, now, b""]
            for message_id, digest in chunk:
                args += [message_id, digest]
            sql = (
                "INSERT INTO fed_received (source, message_id, digest, received_at, result) "
                f"VALUES {values} ON CONFLICT (source, message_id) DO NOTHING RETURNING message_id"
            )
            rows = await conn.fetch(sql, *args)
            inserted.update(bytes(r[0]) for r in rows)
        return inserted

    async def set_result(self, conn: Connection, source: Fqdn, message_id: bytes, result: bytes) -> None:
        await conn.execute(
            "UPDATE fed_received SET result = $3 WHERE source = $1 AND message_id = $2",
            source.value,
            message_id,
            result,
        )

    async def forget_received(self, conn: Connection, before: int) -> int:
        return await conn.execute("DELETE FROM fed_received WHERE received_at < $1", before)
