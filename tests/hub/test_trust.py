"""Proof of possession (ref §4.1) and what trust means to device authentication (ref §4.2)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from fleetpki.application import FleetPKI
from fleetpki.errors import AuthenticationError, ConflictError, FleetPKIError, NotFoundError
from fleetpki.services.hub_devices import DeviceSpec
from support.hub_control import ForeignCA, authenticator, issue_device_certificate, issuing_ca


def _pem(cert: object) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined, no-any-return]


def _upload(fleet: FleetPKI, ca: ForeignCA, name: str = "foreign") -> str:
    uploaded = fleet.hub_trust.upload(name, _pem(ca.certificate))
    assert (uploaded.is_verified, uploaded.verification_code) == (False, None)
    record = fleet.hub_trust.generate_verification_code(name, if_match=f'"{uploaded.etag}"')
    assert record.etag != uploaded.etag
    assert record.verification_code is not None
    assert len(record.verification_code) == 40
    int(record.verification_code, 16)
    return record.verification_code


def test_proof_of_possession_verifies_a_foreign_ca(fleet: FleetPKI) -> None:
    ca = ForeignCA()
    code = _upload(fleet, ca)
    before = fleet.hub_trust.get("foreign").etag
    record = fleet.hub_trust.verify("foreign", _pem(ca.sign(code, client=False)), if_match=before)
    assert record.is_verified
    assert record.etag != before
    assert record.verification_code is None
    assert fleet.hub_trust.get("foreign") == record


@pytest.mark.parametrize("case", ["wrong_cn", "wrong_signer", "no_code", "stale_etag", "not_pem"])
def test_proof_of_possession_refusals(fleet: FleetPKI, case: str) -> None:
    ca = ForeignCA()
    code = _upload(fleet, ca)
    proof = _pem(ca.sign(code, client=False))
    if_match = None
    if case == "wrong_cn":
        proof = _pem(ca.sign("0" * 40, client=False))
    elif case == "wrong_signer":
        proof = _pem(
            ForeignCA(ca.certificate.subject.rfc4514_string()[3:]).sign(code, client=False)
        )
    elif case == "no_code":
        # A CA uploaded without a code generated for it.
        fleet.hub_trust.delete("foreign")
        fleet.hub_trust.upload("foreign", _pem(ca.certificate))
    elif case == "stale_etag":
        if_match = '"stale"'
    elif case == "not_pem":
        proof = b"garbage"
    expected = {
        "wrong_cn": "hub.verification_cn_mismatch",
        "wrong_signer": "hub.verification_bad_signature",
        "no_code": "hub.no_verification_code",
        "stale_etag": "precondition.failed",
        "not_pem": "certificate.malformed",
    }[case]
    with pytest.raises(FleetPKIError) as info:
        fleet.hub_trust.verify("foreign", proof, if_match=if_match)
    assert info.value.code == expected
    assert not fleet.hub_trust.get("foreign").is_verified


def test_unverified_untrusted_and_deleted_cas_are_refused(fleet: FleetPKI) -> None:
    ca = ForeignCA()
    fleet.hub_devices.put(DeviceSpec("dev-f"))
    leaf = ca.sign("dev-f")
    hub = authenticator(fleet)  # one trust cache across the changes, as in the hub

    def authenticate() -> str:
        try:
            hub.authenticate(leaf, [], "dev-f", fleet.now())
        except AuthenticationError as exc:
            return exc.code
        return "ok"

    assert authenticate() == "hub.untrusted_ca"
    code = _upload(fleet, ca)
    assert authenticate() == "hub.ca_unverified"
    fleet.hub_trust.verify("foreign", _pem(ca.sign(code, client=False)))
    # Foreign CAs: no CRL or OCSP check yet, so a verified chain is enough.
    assert authenticate() == "ok"
    with pytest.raises(ConflictError):
        fleet.hub_trust.delete("foreign", if_match='"stale"')
    assert authenticate() == "ok"
    fleet.hub_trust.delete("foreign", if_match="*")
    assert authenticate() == "hub.untrusted_ca"
    with pytest.raises(NotFoundError):
        fleet.hub_trust.delete("foreign")


def test_trust_local_ca_is_idempotent_and_enables_its_devices(fleet: FleetPKI) -> None:
    ca_id = issuing_ca(fleet).id
    fleet.hub_devices.put(DeviceSpec("dev-1"))
    leaf, chain, _ = issue_device_certificate(fleet, "dev-1")
    hub = authenticator(fleet)
    with pytest.raises(AuthenticationError) as info:
        hub.authenticate(leaf, chain, "dev-1", fleet.now())
    assert info.value.code == "hub.untrusted_ca"
    first = fleet.hub_trust.trust_local_ca(ca_id)
    again = fleet.hub_trust.trust_local_ca(ca_id)
    assert (again.id, again.is_verified, again.fleetpki_ca_id) == (first.id, True, ca_id)
    assert again == first
    assert [c.name for c in fleet.hub_trust.list()] == [first.name]
    assert hub.authenticate(leaf, chain, "dev-1", fleet.now()).fleetpki_ca_id == ca_id
    for unknown in ("00000000-0000-4000-8000-000000000000", "not-a-guid"):
        with pytest.raises(NotFoundError) as info:
            fleet.hub_trust.trust_local_ca(unknown)
        assert info.value.code == "ca.not_found"


def test_upload_refusals(fleet: FleetPKI) -> None:
    ca = ForeignCA()
    _upload(fleet, ca, "dup")
    with pytest.raises(ConflictError):
        fleet.hub_trust.upload("dup", _pem(ca.certificate))
    with pytest.raises(FleetPKIError) as info:
        fleet.hub_trust.upload("leaf", _pem(ca.sign("dev")))
    assert info.value.code == "hub.not_a_ca"
    with pytest.raises(FleetPKIError) as info:
        fleet.hub_trust.upload("junk", b"not a certificate")
    assert info.value.code == "certificate.malformed"
    assert [c.name for c in fleet.hub_trust.list()] == ["dup"]
