"""A commit is durable on PostgreSQL whatever the server's synchronous_commit says."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from fleetpki.store.db import Database
from support.postgres import PostgresServer

pytestmark = pytest.mark.postgres


def _setting(database: Database) -> str:
    with database.engine.connect() as connection:
        return str(connection.execute(text("SHOW synchronous_commit")).scalar_one())


def test_a_server_without_synchronous_commit_gets_it_per_session(postgres: PostgresServer) -> None:
    # The tests' server runs with synchronous_commit off (support/postgres.py), as a
    # server tuned for speed would: COMMIT would answer before the WAL is written.
    with psycopg.connect(postgres.dsn) as raw:
        assert raw.execute("SHOW synchronous_commit").fetchone() == ("off",)
    database = Database(postgres.create_database("durable_default"))
    try:
        assert _setting(database) == "on"
    finally:
        database.dispose()


def test_a_stronger_setting_is_left_as_chosen(postgres: PostgresServer) -> None:
    url = postgres.create_database("durable_replicas")
    with psycopg.connect(postgres.dsn_for("postgres"), autocommit=True) as raw:
        raw.execute("ALTER DATABASE durable_replicas SET synchronous_commit = remote_apply")
    database = Database(url)
    try:
        assert _setting(database) == "remote_apply"
    finally:
        database.dispose()
