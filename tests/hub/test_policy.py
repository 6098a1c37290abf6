"""The pure device-authentication policy: its order of checks, its refusals, its revocation step."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import hashes

from fleetpki.errors import AuthenticationError
from fleetpki.hub.policy import (
    AuthType,
    DevicePolicy,
    DeviceStatus,
    PresentedCertificate,
    Refusal,
    RegistryEntry,
    RevocationStatus,
    RevocationVerdict,
    TrustedCAs,
)
from support.hub_control import ForeignCA

NOW = dt.datetime.now(dt.UTC)
CA = ForeignCA("Policy CA")
OTHER = ForeignCA("Other CA")
LEAF = CA.sign("dev-1")
SHA1 = LEAF.fingerprint(hashes.SHA1()).hex().upper()
SHA256 = LEAF.fingerprint(hashes.SHA256()).hex()


def _entry(
    status: DeviceStatus = DeviceStatus.ENABLED,
    auth: AuthType = AuthType.CERTIFICATE_AUTHORITY,
    thumbprints: frozenset[str] = frozenset(),
) -> RegistryEntry:
    return RegistryEntry("dev-1", status, auth, thumbprints)


TRUSTED = TrustedCAs((CA.certificate,))


@pytest.mark.parametrize(
    ("client_id", "entry", "trusted", "code"),
    [
        # The registry comes first: the CN is asked of certificateAuthority devices only.
        ("dev-2", None, TRUSTED, "hub.unknown_device"),
        ("dev-1", None, TRUSTED, "hub.unknown_device"),
        ("dev-2", _entry(), TRUSTED, "hub.cn_mismatch"),
        # Registry state before the chain: a disabled device of an unknown CA is disabled.
        ("dev-1", _entry(DeviceStatus.DISABLED), TrustedCAs(()), "hub.device_disabled"),
        ("dev-1", _entry(auth=AuthType.SAS), TRUSTED, "hub.wrong_auth_type"),
        (
            "dev-1",
            _entry(auth=AuthType.SELF_SIGNED, thumbprints=frozenset({"00" * 20})),
            TRUSTED,
            "hub.wrong_auth_type",
        ),
        ("dev-1", _entry(), TrustedCAs((OTHER.certificate,)), "hub.untrusted_ca"),
        ("dev-1", _entry(), TrustedCAs((), (CA.certificate,)), "hub.ca_unverified"),
        (
            "dev-1",
            _entry(),
            TrustedCAs((OTHER.certificate,), (OTHER.certificate,)),
            "hub.untrusted_ca",
        ),
    ],
)
def test_admit_refusals_in_order(
    client_id: str, entry: RegistryEntry | None, trusted: TrustedCAs, code: str
) -> None:
    with pytest.raises(AuthenticationError) as info:
        DevicePolicy().admit(PresentedCertificate(LEAF, (), client_id), entry, trusted, NOW)
    assert info.value.code == code


@pytest.mark.parametrize("thumbprint", [SHA1.lower(), SHA256], ids=["sha1", "sha256"])
def test_self_signed_devices_are_pinned_and_need_no_revocation_source(thumbprint: str) -> None:
    policy = DevicePolicy()
    entry = _entry(auth=AuthType.SELF_SIGNED, thumbprints=frozenset({thumbprint}))
    admission = policy.admit(PresentedCertificate(LEAF, (), "dev-1"), entry, TrustedCAs(()), NOW)
    assert admission.issuer is None
    device = policy.decide(admission, None)
    assert (device.auth_type, device.certificate_sha1) == (AuthType.SELF_SIGNED, SHA1)


def test_a_self_signed_device_is_matched_by_thumbprint_whatever_its_cn() -> None:
    # Azure asks the CN of certificate-authority devices only (issue 15 item 4).
    entry = RegistryEntry("sensor-7", DeviceStatus.ENABLED, AuthType.SELF_SIGNED, frozenset({SHA1}))
    policy = DevicePolicy()
    admission = policy.admit(PresentedCertificate(LEAF, (), "sensor-7"), entry, TrustedCAs(()), NOW)
    assert policy.decide(admission, None).device_id == "sensor-7"


def test_a_module_authenticates_as_its_device() -> None:
    leaf = CA.sign("dev-1/mod")
    policy = DevicePolicy()
    admission = policy.admit(
        PresentedCertificate(leaf, (leaf,), "dev-1/mod"), _entry(), TRUSTED, NOW
    )
    assert admission.issuer == CA.certificate
    verdict = RevocationVerdict(RevocationStatus.GOOD, "OCSP")
    device = policy.decide(admission, verdict)
    assert (device.device_id, device.module_id, device.fleetpki_ca_id) == ("dev-1", "mod", None)


@pytest.mark.parametrize(
    ("verdict", "soft_fail", "code"),
    [
        (RevocationVerdict(RevocationStatus.GOOD, "CRL"), False, None),
        (RevocationVerdict(RevocationStatus.UNCHECKED, "none"), False, None),
        (RevocationVerdict(RevocationStatus.REVOKED, "OCSP"), True, "hub.certificate_revoked"),
        (RevocationVerdict(RevocationStatus.UNKNOWN, "OCSP"), False, "hub.revocation_unknown"),
        (RevocationVerdict(RevocationStatus.UNKNOWN, "OCSP"), True, None),
        (
            RevocationVerdict.from_fleetpki_record("ca-1", "revoked"),
            True,
            "hub.certificate_revoked",
        ),
        # Signed by one of our CAs but not on record: refused like a revoked one.
        (RevocationVerdict.from_fleetpki_record("ca-1", None), False, "hub.certificate_revoked"),
        (None, True, "hub.revocation_unknown"),
    ],
)
def test_decide_on_the_revocation_verdict(
    verdict: RevocationVerdict | None, soft_fail: bool, code: str | None
) -> None:
    policy = DevicePolicy(revocation_soft_fail=soft_fail)
    admission = policy.admit(PresentedCertificate(LEAF, (), "dev-1"), _entry(), TRUSTED, NOW)
    if code is None:
        assert policy.decide(admission, verdict).device_id == "dev-1"
        return
    with pytest.raises(AuthenticationError) as info:
        policy.decide(admission, verdict)
    assert info.value.code == code


def test_a_fleetpki_record_names_its_ca() -> None:
    policy = DevicePolicy()
    admission = policy.admit(PresentedCertificate(LEAF, (), "dev-1"), _entry(), TRUSTED, NOW)
    device = policy.decide(admission, RevocationVerdict.from_fleetpki_record("ca-1", "valid"))
    assert device.fleetpki_ca_id == "ca-1"


def test_one_table_holds_every_refusal_code() -> None:
    codes = {refusal.code for refusal in Refusal}
    assert codes >= {
        "hub.cn_mismatch",
        "hub.unknown_device",
        "hub.device_disabled",
        "hub.wrong_auth_type",
        "hub.untrusted_ca",
        "hub.ca_unverified",
        "hub.certificate_revoked",
        "hub.revocation_unknown",
    }
    assert all(code.startswith("hub.") for code in codes)
