"""SQLite's writers in one process take turns through a lock; the commit stamp sees commits."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from conftest import ALICE, make_csr
from fleetpki.application import FleetPKI
from fleetpki.errors import ValidationError
from fleetpki.services import Actor
from fleetpki.services.certificates import IssueCommand
from fleetpki.store.db import Database
from fleetpki.store.models import CertificateRecord, Principal
from support.database import raw_session

THREADS = 8
EACH = 6
JOIN = 60.0  # seconds: a writer left waiting on a lock nobody releases fails the test


def _issuing_id(fleet: FleetPKI) -> str:
    return next(c.id for c in fleet.cas.list() if c.tier == "issuing")


def _register(fleet: FleetPKI, names: list[str]) -> None:
    for name in names:
        fleet.domains.register(
            Actor(ALICE),
            ca_id=_issuing_id(fleet),
            template_id=None,
            name=name,
            owners=[ALICE],
            requesters=[ALICE],
        )


def _run_threads(target: object, count: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            target(index)  # type: ignore[operator]
        except BaseException as exc:  # reported by the caller's assertion
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN)
    assert not any(thread.is_alive() for thread in threads), "a writer never finished"
    return errors


def test_concurrent_issuance_in_one_process_records_every_certificate(
    sqlite_fleet: FleetPKI,
) -> None:
    fleet = sqlite_fleet
    names = [f"dev-{i}" for i in range(THREADS)]
    _register(fleet, names)
    csrs = [[make_csr(name)[1] for _ in range(EACH)] for name in names]
    serials: list[str] = []
    lock = threading.Lock()
    ca_id = _issuing_id(fleet)

    def issue(index: int) -> None:
        for csr in csrs[index]:
            issued = fleet.certificates.issue(Actor(ALICE), IssueCommand(ca_id=ca_id, csr=csr))
            with lock:
                serials.append(issued.certificate.serial_hex)

    assert _run_threads(issue, THREADS) == []
    assert len(serials) == len(set(serials)) == THREADS * EACH
    with raw_session(fleet) as session:
        stored = session.scalar(select(func.count()).select_from(CertificateRecord))
    assert stored == THREADS * EACH


def test_a_unit_that_rolls_back_after_writing_lets_the_next_writer_in(
    sqlite_fleet: FleetPKI,
) -> None:
    fleet = sqlite_fleet
    _register(fleet, ["dev-a"])
    ca_id = _issuing_id(fleet)

    # A unit of work that wrote and then failed (rolled back).
    def write_then_fail() -> None:
        with fleet.store.transaction() as tx:
            tx.session.execute(  # type: ignore[attr-defined]
                update(Principal).values(friendly_name=Principal.friendly_name)
            )
            raise ValidationError("test.rollback", "roll back after a write")

    with pytest.raises(ValidationError):
        write_then_fail()
    # Another thread now writes; a lock still held by the rolled-back unit would block it.
    csr = make_csr("dev-a")[1]
    done: list[str] = []

    def issue(_index: int) -> None:
        issued = fleet.certificates.issue(Actor(ALICE), IssueCommand(ca_id=ca_id, csr=csr))
        done.append(issued.certificate.serial_hex)

    assert _run_threads(issue, 1) == []
    assert len(done) == 1


def test_the_commit_stamp_changes_with_any_commit_and_not_with_reads(
    sqlite_fleet: FleetPKI, tmp_path: Path
) -> None:
    fleet = sqlite_fleet
    store = fleet.store
    before = store.commit_stamp()
    assert before is not None
    fleet.cas.list()  # a read-only unit of work
    assert store.commit_stamp() == before
    # A commit by another connection that is not this application's (as another
    # process's would be): plain sqlite3 on the same file.
    database = fleet.settings.home / "fleetpki.db"
    assert database.exists()
    with sqlite3.connect(database) as other:
        other.execute("UPDATE principals SET friendly_name = friendly_name || '!'")
    after = store.commit_stamp()
    assert after != before
    _register(fleet, ["dev-b"])  # a commit of this process
    assert store.commit_stamp() != after


def test_postgresql_has_no_commit_stamp(fleet: FleetPKI) -> None:
    # Readers follow LISTEN/NOTIFY there (tests/services/test_ocsp_cache.py).
    stamp = fleet.store.commit_stamp()
    assert (stamp is None) == (fleet.store.dialect == "postgresql")


def test_the_commit_stamp_follows_a_new_shm_file(tmp_path: Path) -> None:
    # SQLite deletes the -shm file when the last connection closes, and the next
    # connection makes a new one: the stamp must read the new one, not the old one it
    # kept open.
    path = tmp_path / "stamp.db"
    first = sqlite3.connect(path)
    first.execute("PRAGMA journal_mode=WAL")
    first.execute("CREATE TABLE t (x INTEGER)")
    first.execute("INSERT INTO t VALUES (1)")
    first.commit()
    database = Database(f"sqlite:///{path}")
    try:
        before = database.commit_stamp()
        assert before is not None and len(before) == 48
        assert database.commit_stamp() == before  # nothing committed since
        first.close()  # the last connection: SQLite removes the -wal and -shm files
        assert not Path(f"{path}-shm").exists()
        again = sqlite3.connect(path)
        again.execute("INSERT INTO t VALUES (2)")
        again.commit()
        assert Path(f"{path}-shm").exists()
        after = database.commit_stamp()
        assert after != before
        again.execute("INSERT INTO t VALUES (3)")
        again.commit()
        assert database.commit_stamp() != after
        again.close()
    finally:
        database.dispose()
