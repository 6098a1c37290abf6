"""Service tests, on SQLite and on PostgreSQL: domains, issue, list, renew, revoke, audit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from cryptography import x509
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from conftest import ALICE, BOB, make_csr
from fleetpki.errors import AuthenticationError, ConflictError, FleetPKIError, PermissionDenied
from fleetpki.pki.certtoken import make_certificate_token
from fleetpki.pki.keys import KeySpec
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor, FleetPKI, authority, certificates, domains
from fleetpki.services.certificates import CertificateQuery, IssueCommand
from fleetpki.services.outbox import CERTIFICATE_REVOKED
from fleetpki.store import models

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
    with fleet.transaction() as session:
        return {
            t.__tablename__: session.scalar(select(func.count()).select_from(t)) or 0
            for t in _TABLES
        }


def _issuing(session: Session) -> models.CARecord:
    return next(c for c in authority.list_cas(session) if c.tier == "issuing")


def _register(fleet: FleetPKI, name: str = "dev-001") -> models.DomainRecord:
    with fleet.transaction() as session:
        return domains.register_domain(
            session,
            ALICE_ACTOR,
            ca_id=_issuing(session).id,
            template_id=None,
            name=name,
            owners=[ALICE],
            requesters=[ALICE],
            now=fleet.now(),
        )


def _issue(fleet: FleetPKI, cn: str = "dev-001", actor: Actor = ALICE_ACTOR, **kwargs: object):  # type: ignore[no-untyped-def]
    key, csr = make_csr(cn)
    with fleet.transaction() as session:
        record, issued = certificates.issue(
            session,
            actor,
            fleet.keystore,
            fleet.urls,
            IssueCommand(ca_id=_issuing(session).id, csr=csr, **kwargs),  # type: ignore[arg-type]
            now=fleet.now(),
        )
    return key, record, issued


def test_init_creates_an_encrypted_hierarchy(fleet: FleetPKI) -> None:
    with fleet.transaction() as session:
        cas = authority.list_cas(session)
        assert [c.tier for c in cas] == ["root", "issuing"]
        root, issuing = cas
        assert (root.key_spec, issuing.key_spec) == ("ec-p384", "ec-p256")
        chain = authority.ca_chain(session, issuing)
        chain[0].verify_directly_issued_by(chain[1])
        templates = authority.list_templates(session, issuing.id)
        assert templates[0].max_validity_days == 365
    key_files = list(fleet.settings.keys_dir.iterdir())
    assert len(key_files) == 2
    for path in key_files:
        assert path.stat().st_mode & 0o777 == 0o600
        assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert (fleet.settings.home / "key-passphrase").stat().st_mode & 0o777 == 0o600


def test_register_issue_list_and_audit(fleet: FleetPKI) -> None:
    domain = _register(fleet)
    _, record, issued = _issue(fleet, validity_days=10)
    assert record.domain_id == domain.id
    assert record.requested_by == ALICE
    assert issued.not_after - issued.not_before == dt.timedelta(days=10, minutes=1)
    with fleet.transaction() as session:
        mine = certificates.list_certificates(
            session, ALICE_ACTOR, CertificateQuery(domain="dev-001"), now=fleet.now()
        )
        assert [r.serial_hex for r in mine] == [record.serial_hex]
        assert (
            certificates.list_certificates(session, BOB_ACTOR, CertificateQuery(), now=fleet.now())
            == []
        )
        soon = CertificateQuery(expiring_within=dt.timedelta(days=11))
        later = CertificateQuery(expiring_within=dt.timedelta(days=5))
        assert len(certificates.list_certificates(session, ALICE_ACTOR, soon, now=fleet.now())) == 1
        assert certificates.list_certificates(session, ALICE_ACTOR, later, now=fleet.now()) == []
        by_thumb = certificates.get_certificate_by_thumbprint(session, record.sha1_hex.lower())
        assert by_thumb.id == record.id
        actions = [
            e.action
            for e in session.scalars(select(models.AuditEntry).order_by(models.AuditEntry.id))
        ]
    assert actions[-2:] == ["domain.register", "certificate.issue"]


def test_only_owners_change_a_domain(fleet: FleetPKI) -> None:
    domain = _register(fleet)
    with fleet.transaction() as session, pytest.raises(PermissionDenied) as caught:
        domains.set_domain_members(
            session, BOB_ACTOR, domain.id, owners=[BOB], requesters=[BOB], now=fleet.now()
        )
    assert caught.value.code == "domain.not_owner"
    with fleet.transaction() as session:
        domains.set_domain_members(
            session, ALICE_ACTOR, domain.id, owners=[ALICE], requesters=[BOB], now=fleet.now()
        )
    _issue(fleet, actor=BOB_ACTOR)  # bob is a requester now


def test_renew_with_the_current_certificate_and_a_new_key(fleet: FleetPKI) -> None:
    _register(fleet)
    key, record, issued = _issue(fleet, validity_days=10)
    _, new_csr = make_csr("dev-001", spec=KeySpec.RSA_2048)
    audience = fleet.settings.certificate_token_audience
    token = make_certificate_token(issued.certificate, key, audience=audience, now=fleet.now())
    with fleet.transaction() as session:
        renewed, new = certificates.renew_with_token(
            session,
            fleet.keystore,
            fleet.urls,
            token=token,
            certificate_pem=issued.pem,
            csr=new_csr,
            validity_days=None,
            audience=audience,
            now=fleet.now(),
        )
    assert renewed.renews_id == record.id
    assert renewed.key_spec == "rsa-2048"
    assert renewed.requested_by == ALICE
    assert new.not_after - new.not_before == dt.timedelta(days=10, minutes=1)
    # The same token again is a replay.
    with fleet.transaction() as session, pytest.raises(AuthenticationError) as caught:
        certificates.renew_with_token(
            session,
            fleet.keystore,
            fleet.urls,
            token=token,
            certificate_pem=issued.pem,
            csr=new_csr,
            validity_days=None,
            audience=audience,
            now=fleet.now(),
        )
    assert caught.value.code == "certtoken.replayed"


def test_renewal_refusals(fleet: FleetPKI) -> None:
    _register(fleet)
    _register(fleet, "dev-002")
    key, record, issued = _issue(fleet, validity_days=10)
    audience = fleet.settings.certificate_token_audience

    def renew(
        token: str, csr: bytes, *, now: dt.datetime | None = None, pem: str = issued.pem
    ) -> None:
        with fleet.transaction() as session:
            certificates.renew_with_token(
                session,
                fleet.keystore,
                fleet.urls,
                token=token,
                certificate_pem=pem,
                csr=csr,
                validity_days=None,
                audience=audience,
                now=now or fleet.now(),
            )

    _, other_name = make_csr("dev-002")
    with pytest.raises(PermissionDenied) as caught:
        renew(
            make_certificate_token(issued.certificate, key, audience=audience, now=fleet.now()),
            other_name,
        )
    assert caught.value.code == "domain.not_requester"

    _, csr = make_csr("dev-001")
    wrong_key, _ = make_csr("dev-001")
    with pytest.raises(AuthenticationError) as caught:
        renew(
            make_certificate_token(
                issued.certificate, wrong_key, audience=audience, now=fleet.now()
            ),
            csr,
        )
    assert caught.value.code == "certtoken.invalid"

    with pytest.raises(AuthenticationError) as caught:
        renew(
            make_certificate_token(
                issued.certificate, key, audience="https://elsewhere.example.com", now=fleet.now()
            ),
            csr,
        )
    assert caught.value.code == "certtoken.invalid"

    later = fleet.now() + dt.timedelta(days=11)
    with pytest.raises(AuthenticationError) as caught:
        renew(
            make_certificate_token(issued.certificate, key, audience=audience, now=later),
            csr,
            now=later,
        )
    assert caught.value.code == "certificate.expired"

    with fleet.transaction() as session:
        certificates.revoke(
            session,
            ALICE_ACTOR,
            certificates.get_certificate(session, record.serial_hex),
            RevocationReason.KEY_COMPROMISE,
            now=fleet.now(),
        )
    before = _counts(fleet)
    with pytest.raises(AuthenticationError) as caught:
        renew(
            make_certificate_token(issued.certificate, key, audience=audience, now=fleet.now()), csr
        )
    assert caught.value.code == "certificate.revoked"
    assert _counts(fleet) == before


def test_revoke_writes_the_outbox_event_in_the_same_transaction(fleet: FleetPKI) -> None:
    fleet.delivery.register("test", [CERTIFICATE_REVOKED])
    _register(fleet)
    _, record, _ = _issue(fleet)
    with fleet.transaction() as session, pytest.raises(PermissionDenied):
        certificates.revoke(
            session,
            BOB_ACTOR,
            certificates.get_certificate(session, record.serial_hex),
            RevocationReason.KEY_COMPROMISE,
            now=fleet.now(),
        )
    assert fleet.delivery.claim("test", lease=dt.timedelta(seconds=30), limit=10) == []
    with fleet.transaction() as session:
        certificates.revoke(
            session,
            ALICE_ACTOR,
            certificates.get_certificate(session, record.serial_hex.lower()),
            RevocationReason.KEY_COMPROMISE,
            now=fleet.now(),
        )
    events = fleet.delivery.claim("test", lease=dt.timedelta(seconds=30), limit=10)
    assert [(e.event_type, e.payload["device_id"], e.payload["reason"]) for e in events] == [
        (CERTIFICATE_REVOKED, "dev-001", "keyCompromise")
    ]
    with fleet.transaction() as session:
        stored = certificates.get_certificate(session, record.serial_hex)
        assert (stored.status, stored.revocation_reason) == ("revoked", 1)
        assert authority.get_ca(session, stored.ca_id).crl_stale
    with fleet.transaction() as session, pytest.raises(ConflictError) as caught:
        certificates.revoke(
            session,
            ALICE_ACTOR,
            certificates.get_certificate(session, record.serial_hex),
            RevocationReason.SUPERSEDED,
            now=fleet.now(),
        )
    assert caught.value.code == "certificate.already_revoked"
    with fleet.transaction() as session:
        revoked = certificates.list_certificates(
            session, ALICE_ACTOR, CertificateQuery(status="revoked"), now=fleet.now()
        )
        valid = certificates.list_certificates(
            session, ALICE_ACTOR, CertificateQuery(status="valid"), now=fleet.now()
        )
    assert [r.serial_hex for r in revoked] == [record.serial_hex]
    assert valid == []


def _bad_issue(cn: str, **kwargs: object) -> Callable[[FleetPKI], object]:
    return lambda fleet: _issue(fleet, cn, **kwargs)


def _bad_register(
    name: str, owners: list[str], actor: Actor = ALICE_ACTOR
) -> Callable[[FleetPKI], object]:
    def run(fleet: FleetPKI) -> object:
        with fleet.transaction() as session:
            return domains.register_domain(
                session,
                actor,
                ca_id=_issuing(session).id,
                template_id=None,
                name=name,
                owners=owners,
                requesters=owners,
                now=fleet.now(),
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
    _, record, issued = _issue(fleet)
    with fleet.transaction() as session:
        chain = authority.ca_chain(session, authority.get_ca(session, record.ca_id))
    issued.certificate.verify_directly_issued_by(chain[0])
    assert x509.load_der_x509_certificate(record.der) == issued.certificate
