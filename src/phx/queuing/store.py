"""The QS store: one class over SQLite and PostgreSQL (schema: migrations/qs/<engine>/).

Statements are shared where the text is the same on both engines; where it differs (row locks, arrays)
both versions sit side by side and :attr:`Connection.engine` picks. Every method takes the connection of
a transaction the service opened, so one request (or one whole fan-out) is one transaction.

Tables: ``qs_keys`` (the QS's own key pairs), ``qs_user_records``, ``qs_client_records`` (blocklist as
concatenated 32-byte salted hashes), ``qs_key_packages``, and the ``phx.queues`` tables ``qs_queues`` /
``qs_queue_messages`` whose queue id is the client id (deleting a client record deletes its queue).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

from phx.identifiers import QsCid, QsUid
from phx.queues import QueueState
from phx.queues.store import QueueStore, in_args, in_clause
from phx.storage import Connection, Row

from .core import ClientRecord, DeliveryTarget, UserRecord

__all__ = ["QsStore", "QUEUE_TABLE_PREFIX", "QUEUE_OWNER"]

QUEUE_TABLE_PREFIX = "qs"
QUEUE_OWNER = "qs_client_records (client_id)"
_HASH = 32
_EMPTY: frozenset[bytes] = frozenset()

_CLIENT_COLUMNS = (
    "qs_uid, client_id, auth_key, encrypted_push_token, activity_time, blocklist_salt, blocklist, created_at"
)


def _pack_blocklist(entries: frozenset[bytes]) -> bytes:
    return b"".join(sorted(entries))


def _unpack_blocklist(blob: bytes) -> frozenset[bytes]:
    return frozenset(blob[i : i + _HASH] for i in range(0, len(blob), _HASH))


def _client(r: Row) -> ClientRecord:
    token = r[3]
    return ClientRecord(
        QsCid(QsUid(uuid.UUID(bytes=bytes(r[0]))), uuid.UUID(bytes=bytes(r[1]))),
        bytes(r[2]),
        None if token is None else bytes(token),
        int(r[4]),
        bytes(r[5]),
        _unpack_blocklist(bytes(r[6])),
        int(r[7]),
    )


def _user(r: Row) -> UserRecord:
    return UserRecord(QsUid(uuid.UUID(bytes=bytes(r[0]))), bytes(r[1]), bytes(r[2]), int(r[3]))


def _lock(conn: Connection, sql: str) -> str:
    return sql + " FOR UPDATE" if conn.engine == "postgres" else sql


class QsStore:
    def __init__(self) -> None:
        self.queues = QueueStore(QUEUE_TABLE_PREFIX)

    # --- the QS's own keys ---------------------------------------------------------------------------

    async def get_key(self, conn: Connection, name: str) -> bytes | None:
        value = await conn.fetchval("SELECT value FROM qs_keys WHERE name = $1", name)
        return None if value is None else bytes(value)

    async def put_key_if_absent(self, conn: Connection, name: str, value: bytes, now: int) -> None:
        await conn.execute(
            "INSERT INTO qs_keys (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            name,
            value,
            now,
        )

    # --- user records ---------------------------------------------------------------------------------

    async def insert_user(self, conn: Connection, user: UserRecord) -> None:
        await conn.execute(
            "INSERT INTO qs_user_records (qs_uid, auth_key, friendship_token, created_at) "
            "VALUES ($1, $2, $3, $4)",
            user.qs_uid.user_id.bytes,
            user.auth_key,
            user.friendship_token,
            user.created_at,
        )

    async def get_user(
        self, conn: Connection, qs_uid: QsUid, *, for_update: bool = False
    ) -> UserRecord | None:
        sql = "SELECT qs_uid, auth_key, friendship_token, created_at FROM qs_user_records WHERE qs_uid = $1"
        r = await conn.fetchrow(_lock(conn, sql) if for_update else sql, qs_uid.user_id.bytes)
        return None if r is None else _user(r)

    async def get_user_by_token(self, conn: Connection, token: bytes) -> UserRecord | None:
        r = await conn.fetchrow(
            "SELECT qs_uid, auth_key, friendship_token, created_at FROM qs_user_records "
            "WHERE friendship_token = $1",
            token,
        )
        return None if r is None else _user(r)

    async def update_user(self, conn: Connection, user: UserRecord) -> None:
        await conn.execute(
            "UPDATE qs_user_records SET auth_key = $2, friendship_token = $3 WHERE qs_uid = $1",
            user.qs_uid.user_id.bytes,
            user.auth_key,
            user.friendship_token,
        )

    async def delete_user(self, conn: Connection, qs_uid: QsUid) -> bool:
        # Client records, their queues, messages and KeyPackages go with it (ON DELETE CASCADE).
        return await conn.execute("DELETE FROM qs_user_records WHERE qs_uid = $1", qs_uid.user_id.bytes) > 0

    # --- client records -------------------------------------------------------------------------------

    async def insert_client(self, conn: Connection, client: ClientRecord) -> None:
        await conn.execute(
            f"INSERT INTO qs_client_records ({_CLIENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            client.qs_cid.qs_uid.user_id.bytes,
            client.qs_cid.client_id.bytes,
            client.auth_key,
            client.encrypted_push_token,
            client.activity_time,
            client.blocklist_salt,
            _pack_blocklist(client.blocklist),
            client.created_at,
        )

    async def get_client(
        self, conn: Connection, qs_cid: QsCid, *, for_update: bool = False
    ) -> ClientRecord | None:
        sql = f"SELECT {_CLIENT_COLUMNS} FROM qs_client_records WHERE client_id = $1 AND qs_uid = $2"
        r = await conn.fetchrow(
            _lock(conn, sql) if for_update else sql, qs_cid.client_id.bytes, qs_cid.qs_uid.user_id.bytes
        )
        return None if r is None else _client(r)

    async def clients_of_user(self, conn: Connection, qs_uid: QsUid) -> list[ClientRecord]:
        rows = await conn.fetch(
            f"SELECT {_CLIENT_COLUMNS} FROM qs_client_records WHERE qs_uid = $1 "
            "ORDER BY created_at, client_id",
            qs_uid.user_id.bytes,
        )
        return [_client(r) for r in rows]

    async def count_clients(self, conn: Connection, qs_uid: QsUid) -> int:
        n = await conn.fetchval(
            "SELECT COUNT(*) FROM qs_client_records WHERE qs_uid = $1", qs_uid.user_id.bytes
        )
        return int(n)

    async def lock_delivery_targets(
        self, conn: Connection, owners: Mapping[bytes, bytes]
    ) -> tuple[dict[bytes, DeliveryTarget], dict[bytes, QueueState]]:
        """For a fan-out's recipients (queue id -> QsUid bytes from the sealed config): the client records
        that exist under that QsUid and their queue states, the queues locked, in one query."""
        if not owners:
            return {}, {}
        ids = sorted(owners)
        sql = (
            "SELECT c.client_id, c.qs_uid, c.blocklist_salt, c.blocklist, c.encrypted_push_token, "
            "q.encryption_key, q.ratchet_key, q.next_sequence, q.last_rotation "
            "FROM qs_client_records c JOIN qs_queues q ON q.queue_id = c.client_id "
            f"WHERE c.client_id {in_clause(conn.engine, len(ids))} ORDER BY c.client_id"
        )
        if conn.engine == "postgres":
            sql += " FOR UPDATE OF q"
        targets: dict[bytes, DeliveryTarget] = {}
        states: dict[bytes, QueueState] = {}
        for r in await conn.fetch(sql, *in_args(conn.engine, ids)):
            qid = bytes(r[0])
            if owners.get(qid) != bytes(r[1]):
                continue  # a client id under another user's QsUid is not that record
            blocklist = bytes(r[3])
            token = r[4]
            targets[qid] = DeliveryTarget(
                bytes(r[2]),
                _unpack_blocklist(blocklist) if blocklist else _EMPTY,
                None if token is None else bytes(token),
            )
            states[qid] = QueueState(bytes(r[5]), bytes(r[6]), int(r[7]), int(r[8]))
        return targets, states

    async def update_client(self, conn: Connection, client: ClientRecord) -> None:
        await conn.execute(
            "UPDATE qs_client_records SET auth_key = $2, encrypted_push_token = $3, activity_time = $4, "
            "blocklist = $5 WHERE client_id = $1",
            client.qs_cid.client_id.bytes,
            client.auth_key,
            client.encrypted_push_token,
            client.activity_time,
            _pack_blocklist(client.blocklist),
        )

    async def touch_client(self, conn: Connection, qs_cid: QsCid, now: int) -> None:
        await conn.execute(
            "UPDATE qs_client_records SET activity_time = $2 WHERE client_id = $1 AND activity_time < $2",
            qs_cid.client_id.bytes,
            now,
        )

    async def delete_client(self, conn: Connection, qs_cid: QsCid) -> bool:
        """Delete the record (and queue, KeyPackages); the user record goes with its last client."""
        deleted = await conn.execute(
            "DELETE FROM qs_client_records WHERE client_id = $1 AND qs_uid = $2",
            qs_cid.client_id.bytes,
            qs_cid.qs_uid.user_id.bytes,
        )
        if deleted:
            await conn.execute(
                "DELETE FROM qs_user_records WHERE qs_uid = $1 AND NOT EXISTS "
                "(SELECT 1 FROM qs_client_records WHERE qs_uid = $1)",
                qs_cid.qs_uid.user_id.bytes,
            )
        return deleted > 0

    async def delete_expired(self, conn: Connection, cutoff: int) -> tuple[int, int]:
        """Delete client records inactive since before ``cutoff`` and users left without clients;
        returns (clients, users) deleted."""
        clients = await conn.execute("DELETE FROM qs_client_records WHERE activity_time < $1", cutoff)
        users = await conn.execute(
            "DELETE FROM qs_user_records WHERE NOT EXISTS "
            "(SELECT 1 FROM qs_client_records c WHERE c.qs_uid = qs_user_records.qs_uid)"
        )
        return clients, users

    # --- KeyPackages ----------------------------------------------------------------------------------

    async def replace_key_packages(
        self, conn: Connection, qs_cid: QsCid, packages: Sequence[tuple[bytes, bool]]
    ) -> None:
        cid = qs_cid.client_id.bytes
        await conn.execute("DELETE FROM qs_key_packages WHERE client_id = $1", cid)
        await conn.executemany(
            "INSERT INTO qs_key_packages (client_id, last_resort, add_package) VALUES ($1, $2, $3)",
            [(cid, 1 if last else 0, blob) for blob, last in packages],
        )

    async def take_add_package(self, conn: Connection, qs_cid: QsCid) -> bytes | None:
        """Consume one ordinary AddPackage of the client, else return (not consume) a last-resort one.

        PostgreSQL skips rows another transaction has locked, so two concurrent fetches never get the same
        package; SQLite's single writer serializes them.
        """
        cid = qs_cid.client_id.bytes
        if conn.engine == "postgres":
            pick = (
                "SELECT id FROM qs_key_packages WHERE client_id = $1 AND last_resort = 0 "
                "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            )
        else:
            pick = (
                "SELECT id FROM qs_key_packages WHERE client_id = $1 AND last_resort = 0 ORDER BY id LIMIT 1"
            )
        blob = await conn.fetchval(
            f"DELETE FROM qs_key_packages WHERE id = ({pick}) RETURNING add_package", cid
        )
        if blob is None:
            blob = await conn.fetchval(
                "SELECT add_package FROM qs_key_packages WHERE client_id = $1 AND last_resort = 1 "
                "ORDER BY id LIMIT 1",
                cid,
            )
        return None if blob is None else bytes(blob)

    async def count_key_packages(self, conn: Connection, qs_cid: QsCid) -> int:
        n = await conn.fetchval(
            "SELECT COUNT(*) FROM qs_key_packages WHERE client_id = $1", qs_cid.client_id.bytes
        )
        return int(n)
