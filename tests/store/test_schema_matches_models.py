"""The Alembic migrations create exactly the schema the models describe, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from fleetpki.store import Base, Database


def test_migrations_reach_head_and_match_the_models(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert database.current_revision() is None
        database.migrate()
        assert database.current_revision() == database.head_revision()
        database.migrate()  # a second run is a no-op
        with database.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        database.dispose()
