"""Inbound federation rate limits shared by every instance of a homeserver (table ``fed_rate_buckets``).

The receiver rate-limits a QS-to-QS batch by source domain (one token per request) and each frame by the
client queue configs it names and the queues they decrypt to (one token per distinct key per frame, all
or nothing per frame, stopping at the first frame that cannot pay). With several instances behind one
address those buckets must be the same for all of them, else a peer gets N times the rate; so they live
in the database and are charged inside the receiver's transaction, once per batch:

1. one statement reads every bucket the batch touches and, on PostgreSQL, locks it (an upsert that
   creates the missing rows, so a new bucket is locked too; rows go in one fixed order, (scope, key)
   sorted, so two receivers never wait on each other in a cycle);
2. the pure token-bucket math of :mod:`.ratelimit` decides (nothing here does arithmetic on tokens);
3. one statement writes back the buckets that were charged.

A refusal therefore charges nothing (the whole transaction rolls back on a 429; a batch cut short by a
queue limit keeps the charges of the frames it admitted). A bucket is stored as the one number
``full_at`` (:meth:`.TokenBucket.full_at`): a row whose time has passed is a full bucket, the same as no
row, so :meth:`InboundLimits.expire` deletes exactly those and the table holds only buckets used within
the last ``burst / rate`` seconds (plus the maintenance interval).

A rate of 0 (unlimited) costs nothing: no keys, no statements. A refused source domain is remembered in
memory until its wait is over (:meth:`InboundLimits.blocked`): shared tokens only ever run out faster
than one instance sees, never slower, so refusing it again meanwhile without asking the database is what
the database would answer, and a flooding peer costs us no signature checks and no transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from phx.config import RateLimitConfig
from phx.identifiers import Fqdn
from phx.storage import Connection

from .ratelimit import TokenBucket, charge_in_order

__all__ = ["CONFIG", "DOMAIN", "QUEUE", "Admission", "BucketStore", "InboundLimits", "MessageKeys"]

#: Bucket scopes (the ``scope`` column).
DOMAIN, CONFIG, QUEUE = 0, 1, 2

Key = tuple[int, bytes]
#: A frame's rate-limit keys: the sealed queue configs (their KEM outputs) and the decrypted queue ids.
MessageKeys = tuple[Sequence[bytes], Sequence[bytes]]

# SQLite: rows per statement (2 or 3 bound values each, well under its variable limit).
_CHUNK = 400


@dataclass(frozen=True, slots=True)
class Admission:
    #: > 0: the source domain's bucket refused the request (nothing was charged); seconds to wait.
    domain_wait: float
    #: How many of the frames, from the first, were admitted and charged.
    admitted: int
    #: When not every frame was admitted: seconds until the first refused one could be.
    wait: float


class BucketStore:
    """The SQL of ``fed_rate_buckets`` (schema: migrations/federation/<engine>/0002_rate_buckets.sql)."""

    async def lock(self, conn: Connection, keys: Sequence[Key]) -> dict[Key, float]:
        """``full_at`` of each of ``keys`` (sorted, distinct); absent keys are missing from the answer (a
        full bucket). On PostgreSQL every key's row exists and is locked afterwards, in the order given."""
        if conn.engine == "postgres":
            rows = await conn.fetch(
                "INSERT INTO fed_rate_buckets (scope, bucket_key, full_at) "
                "SELECT s, k, 0 FROM unnest($1::smallint[], $2::bytea[]) WITH ORDINALITY AS v(s, k, i) "
                "ORDER BY i "
                "ON CONFLICT (scope, bucket_key) DO UPDATE SET full_at = fed_rate_buckets.full_at "
                "RETURNING scope, bucket_key, full_at",
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
        else:
            # One writer at a time (BEGIN IMMEDIATE): reading is enough, no row locks exist or are needed.
            rows = []
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                pairs = ", ".join(f"(${2 * i + 1}, ${2 * i + 2})" for i in range(len(chunk)))
                args: list[object] = []
                for scope, key in chunk:
                    args += [scope, key]
                rows += await conn.fetch(
                    "SELECT scope, bucket_key, full_at FROM fed_rate_buckets "
                    f"WHERE (scope, bucket_key) IN (VALUES {pairs})",
                    *args,
                )
        return {(int(r[0]), bytes(r[1])): float(r[2]) for r in rows}

    async def save(self, conn: Connection, buckets: Sequence[tuple[Key, float]]) -> None:
        """Store ``full_at`` for each ``(key, full_at)``; on PostgreSQL the rows exist and are ours (locked
        by :meth:`lock`)."""
        if not buckets:
            return
        if conn.engine == "postgres":
            await conn.execute(
                "UPDATE fed_rate_buckets AS b SET full_at = v.f "
                "FROM unnest($1::smallint[], $2::bytea[], $3::float8[]) AS v(s, k, f) "
                "WHERE b.scope = v.s AND b.bucket_key = v.k",
                [k[0] for k, _ in buckets],
                [k[1] for k, _ in buckets],
                [f for _, f in buckets],
            )
            return
        for start in range(0, len(buckets), _CHUNK):
            chunk = buckets[start : start + _CHUNK]
            values = ", ".join(f"(${3 * i + 1}, ${3 * i + 2}, ${3 * i + 3})" for i in range(len(chunk)))
            args: list[object] = []
            for (scope, key), full_at in chunk:
                args += [scope, key, full_at]
            await conn.execute(
                f"INSERT INTO fed_rate_buckets (scope, bucket_key, full_at) VALUES {values} "
                "ON CONFLICT (scope, bucket_key) DO UPDATE SET full_at = excluded.full_at",
                *args,
            )

    async def expire(self, conn: Connection, now: float) -> int:
        """Delete the buckets that are full again (exactly equivalent to keeping them)."""
        if conn.engine == "postgres":
            # Rows a receiver holds are skipped, not waited for: no lock-order cycle with a charge, and
            # a row in use is not idle anyway.
            return await conn.execute(
                "DELETE FROM fed_rate_buckets WHERE (scope, bucket_key) IN (SELECT scope, bucket_key "
                "FROM fed_rate_buckets WHERE full_at <= $1 FOR UPDATE SKIP LOCKED)",
                now,
            )
        return await conn.execute("DELETE FROM fed_rate_buckets WHERE full_at <= $1", now)


class InboundLimits:
    """The receiver's rate limits: ``federation.rate_limit``, one set of buckets for every instance."""

    def __init__(
        self, config: RateLimitConfig, store: BucketStore | None = None, *, max_blocked: int = 10_000
    ) -> None:
        self.domain_rate = float(config.per_domain_rate)
        self.domain_burst = float(config.per_domain_burst)
        self.queue_rate = float(config.per_queue_rate)
        self.queue_burst = float(config.per_queue_burst)
        self.store = store if store is not None else BucketStore()
        self.max_blocked = max_blocked
        # Source domain -> until when its bucket is known to be empty (see the module docstring).
        self._blocked: dict[Fqdn, float] = {}

    @property
    def queues_unlimited(self) -> bool:
        """No per-queue-config or per-queue limit: the receiver need not compute keys at all."""
        return self.queue_rate == 0

    @property
    def unlimited(self) -> bool:
        return self.domain_rate == 0 and self.queue_rate == 0

    def blocked(self, source: Fqdn, now: float) -> float:
        """Seconds ``source`` must still wait after a refusal this instance saw (0: ask the database)."""
        until = self._blocked.get(source)
        if until is None:
            return 0.0
        if until <= now:
            del self._blocked[source]
            return 0.0
        return until - now

    def _block(self, source: Fqdn, until: float, now: float) -> None:
        if len(self._blocked) >= self.max_blocked:
            self._blocked = {d: t for d, t in self._blocked.items() if t > now}
            if len(self._blocked) >= self.max_blocked:
                self._blocked.clear()  # only a shortcut: forgetting it costs a query, never a token
        self._blocked[source] = until

    async def charge(
        self, conn: Connection, source: Fqdn, messages: Sequence[MessageKeys], now: float
    ) -> Admission:
        """Charge one request from ``source`` carrying ``messages`` (frames, in order) inside ``conn``, the
        receiver's transaction. A domain refusal charges nothing and admits nothing."""
        if self.unlimited:
            return Admission(0.0, len(messages), 0.0)
        domain_key: Key = (DOMAIN, source.value.encode())
        requests: list[set[Key]] = []
        wanted: set[Key] = set()
        if self.queue_rate > 0:
            for configs, queues in messages:
                keys = {(CONFIG, c) for c in configs}
                keys.update((QUEUE, q) for q in queues)
                requests.append(keys)
                wanted |= keys
        if self.domain_rate > 0:
            wanted.add(domain_key)
        if not wanted:
            return Admission(0.0, len(messages), 0.0)
        order = sorted(wanted)
        stored = await self.store.lock(conn, order)
        at = TokenBucket.at
        qr, qb, dr, db = self.queue_rate, self.queue_burst, self.domain_rate, self.domain_burst
        buckets = {
            k: at(dr, db, stored.get(k, 0.0), now) if k[0] == DOMAIN else at(qr, qb, stored.get(k, 0.0), now)
            for k in order
        }
        charged: set[Key] = set()
        if self.domain_rate > 0:
            _, domain_wait = charge_in_order(buckets, [(domain_key,)], now)
            if domain_wait > 0:
                self._block(source, now + domain_wait, now)
                return Admission(domain_wait, 0, 0.0)
            charged.add(domain_key)
        admitted, wait = len(messages), 0.0
        if self.queue_rate > 0:
            admitted, wait = charge_in_order(buckets, requests, now)
            for keys in requests[:admitted]:
                charged |= keys
        await self.store.save(conn, [(k, buckets[k].full_at()) for k in order if k in charged])
        return Admission(0.0, admitted, wait)

    async def expire(self, conn: Connection, now: float) -> int:
        """Forget buckets that are full again (maintenance; also when the limits are off now: rows of
        when they were on must not stay forever)."""
        return await self.store.expire(conn, now)
