"""A certificate renews once (issue 14 item 5), on SQLite and on PostgreSQL.

After a renewal the predecessor is superseded: it cannot renew again (409
``certificate.superseded``, nothing written), except the retry of the renewal that
made its successor, and once the grace period has passed the housekeeping revokes it
with reason superseded, through the outbox like any revocation. The audit log holds
the chain.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import func, select

from conftest import ALICE, make_csr
from fleetpki.application import FleetPKI, init_home
from fleetpki.errors import ConflictError
from fleetpki.keystore import PrivateKey
from fleetpki.pki.certtoken import make_certificate_token
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.authority import HierarchySpec
from fleetpki.services.ca_views import IssuedView
from fleetpki.services.certificates import IssueCommand
from fleetpki.services.outbox import CERTIFICATE_REVOKED
from fleetpki.settings import Settings
from fleetpki.store import models
from support.database import raw_session

ALICE_ACTOR = Actor(ALICE, source="test")
DEVICE = "dev-renew"


def _issue(fleet: FleetPKI) -> tuple[PrivateKey, IssuedView]:
    issuing = next(c for c in fleet.cas.list() if c.tier == "issuing")
    fleet.domains.register(
        ALICE_ACTOR,
        ca_id=issuing.id,
        template_id=None,
        name=DEVICE,
        owners=[ALICE],
        requesters=[ALICE],
    )
    key, csr = make_csr(DEVICE)
    return key, fleet.certificates.issue(
        ALICE_ACTOR, IssueCommand(ca_id=issuing.id, csr=csr, validity_days=30)
    )


def _renew(
    fleet: FleetPKI, key: PrivateKey, current: IssuedView, new_key: PrivateKey | None = None
) -> tuple[PrivateKey, IssuedView]:
    token = make_certificate_token(
        current.issued.certificate,
        key,
        audience=fleet.settings.certificate_token_audience,
        now=fleet.now(),
    )
    new_key, csr = make_csr(DEVICE, key=new_key)
    renewed = fleet.renewal.renew_with_token(token=token, certificate_pem=current.pem, csr=csr)
    return new_key, renewed


def _rows(fleet: FleetPKI) -> dict[str, int]:
    tables = (models.CertificateRecord, models.AuditEntry, models.OutboxEvent)
    with raw_session(fleet) as session:
        return {
            t.__tablename__: session.scalar(select(func.count()).select_from(t)) or 0
            for t in tables
        }


def _later(fleet: FleetPKI, delta: dt.timedelta) -> None:
    moved = fleet.now() + delta
    fleet.clock = lambda: moved


def test_a_renewed_certificate_cannot_renew_again(fleet: FleetPKI) -> None:
    key, first = _issue(fleet)
    _, second = _renew(fleet, key, first)
    before = _rows(fleet)
    with pytest.raises(ConflictError) as caught:
        _renew(fleet, key, first)
    assert caught.value.code == "certificate.superseded"
    assert second.certificate.serial_hex in caught.value.message
    assert caught.value.http_status == 409
    assert _rows(fleet) == before  # nothing written, not even the token id
    old = fleet.certificates.get(ALICE_ACTOR, first.certificate.serial_hex)
    assert old.superseded_by_serial == second.certificate.serial_hex
    assert old.status == "valid"  # still usable during the grace period


def test_the_successor_renews_on(fleet: FleetPKI) -> None:
    key, first = _issue(fleet)
    key2, second = _renew(fleet, key, first)
    _, third = _renew(fleet, key2, second)
    shown = fleet.certificates.get(ALICE_ACTOR, third.certificate.serial_hex)
    assert shown.renews_serial == second.certificate.serial_hex
    assert shown.superseded_by_serial is None


def test_the_retry_of_a_renewal_gets_the_same_successor(fleet: FleetPKI) -> None:
    key, first = _issue(fleet)
    new_key, second = _renew(fleet, key, first)
    certificates = _rows(fleet)["certificates"]
    # The answer was lost: the device asks again, with the key it generated for it.
    _, again = _renew(fleet, key, first, new_key=new_key)
    assert again.certificate.serial_hex == second.certificate.serial_hex
    assert again.pem == second.pem
    assert _rows(fleet)["certificates"] == certificates


def test_superseded_certificates_are_revoked_after_the_grace_period(fleet: FleetPKI) -> None:
    key, first = _issue(fleet)
    _, second = _renew(fleet, key, first)
    assert fleet.renewal.revoke_superseded() == []  # within the default day
    _later(fleet, dt.timedelta(hours=23))
    assert fleet.renewal.revoke_superseded() == []
    _later(fleet, dt.timedelta(hours=1, seconds=1))
    assert fleet.renewal.revoke_superseded() == [first.certificate.serial_hex]
    old = fleet.certificates.get(ALICE_ACTOR, first.certificate.serial_hex)
    assert (old.status, old.reason_name) == ("revoked", "superseded")
    new = fleet.certificates.get(ALICE_ACTOR, second.certificate.serial_hex)
    assert new.status == "valid"
    assert fleet.renewal.revoke_superseded() == []  # once
    with raw_session(fleet) as session:
        events = session.scalars(
            select(models.OutboxEvent).where(models.OutboxEvent.event_type == CERTIFICATE_REVOKED)
        ).all()
    assert [(e.subject_id, e.payload["reason"]) for e in events] == [
        (first.certificate.serial_hex, "superseded")
    ]
    # The CRL says so too (RFC 5280 §5.3.1).
    issuing = next(c for c in fleet.cas.list() if c.tier == "issuing")
    crl = x509.load_der_x509_crl(fleet.crls.refresh(issuing.id).der)
    entry = crl.get_revoked_certificate_by_serial_number(first.issued.certificate.serial_number)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == RevocationReason.SUPERSEDED.to_reason_flags()


def test_the_audit_log_shows_the_renewal_chain(fleet: FleetPKI) -> None:
    key, first = _issue(fleet)
    key2, second = _renew(fleet, key, first)
    _, third = _renew(fleet, key2, second)
    _later(fleet, dt.timedelta(days=2))
    revoked = fleet.renewal.revoke_superseded()
    a, b, c = (v.certificate.serial_hex for v in (first, second, third))
    assert revoked == [a, b]

    def trail(serial: str) -> list[tuple[str, dict[str, object]]]:
        entries = fleet.certificates.audit(ALICE_ACTOR, serial)
        return [(e.action, dict(e.details)) for e in reversed(entries)]

    assert [(action, d.get("renews"), d.get("by"), d.get("reason")) for action, d in trail(a)] == [
        ("certificate.issue", None, None, None),
        ("certificate.superseded", None, b, None),
        ("certificate.revoke", None, None, "superseded"),
    ]
    assert [(action, d.get("renews"), d.get("by")) for action, d in trail(b)][:2] == [
        ("certificate.renew", a, None),
        ("certificate.superseded", None, c),
    ]
    assert [(action, d.get("renews")) for action, d in trail(c)] == [("certificate.renew", b)]


def test_the_grace_period_is_configurable(tmp_path: Path, key_passphrase: None) -> None:
    settings = Settings.default_for(tmp_path / "home").with_changes(renewal_grace_seconds=60)
    fleet = init_home(settings, HierarchySpec()).app
    try:
        fleet.principals.add(Actor.local_admin(), ALICE, "alice")
        key, first = _issue(fleet)
        _renew(fleet, key, first)
        _later(fleet, dt.timedelta(seconds=61))
        assert fleet.renewal.revoke_superseded() == [first.certificate.serial_hex]
    finally:
        fleet.close()


def test_the_servers_housekeeping_revokes_superseded_certificates(fleet: FleetPKI) -> None:
    # fleetpki serve runs the link workers' housekeeping every minute (link_workers.py).
    steps = fleet.link_workers._housekeeping
    assert fleet.renewal.revoke_superseded in steps
    assert fleet.ca_lifecycle.retire_drained in steps
