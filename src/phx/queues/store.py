"""SQL for ratcheted queues, shared by every service that keeps them (QS fan-out, AS direct/alias queues).

A service picks a table prefix and puts the DDL from :func:`queue_schema_sql` verbatim into its own
migration files (migrations are static ``.sql`` files pinned by checksum, so the text is copied, and the
service's migration test asserts the copy is exact). :class:`QueueStore` then runs every queue statement
against ``<prefix>_queues`` / ``<prefix>_queue_messages``.

Concurrency: :meth:`QueueStore.lock` reads queue states ``FOR UPDATE`` on PostgreSQL, in queue-id order so
two transactions locking overlapping sets cannot deadlock; on SQLite the single writer already serializes.
Sequence numbers therefore stay contiguous whatever the number of concurrent enqueues.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from phx.storage import Connection, Engine

from .ratchet import QueueItemType, QueueMessage, QueueState

#: An item as stored: (queue id, sequence number, item type, kem_output, ciphertext).
ItemRow = tuple[bytes, int, int, bytes, bytes]
#: A ``MESSAGE`` item (its kem_output is empty): (queue id, sequence number, ciphertext).
MessageRow = tuple[bytes, int, bytes]
#: A ratchet that moved, its encryption key unchanged: (queue id, ratchet key, next sequence number,
#: last rotation).
Advance = tuple[bytes, bytes, int, int]

_MESSAGE = int(QueueItemType.MESSAGE)

__all__ = ["Advance", "ItemRow", "MessageRow", "QueueStore", "in_args", "in_clause", "queue_schema_sql"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_REF = re.compile(r"^[a-z][a-z0-9_]* \([a-z][a-z0-9_]*\)$")

_TYPES: dict[Engine, dict[str, str]] = {
    "sqlite": {"blob": "BLOB", "int": "INTEGER", "strict": " STRICT"},
    "postgres": {"blob": "BYTEA", "int": "BIGINT", "strict": ""},
}


def queue_schema_sql(engine: Engine, prefix: str, *, references: str | None = None) -> str:
    """DDL of the two queue tables. ``references`` (``"table (column)"``) makes each queue belong to a row
    of the owning service (deleting the row deletes the queue and its messages)."""
    if not _NAME.match(prefix):
        raise ValueError(f"bad table prefix {prefix!r}")
    if references is not None and not _REF.match(references):
        raise ValueError(f"bad reference {references!r}")
    t = _TYPES[engine]
    owner = f" REFERENCES {references} ON DELETE CASCADE" if references else ""
    return (
        f"-- Ratcheted queues (phx.queues): one row per queue, its secret ratchet state.\n"
        f"CREATE TABLE {prefix}_queues (\n"
        f"    queue_id       {t['blob']} PRIMARY KEY{owner},\n"
        f"    encryption_key {t['blob']} NOT NULL,  -- the owner's HPKE public key\n"
        f"    ratchet_key    {t['blob']} NOT NULL,\n"
        f"    next_sequence  {t['int']} NOT NULL,\n"
        f"    last_rotation  {t['int']} NOT NULL   -- unix seconds of the last fresh-randomness update\n"
        f"){t['strict']};\n"
        f"CREATE TABLE {prefix}_queue_messages (\n"
        f"    queue_id        {t['blob']} NOT NULL REFERENCES {prefix}_queues (queue_id) ON DELETE CASCADE,\n"
        f"    sequence_number {t['int']} NOT NULL,\n"
        f"    item_type       {t['int']} NOT NULL,\n"
        f"    kem_output      {t['blob']} NOT NULL,\n"
        f"    ciphertext      {t['blob']} NOT NULL,\n"
        f"    PRIMARY KEY (queue_id, sequence_number)\n"
        f"){t['strict']};\n"
    )


def _columns(rows: Iterable[tuple[object, ...]], width: int) -> list[list[object]]:
    """Rows to columns (``zip`` transposes in C); no rows still make ``width`` empty columns."""
    cols = [list(c) for c in zip(*rows, strict=True)]
    return cols if cols else [[] for _ in range(width)]


def in_clause(engine: Engine, n: int, first: int = 1) -> str:
    """``= ANY($k)`` on PostgreSQL (one array argument), ``IN ($k, …)`` on SQLite (n arguments)."""
    if engine == "postgres":
        return f"= ANY(${first}::bytea[])"
    return "IN (" + ", ".join(f"${i}" for i in range(first, first + n)) + ")"


def in_args(engine: Engine, ids: Sequence[bytes]) -> list[object]:
    """The arguments that go with :func:`in_clause`."""
    return [list(ids)] if engine == "postgres" else list(ids)


class QueueStore:
    """Queue statements for one table prefix."""

    def __init__(self, prefix: str) -> None:
        if not _NAME.match(prefix):
            raise ValueError(f"bad table prefix {prefix!r}")
        self.queues = f"{prefix}_queues"
        self.messages = f"{prefix}_queue_messages"
        self._insert_queue = (
            f"INSERT INTO {self.queues} "
            "(queue_id, encryption_key, ratchet_key, next_sequence, last_rotation) "
            "VALUES ($1, $2, $3, $4, $5)"
        )
        self._insert_item = (
            f"INSERT INTO {self.messages} (queue_id, sequence_number, item_type, kem_output, ciphertext) "
            "VALUES ($1, $2, $3, $4, $5)"
        )
        self._update_states_pg = (
            f"UPDATE {self.queues} AS q SET encryption_key = u.ek, ratchet_key = u.rk, next_sequence = u.ns, "
            "last_rotation = u.lr "
            "FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::bigint[], $5::bigint[]) "
            "AS u(qid, ek, rk, ns, lr) WHERE q.queue_id = u.qid"
        )
        self._insert_items_pg = (
            f"INSERT INTO {self.messages} (queue_id, sequence_number, item_type, kem_output, ciphertext) "
            "SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::bytea[], $5::bytea[])"
        )
        self._advance_pg = (
            f"WITH a AS (UPDATE {self.queues} AS q SET ratchet_key = u.rk, next_sequence = u.ns, "
            "last_rotation = u.lr FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bigint[]) "
            "AS u(qid, rk, ns, lr) WHERE q.queue_id = u.qid) "
            f"INSERT INTO {self.messages} (queue_id, sequence_number, item_type, kem_output, ciphertext) "
            f"SELECT m.qid, m.seq, {_MESSAGE}, ''::bytea, m.ct "
            "FROM unnest($5::bytea[], $6::bigint[], $7::bytea[]) AS m(qid, seq, ct)"
        )
        self._advance_pg_rows = self._advance_pg.replace(
            "WITH a AS (",
            f"WITH r AS (INSERT INTO {self.messages} "
            "(queue_id, sequence_number, item_type, kem_output, ciphertext) "
            "SELECT * FROM unnest($8::bytea[], $9::bigint[], $10::bigint[], $11::bytea[], $12::bytea[])), "
            "a AS (",
        )
        self._insert_messages_pg = (
            f"INSERT INTO {self.messages} (queue_id, sequence_number, item_type, kem_output, ciphertext) "
            f"SELECT m.qid, m.seq, {_MESSAGE}, ''::bytea, m.ct "
            "FROM unnest($1::bytea[], $2::bigint[], $3::bytea[]) AS m(qid, seq, ct)"
        )
        self._advance = (
            f"UPDATE {self.queues} SET ratchet_key = $2, next_sequence = $3, last_rotation = $4 "
            "WHERE queue_id = $1"
        )
        self._insert_message = (
            f"INSERT INTO {self.messages} (queue_id, sequence_number, item_type, kem_output, ciphertext) "
            f"VALUES ($1, $2, {_MESSAGE}, X'', $3)"
        )
        self._update_state = (
            f"UPDATE {self.queues} SET encryption_key = $2, ratchet_key = $3, next_sequence = $4, "
            "last_rotation = $5 WHERE queue_id = $1"
        )

    async def create(
        self, conn: Connection, queue_id: bytes, state: QueueState, items: Sequence[QueueMessage]
    ) -> None:
        await conn.execute(
            self._insert_queue,
            queue_id,
            state.encryption_key,
            state.ratchet_key,
            state.next_sequence,
            state.last_rotation,
        )
        await self.insert_items(conn, [(queue_id, item) for item in items])

    async def lock(self, conn: Connection, queue_ids: Sequence[bytes]) -> dict[bytes, QueueState]:
        """The states of the existing queues among ``queue_ids``, locked until the transaction ends."""
        if not queue_ids:
            return {}
        ids = sorted(set(queue_ids))
        sql = (
            f"SELECT queue_id, encryption_key, ratchet_key, next_sequence, last_rotation FROM {self.queues} "
            f"WHERE queue_id {in_clause(conn.engine, len(ids))} ORDER BY queue_id"
        )
        if conn.engine == "postgres":
            sql += " FOR UPDATE"
        rows = await conn.fetch(sql, *in_args(conn.engine, ids))
        return {bytes(r[0]): QueueState(bytes(r[1]), bytes(r[2]), int(r[3]), int(r[4])) for r in rows}

    async def get(self, conn: Connection, queue_id: bytes, *, for_update: bool = False) -> QueueState | None:
        sql = (
            f"SELECT encryption_key, ratchet_key, next_sequence, last_rotation FROM {self.queues} "
            "WHERE queue_id = $1"
        )
        if for_update and conn.engine == "postgres":
            sql += " FOR UPDATE"
        r = await conn.fetchrow(sql, queue_id)
        return None if r is None else QueueState(bytes(r[0]), bytes(r[1]), int(r[2]), int(r[3]))

    async def save_states(self, conn: Connection, states: Mapping[bytes, QueueState]) -> None:
        if not states:
            return
        if conn.engine == "postgres":
            # One statement over arrays instead of one per row: a fan-out batch touches hundreds of queues.
            cols: list[list[object]] = [[], [], [], [], []]
            for qid, s in states.items():
                for col, v in zip(
                    cols,
                    (qid, s.encryption_key, s.ratchet_key, s.next_sequence, s.last_rotation),
                    strict=True,
                ):
                    col.append(v)
            await conn.execute(self._update_states_pg, *cols)
        else:
            await conn.executemany(
                self._update_state,
                [
                    (qid, s.encryption_key, s.ratchet_key, s.next_sequence, s.last_rotation)
                    for qid, s in states.items()
                ],
            )

    async def save_advances(
        self,
        conn: Connection,
        advances: Sequence[Advance],
        messages: Sequence[MessageRow],
        rows: Sequence[ItemRow] = (),
    ) -> None:
        """Store what a fan-out batch did to queues locked in this transaction: ratchets that advanced
        (their encryption key stays), their ``MESSAGE`` items and any other items (key updates).

        PostgreSQL gets it all in one statement over arrays (data-modifying CTEs: one round trip). SQLite
        gets one single-row statement per row (``executemany``; statements run in-process, and SQLite runs
        a single-row statement in about half the time of its share of a multi-row ``VALUES``), sorted by
        key so the B-tree work walks the pages in order.
        """
        if conn.engine == "postgres":
            if not advances and not messages and not rows:
                return
            sql = self._advance_pg_rows if rows else self._advance_pg
            extra = _columns(rows, 5) if rows else []
            await conn.execute(sql, *_columns(advances, 4), *_columns(messages, 3), *extra)
            return
        if advances:
            await conn.executemany(self._advance, sorted(advances))
        await self.insert_messages(conn, messages)
        await self.insert_rows(conn, rows)

    async def insert_messages(self, conn: Connection, messages: Sequence[MessageRow]) -> None:
        """Insert ``MESSAGE`` items ``(queue id, sequence number, ciphertext)`` of queues locked in this
        transaction (their states are saved separately, in the same transaction)."""
        if not messages:
            return
        if conn.engine == "postgres":
            await conn.execute(self._insert_messages_pg, *_columns(messages, 3))
            return
        await conn.executemany(self._insert_message, sorted(messages))

    async def insert_rows(self, conn: Connection, rows: Sequence[ItemRow]) -> None:
        """Insert items given as full rows (queue id, sequence number, item type, kem_output, ciphertext)
        of queues locked in this transaction."""
        if not rows:
            return
        if conn.engine == "postgres":
            await conn.execute(self._insert_items_pg, *_columns(rows, 5))
            return
        await conn.executemany(self._insert_item, sorted(rows))

    async def insert_items(self, conn: Connection, items: Iterable[tuple[bytes, QueueMessage]]) -> None:
        rows = [(qid, m.sequence_number, int(m.item_type), m.kem_output, m.ciphertext) for qid, m in items]
        if rows:
            await conn.executemany(self._insert_item, rows)

    async def save(
        self,
        conn: Connection,
        states: Mapping[bytes, QueueState],
        items: Iterable[tuple[bytes, QueueMessage]],
    ) -> None:
        """Store new states (of queues locked in this transaction) and their new items."""
        await self.save_states(conn, states)
        await self.insert_items(conn, items)

    async def dequeue(
        self, conn: Connection, queue_id: bytes, start: int, limit: int
    ) -> tuple[list[QueueMessage], int]:
        """Delete items below ``start``; return up to ``limit`` items from ``start`` and how many remain
        after them. The caller has locked the queue (:meth:`get` with ``for_update``)."""
        await conn.execute(
            f"DELETE FROM {self.messages} WHERE queue_id = $1 AND sequence_number < $2", queue_id, start
        )
        rows = await conn.fetch(
            f"SELECT sequence_number, item_type, kem_output, ciphertext FROM {self.messages} "
            "WHERE queue_id = $1 AND sequence_number >= $2 ORDER BY sequence_number LIMIT $3",
            queue_id,
            start,
            limit,
        )
        items = [QueueMessage(int(r[0]), QueueItemType(int(r[1])), bytes(r[2]), bytes(r[3])) for r in rows]
        count = await conn.fetchval(
            f"SELECT COUNT(*) FROM {self.messages} WHERE queue_id = $1 AND sequence_number >= $2",
            queue_id,
            start,
        )
        return items, max(0, int(count) - len(items))

    async def delete(self, conn: Connection, queue_ids: Sequence[bytes]) -> int:
        if not queue_ids:
            return 0
        ids = sorted(set(queue_ids))
        return await conn.execute(
            f"DELETE FROM {self.queues} WHERE queue_id {in_clause(conn.engine, len(ids))}",
            *in_args(conn.engine, ids),
        )
