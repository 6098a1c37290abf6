"""CRLs served from the cache and rebuilt in the background, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from sqlalchemy import text

from conftest import ALICE, make_csr
from fleetpki.application import FleetPKI
from fleetpki.pki.crl import RevokedEntry, RevokedList, build_crl
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.ca_views import CAView
from fleetpki.services.certificates import IssueCommand
from fleetpki.services.crl_publisher import CRL_LIFETIME, CrlPublisher
from support.openssl import openssl
from support.pkilint import assert_lints_clean


def _crl_number(der: bytes) -> int:
    crl = x509.load_der_x509_crl(der)
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _lists(der: bytes, serial_hex: str) -> bool:
    crl = x509.load_der_x509_crl(der)
    return crl.get_revoked_certificate_by_serial_number(int(serial_hex, 16)) is not None


def _issuing(fleet: FleetPKI) -> CAView:
    return next(c for c in fleet.cas.list() if c.tier == "issuing")


def _issue(fleet: FleetPKI, name: str) -> str:
    actor, issuing = Actor(ALICE), _issuing(fleet)
    fleet.domains.register(
        actor, ca_id=issuing.id, template_id=None, name=name, owners=[ALICE], requesters=[ALICE]
    )
    issued = fleet.certificates.issue(actor, IssueCommand(ca_id=issuing.id, csr=make_csr(name)[1]))
    return issued.certificate.serial_hex


def _revoke(fleet: FleetPKI, serial_hex: str, reason: RevocationReason) -> None:
    fleet.certificates.revoke(Actor(ALICE), serial_hex, reason)


@contextmanager
def _at(fleet: FleetPKI, now: dt.datetime) -> Iterator[None]:
    """Stop the clock at ``now`` for the block: every service reads ``fleet.clock``."""
    real_clock = fleet.clock
    fleet.clock = lambda: now
    try:
        yield
    finally:
        fleet.clock = real_clock


@contextmanager
def _held_builder() -> Iterator[tuple[ThreadPoolExecutor, threading.Event]]:
    """A one-thread executor whose first task waits for the event: builds queue behind it."""
    gate = threading.Event()
    executor = ThreadPoolExecutor(1, thread_name_prefix="held-crl-builder")
    executor.submit(gate.wait, 60)
    try:
        yield executor, gate
    finally:
        gate.set()
        executor.shutdown(wait=True)


def _publisher(fleet: FleetPKI, executor: ThreadPoolExecutor) -> CrlPublisher:
    return CrlPublisher(fleet.store, fleet.keystore, fleet.now, fleet.urls, executor=executor)


def test_crl_numbers_rise_only_when_the_crl_changes_or_lapses(fleet: FleetPKI) -> None:
    issuing = _issuing(fleet)
    serial = _issue(fleet, "dev-1")
    now = fleet.now()
    with _at(fleet, now):
        first = fleet.crls.crl(issuing.id)
    with _at(fleet, now + dt.timedelta(hours=1)):
        assert fleet.crls.crl(issuing.id).der == first.der  # from the cache
    assert first.next_update == now.replace(microsecond=0) + CRL_LIFETIME
    _revoke(fleet, serial, RevocationReason.SUPERSEDED)
    with _at(fleet, now):
        rebuilt = fleet.crls.refresh(issuing.id).der
    assert _crl_number(rebuilt) == _crl_number(first.der) + 1
    entry = x509.load_der_x509_crl(rebuilt).get_revoked_certificate_by_serial_number(
        int(serial, 16)
    )
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.superseded
    # Past its nextUpdate nothing valid is left to serve: the read waits for a new one.
    with _at(fleet, now + CRL_LIFETIME):
        lapsed = fleet.crls.crl(issuing.id).der
    assert _crl_number(lapsed) == _crl_number(rebuilt) + 1
    with fleet.store.transaction() as tx:
        record = tx.cas.get(issuing.id)
        assert record is not None
        assert record.generations[0].crl_number == _crl_number(lapsed)


def test_a_read_while_the_rebuild_waits_serves_the_previous_crl(
    fleet: FleetPKI, tmp_path: Path
) -> None:
    issuing = _issuing(fleet)
    serial = _issue(fleet, "dev-1")
    previous = fleet.crls.refresh(issuing.id)
    with _held_builder() as (executor, gate):
        publisher = _publisher(fleet, executor)
        _revoke(fleet, serial, RevocationReason.KEY_COMPROMISE)
        for _ in range(3):
            # Stale, but valid until its nextUpdate: served at once, the rebuild queued.
            served = publisher.crl(issuing.id)
            assert served.der == previous.der
            assert not _lists(served.der, serial)
        gate.set()
        rebuilt = publisher.refresh(issuing.id)
    assert _crl_number(rebuilt.der) == _crl_number(previous.der) + 1
    assert _lists(rebuilt.der, serial)
    # Another publisher (another process) reads the CRL this one stored.
    assert fleet.crls.crl(issuing.id).der == rebuilt.der
    assert_lints_clean("crl", rebuilt.der)
    (tmp_path / "issuing.crl").write_bytes(rebuilt.der)
    text = openssl("crl", "-inform", "DER", "-in", tmp_path / "issuing.crl", "-noout", "-text")
    assert text.returncode == 0
    assert serial.upper() in text.stdout.replace(":", "").upper()


def test_two_publishers_rebuilding_at_once_store_one_crl_with_one_new_number(
    fleet: FleetPKI,
) -> None:
    issuing = _issuing(fleet)
    serial = _issue(fleet, "dev-1")
    before = _crl_number(fleet.crls.refresh(issuing.id).der)
    _revoke(fleet, serial, RevocationReason.KEY_COMPROMISE)
    with (
        _held_builder() as (first_executor, first_gate),
        _held_builder() as (
            second_executor,
            second_gate,
        ),
    ):
        first, second = _publisher(fleet, first_executor), _publisher(fleet, second_executor)
        first.crl(issuing.id)
        second.crl(issuing.id)
        first_gate.set()
        second_gate.set()
        results = {first.refresh(issuing.id).der, second.refresh(issuing.id).der}
    # Both read number ``before`` and one lost the compare and set, or the second saw
    # the first's CRL fresh and skipped its build: either way one CRL, one number.
    assert len(results) == 1
    (der,) = results
    assert _crl_number(der) == before + 1
    assert _lists(der, serial)


def test_concurrent_refreshes_share_one_build(fleet: FleetPKI) -> None:
    issuing = _issuing(fleet)
    before = _crl_number(fleet.crls.refresh(issuing.id).der)
    _revoke(fleet, _issue(fleet, "dev-1"), RevocationReason.UNSPECIFIED)
    readers, barrier = 6, threading.Barrier(6)

    def read() -> bytes:
        barrier.wait(timeout=30)
        return fleet.crls.refresh(issuing.id).der

    with ThreadPoolExecutor(readers) as pool:
        crls = list(pool.map(lambda _: read(), range(readers)))
    assert len(set(crls)) == 1
    assert _crl_number(crls[0]) == before + 1


def test_a_crl_built_before_a_revocation_committed_is_stored_stale(fleet: FleetPKI) -> None:
    # The race a background build has: a revocation commits between the build's read
    # and its store. The generation's revision says so and the CRL stays stale.
    issuing = _issuing(fleet)
    fleet.crls.refresh(issuing.id)
    with fleet.store.transaction() as tx:
        row = tx.cas.get(issuing.id)
        assert row is not None
        number, revision = row.generations[0].crl_number, row.generations[0].crl_revision
    _revoke(fleet, _issue(fleet, "dev-1"), RevocationReason.UNSPECIFIED)
    now = fleet.now()
    with fleet.store.transaction() as tx:
        assert tx.cas.store_crl(
            issuing.id,
            1,
            crl_number=number + 1,
            der=b"\x30\x00",
            next_update=now + CRL_LIFETIME,
            built_revision=revision,
        )
        # The same number again is refused: it was taken.
        assert not tx.cas.store_crl(
            issuing.id,
            1,
            crl_number=number + 1,
            der=b"\x30\x00",
            next_update=now + CRL_LIFETIME,
            built_revision=revision + 1,
        )
    with fleet.store.transaction() as tx:
        row = tx.cas.get(issuing.id)
        assert row is not None
        assert row.generations[0].crl_stale
        assert row.generations[0].crl_revision == revision + 1
    rebuilt = fleet.crls.refresh(issuing.id).der
    assert _crl_number(rebuilt) == number + 2


def test_root_crl_names_its_own_distribution_point_and_lints_clean(fleet: FleetPKI) -> None:
    root = next(c for c in fleet.cas.list() if c.tier == "root")
    der = fleet.crls.crl(root.id).der
    crl = x509.load_der_x509_crl(der)
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    assert idp.full_name is not None
    assert idp.full_name[0].value == fleet.urls.crl_url(root.id)
    assert crl.is_signature_valid(x509.load_der_x509_certificate(root.certificate_der).public_key())
    assert_lints_clean("crl", der)


def _generation_row(fleet: FleetPKI, ca_id: str) -> tuple[bytes, str, int, int]:
    with fleet.store.reading() as tx:
        row = tx.cas.get(ca_id)
        assert row is not None
        generation = row.generations[0]
        return (
            generation.certificate_der,
            generation.key_ref,
            generation.crl_number,
            generation.crl_revision,
        )


def _store_with_marker(fleet: FleetPKI, ca_id: str, marker: int) -> None:
    """Store a CRL that lists the current one's entries and ``marker``, a serial no
    certificate has, as built from the generation's current revision."""
    current = fleet.crls.refresh(ca_id).der
    certificate_der, key_ref, number, revision = _generation_row(fleet, ca_id)
    certificate = x509.load_der_x509_certificate(certificate_der)
    now = fleet.now().replace(microsecond=0)
    der = build_crl(
        certificate,
        fleet.keystore.signer(key_ref),
        [RevokedEntry(marker, now, RevocationReason.KEY_COMPROMISE)],
        crl_number=number + 1,
        this_update=now,
        next_update=now + CRL_LIFETIME,
        idp_url=fleet.urls.crl_url(ca_id, 1),
        listed=RevokedList.of_crl(current),
    )
    with fleet.store.transaction() as tx:
        assert tx.cas.store_crl(
            ca_id,
            1,
            crl_number=number + 1,
            der=der,
            next_update=now + CRL_LIFETIME,
            built_revision=revision,
        )


def test_a_revocation_is_stamped_with_the_revision_it_counts_as(fleet: FleetPKI) -> None:
    issuing = _issuing(fleet)
    serials = [_issue(fleet, f"dev-{i}") for i in range(3)]
    _, _, _, before = _generation_row(fleet, issuing.id)
    for serial in serials[:2]:
        _revoke(fleet, serial, RevocationReason.SUPERSEDED)
    with fleet.store.reading() as tx:
        stamps = [tx.certificates.find_by_serial(s).revoked_revision for s in serials]  # type: ignore[union-attr]
        since = tx.certificates.revocations_of(issuing.id, 1, since_revision=before + 1)
    assert stamps == [before + 1, before + 2, None]
    assert [row[0] for row in since] == [serials[1]]
    assert since[0][2] == RevocationReason.SUPERSEDED.code


def test_the_next_crl_is_the_previous_crls_entries_and_the_revocations_since(
    fleet: FleetPKI, tmp_path: Path
) -> None:
    issuing = _issuing(fleet)
    old, new, later = (_issue(fleet, f"dev-{i}") for i in range(3))
    _revoke(fleet, old, RevocationReason.KEY_COMPROMISE)
    marker = 0x7E57
    _store_with_marker(fleet, issuing.id, marker)
    _revoke(fleet, new, RevocationReason.CESSATION_OF_OPERATION)
    der = fleet.crls.refresh(issuing.id).der
    # The marker is in no certificate row: only the previous CRL's entries carry it.
    assert _lists(der, format(marker, "X"))
    assert _lists(der, old) and _lists(der, new) and not _lists(der, later)
    assert len(x509.load_der_x509_crl(der)) == 3
    path = tmp_path / "next.crl"
    path.write_bytes(der)
    assert openssl("crl", "-inform", "DER", "-in", str(path), "-noout").returncode == 0
    assert_lints_clean("crl", der)
    # A CRL from before the stamps (migration 0017 marks it with revision -1): the next
    # one reads every revoked certificate, and so drops the marker.
    _store_with_marker(fleet, issuing.id, marker)
    with fleet.store.transaction() as tx:
        tx.session.execute(
            text("UPDATE ca_generations SET crl_built_revision = -1, crl_stale = :stale"),
            {"stale": True},
        )
    _revoke(fleet, later, RevocationReason.UNSPECIFIED)
    der = fleet.crls.refresh(issuing.id).der
    assert not _lists(der, format(marker, "X"))
    assert _lists(der, old) and _lists(der, new) and _lists(der, later)
    assert_lints_clean("crl", der)


def test_a_stored_crl_that_cannot_be_read_is_rebuilt_from_every_revocation(
    fleet: FleetPKI,
) -> None:
    issuing = _issuing(fleet)
    old, new = (_issue(fleet, f"dev-{i}") for i in range(2))
    _revoke(fleet, old, RevocationReason.KEY_COMPROMISE)
    _, _, number, revision = _generation_row(fleet, issuing.id)
    now = fleet.now()
    with fleet.store.transaction() as tx:
        assert tx.cas.store_crl(
            issuing.id,
            1,
            crl_number=number + 1,
            der=b"\x30\x00",
            next_update=now + CRL_LIFETIME,
            built_revision=revision,
        )
    _revoke(fleet, new, RevocationReason.KEY_COMPROMISE)
    der = fleet.crls.refresh(issuing.id).der
    assert _crl_number(der) == number + 2
    assert _lists(der, old) and _lists(der, new)
