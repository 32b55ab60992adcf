"""The ``core`` key/value table: small server-wide values. Same SQL on both engines."""

from __future__ import annotations

from .base import Connection


async def kv_get(conn: Connection, key: str) -> bytes | None:
    value = await conn.fetchval("SELECT value FROM kv WHERE key = $1", key)
    return None if value is None else bytes(value)


async def kv_put(conn: Connection, key: str, value: bytes, *, now: int) -> None:
    await conn.execute(
        "INSERT INTO kv (key, value, updated_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        key,
        value,
        now,
    )


async def kv_delete(conn: Connection, key: str) -> bool:
    return await conn.execute("DELETE FROM kv WHERE key = $1", key) > 0
