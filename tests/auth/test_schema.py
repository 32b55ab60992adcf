"""The as migrations: the queue DDL is the shared one, verbatim, and the schema applies on both engines."""

from __future__ import annotations

import pytest

from phx.queues.store import queue_schema_sql
from phx.storage import Database, load_migrations, migrate


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_queue_tables_are_copied_verbatim(engine: str) -> None:
    sql = "".join(m.sql for m in load_migrations("as", engine))  # type: ignore[arg-type]
    assert queue_schema_sql(engine, "as_direct", references="as_clients (queue_id)") in sql  # type: ignore[arg-type]
    assert queue_schema_sql(engine, "as_alias", references="as_aliases (queue_id)") in sql  # type: ignore[arg-type]


async def test_schema_applies_once(db: Database) -> None:
    assert await migrate(db, "as") == [1, 2]
    assert await migrate(db, "as") == []
    async with db.transaction(readonly=True) as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM as_direct_queues") == 0
