"""The hub migration (0002) chains after 0001 and leaves no difference from the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from fleetpki.store import Base, Database

HUB_TABLES = {"hub_devices", "hub_cas", "hub_messages", "hub_c2d", "hub_sas_policies"}


def test_an_empty_database_migrates_to_the_models_including_the_hub(database_url: str) -> None:
    database = Database(database_url)
    try:
        database.migrate()
        assert database.current_revision() == database.head_revision()
        with database.engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) >= HUB_TABLES
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        database.dispose()


def test_the_hub_tables_are_in_the_models_metadata() -> None:
    assert set(Base.metadata.tables) >= HUB_TABLES
