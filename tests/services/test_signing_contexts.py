"""Signing contexts kept in memory follow every CA change, here or in another process.

An issuance signs with the context its process built for the CA earlier (issuer,
signer, chain, template); these tests change the CAs behind its back, with the real
CLI in a subprocess on the same database as another API worker or an operator would,
and check that the next issuance signs with, and answers, what the database says.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.application import FleetPKI
from fleetpki.errors import NotFoundError, ValidationError
from fleetpki.services import Actor
from fleetpki.services.authority import ca_record
from fleetpki.services.certificates import IssueCommand
from fleetpki.services.signing_contexts import signing_context
from support.api import row_counts
from support.hub_control import issue_device_certificate, issuing_ca
from support.openssl import verify
from support.pkilint import assert_lints_clean

ADMIN = Actor.local_admin()
FLEETPKI = str(Path(sys.executable).with_name("fleetpki"))


def _cli(fleet: FleetPKI, *args: str) -> None:
    done = subprocess.run(
        [FLEETPKI, *args],
        env={**os.environ, "FLEETPKI_HOME": str(fleet.settings.home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def _from_records(fleet: FleetPKI, ca_id: str) -> list[x509.Certificate]:
    """The chain built from the database, without the cache."""
    with fleet.store.reading() as tx:
        return list(signing_context(tx, ca_record(tx, ca_id), fleet.keystore, fleet.urls).chain)


def _pem(path: Path, *certificates: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))
    return path


def test_an_issuing_ca_renewed_by_another_process_signs_the_next_issuance(
    fleet: FleetPKI, tmp_path: Path
) -> None:
    ca = issuing_ca(fleet)
    first, first_chain, _ = issue_device_certificate(fleet, "dev-before")
    assert first_chain == [ca.certificate]

    _cli(fleet, "ca", "renew", ca.id, "--rekey", "--days", "90")

    renewed = fleet.cas.get(ca.id).certificate
    assert renewed.serial_number != ca.certificate.serial_number
    leaf, chain, stored = issue_device_certificate(fleet, "dev-after")
    assert chain == [renewed]
    assert leaf.issuer == renewed.subject
    dp = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert dp[0].full_name[0].value.endswith(f"/crl/{ca.id}/2.crl")
    assert_lints_clean("certificate", stored.der)
    root = next(c for c in fleet.cas.list() if c.tier == "root").certificate
    anchors = _pem(tmp_path / "anchors.pem", root)
    assert verify(
        _pem(tmp_path / "leaf.pem", leaf), _pem(tmp_path / "new.pem", renewed), anchors
    ).ok
    # Signed by the new key: the old CA certificate does not verify it.
    assert not verify(
        _pem(tmp_path / "leaf2.pem", leaf), _pem(tmp_path / "old.pem", ca.certificate), anchors
    ).ok
    assert first.issuer == ca.certificate.subject


def test_a_root_rollover_in_another_process_changes_the_chain_in_the_next_answer(
    fleet: FleetPKI,
) -> None:
    ca = issuing_ca(fleet)
    root = next(c for c in fleet.cas.list() if c.tier == "root")
    issued = fleet.certificates.issue(ADMIN, IssueCommand(ca_id=ca.id, csr=_csr(fleet, "dev-a")))
    assert list(issued.chain) == _from_records(fleet, ca.id)
    before = len(issued.chain)

    # A new root key: the issuing CA's row is untouched, but its chain now carries the
    # root's OldWithNew link certificate.
    _cli(fleet, "ca", "renew", root.id, "--rekey")

    issued = fleet.certificates.issue(ADMIN, IssueCommand(ca_id=ca.id, csr=_csr(fleet, "dev-b")))
    expected = _from_records(fleet, ca.id)
    assert list(issued.chain) == expected
    assert len(expected) == before + 1


def test_a_template_of_another_ca_is_refused_after_it_was_kept(fleet: FleetPKI) -> None:
    ca = issuing_ca(fleet)
    root = next(c for c in fleet.cas.list() if c.tier == "root")
    template = fleet.templates.list(ca.id)[0]
    fleet.certificates.issue(
        ADMIN, IssueCommand(ca_id=ca.id, template_id=template.id, csr=_csr(fleet, "dev-t"))
    )
    csr = _csr(fleet, "dev-u")
    counts = row_counts(fleet)
    # The root issues no leaves: refused before the template is looked at.
    with pytest.raises(ValidationError) as refused:
        fleet.certificates.issue(
            ADMIN, IssueCommand(ca_id=root.id, template_id=template.id, csr=csr)
        )
    assert refused.value.code == "ca.not_issuing"
    # The kept template is handed out for its own CA only.
    with fleet.store.reading() as tx, pytest.raises(NotFoundError) as missing:
        fleet.signing_contexts.template(tx, root.id, template.id)
    assert missing.value.code == "template.not_found"
    assert row_counts(fleet) == counts


def _csr(fleet: FleetPKI, name: str) -> str:
    """A CSR for ``name``, registered as a domain of the issuing CA first."""
    from conftest import make_csr

    ca = issuing_ca(fleet)
    fleet.domains.register(
        ADMIN,
        ca_id=ca.id,
        template_id=None,
        name=name,
        owners=[ADMIN.principal_id],
        requesters=[ADMIN.principal_id],
    )
    return make_csr(name)[1].decode()
