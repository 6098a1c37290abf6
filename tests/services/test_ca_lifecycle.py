"""CA renewal: generations, hubs first, and revocation status for every generation.

Each new CA certificate is checked by ``openssl verify`` against its parent and by
pkilint; certificates of the old and the new generation keep their CRL and OCSP,
signed by the generation that issued them, as openssl checks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from fleetpki.application import FleetPKI
from fleetpki.errors import FleetPKIError
from fleetpki.hub.policy import DeviceStatus
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.ca_lifecycle import RenewCommand
from fleetpki.services.delivery import Backoff
from fleetpki.services.hub_devices import DeviceSpec
from fleetpki.services.hub_links import link_command
from fleetpki.services.link_workers import LinkWorkers
from support.api import row_counts
from support.hub_control import authenticator, issue_device_certificate, issuing_ca
from support.openssl import crl_verify, ocsp_query, verify
from support.pkilint import assert_lints_clean

ADMIN = Actor.local_admin()


def _pem(path: Path, *certificates: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))
    return path


def _root(fleet: FleetPKI) -> x509.Certificate:
    return next(c for c in fleet.cas.list() if c.tier == "root").certificate


def _ocsp(fleet: FleetPKI, leaf: x509.Certificate, issuer: x509.Certificate, tmp: Path) -> Path:
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
    answer = fleet.revocation_status.ocsp(request.public_bytes(serialization.Encoding.DER)).der
    path = tmp / f"ocsp-{leaf.serial_number:x}.der"
    path.write_bytes(answer)
    assert_lints_clean("ocsp_response", answer)
    return path


@pytest.mark.parametrize("rekey", [False, True], ids=["same-key", "rekey"])
def test_renewal_makes_a_new_generation_that_issues_while_the_old_keeps_its_status(
    fleet: FleetPKI, tmp_path: Path, rekey: bool
) -> None:
    ca = issuing_ca(fleet)
    old_leaf, _, old_stored = issue_device_certificate(fleet, "dev-old")
    generation = fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(rekey=rekey, days=90))

    # No link trusts the CA: the new generation is active at once, the old retiring.
    assert (generation.number, generation.state, generation.rekeyed) == (2, "active", rekey)
    states = [(g.number, g.state) for g in fleet.ca_lifecycle.generations(ca.id)]
    assert states == [(1, "retiring"), (2, "active")]
    renewed = generation.certificate
    old_ca = ca.certificate
    assert renewed.subject == old_ca.subject and renewed.serial_number != old_ca.serial_number
    assert (renewed.public_key() == old_ca.public_key()) is not rekey
    assert_lints_clean("certificate", generation.certificate_der)
    root_pem = _pem(tmp_path / "root.pem", _root(fleet))
    new_pem = _pem(tmp_path / "issuing-2.pem", renewed)
    old_pem = _pem(tmp_path / "issuing-1.pem", old_ca)
    assert verify(new_pem, root_pem).ok
    assert fleet.cas.get(ca.id).sha1_hex == generation.sha1_hex  # the CA keeps its id

    # Issuance uses the new generation; its CRL DP names the generation's own CRL.
    new_leaf, chain, new_stored = issue_device_certificate(fleet, "dev-new")
    assert chain == [renewed]
    assert verify(_pem(tmp_path / "new.pem", new_leaf), new_pem, root_pem).ok
    dp = new_leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert dp[0].full_name[0].value.endswith(f"/crl/{ca.id}/2.crl")
    if rekey:
        assert not verify(_pem(tmp_path / "cross.pem", new_leaf), old_pem, root_pem).ok

    # Both generations answer for their own certificates, signed by their own key.
    for stored in (old_stored, new_stored):
        fleet.certificates.revoke(ADMIN, stored.serial_hex, RevocationReason.KEY_COMPROMISE)
    for number, leaf, issuer, issuer_pem in (
        (1, old_leaf, old_ca, old_pem),
        (2, new_leaf, renewed, new_pem),
    ):
        crl = fleet.revocation_status.crl(ca.id, number)
        assert_lints_clean("crl", crl.der)
        crl_path = tmp_path / f"gen-{number}.crl"
        crl_path.write_bytes(crl.der)
        anchors = _pem(tmp_path / f"anchors-{number}.pem", issuer, _root(fleet))
        assert crl_verify(crl_path, anchors)
        listed = {e.serial_number for e in x509.load_der_x509_crl(crl.der)}
        assert listed == {leaf.serial_number}
        answer = ocsp_query(
            _ocsp(fleet, leaf, issuer, tmp_path), ca_file=anchors, issuer=issuer_pem,
            serial=leaf.serial_number,
        )  # fmt: skip
        assert (answer.verified, answer.status) == (True, "revoked"), answer.output


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_linked_hub_gets_the_new_generation_before_it_issues(
    fleet: FleetPKI, tmp_path: Path
) -> None:
    ca = issuing_ca(fleet)
    fleet.hub_links.add(ADMIN, link_command("local", "builtin"))
    fleet.hub_links.trust(ADMIN, "local", ca.id)
    fleet.hub_devices.put(DeviceSpec("dev-gen"))

    pending = fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(rekey=True))
    assert (pending.state, pending.pending_links) == ("pending", ("local",))
    # Until the hub holds it, issuance keeps the old generation.
    _, chain, _ = issue_device_certificate(fleet, "dev-before")
    assert chain == [ca.certificate]
    with pytest.raises(FleetPKIError) as info:
        fleet.ca_lifecycle.activate(ADMIN, ca.id)
    assert info.value.code == "ca.links_pending" and "local" in info.value.message
    with pytest.raises(FleetPKIError) as info:
        fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand())
    assert info.value.code == "ca.renewal_pending"

    workers = LinkWorkers(
        fleet.hub_links, fleet.store, fleet.now, fleet.events, fleet.keystore,
        start_consumer=fleet.start_consumer, stop_consumer=fleet.stop_consumer,
        backoff=Backoff(base=0.02, cap=0.05), resync=0.2,
    )  # fmt: skip
    workers.start()
    try:
        _wait(lambda: fleet.ca_lifecycle.generations(ca.id)[-1].state == "active", "activation")
    finally:
        workers.stop()
    held = {h.sha1_hex.upper(): h.is_verified for h in fleet.hub_trust.list()}
    assert held == {ca.sha1_hex.upper(): True, pending.sha1_hex.upper(): True}
    [entry] = fleet.hub_links.get(ADMIN, "local").cas
    assert entry.thumbprint == pending.sha1_hex.upper()

    # A device of either generation is let in by the hub.
    leaf, chain, _ = issue_device_certificate(fleet, "dev-gen")
    assert chain == [pending.certificate]
    authenticator(fleet).authenticate(leaf, chain, "dev-gen", fleet.now())
    assert fleet.hub_devices.get("dev-gen").status == DeviceStatus.ENABLED.value


def test_force_activates_while_a_link_is_pending_and_is_audited(fleet: FleetPKI) -> None:
    ca = issuing_ca(fleet)
    fleet.hub_links.add(ADMIN, link_command("local", "builtin", ca_ids=[ca.id]))
    pending = fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(rekey=False))
    assert pending.state == "pending"
    forced = fleet.ca_lifecycle.activate(ADMIN, ca.id, force=True)
    assert forced.state == "active"
    [entry] = [e for e in fleet.audit.latest(ADMIN, object_id=ca.id) if e.action == "ca.activate"]
    assert entry.details["forced"] is True and entry.details["pending_links"] == ["local"]
    with pytest.raises(FleetPKIError) as info:
        fleet.ca_lifecycle.activate(ADMIN, ca.id, force=True)
    assert info.value.code == "ca.nothing_pending"


def test_the_built_in_hub_that_trusts_the_ca_directly_gets_the_new_generation(
    fleet: FleetPKI,
) -> None:
    ca = issuing_ca(fleet)
    fleet.hub_trust.trust_local_ca(ca.id)
    generation = fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(rekey=True))
    assert generation.state == "active"
    held = {h.sha1_hex.upper(): h.is_verified for h in fleet.hub_trust.list()}
    assert held == {ca.sha1_hex.upper(): True, generation.sha1_hex.upper(): True}


def test_a_root_is_renewed_with_its_key_and_chains_stay_valid(
    fleet: FleetPKI, tmp_path: Path
) -> None:
    root = next(c for c in fleet.cas.list() if c.tier == "root")
    generation = fleet.ca_lifecycle.renew(ADMIN, root.id, RenewCommand(rekey=False))
    assert generation.state == "active"
    assert_lints_clean("certificate", generation.certificate_der)
    issuing = _pem(tmp_path / "issuing.pem", issuing_ca(fleet).certificate)
    for number, anchor in ((1, root.certificate), (2, generation.certificate)):
        assert verify(issuing, _pem(tmp_path / f"root-{number}.pem", anchor)).ok


def test_bad_renewals_are_refused_and_change_nothing(fleet: FleetPKI) -> None:
    ca = issuing_ca(fleet)
    stranger = Actor("22222222-2222-4222-8222-222222222222", is_admin=False, source="test")
    before = row_counts(fleet)
    for call, code in [
        (lambda: fleet.ca_lifecycle.renew(ADMIN, "00000000-0000-4000-8000-00000000dead",
                                          RenewCommand()), "ca.not_found"),
        (lambda: fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(days=9000)),
         "ca.days_beyond_parent"),
        (lambda: fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(days=0)), "ca.bad_days"),
        (lambda: fleet.ca_lifecycle.renew(stranger, ca.id, RenewCommand()),
         "auth.admin_required"),
        (lambda: fleet.ca_lifecycle.activate(ADMIN, ca.id), "ca.nothing_pending"),
    ]:  # fmt: skip
        with pytest.raises(FleetPKIError) as info:
            call()
        assert info.value.code == code
    assert row_counts(fleet) == before
    assert [g.number for g in fleet.ca_lifecycle.generations(ca.id)] == [1]


def test_a_drained_generation_is_retired_and_leaves_the_linked_hub(fleet: FleetPKI) -> None:
    ca = issuing_ca(fleet)
    fleet.hub_links.add(ADMIN, link_command("local", "builtin"))
    fleet.hub_links.trust(ADMIN, "local", ca.id)
    _, _, old = issue_device_certificate(fleet, "dev-drain")
    workers = LinkWorkers(
        fleet.hub_links, fleet.store, fleet.now, fleet.events, fleet.keystore,
        start_consumer=fleet.start_consumer, stop_consumer=fleet.stop_consumer,
        backoff=Backoff(base=0.02, cap=0.05), resync=0.2,
    )  # fmt: skip
    workers.start()
    try:
        new = fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(rekey=True))
        _wait(lambda: fleet.ca_lifecycle.generations(ca.id)[-1].state == "active", "activation")
        assert fleet.ca_lifecycle.retire_drained() == []  # dev-drain's certificate is out there
        fleet.certificates.revoke(ADMIN, old.serial_hex, RevocationReason.SUPERSEDED)
        [retired] = fleet.ca_lifecycle.retire_drained()
        assert (retired.number, retired.state) == (1, "retired")
        _wait(
            lambda: {h.sha1_hex.upper() for h in fleet.hub_trust.list()} == {new.sha1_hex.upper()},
            "the old generation to leave the hub",
        )
    finally:
        workers.stop()
    assert fleet.ca_lifecycle.retire_drained() == []
    # Its CRL is still served, and lists the certificate revoked last.
    crl = x509.load_der_x509_crl(fleet.revocation_status.crl(ca.id, 1).der)
    assert [e.serial_number for e in crl] == [int(old.serial_hex, 16)]


def test_a_certificate_renewed_away_no_longer_holds_its_generation(fleet: FleetPKI) -> None:
    from conftest import make_csr

    ca = issuing_ca(fleet)
    leaf, _, _ = issue_device_certificate(fleet, "dev-away")
    fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(rekey=False))
    assert fleet.ca_lifecycle.retire_drained() == []
    _, csr = make_csr("dev-away")
    renewed = fleet.renewal.renew_with_client_certificate(
        certificate_der=leaf.public_bytes(serialization.Encoding.DER), csr=csr, source="test"
    )
    assert renewed.certificate.ca_id == ca.id
    assert [g.number for g in fleet.ca_lifecycle.retire_drained()] == [1]
    states = [g.state for g in fleet.ca_lifecycle.generations(ca.id)]
    assert states == ["retired", "active"]
