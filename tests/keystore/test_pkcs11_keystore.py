"""CA keys in a PKCS#11 token: SoftHSM2 from Debian, driven through python-pkcs11.

Each test's CAs have their keys generated in the session's SoftHSM token; what they
sign (CA and device certificates, CRLs, OCSP responses) is checked by openssl and
pkilint, and the key objects are read back from the token by a session of the test's
own to show that they are sensitive and were never extractable.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from pkcs11 import Attribute, KeyType, ObjectClass
from sqlalchemy import select

from fleetpki.application import FleetPKI, init_home
from fleetpki.errors import FleetPKIError
from fleetpki.pki.keys import KeySpec
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.authority import HierarchySpec
from fleetpki.services.ca_lifecycle import RenewCommand
from fleetpki.services.hub_devices import DeviceSpec
from fleetpki.settings import PKCS11_PIN_ENV, Settings
from fleetpki.store.models import CAGeneration
from support.api import row_counts
from support.database import raw_session
from support.hub_control import authenticator, issue_device_certificate, issuing_ca
from support.openssl import crl_verify, ocsp_query, verify, verify_with_crl
from support.pkilint import assert_lints_clean
from support.softhsm import (  # noqa: F401 (fixtures)
    FULL_TOKEN,
    PIN,
    TOKEN,
    SoftHsm,
    hsm_fleet_fixture,
    hsm_settings,
    pin_fixture,
    softhsm_fixture,
)

ADMIN = Actor.local_admin()


def _pem(path: Path, *certificates: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))
    return path


def _key_refs(fleet: FleetPKI) -> list[str]:
    with raw_session(fleet) as session:
        return list(session.scalars(select(CAGeneration.key_ref).order_by(CAGeneration.id)))


@contextmanager
def _token(hsm: SoftHsm, label: str = TOKEN) -> Iterator[Any]:
    """A session of the test's own on the token, while fleetpki is logged in.

    PKCS#11 login is per process (v2.40 §5.6): this session sees the private objects
    because the application under test logged the process in, not with a PIN here.
    """
    session = pkcs11.lib(hsm.module).get_token(token_label=label).open()
    try:
        yield session
    finally:
        session.close()


def _private_keys(session: Any) -> list[Any]:
    return list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))


def _ocsp_answer(
    fleet: FleetPKI, leaf: x509.Certificate, issuer: x509.Certificate, path: Path
) -> Path:
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
    answer = fleet.revocation_status.ocsp(request.public_bytes(serialization.Encoding.DER)).der
    assert_lints_clean("ocsp_response", answer)
    path.write_bytes(answer)
    return path


@pytest.mark.parametrize(
    ("root_key", "issuing_key"),
    [
        (KeySpec.EC_P384, KeySpec.EC_P256),
        (KeySpec.RSA_3072, KeySpec.RSA_2048),
        (KeySpec.EC_P256, KeySpec.EC_P384),
    ],
    ids=lambda spec: spec.value,
)
def test_a_hierarchy_in_the_token_issues_and_signs_crls_and_ocsp_that_openssl_accepts(
    tmp_path: Path,
    softhsm: SoftHsm,
    pin: str,
    key_passphrase: None,
    root_key: KeySpec,
    issuing_key: KeySpec,
) -> None:
    home = tmp_path / "home"
    spec = HierarchySpec(root_key=root_key, issuing_key=issuing_key)
    fleet = init_home(hsm_settings(home, softhsm), spec).app
    try:
        refs = _key_refs(fleet)
        assert len(refs) == 2 and all(ref.startswith("pkcs11:") for ref in refs)
        assert not (home / "keys").exists()  # no key file anywhere in the home
        with _token(softhsm) as session:
            for ref in refs:
                key_id = bytes.fromhex(ref.removeprefix("pkcs11:"))
                key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=key_id)
                assert key[Attribute.EXTRACTABLE] is False
                assert key[Attribute.SENSITIVE] is True
                assert key[Attribute.NEVER_EXTRACTABLE] is True
                assert key[Attribute.ALWAYS_SENSITIVE] is True
                assert key[Attribute.LOCAL] is True  # generated in the token
                secret = (
                    Attribute.VALUE if key.key_type == KeyType.EC else Attribute.PRIVATE_EXPONENT
                )
                with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                    key[secret]

        root = next(c for c in fleet.cas.list() if c.tier == "root")
        ca = issuing_ca(fleet)
        assert (root.key_spec, ca.key_spec) == (root_key.value, issuing_key.value)
        for view in (root, ca):
            assert_lints_clean("certificate", view.certificate_der)
        root_pem = _pem(tmp_path / "root.pem", root.certificate)
        ca_pem = _pem(tmp_path / "issuing.pem", ca.certificate)
        assert verify(ca_pem, root_pem).ok

        leaf, _, stored = issue_device_certificate(fleet, "dev-hsm")
        assert_lints_clean("certificate", leaf.public_bytes(serialization.Encoding.DER))
        leaf_pem = _pem(tmp_path / "leaf.pem", leaf)
        assert verify(leaf_pem, ca_pem, root_pem, purpose="sslclient").ok

        fleet.certificates.revoke(ADMIN, stored.serial_hex, RevocationReason.KEY_COMPROMISE)
        anchors = _pem(tmp_path / "anchors.pem", ca.certificate, root.certificate)
        crls = []
        for view in (ca, root):
            crl = fleet.revocation_status.crl(view.id)
            assert_lints_clean("crl", crl.der)
            crls.append(tmp_path / f"{view.tier}.crl")
            crls[-1].write_bytes(crl.der)
            assert crl_verify(crls[-1], anchors)
        checked = verify_with_crl(leaf_pem, ca_pem, root_pem, crls=crls, check_all=True)
        assert (checked.ok, checked.error_code) == (False, 23), checked.output  # revoked

        answer = ocsp_query(
            _ocsp_answer(fleet, leaf, ca.certificate, tmp_path / "leaf.ocsp"),
            ca_file=anchors, issuer=ca_pem, serial=leaf.serial_number,
        )  # fmt: skip
        assert (answer.verified, answer.status, answer.reason) == (
            True,
            "revoked",
            "keyCompromise",
        ), answer.output
    finally:
        fleet.close()


def test_an_ocsp_response_echoes_the_nonce_under_the_token_signature(
    hsm_fleet: FleetPKI, tmp_path: Path
) -> None:
    ca = issuing_ca(hsm_fleet)
    leaf, _, _ = issue_device_certificate(hsm_fleet, "dev-nonce")
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(leaf, ca.certificate, hashes.SHA1())
        .add_extension(x509.OCSPNonce(b"\x04\x10" + b"n" * 16), critical=False)
        .build()
    )
    request_path = tmp_path / "request.der"
    request_path.write_bytes(request.public_bytes(serialization.Encoding.DER))
    answer = hsm_fleet.revocation_status.ocsp(request_path.read_bytes()).der
    assert_lints_clean("ocsp_response", answer)
    response_path = tmp_path / "response.der"
    response_path.write_bytes(answer)
    root = next(c for c in hsm_fleet.cas.list() if c.tier == "root")
    anchors = _pem(tmp_path / "anchors.pem", ca.certificate, root.certificate)
    checked = ocsp_query(
        response_path,
        ca_file=anchors,
        request=request_path,
        verify_other=_pem(tmp_path / "issuing.pem", ca.certificate),
    )
    assert checked.verified and checked.nonce_ok, checked.output


def test_a_rekey_renewal_makes_the_new_key_in_the_token_and_both_generations_answer(
    hsm_fleet: FleetPKI, softhsm: SoftHsm, tmp_path: Path
) -> None:
    ca = issuing_ca(hsm_fleet)
    old_leaf, _, _ = issue_device_certificate(hsm_fleet, "dev-old")
    with _token(softhsm) as session:
        keys_before = len(_private_keys(session))

    generation = hsm_fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(rekey=True, days=90))

    assert (generation.number, generation.state, generation.rekeyed) == (2, "active", True)
    old_ref, new_ref = _key_refs(hsm_fleet)[1:]
    assert new_ref.startswith("pkcs11:") and new_ref != old_ref
    with _token(softhsm) as session:
        assert len(_private_keys(session)) == keys_before + 1
        new_key = session.get_key(
            object_class=ObjectClass.PRIVATE_KEY, id=bytes.fromhex(new_ref[len("pkcs11:") :])
        )
        assert new_key[Attribute.EXTRACTABLE] is False and new_key[Attribute.LOCAL] is True
    assert generation.certificate.public_key() != ca.certificate.public_key()
    assert_lints_clean("certificate", generation.certificate_der)
    root = next(c for c in hsm_fleet.cas.list() if c.tier == "root")
    root_pem = _pem(tmp_path / "root.pem", root.certificate)
    new_pem = _pem(tmp_path / "issuing-2.pem", generation.certificate)
    old_pem = _pem(tmp_path / "issuing-1.pem", ca.certificate)
    assert verify(new_pem, root_pem).ok

    new_leaf, chain, _ = issue_device_certificate(hsm_fleet, "dev-new")
    assert chain == [generation.certificate]
    assert verify(_pem(tmp_path / "new-leaf.pem", new_leaf), new_pem, root_pem).ok
    for number, leaf, issuer, issuer_pem in (
        (1, old_leaf, ca.certificate, old_pem),
        (2, new_leaf, generation.certificate, new_pem),
    ):
        anchors = _pem(tmp_path / f"anchors-{number}.pem", issuer, root.certificate)
        crl = hsm_fleet.revocation_status.crl(ca.id, number)
        assert_lints_clean("crl", crl.der)
        (tmp_path / f"{number}.crl").write_bytes(crl.der)
        assert crl_verify(tmp_path / f"{number}.crl", anchors)
        answer = ocsp_query(
            _ocsp_answer(hsm_fleet, leaf, issuer, tmp_path / f"{number}.ocsp"),
            ca_file=anchors, issuer=issuer_pem, serial=leaf.serial_number,
        )  # fmt: skip
        assert (answer.verified, answer.status) == (True, "good"), answer.output


def test_a_refused_rekey_leaves_no_key_in_the_token(hsm_fleet: FleetPKI, softhsm: SoftHsm) -> None:
    ca = issuing_ca(hsm_fleet)
    before = row_counts(hsm_fleet)
    with _token(softhsm) as session:
        keys_before = len(_private_keys(session))
    with pytest.raises(FleetPKIError) as info:
        hsm_fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(rekey=True, days=36500))
    assert info.value.code == "ca.days_beyond_parent"
    with _token(softhsm) as session:
        assert len(_private_keys(session)) == keys_before
    assert row_counts(hsm_fleet) == before


def test_a_full_token_refuses_the_rekey_and_nothing_is_written(
    tmp_path: Path, softhsm: SoftHsm, pin: str, key_passphrase: None
) -> None:
    # SoftHSM2 has no quota: its token folder is a 2 MiB tmpfs here, filled to the
    # last byte. SoftHSM then answers CKR_FUNCTION_FAILED (not CKR_DEVICE_MEMORY).
    if not softhsm.fillable:
        pytest.skip("mounting a small tmpfs for the token needs root")
    fleet = init_home(hsm_settings(tmp_path / "home", softhsm, FULL_TOKEN), HierarchySpec()).app
    try:
        ca = issuing_ca(fleet)
        before = row_counts(fleet)
        with _token(softhsm, FULL_TOKEN) as session:
            objects_before = len(list(session.get_objects()))
        softhsm.fill()
        try:
            with pytest.raises(FleetPKIError) as info:
                fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(rekey=True))
            assert info.value.code == "keystore.key_generation_failed"
            assert info.value.http_status == 409
            assert "nothing was changed" in info.value.message
            assert row_counts(fleet) == before
            assert [g.number for g in fleet.ca_lifecycle.generations(ca.id)] == [1]
            with _token(softhsm, FULL_TOKEN) as session:
                assert len(list(session.get_objects())) == objects_before
            # Signing writes nothing to the token: issuance goes on while it is full.
            issue_device_certificate(fleet, "dev-while-full")
        finally:
            softhsm.empty()
        generation = fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(rekey=True))
        assert generation.rekeyed
    finally:
        fleet.close()


def _closed_home(tmp_path: Path, softhsm: SoftHsm) -> Settings:
    settings = hsm_settings(tmp_path / "home", softhsm)
    init_home(settings, HierarchySpec()).app.close()
    return settings


def test_a_wrong_pin_stops_open_before_anything_else(
    tmp_path: Path,
    softhsm: SoftHsm,
    pin: str,
    key_passphrase: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _closed_home(tmp_path, softhsm)
    monkeypatch.setenv(PKCS11_PIN_ENV, "0000-wrong")
    with pytest.raises(FleetPKIError) as info:
        FleetPKI.open(settings)
    assert info.value.code == "keystore.bad_pin"
    assert "0000-wrong" not in str(info.value) and PIN not in str(info.value)


def test_a_wrong_pin_is_refused_while_another_application_is_logged_in(
    hsm_fleet: FleetPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PKCS11_PIN_ENV, "0000-wrong")
    with pytest.raises(FleetPKIError) as info:
        FleetPKI.open(hsm_fleet.settings)
    assert info.value.code == "keystore.bad_pin"
    monkeypatch.setenv(PKCS11_PIN_ENV, PIN)
    second = FleetPKI.open(hsm_fleet.settings)
    issue_device_certificate(second, "dev-second")
    second.close()
    # The first application's login outlives the second's close.
    issue_device_certificate(hsm_fleet, "dev-first")


def test_fleetpki_serve_with_a_wrong_pin_exits_at_startup_with_the_code(
    tmp_path: Path,
    softhsm: SoftHsm,
    pin: str,
    key_passphrase: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _closed_home(tmp_path, softhsm)
    monkeypatch.setenv(PKCS11_PIN_ENV, "0000-wrong")
    done = subprocess.run(
        [sys.executable, "-m", "fleetpki", "--home", str(settings.home), "serve",
         "--api-port", "0", "--mqtt-port", "0", "--amqp-port", "-1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "keystore.bad_pin" in done.stderr
    assert "0000-wrong" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"pkcs11_token": "no-such-token"}, "keystore.token_missing"),
        ({"pkcs11_token": ""}, "keystore.token_missing"),
        ({"pkcs11_module": "/nonexistent/libpkcs11.so"}, "keystore.module_missing"),
        ({"pkcs11_module": "/etc/hostname"}, "keystore.module_missing"),  # not a library
    ],
    ids=["unknown-token", "no-token-label", "no-module", "not-a-module"],
)
def test_a_missing_token_or_module_stops_open(
    tmp_path: Path, softhsm: SoftHsm, pin: str, key_passphrase: None, changes: dict[str, str],
    code: str,
) -> None:  # fmt: skip
    settings = _closed_home(tmp_path, softhsm).with_changes(**changes)
    with pytest.raises(FleetPKIError) as info:
        FleetPKI.open(settings)
    assert info.value.code == code


def test_the_pin_comes_from_a_file_when_the_environment_has_none(
    tmp_path: Path, softhsm: SoftHsm, pin: str, key_passphrase: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    settings = _closed_home(tmp_path, softhsm)
    monkeypatch.delenv(PKCS11_PIN_ENV)
    with pytest.raises(FleetPKIError) as info:
        FleetPKI.open(settings)
    assert info.value.code == "keystore.pin_missing"
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    fleet = FleetPKI.open(settings.with_changes(pkcs11_pin_file=str(pin_file)))
    try:
        issue_device_certificate(fleet, "dev-pin-file")
    finally:
        fleet.close()


def test_an_unknown_keystore_backend_is_refused() -> None:
    with pytest.raises(FleetPKIError) as info:
        Settings.default_for(Path("/tmp/nowhere")).with_changes(keystore="vault")
    assert info.value.code == "config.invalid"


def test_fleetpki_init_with_the_pkcs11_keystore_makes_a_home_without_key_files(
    tmp_path: Path, softhsm: SoftHsm, pin: str, key_passphrase: None
) -> None:
    home = tmp_path / "home"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fleetpki", *args],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    done = run("init", "--home", str(home), "--keystore", "pkcs11", "--pkcs11-token", TOKEN)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"PKCS#11 token {TOKEN!r}" in done.stdout
    config = (home / "config.toml").read_text()
    assert 'keystore = "pkcs11"' in config and f'pkcs11_token = "{TOKEN}"' in config
    assert PIN not in config
    assert not (home / "keys").exists()
    listed = run("--home", str(home), "ca", "list", "-o", "json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "Issuing CA" in listed.stdout


def test_a_ca_key_missing_from_the_token_is_reported_by_the_startup_check(
    hsm_fleet: FleetPKI,
) -> None:
    assert hsm_fleet.cas.check_keys() == 2
    issuing_ref = _key_refs(hsm_fleet)[1]
    hsm_fleet.keystore.discard(issuing_ref)
    with pytest.raises(FleetPKIError) as info:
        hsm_fleet.cas.check_keys()
    assert info.value.code == "keystore.key_missing"
    assert "Issuing CA" in info.value.message and issuing_ref in info.value.message


def test_the_built_in_hub_verifies_possession_of_token_keys_across_a_rekey(
    hsm_fleet: FleetPKI,
) -> None:
    # The proof of possession is a certificate signed by the CA's key (Azure's
    # verification-code flow): here the token signs it, for the first key and the new.
    ca = issuing_ca(hsm_fleet)
    hsm_fleet.hub_trust.trust_local_ca(ca.id)
    generation = hsm_fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(rekey=True))
    assert generation.state == "active" and generation.rekeyed
    held = {h.sha1_hex.upper(): h.is_verified for h in hsm_fleet.hub_trust.list()}
    assert held == {ca.sha1_hex.upper(): True, generation.sha1_hex.upper(): True}
    leaf, chain, _ = issue_device_certificate(hsm_fleet, "dev-hub")
    hsm_fleet.hub_devices.put(DeviceSpec("dev-hub"))
    authenticator(hsm_fleet).authenticate(leaf, chain, "dev-hub", hsm_fleet.now())
