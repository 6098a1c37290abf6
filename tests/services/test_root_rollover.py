"""Root rollover: a new root key, the two link certificates, issuing CAs re-certified.

``openssl verify`` checks every device certificate, from before and after the
rollover, from each root as the only trust anchor with the chain fleetpki hands out;
the built-in hub, trusting only one of the two roots, lets devices of either side in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.application import FleetPKI
from fleetpki.device.enroller import order_chain
from fleetpki.errors import FleetPKIError
from fleetpki.hub.policy import DeviceStatus
from fleetpki.pki.chain import is_self_signed
from fleetpki.services import Actor
from fleetpki.services.ca_lifecycle import RenewCommand
from fleetpki.services.hub_devices import DeviceSpec
from fleetpki.services.hub_links import link_command
from support.api import row_counts
from support.hub_control import authenticator, issue_device_certificate, issuing_ca
from support.openssl import verify
from support.pkilint import assert_lints_clean

ADMIN = Actor.local_admin()


def _pem(path: Path, *certificates: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))
    return path


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def test_a_root_rollover_links_both_roots_and_recertifies_the_issuing_ca(
    fleet: FleetPKI, tmp_path: Path
) -> None:
    root = next(c for c in fleet.cas.list() if c.tier == "root")
    issuing = issuing_ca(fleet)
    old_leaf, _, old_stored = issue_device_certificate(fleet, "dev-before")

    rolled = fleet.ca_lifecycle.renew(ADMIN, root.id, RenewCommand(rekey=True))

    # No link trusts either CA: the new root activates at once, and with it the issuing
    # CA's re-certified generation (same key, signed by the new root key).
    assert (rolled.number, rolled.state, rolled.rekeyed) == (2, "active", True)
    assert [(g.number, g.state) for g in fleet.ca_lifecycle.generations(root.id)] == [
        (1, "retiring"),
        (2, "active"),
    ]
    [first, recertified] = fleet.ca_lifecycle.generations(issuing.id)
    assert (first.state, recertified.state, recertified.rekeyed) == ("retiring", "active", False)
    assert recertified.parent_generation == 2
    old_root, new_root = root.certificate, rolled.certificate
    assert new_root.subject == old_root.subject
    assert new_root.public_key() != old_root.public_key()
    assert recertified.certificate.public_key() == issuing.certificate.public_key()
    assert recertified.certificate.issuer == new_root.subject

    # The link certificates: NewWithOld (the new key under the old), OldWithNew.
    new_with_old, old_with_new = (
        x509.load_der_x509_certificate(d) for d in rolled.cross_certificates_der
    )
    assert new_with_old.public_key() == new_root.public_key()
    new_with_old.verify_directly_issued_by(old_root)
    assert old_with_new.public_key() == old_root.public_key()
    old_with_new.verify_directly_issued_by(new_root)
    assert not is_self_signed(new_with_old) and not is_self_signed(old_with_new)
    for der in (
        rolled.certificate_der,
        recertified.certificate_der,
        *rolled.cross_certificates_der,
    ):
        assert_lints_clean("certificate", der)

    # The chain handed out: the issuing CA's generation, the root above it, the link.
    new_leaf, _, _ = issue_device_certificate(fleet, "dev-after")
    issued_chain = fleet.cas.chain(issuing.id)
    assert [_der(c) for c in issued_chain] == [
        recertified.certificate_der,
        rolled.certificate_der,
        _der(new_with_old),
    ]
    old_chain = fleet.certificates.chain_of(ADMIN, old_stored.serial_hex)
    assert [_der(c) for c in old_chain] == [
        _der(issuing.certificate),
        _der(old_root),
        _der(old_with_new),
    ]

    # openssl: both leaves, from each root as the only anchor, with what fleetpki sends.
    anchors = {
        "old": _pem(tmp_path / "root-1.pem", old_root),
        "new": _pem(tmp_path / "root-2.pem", new_root),
    }
    # What a device sends: the chain the device SDK orders from it (no root).
    for name, leaf, chain in (("before", old_leaf, old_chain), ("after", new_leaf, issued_chain)):
        sent = order_chain(leaf, chain)
        assert [is_self_signed(c) for c in sent] == [False, False]
        leaf_pem = _pem(tmp_path / f"{name}.pem", leaf)
        untrusted = _pem(tmp_path / f"{name}-chain.pem", *sent)
        for anchor_name, anchor in anchors.items():
            result = verify(leaf_pem, untrusted, anchor, purpose="sslclient")
            assert result.ok, f"{name} from the {anchor_name} root: {result.output}"
    # Without the link certificate, the new side does not reach the old root (the test
    # above is not vacuous).
    bare = _pem(tmp_path / "bare.pem", recertified.certificate)
    assert not verify(_pem(tmp_path / "after-only.pem", new_leaf), bare, anchors["old"]).ok


@pytest.mark.parametrize("trusted", ["old", "new"])
def test_the_built_in_hub_trusting_either_root_admits_devices_of_both_sides(
    fleet: FleetPKI, trusted: str
) -> None:
    root = next(c for c in fleet.cas.list() if c.tier == "root")
    issuing = issuing_ca(fleet)
    fleet.hub_trust.trust_local_ca(root.id)
    old_leaf, _, old_stored = issue_device_certificate(fleet, "dev-before")

    rolled = fleet.ca_lifecycle.renew(ADMIN, root.id, RenewCommand(rekey=True))

    # The hub trusted the root directly, so it got the new root too; keep only one.
    held = {h.sha1_hex.upper(): h.name for h in fleet.hub_trust.list()}
    assert set(held) == {root.sha1_hex.upper(), rolled.sha1_hex.upper()}
    dropped = rolled.sha1_hex if trusted == "old" else root.sha1_hex
    fleet.hub_trust.delete(held[dropped.upper()])
    new_leaf, _, _ = issue_device_certificate(fleet, "dev-after")
    sent = {
        "dev-before": (old_leaf, fleet.certificates.chain_of(ADMIN, old_stored.serial_hex)),
        "dev-after": (new_leaf, fleet.cas.chain(issuing.id)),
    }
    for device_id, (leaf, chain) in sent.items():
        fleet.hub_devices.put(DeviceSpec(device_id))
        presented = order_chain(leaf, chain)  # as the device SDK sends it
        authenticator(fleet).authenticate(leaf, presented, device_id, fleet.now())
        assert fleet.hub_devices.get(device_id).status == DeviceStatus.ENABLED.value


def test_the_reissued_ca_waits_for_the_new_root_and_issuance_stays_on_the_old_side(
    fleet: FleetPKI,
) -> None:
    root = next(c for c in fleet.cas.list() if c.tier == "root")
    issuing = issuing_ca(fleet)
    fleet.hub_links.add(ADMIN, link_command("local", "builtin", ca_ids=[root.id]))

    rolled = fleet.ca_lifecycle.renew(ADMIN, root.id, RenewCommand(rekey=True))

    assert (rolled.state, rolled.pending_links) == ("pending", ("local",))
    [_, waiting] = fleet.ca_lifecycle.generations(issuing.id)
    assert (waiting.state, waiting.waits_for_parent, waiting.pending_links) == (
        "pending",
        True,
        (),
    )
    _, _, stored = issue_device_certificate(fleet, "dev-meanwhile")
    assert fleet.certificates.chain_of(ADMIN, stored.serial_hex)[0] == issuing.certificate
    # Forcing the issuing CA does not skip its parent: the chain would not exist yet.
    with pytest.raises(FleetPKIError) as info:
        fleet.ca_lifecycle.activate(ADMIN, issuing.id, force=True)
    assert info.value.code == "ca.parent_pending"

    fleet.ca_lifecycle.activate(ADMIN, root.id, force=True)
    states = [g.state for g in fleet.ca_lifecycle.generations(issuing.id)]
    assert states == ["retiring", "active"]


def test_a_rollover_while_an_issuing_ca_renewal_waits_changes_nothing(fleet: FleetPKI) -> None:
    root = next(c for c in fleet.cas.list() if c.tier == "root")
    issuing = issuing_ca(fleet)
    fleet.hub_links.add(ADMIN, link_command("local", "builtin", ca_ids=[issuing.id]))
    assert fleet.ca_lifecycle.renew(ADMIN, issuing.id, RenewCommand()).state == "pending"
    before = row_counts(fleet)
    keys_before = sorted(fleet.settings.keys_dir.iterdir())
    with pytest.raises(FleetPKIError) as info:
        fleet.ca_lifecycle.renew(ADMIN, root.id, RenewCommand(rekey=True))
    assert info.value.code == "ca.renewal_pending" and issuing.name in info.value.message
    assert row_counts(fleet) == before
    assert sorted(fleet.settings.keys_dir.iterdir()) == keys_before
    assert [g.number for g in fleet.ca_lifecycle.generations(root.id)] == [1]
