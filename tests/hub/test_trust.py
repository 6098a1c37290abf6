"""Proof of possession (ref §4.1) and what trust means to device authentication (ref §4.2)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from fleetpki.errors import AuthenticationError, ConflictError, FleetPKIError
from fleetpki.services import FleetPKI, hub_registry, hub_trust
from fleetpki.services.hub_registry import DeviceSpec
from support.hub_control import ForeignCA, authenticator, issue_device_certificate, issuing_ca


def _pem(cert: object) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined, no-any-return]


def _upload(fleet: FleetPKI, ca: ForeignCA, name: str = "foreign") -> str:
    with fleet.transaction() as session:
        hub_trust.upload_hub_ca(session, name, _pem(ca.certificate), now=fleet.now())
        record = hub_trust.generate_verification_code(session, name, now=fleet.now())
        assert record.verification_code is not None
        assert len(record.verification_code) == 40
        int(record.verification_code, 16)
        return record.verification_code


def test_proof_of_possession_verifies_a_foreign_ca(fleet: FleetPKI) -> None:
    ca = ForeignCA()
    code = _upload(fleet, ca)
    with fleet.transaction() as session:
        before = hub_trust.get_hub_ca(session, "foreign").etag
        record = hub_trust.verify_hub_ca(
            session,
            "foreign",
            _pem(ca.sign(code, client=False)),
            now=fleet.now(),
            if_match=f'"{before}"',
        )
        assert record.is_verified
        assert record.etag != before
        assert record.verification_code is None


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
        with fleet.transaction() as session:
            hub_trust.get_hub_ca(session, "foreign").verification_code = None
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
    with fleet.transaction() as session, pytest.raises(FleetPKIError) as info:
        hub_trust.verify_hub_ca(session, "foreign", proof, now=fleet.now(), if_match=if_match)
    assert info.value.code == expected
    with fleet.transaction() as session:
        assert not hub_trust.get_hub_ca(session, "foreign").is_verified


def test_unverified_untrusted_and_deleted_cas_are_refused(fleet: FleetPKI) -> None:
    ca = ForeignCA()
    with fleet.transaction() as session:
        hub_registry.put_device(session, DeviceSpec("dev-f"), now=fleet.now())
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
    with fleet.transaction() as session:
        hub_trust.verify_hub_ca(
            session, "foreign", _pem(ca.sign(code, client=False)), now=fleet.now()
        )
    # Foreign CAs: no CRL or OCSP check yet, so a verified chain is enough.
    assert authenticate() == "ok"
    with fleet.transaction() as session:
        hub_trust.delete_hub_ca(session, "foreign", if_match="*")
    assert authenticate() == "hub.untrusted_ca"


def test_trust_local_ca_is_idempotent_and_enables_its_devices(fleet: FleetPKI) -> None:
    ca_id = issuing_ca(fleet).id
    with fleet.transaction() as session:
        hub_registry.put_device(session, DeviceSpec("dev-1"), now=fleet.now())
    leaf, chain, _ = issue_device_certificate(fleet, "dev-1")
    hub = authenticator(fleet)
    with pytest.raises(AuthenticationError) as info:
        hub.authenticate(leaf, chain, "dev-1", fleet.now())
    assert info.value.code == "hub.untrusted_ca"
    with fleet.transaction() as session:
        first = hub_trust.trust_local_ca(session, fleet.keystore, ca_id, now=fleet.now())
    with fleet.transaction() as session:
        again = hub_trust.trust_local_ca(session, fleet.keystore, ca_id, now=fleet.now())
        assert (again.id, again.is_verified, again.fleetpki_ca_id) == (first.id, True, ca_id)
        assert len(hub_trust.list_hub_cas(session)) == 1
    assert hub.authenticate(leaf, chain, "dev-1", fleet.now()).fleetpki_ca_id == ca_id


def test_upload_refusals(fleet: FleetPKI) -> None:
    ca = ForeignCA()
    _upload(fleet, ca, "dup")
    with fleet.transaction() as session, pytest.raises(ConflictError):
        hub_trust.upload_hub_ca(session, "dup", _pem(ca.certificate), now=fleet.now())
    with fleet.transaction() as session, pytest.raises(FleetPKIError) as info:
        hub_trust.upload_hub_ca(session, "leaf", _pem(ca.sign("dev")), now=fleet.now())
    assert info.value.code == "hub.not_a_ca"
