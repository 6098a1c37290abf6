"""The one rule for which CA issues, and the server certificate through the one pipeline.

On SQLite and PostgreSQL. A second hierarchy is created with the clock a day back, so
its issuing CA is the older one by ``not_before`` although it was created last: the
rule must follow the CAs' state, not the order they were created or listed in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from conftest import ALICE, make_csr
from fleetpki.application import FleetPKI
from fleetpki.errors import NotFoundError
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.authority import HierarchySpec
from fleetpki.services.ca_views import CAView
from fleetpki.services.certificates import CertificateQuery, IssueCommand
from fleetpki.services.server_cert import SERVER_COMMON_NAME
from fleetpki.store.models import CARecord
from support.openssl import verify
from support.pkilint import lint

ALICE_ACTOR = Actor(ALICE, source="test")


def _issuing(fleet: FleetPKI) -> list[CAView]:
    return [ca for ca in fleet.cas.list() if ca.tier == "issuing"]


def _older_hierarchy(fleet: FleetPKI) -> CAView:
    """A second issuing CA whose validity starts a day before the first one's."""
    real_clock = fleet.clock
    earlier = real_clock() - dt.timedelta(days=1)
    fleet.clock = lambda: earlier
    try:
        created = fleet.cas.create_hierarchy(Actor.local_admin(), HierarchySpec(name="older"))
    finally:
        fleet.clock = real_clock
    return created.issuing


def _change(fleet: FleetPKI, ca_id: str, change: Callable[[CARecord], None]) -> None:
    # Setup only: there is no use case yet that retires a CA or moves its dates.
    with fleet.store.transaction() as tx:
        record = tx.cas.get(ca_id)
        assert record is not None
        change(record)


def _retire(ca: CARecord) -> None:
    ca.status = "retired"


def _expire(ca: CARecord) -> None:
    ca.not_after = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)


def _not_yet_valid(ca: CARecord) -> None:
    ca.not_before = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)


def test_the_newest_valid_issuing_ca_issues_whatever_the_creation_order(fleet: FleetPKI) -> None:
    (first,) = _issuing(fleet)
    older = _older_hierarchy(fleet)
    assert older.not_before < first.not_before
    assert fleet.cas.current_issuer().id == first.id


@pytest.mark.parametrize("state", [_retire, _expire, _not_yet_valid], ids=lambda f: f.__name__)
def test_a_ca_that_may_not_issue_now_is_passed_over(
    fleet: FleetPKI, state: Callable[[CARecord], None]
) -> None:
    (first,) = _issuing(fleet)
    older = _older_hierarchy(fleet)
    _change(fleet, first.id, state)
    assert fleet.cas.current_issuer().id == older.id
    # Every place that picks "the" CA follows the rule: issuance naming no CA...
    fleet.domains.register(
        ALICE_ACTOR,
        ca_id=older.id,
        template_id=None,
        name="dev-rule",
        owners=[ALICE],
        requesters=[ALICE],
    )
    issued = fleet.certificates.issue(
        ALICE_ACTOR, IssueCommand(ca_id=None, csr=make_csr("dev-rule")[1])
    )
    assert issued.certificate.ca_id == older.id
    assert issued.chain[0].subject == older.certificate.subject
    # ... the EST/v1 catalogue of issuers, and the chain served without a CA label.
    assert {o.ca.id for o in fleet.cas.issuer_offers()} == {older.id}
    assert fleet.cas.issuing_chain()[0].subject == older.certificate.subject


def test_no_ca_that_may_issue_is_refused_with_a_code(fleet: FleetPKI) -> None:
    for ca in _issuing(fleet):
        _change(fleet, ca.id, _retire)
    with pytest.raises(NotFoundError) as caught:
        fleet.cas.current_issuer()
    assert caught.value.code == "ca.no_current_issuer"
    with pytest.raises(NotFoundError) as caught:
        fleet.certificates.issue(ALICE_ACTOR, IssueCommand(ca_id=None, csr=make_csr("x")[1]))
    assert caught.value.code == "ca.no_current_issuer"
    with pytest.raises(NotFoundError) as caught:
        fleet.server_certificates.ensure(hostname="localhost", host="127.0.0.1")
    assert caught.value.code == "ca.no_current_issuer"


def test_the_server_certificate_comes_from_the_pipeline_and_lints(
    fleet: FleetPKI, tmp_path: Path
) -> None:
    (first,) = _issuing(fleet)
    older = _older_hierarchy(fleet)
    _change(fleet, first.id, _retire)
    files = fleet.server_certificates.ensure(hostname="localhost", host="127.0.0.1")
    leaf, issuing = x509.load_pem_x509_certificates(files.certfile.read_bytes())
    assert issuing.subject == older.certificate.subject
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    ekus = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(ekus) == [ExtendedKeyUsageOID.SERVER_AUTH]
    # The pipeline's CRL distribution point and AIA are there like on every leaf.
    leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    # pkilint holds a single-label DNS name invalid; DNS:localhost is there on purpose.
    findings = lint("certificate", leaf.public_bytes(serialization.Encoding.DER))
    assert [f for f in findings if '"localhost"' not in f] == [], findings
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "issuing.pem").write_bytes(issuing.public_bytes(serialization.Encoding.PEM))
    roots = [ca.certificate for ca in fleet.cas.list() if ca.id == older.parent_id]
    (tmp_path / "root.pem").write_bytes(roots[0].public_bytes(serialization.Encoding.PEM))
    result = verify(
        tmp_path / "leaf.pem", tmp_path / "issuing.pem", tmp_path / "root.pem", purpose="sslserver"
    )
    assert result.ok, result.output
    # Recorded like every certificate, so that it can be found and revoked.
    serial = format(leaf.serial_number, "X")
    (found,) = fleet.certificates.search(
        Actor.local_admin(), CertificateQuery(domain=SERVER_COMMON_NAME)
    )
    assert (found.serial_hex, found.ca_id) == (serial, older.id)
    revoked = fleet.certificates.revoke(Actor.local_admin(), serial, RevocationReason.SUPERSEDED)
    assert revoked.status == "revoked"
