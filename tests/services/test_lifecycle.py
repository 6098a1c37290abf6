"""Service tests, on SQLite and on PostgreSQL: domains, issue, list, renew, revoke, audit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import func, select

from conftest import ALICE, BOB, make_csr
from fleetpki.application import FleetPKI
from fleetpki.errors import AuthenticationError, ConflictError, FleetPKIError, PermissionDenied
from fleetpki.keystore import PrivateKey
from fleetpki.pki.certtoken import make_certificate_token
from fleetpki.pki.keys import KeySpec
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.ca_views import CAView, DomainView, IssuedView
from fleetpki.services.certificates import CertificateQuery, IssueCommand
from fleetpki.services.outbox import CERTIFICATE_REVOKED
from fleetpki.store import models
from support.database import raw_session

ALICE_ACTOR = Actor(ALICE, source="test")
BOB_ACTOR = Actor(BOB, source="test")
_TABLES = [
    models.CARecord,
    models.TemplateRecord,
    models.Principal,
    models.ApiToken,
    models.DomainRecord,
    models.DomainMember,
    models.CertificateRecord,
    models.AuditEntry,
    models.OutboxEvent,
    models.UsedTokenId,
]


def _counts(fleet: FleetPKI) -> dict[str, int]:
    with raw_session(fleet) as session:
        return {
            t.__tablename__: session.scalar(select(func.count()).select_from(t)) or 0
            for t in _TABLES
        }


def _issuing(fleet: FleetPKI) -> CAView:
    return next(c for c in fleet.cas.list() if c.tier == "issuing")


def _register(fleet: FleetPKI, name: str = "dev-001") -> DomainView:
    return fleet.domains.register(
        ALICE_ACTOR,
        ca_id=_issuing(fleet).id,
        template_id=None,
        name=name,
        owners=[ALICE],
        requesters=[ALICE],
    )


def _issue(
    fleet: FleetPKI, cn: str = "dev-001", actor: Actor = ALICE_ACTOR, **kwargs: object
) -> tuple[PrivateKey, IssuedView]:
    key, csr = make_csr(cn)
    command = IssueCommand(ca_id=_issuing(fleet).id, csr=csr, **kwargs)  # type: ignore[arg-type]
    return key, fleet.certificates.issue(actor, command)


def test_init_creates_an_encrypted_hierarchy(fleet: FleetPKI) -> None:
    cas = fleet.cas.list()
    assert [c.tier for c in cas] == ["root", "issuing"]
    root, issuing = cas
    assert (root.key_spec, issuing.key_spec) == ("ec-p384", "ec-p256")
    chain = fleet.cas.chain(issuing.id)
    chain[0].verify_directly_issued_by(chain[1])
    templates = fleet.templates.list(issuing.id)
    assert templates[0].max_validity_days == 365
    key_files = list(fleet.settings.keys_dir.iterdir())
    assert len(key_files) == 2
    for path in key_files:
        assert path.stat().st_mode & 0o777 == 0o600
        assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    passphrase = Path(fleet.settings.key_passphrase_file)
    assert passphrase.stat().st_mode & 0o777 == 0o600
    assert not passphrase.is_relative_to(fleet.settings.home)
    assert not (fleet.settings.home / "key-passphrase").exists()


def test_register_issue_list_and_audit(fleet: FleetPKI) -> None:
    domain = _register(fleet)
    _, issued = _issue(fleet, validity_days=10)
    record = issued.certificate
    assert record.domain_id == domain.id
    assert record.requested_by == ALICE
    assert issued.issued.not_after - issued.issued.not_before == dt.timedelta(days=10, minutes=1)
    mine = fleet.certificates.search(ALICE_ACTOR, CertificateQuery(domain="dev-001"))
    assert [r.serial_hex for r in mine] == [record.serial_hex]
    assert fleet.certificates.search(BOB_ACTOR, CertificateQuery()) == []
    soon = CertificateQuery(expiring_within=dt.timedelta(days=11))
    later = CertificateQuery(expiring_within=dt.timedelta(days=5))
    assert len(fleet.certificates.search(ALICE_ACTOR, soon)) == 1
    assert fleet.certificates.search(ALICE_ACTOR, later) == []
    by_thumb = fleet.certificates.get_by_thumbprint(ALICE_ACTOR, record.sha1_hex.lower())
    assert by_thumb.serial_hex == record.serial_hex
    with pytest.raises(FleetPKIError) as caught:
        fleet.certificates.get_by_thumbprint(BOB_ACTOR, record.sha1_hex)
    assert caught.value.code == "certificate.not_found"
    actions = [e.action for e in fleet.audit.latest(Actor.local_admin(), limit=1000)]
    assert actions[:2] == ["certificate.issue", "domain.register"]


def test_only_owners_change_a_domain(fleet: FleetPKI) -> None:
    domain = _register(fleet)
    with pytest.raises(PermissionDenied) as caught:
        fleet.domains.set_members(BOB_ACTOR, domain.id, owners=[BOB], requesters=[BOB])
    assert caught.value.code == "domain.not_owner"
    changed = fleet.domains.set_members(ALICE_ACTOR, domain.id, owners=[ALICE], requesters=[BOB])
    assert (changed.owners, changed.requesters) == ((ALICE,), (BOB,))
    _issue(fleet, actor=BOB_ACTOR)  # bob is a requester now


def test_renew_with_the_current_certificate_and_a_new_key(fleet: FleetPKI) -> None:
    _register(fleet)
    key, issued = _issue(fleet, validity_days=10)
    _, new_csr = make_csr("dev-001", spec=KeySpec.RSA_2048)
    audience = fleet.settings.certificate_token_audience
    token = make_certificate_token(
        issued.issued.certificate, key, audience=audience, now=fleet.now()
    )
    new = fleet.renewal.renew_with_token(token=token, certificate_pem=issued.pem, csr=new_csr)
    renewed = fleet.certificates.get(ALICE_ACTOR, new.certificate.serial_hex)
    assert renewed.renews_serial == issued.certificate.serial_hex
    assert renewed.key_spec == "rsa-2048"
    assert renewed.requested_by == ALICE
    assert new.issued.not_after - new.issued.not_before == dt.timedelta(days=10, minutes=1)
    # The same token again is a replay.
    with pytest.raises(AuthenticationError) as caught:
        fleet.renewal.renew_with_token(token=token, certificate_pem=issued.pem, csr=new_csr)
    assert caught.value.code == "certtoken.replayed"


def test_renewal_refusals(fleet: FleetPKI) -> None:
    _register(fleet)
    _register(fleet, "dev-002")
    key, issued = _issue(fleet, validity_days=10)
    cert = issued.issued.certificate
    audience = fleet.settings.certificate_token_audience

    def renew(token: str, csr: bytes) -> None:
        fleet.renewal.renew_with_token(token=token, certificate_pem=issued.pem, csr=csr)

    _, other_name = make_csr("dev-002")
    with pytest.raises(PermissionDenied) as caught:
        renew(make_certificate_token(cert, key, audience=audience, now=fleet.now()), other_name)
    assert caught.value.code == "domain.not_requester"

    _, csr = make_csr("dev-001")
    wrong_key, _ = make_csr("dev-001")
    with pytest.raises(AuthenticationError) as caught:
        renew(make_certificate_token(cert, wrong_key, audience=audience, now=fleet.now()), csr)
    assert caught.value.code == "certtoken.invalid"

    with pytest.raises(AuthenticationError) as caught:
        renew(
            make_certificate_token(
                cert, key, audience="https://elsewhere.example.com", now=fleet.now()
            ),
            csr,
        )
    assert caught.value.code == "certtoken.invalid"

    real_clock = fleet.clock
    later = fleet.now() + dt.timedelta(days=11)
    fleet.clock = lambda: later
    try:
        with pytest.raises(AuthenticationError) as caught:
            renew(make_certificate_token(cert, key, audience=audience, now=later), csr)
    finally:
        fleet.clock = real_clock
    assert caught.value.code == "certificate.expired"

    fleet.certificates.revoke(
        ALICE_ACTOR, issued.certificate.serial_hex, RevocationReason.KEY_COMPROMISE
    )
    before = _counts(fleet)
    with pytest.raises(AuthenticationError) as caught:
        renew(make_certificate_token(cert, key, audience=audience, now=fleet.now()), csr)
    assert caught.value.code == "certificate.revoked"
    assert _counts(fleet) == before


def test_revoke_writes_the_outbox_event_in_the_same_transaction(fleet: FleetPKI) -> None:
    fleet.delivery.register("test", [CERTIFICATE_REVOKED])
    _register(fleet)
    _, issued = _issue(fleet)
    serial = issued.certificate.serial_hex
    # A stranger is told the certificate does not exist; a requester that is no owner
    # sees it but may not revoke it. Neither refusal writes an event.
    with pytest.raises(FleetPKIError) as caught:
        fleet.certificates.revoke(BOB_ACTOR, serial, RevocationReason.KEY_COMPROMISE)
    assert caught.value.code == "certificate.not_found"
    domain_id = issued.certificate.domain_id
    assert domain_id is not None
    fleet.domains.set_members(ALICE_ACTOR, domain_id, owners=[ALICE], requesters=[ALICE, BOB])
    with pytest.raises(PermissionDenied) as caught:
        fleet.certificates.revoke(BOB_ACTOR, serial, RevocationReason.KEY_COMPROMISE)
    assert caught.value.code == "certificate.not_owner"
    assert fleet.delivery.claim("test", lease=dt.timedelta(seconds=30), limit=10) == []
    revoked = fleet.certificates.revoke(
        ALICE_ACTOR, serial.lower(), RevocationReason.KEY_COMPROMISE
    )
    assert (revoked.status, revoked.revocation_reason) == ("revoked", 1)
    events = fleet.delivery.claim("test", lease=dt.timedelta(seconds=30), limit=10)
    assert [(e.event_type, e.payload["device_id"], e.payload["reason"]) for e in events] == [
        (CERTIFICATE_REVOKED, "dev-001", "keyCompromise")
    ]
    with fleet.store.transaction() as tx:
        ca = tx.cas.get(revoked.ca_id)
        assert ca is not None
        assert ca.generations[0].crl_stale  # the revoked certificate's generation
    with pytest.raises(ConflictError) as caught:
        fleet.certificates.revoke(ALICE_ACTOR, serial, RevocationReason.SUPERSEDED)
    assert caught.value.code == "certificate.already_revoked"
    revoked_list = fleet.certificates.search(ALICE_ACTOR, CertificateQuery(status="revoked"))
    valid = fleet.certificates.search(ALICE_ACTOR, CertificateQuery(status="valid"))
    assert [r.serial_hex for r in revoked_list] == [serial]
    assert valid == []


def _bad_issue(cn: str, **kwargs: object) -> Callable[[FleetPKI], object]:
    return lambda fleet: _issue(fleet, cn, **kwargs)


def _bad_register(
    name: str, owners: list[str], actor: Actor = ALICE_ACTOR
) -> Callable[[FleetPKI], object]:
    def run(fleet: FleetPKI) -> object:
        return fleet.domains.register(
            actor,
            ca_id=_issuing(fleet).id,
            template_id=None,
            name=name,
            owners=owners,
            requesters=owners,
        )

    return run


REFUSALS = [
    pytest.param(_bad_issue("not-registered"), "domain.not_requester", id="CN not registered"),
    pytest.param(
        _bad_issue("dev-001", actor=BOB_ACTOR), "domain.not_requester", id="not a requester"
    ),
    pytest.param(
        _bad_issue("dev-001", validity_days=400), "template.validity_exceeded", id="too long"
    ),
    pytest.param(_bad_register("dev-001", [ALICE]), "domain.exists", id="domain exists"),
    pytest.param(_bad_register("dev 002", [ALICE]), "domain.invalid_name", id="bad domain name"),
    pytest.param(_bad_register("dev-003", []), "domain.no_owner", id="no owner"),
    pytest.param(
        _bad_register("dev-004", ["99999999-9999-4999-8999-999999999999"]),
        "principal.not_found",
        id="unknown owner",
    ),
    pytest.param(
        _bad_register("dev-005", [ALICE], BOB_ACTOR), "domain.must_own", id="for someone else"
    ),
]


@pytest.mark.parametrize(("action", "code"), REFUSALS)
def test_a_refused_request_leaves_the_database_unchanged(
    fleet: FleetPKI, action, code: str
) -> None:  # type: ignore[no-untyped-def]
    _register(fleet)
    before = _counts(fleet)
    with pytest.raises(FleetPKIError) as caught:
        action(fleet)
    assert caught.value.code == code
    assert _counts(fleet) == before


def test_every_issued_certificate_chains_to_the_stored_ca(fleet: FleetPKI) -> None:
    _register(fleet)
    _, issued = _issue(fleet)
    chain = fleet.cas.chain(issued.certificate.ca_id)
    assert list(issued.chain) == chain
    issued.issued.certificate.verify_directly_issued_by(chain[0])
    assert x509.load_der_x509_certificate(issued.certificate.der) == issued.issued.certificate
