"""SQLite behind another process's lock: the wait is a setting, then ``database.unavailable``."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import text

from fleetpki.errors import UnavailableError, ValidationError
from fleetpki.settings import Settings
from fleetpki.store.db import Database


@pytest.mark.parametrize("value", [0, -1, True, "10", 3601])
def test_a_bad_busy_timeout_is_refused(tmp_path: Path, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.default_for(tmp_path).with_changes(sqlite_busy_timeout_seconds=value)
    assert info.value.code == "config.invalid"
    assert "sqlite_busy_timeout_seconds" in info.value.message


def test_a_write_behind_the_lock_fails_as_unavailable_and_reads_go_on(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    database = Database(f"sqlite:///{path}", sqlite_busy_timeout=0.2)
    try:
        with database.session() as session:
            session.execute(text("CREATE TABLE t (x INTEGER)"))
            session.execute(text("INSERT INTO t VALUES (1)"))
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(UnavailableError) as info, database.session() as session:
                session.execute(text("INSERT INTO t VALUES (2)"))
            assert info.value.code == "database.unavailable"
            # A reading unit of work takes no write lock: it reads beside the writer.
            with database.session(reading=True) as session:
                assert session.execute(text("SELECT x FROM t")).scalars().all() == [1]
            other.execute("ROLLBACK")
        with database.session() as session:
            session.execute(text("INSERT INTO t VALUES (3)"))
            assert session.execute(text("SELECT count(*) FROM t")).scalar_one() == 2
    finally:
        database.dispose()


def test_a_reading_unit_of_work_may_not_write(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        with database.session() as session:
            session.execute(text("CREATE TABLE t (x INTEGER)"))
        with (
            pytest.raises(RuntimeError, match="may not write"),
            database.session(reading=True) as session,
        ):
            session.execute(text("INSERT INTO t VALUES (1)"))
        with database.session(reading=True) as session:
            assert session.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
    finally:
        database.dispose()
