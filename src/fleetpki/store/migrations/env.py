"""Alembic environment: runs fleetpki's migrations on a connection handed in by the code."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from fleetpki.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run_on(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite needs batch mode for ALTER TABLE
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run with the connection from ``config.attributes``, else one from the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as conn:
        _run_on(conn)


run_migrations_online()
