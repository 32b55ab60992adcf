from tests.fixtures.db import db, db_engine, db_url, postgres_url, sqlite_url  # noqa: F401
