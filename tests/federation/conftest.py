from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from phx.storage import Database, open_database
from tests.fixtures.db import POSTGRES_URL, require_postgres, with_search_path

DbFactory = Callable[[str], AbstractAsyncContextManager[tuple[Database, str]]]


@pytest.fixture
async def db_factory(db_engine: str, tmp_path: Path) -> AsyncIterator[DbFactory]:
    """Opens a fresh database per name (one per homeserver) on the test's engine: (db, url)."""
    schemas: list[str] = []
    if db_engine == "postgres":
        await require_postgres()

    @asynccontextmanager
    async def factory(name: str) -> AsyncIterator[tuple[Database, str]]:
        if db_engine == "postgres":
            schema = f"test_{name.replace('.', '_')}_{secrets.token_hex(4)}"
            admin = await asyncpg.connect(POSTGRES_URL)
            try:
                await admin.execute(f'CREATE SCHEMA "{schema}"')
            finally:
                await admin.close()
            schemas.append(schema)
            url = with_search_path(POSTGRES_URL, schema)
        else:
            url = f"sqlite://{tmp_path / (name + '.db')}"
        database = await open_database(url)
        try:
            yield database, url
        finally:
            await database.close()

    yield factory
    if schemas:
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            for schema in schemas:
                await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await admin.close()
