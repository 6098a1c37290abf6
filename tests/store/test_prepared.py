"""Statements run on the driver's connection (store.prepared) store and read what the ORM does."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.exc import IntegrityError

from fleetpki.store.db import Database, sqlite_url
from fleetpki.store.models import AuditEntry, Principal
from fleetpki.store.prepared import prepared, prepared_insert
from fleetpki.store.rows import insert_row

AT = dt.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=dt.UTC)
# An aware time in another zone: stored as the same UTC instant.
AT_ELSEWHERE = AT.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30)))

_NAME_AND_CREATED = select(Principal.friendly_name, Principal.created_at).where(
    Principal.id == bindparam("id")
)
_RENAME = (
    update(Principal)
    .where(Principal.id == bindparam("pid"))
    .values(friendly_name=bindparam("name"))
)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.migrate()
    yield db
    db.dispose()


def _audit(object_id: str, at: dt.datetime) -> AuditEntry:
    return AuditEntry(
        at=at,
        actor_id="tester",
        action="certificate.issue",
        object_type="certificate",
        object_id=object_id,
        source="test",
        details={"sans": ["a", "ü"], "n": 1, "nested": {"ok": True}},
    )


def test_a_row_inserted_on_the_driver_connection_reads_back_as_the_orms(database: Database) -> None:
    with database.session() as session:
        # The fast path is the one under test: a table it does not take would pass unseen.
        assert prepared_insert(AuditEntry.__table__, session) is not None  # type: ignore[arg-type]
        fast = _audit("fast", AT_ELSEWHERE)
        insert_row(session, fast)
        orm = _audit("orm", AT)
        session.add(orm)
        session.flush()
        assert isinstance(fast.id, int) and fast.id != orm.id
    with database.session(reading=True) as session:
        rows = {r.object_id: r for r in session.scalars(select(AuditEntry))}
        raw = {
            r[0]: tuple(r[1:])
            for r in session.execute(text("SELECT object_id, at, details FROM audit_log"))
        }
    assert rows["fast"].at == AT and rows["fast"].at.tzinfo is not None
    assert (
        rows["fast"].details
        == rows["orm"].details
        == {"sans": ["a", "ü"], "n": 1, "nested": {"ok": True}}
    )
    # Stored byte for byte as the ORM stores it (naive UTC, the same JSON text).
    assert raw["fast"] == raw["orm"]


def test_columns_left_out_take_their_defaults(database: Database) -> None:
    with database.session() as session:
        insert_row(session, Principal(id="p-1", friendly_name="one", created_at=AT))
    with database.session(reading=True) as session:
        stored = session.get(Principal, "p-1")
        assert stored is not None
        assert (stored.principal_type, stored.is_admin) == ("User", False)


def test_a_select_converts_its_columns_and_an_update_counts_its_rows(database: Database) -> None:
    with database.session() as session:
        insert_row(session, Principal(id="p-1", friendly_name="one", created_at=AT_ELSEWHERE))
    with database.session() as session:
        assert prepared(_RENAME, session).execute(session, {"pid": "p-1", "name": "uno"}) == 1
        assert prepared(_RENAME, session).execute(session, {"pid": "nobody", "name": "x"}) == 0
    with database.session(reading=True) as session:
        found = prepared(_NAME_AND_CREATED, session).first(session, {"id": "p-1"})
        missing = prepared(_NAME_AND_CREATED, session).first(session, {"id": "p-2"})
    assert found == ("uno", AT)
    assert missing is None


def test_a_driver_error_is_sqlalchemys_and_the_unit_writes_nothing(database: Database) -> None:
    with database.session() as session:
        insert_row(session, Principal(id="p-1", friendly_name="one", created_at=AT))

    def add_two_and_the_first_again() -> None:
        with database.session() as session:
            insert_row(session, Principal(id="p-2", friendly_name="two", created_at=AT))
            insert_row(session, Principal(id="p-1", friendly_name="again", created_at=AT))

    with pytest.raises(IntegrityError):
        add_two_and_the_first_again()
    with database.session(reading=True) as session:
        names = sorted(session.scalars(select(Principal.friendly_name)))
    assert names == ["one"]


def test_a_reading_unit_may_not_write_through_a_prepared_statement(tmp_path: Path) -> None:
    # Reading units are told apart on SQLite, where they take no write lock (store.db).
    database = Database(sqlite_url(tmp_path / "fleetpki.db"))
    database.migrate()
    with database.session() as session:
        insert_row(session, Principal(id="p-1", friendly_name="one", created_at=AT))
    with (
        pytest.raises(RuntimeError, match="may not write"),
        database.session(reading=True) as session,
    ):
        prepared(_RENAME, session).execute(session, {"pid": "p-1", "name": "uno"})
    with database.session(reading=True) as session:
        assert session.scalar(select(Principal.friendly_name)) == "one"
    database.dispose()
