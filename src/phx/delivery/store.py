"""The DS's SQL: one class, both engines (schema: ``phx/storage/migrations/ds/<engine>/``).

Statements use ``$n`` placeholders on both engines; the only text that differs is the row lock: on
PostgreSQL ``SELECT … FOR UPDATE`` locks the group's row for the rest of the transaction, on SQLite the
write transaction itself (``BEGIN IMMEDIATE``, one writer at a time) already excludes every other writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from phx.storage import Connection

__all__ = ["DsStore", "GroupRow", "StoredBlobs"]


def _lock(conn: Connection, sql: str) -> str:
    return sql + " FOR UPDATE" if conn.engine == "postgres" else sql


@dataclass(frozen=True, slots=True)
class GroupRow:
    """The plaintext part of a GroupStateDbEntry, read under the row lock."""

    version: int
    queue_id_key: bytes
    last_used: int
    has_deleted_queues: bool
    has_outbox: bool


@dataclass(frozen=True, slots=True)
class StoredBlobs:
    roster: bytes
    cold: bytes | None


class DsStore:
    # --- the DS's own values -------------------------------------------------------------------------

    async def get_key(self, conn: Connection, name: str) -> bytes | None:
        value = await conn.fetchval("SELECT value FROM ds_keys WHERE name = $1", name)
        return None if value is None else bytes(value)

    async def put_key(self, conn: Connection, name: str, value: bytes, now: int, *, replace: bool) -> None:
        conflict = (
            "DO UPDATE SET value = excluded.value, created_at = excluded.created_at"
            if replace
            else ("DO NOTHING")
        )
        await conn.execute(
            "INSERT INTO ds_keys (name, value, created_at) VALUES ($1, $2, $3) "
            f"ON CONFLICT (name) {conflict}",
            name,
            value,
            now,
        )

    # --- reservations --------------------------------------------------------------------------------

    async def reserve(self, conn: Connection, group_id: bytes, until: int, month: int) -> bool:
        """Enter a placeholder for ``group_id``; False if the id is taken (by a group or a reservation)."""
        n = await conn.execute(
            "INSERT INTO ds_groups (group_id, last_used, reserved_until, version) VALUES ($1, $2, $3, 0) "
            "ON CONFLICT (group_id) DO NOTHING",
            group_id,
            month,
            until,
        )
        return n > 0

    async def reservation(self, conn: Connection, group_id: bytes) -> int | None:
        """``reserved_until`` of a placeholder for ``group_id`` (locked), None if there is none."""
        value = await conn.fetchval(
            _lock(conn, "SELECT reserved_until FROM ds_groups WHERE group_id = $1 AND roster IS NULL"),
            group_id,
        )
        return None if value is None else int(value)

    # --- group states --------------------------------------------------------------------------------

    async def lock_group(self, conn: Connection, group_id: bytes) -> GroupRow | None:
        """Lock an existing group's row; None for unknown ids and reservations."""
        r = await conn.fetchrow(
            _lock(
                conn,
                "SELECT version, queue_id_key, last_used, "
                "EXISTS (SELECT 1 FROM ds_deleted_queues d WHERE d.group_id = g.group_id), "
                "EXISTS (SELECT 1 FROM ds_outbox o WHERE o.group_id = g.group_id) "
                "FROM ds_groups g WHERE g.group_id = $1 AND g.roster IS NOT NULL",
            ),
            group_id,
        )
        if r is None:
            return None
        return GroupRow(int(r[0]), bytes(r[1]), int(r[2]), bool(r[3]), bool(r[4]))

    async def share_groups(
        self, conn: Connection, group_ids: Sequence[bytes]
    ) -> dict[bytes, tuple[int, bool]]:
        """For each existing group of ``group_ids``: its version and whether it has neither an outbox nor
        deleted-queue reports, its row share-locked for the rest of the transaction on PostgreSQL (a
        request that changes the group waits for it; SQLite's single writer excludes that anyway)."""
        sql = (
            "SELECT g.group_id, g.version, "
            "EXISTS (SELECT 1 FROM ds_deleted_queues d WHERE d.group_id = g.group_id) "
            "OR EXISTS (SELECT 1 FROM ds_outbox o WHERE o.group_id = g.group_id) "
            "FROM ds_groups g WHERE g.group_id "
        )
        if conn.engine == "postgres":
            sql += "= ANY($1::bytea[]) AND g.roster IS NOT NULL FOR SHARE OF g"
            args: list[object] = [list(group_ids)]
        else:
            sql += "IN (" + ", ".join(f"${i}" for i in range(1, len(group_ids) + 1)) + ") "
            sql += "AND g.roster IS NOT NULL"
            args = list(group_ids)
        rows = await conn.fetch(sql, *args)
        return {bytes(r[0]): (int(r[1]), not r[2]) for r in rows}

    async def load(self, conn: Connection, group_id: bytes, *, cold: bool) -> StoredBlobs:
        if cold:
            r = await conn.fetchrow("SELECT roster, cold FROM ds_groups WHERE group_id = $1", group_id)
            assert r is not None
            return StoredBlobs(bytes(r[0]), bytes(r[1]))
        value = await conn.fetchval("SELECT roster FROM ds_groups WHERE group_id = $1", group_id)
        return StoredBlobs(bytes(value), None)

    async def load_cold(self, conn: Connection, group_id: bytes) -> bytes:
        return bytes(await conn.fetchval("SELECT cold FROM ds_groups WHERE group_id = $1", group_id))

    async def create(
        self, conn: Connection, group_id: bytes, roster: bytes, cold: bytes, queue_id_key: bytes, month: int
    ) -> None:
        await conn.execute(
            "UPDATE ds_groups SET roster = $2, cold = $3, queue_id_key = $4, last_used = $5, "
            "reserved_until = NULL, version = 1 WHERE group_id = $1",
            group_id,
            roster,
            cold,
            queue_id_key,
            month,
        )

    async def save(
        self, conn: Connection, group_id: bytes, version: int, roster: bytes, cold: bytes | None, month: int
    ) -> None:
        if cold is None:
            await conn.execute(
                "UPDATE ds_groups SET roster = $2, last_used = $3, version = $4 WHERE group_id = $1",
                group_id,
                roster,
                month,
                version,
            )
        else:
            await conn.execute(
                "UPDATE ds_groups SET roster = $2, cold = $3, last_used = $4, version = $5 "
                "WHERE group_id = $1",
                group_id,
                roster,
                cold,
                month,
                version,
            )

    async def delete_group(self, conn: Connection, group_id: bytes) -> None:
        for table in ("ds_outbox", "ds_deleted_queues", "ds_past_states", "ds_groups"):
            await conn.execute(f"DELETE FROM {table} WHERE group_id = $1", group_id)

    # --- past group states (Welcome information) -------------------------------------------------------

    async def past_state(self, conn: Connection, group_id: bytes, epoch: int) -> bytes | None:
        value = await conn.fetchval(
            "SELECT state FROM ds_past_states WHERE group_id = $1 AND epoch = $2", group_id, epoch
        )
        return None if value is None else bytes(value)

    async def add_past_states(
        self, conn: Connection, group_id: bytes, states: Sequence[tuple[int, bytes]]
    ) -> None:
        await conn.executemany(
            "INSERT INTO ds_past_states (group_id, epoch, state) VALUES ($1, $2, $3)",
            [(group_id, epoch, blob) for epoch, blob in states],
        )

    async def keep_past_states(self, conn: Connection, group_id: bytes, epochs: Sequence[int]) -> None:
        """Delete the group's past states but those of ``epochs``."""
        rows = await conn.fetch("SELECT epoch FROM ds_past_states WHERE group_id = $1", group_id)
        keep = set(epochs)
        gone = [(group_id, int(r[0])) for r in rows if int(r[0]) not in keep]
        if gone:
            await conn.executemany("DELETE FROM ds_past_states WHERE group_id = $1 AND epoch = $2", gone)

    # --- deleted queues ------------------------------------------------------------------------------

    async def add_deleted_queues(self, conn: Connection, group_id: bytes, sealed: Sequence[bytes]) -> None:
        await conn.executemany(
            "INSERT INTO ds_deleted_queues (group_id, sealed) VALUES ($1, $2)",
            [(group_id, s) for s in sealed],
        )

    async def take_deleted_queues(self, conn: Connection, group_id: bytes) -> list[bytes]:
        rows = await conn.fetch(
            "SELECT sealed FROM ds_deleted_queues WHERE group_id = $1 ORDER BY id", group_id
        )
        if rows:
            await conn.execute("DELETE FROM ds_deleted_queues WHERE group_id = $1", group_id)
        return [bytes(r[0]) for r in rows]

    async def group_exists(self, conn: Connection, group_id: bytes) -> bytes | None:
        """The QueueIdEncryptionKey of an existing group, None otherwise."""
        value = await conn.fetchval(
            "SELECT queue_id_key FROM ds_groups WHERE group_id = $1 AND roster IS NOT NULL", group_id
        )
        return None if value is None else bytes(value)

    # --- outbox --------------------------------------------------------------------------------------

    async def add_outbox(
        self, conn: Connection, group_id: bytes, blobs: Sequence[bytes], now: int
    ) -> list[int]:
        ids = []
        for blob in blobs:
            ids.append(
                int(
                    await conn.fetchval(
                        "INSERT INTO ds_outbox (group_id, fan_out, created_at) VALUES ($1, $2, $3) "
                        "RETURNING id",
                        group_id,
                        blob,
                        now,
                    )
                )
            )
        return ids

    async def outbox(self, conn: Connection, group_id: bytes) -> list[tuple[int, bytes]]:
        rows = await conn.fetch("SELECT id, fan_out FROM ds_outbox WHERE group_id = $1 ORDER BY id", group_id)
        return [(int(r[0]), bytes(r[1])) for r in rows]

    async def remove_outbox(self, conn: Connection, ids: Sequence[int]) -> None:
        await conn.executemany("DELETE FROM ds_outbox WHERE id = $1", [(i,) for i in ids])

    # --- expiry --------------------------------------------------------------------------------------

    async def expire(self, conn: Connection, unused_before: int, now: int) -> tuple[int, int]:
        """Delete groups whose last use is before ``unused_before`` (with their side rows) and lapsed
        reservations; returns (groups, reservations) deleted."""
        for table in ("ds_outbox", "ds_deleted_queues", "ds_past_states"):
            await conn.execute(
                f"DELETE FROM {table} WHERE group_id IN "
                "(SELECT group_id FROM ds_groups WHERE roster IS NOT NULL AND last_used < $1)",
                unused_before,
            )
        groups = await conn.execute(
            "DELETE FROM ds_groups WHERE roster IS NOT NULL AND last_used < $1", unused_before
        )
        reservations = await conn.execute(
            "DELETE FROM ds_groups WHERE roster IS NULL AND reserved_until < $1", now
        )
        return groups, reservations
