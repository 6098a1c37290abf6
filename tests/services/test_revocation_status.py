"""CRL caching and OCSP answers as services, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from conftest import ALICE, make_csr
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor, FleetPKI, authority, certificates, domains
from fleetpki.services.certificates import IssueCommand
from fleetpki.services.revocation_status import CRL_LIFETIME, answer_ocsp, get_crl


def _crl_number(der: bytes) -> int:
    crl = x509.load_der_x509_crl(der)
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_crl_numbers_rise_only_when_the_crl_changes_or_lapses(fleet: FleetPKI) -> None:
    actor = Actor(ALICE)
    now = fleet.now()
    with fleet.transaction() as session:
        issuing = next(c for c in authority.list_cas(session) if c.tier == "issuing")
        domains.register_domain(
            session,
            actor,
            ca_id=issuing.id,
            template_id=None,
            name="dev-1",
            owners=[ALICE],
            requesters=[ALICE],
            now=now,
        )
        record, issued = certificates.issue(
            session,
            actor,
            fleet.keystore,
            fleet.urls,
            IssueCommand(ca_id=issuing.id, csr=make_csr("dev-1")[1]),
            now=now,
        )
    with fleet.transaction() as session:
        first, next_update = get_crl(session, fleet.keystore, fleet.urls, issuing.id, now=now)
    with fleet.transaction() as session:
        cached, _ = get_crl(
            session, fleet.keystore, fleet.urls, issuing.id, now=now + dt.timedelta(hours=1)
        )
    assert cached == first
    assert next_update == now.replace(microsecond=0) + CRL_LIFETIME
    with fleet.transaction() as session:
        certificates.revoke(
            session,
            actor,
            certificates.get_certificate(session, record.serial_hex),
            RevocationReason.SUPERSEDED,
            now=now,
        )
    with fleet.transaction() as session:
        rebuilt, _ = get_crl(session, fleet.keystore, fleet.urls, issuing.id, now=now)
    assert _crl_number(rebuilt) == _crl_number(first) + 1
    entry = x509.load_der_x509_crl(rebuilt).get_revoked_certificate_by_serial_number(
        int(record.serial_hex, 16)
    )
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        == x509.ReasonFlags.superseded
    )
    with fleet.transaction() as session:
        lapsed, _ = get_crl(session, fleet.keystore, fleet.urls, issuing.id, now=now + CRL_LIFETIME)
    assert _crl_number(lapsed) == _crl_number(rebuilt) + 1

    with fleet.transaction() as session:
        issuer = authority.ca_certificate(authority.get_ca(session, issuing.id))
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(issued.certificate, issuer, hashes.SHA1())
            .build()
        )
        answer = answer_ocsp(
            session, fleet.keystore, request.public_bytes(serialization.Encoding.DER), now=now
        )
    response = ocsp.load_der_ocsp_response(answer)
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason == x509.ReasonFlags.superseded
