"""Enrollment and renewal against a real fleetpki server over TLS: EZCA routes, /v1 and EST."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fleetpki.device import (
    DeviceDirectory,
    DeviceIdentity,
    EstEnroller,
    EzcaEnroller,
    Renewer,
    V1Enroller,
    enroll_device,
    renew_identity,
)
from fleetpki.device.ezca_enroller import _principal_from_jwt
from fleetpki.errors import AuthenticationError, FleetPKIError
from fleetpki.pki.keys import KeySpec
from fleetpki.services.context import LOCAL_ADMIN_ID
from support.server import LiveServer, start_server


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    with start_server(tmp_path_factory.mktemp("device-enroll") / "home", only="ca") as server:
        yield server


def _device_id() -> str:
    return f"dev-{random.getrandbits(48):012x}"


def _spki(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def openssl_verify(identity: DeviceIdentity, folder: Path) -> None:
    """``openssl verify`` of the leaf against the root, the intermediates as untrusted."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "root.pem").write_text(identity.ca_bundle_pem)
    (folder / "chain.pem").write_text(
        "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in identity.chain)
    )
    (folder / "leaf.pem").write_text(identity.certificate_pem)
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(folder / "root.pem"),
            "-untrusted",
            str(folder / "chain.pem"),
            "-purpose",
            "sslclient",
            str(folder / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def assert_lifetime(identity: DeviceIdentity, days: int) -> None:
    """The lifetime asked for, plus the CA's small backdating of ``notBefore``."""
    extra = identity.lifetime - dt.timedelta(days=days)
    assert dt.timedelta(0) <= extra <= dt.timedelta(minutes=5)


def check_device_certificate(identity: DeviceIdentity, device_id: str) -> None:
    cert = identity.certificate
    assert cert.subject.rfc4514_string() == f"CN={device_id}"
    # The device asks for its id as a DNS SAN; fleetpki folds a single-label id (not a
    # DNS name, pkilint) into the CN (pki/issuance.py resolve_names), so none or that one.
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        assert list(sans) == [x509.DNSName(device_id)]
    assert len(identity.chain) == 1
    assert len(identity.ca_bundle) == 1
    assert identity.ca_bundle[0].subject == identity.ca_bundle[0].issuer


@pytest.mark.parametrize(
    "use_v2", [True, False], ids=["RequestSSLCertificateV2", "RequestFullSSLCertificate"]
)
def test_ezca_enroll(live: LiveServer, tmp_path: Path, use_v2: bool) -> None:
    device_id = _device_id()
    directory = DeviceDirectory(tmp_path / device_id, b"device passphrase")
    with EzcaEnroller(
        live.base_url, live.admin_token, verify=live.ca_bundle, use_v2=use_v2
    ) as ezca:
        identity = enroll_device(ezca, device_id, validity_days=10, directory=directory)
        offered = ezca.available_cas()
        # The domain is the caller's: owner and requester.
        response = ezca._http.call("GET", "/api/CA/GetMyDomains").json()
    domains = {d["Domain"]: d for d in json.loads(response["Message"])}
    assert domains[device_id]["IsOwner"] and domains[device_id]["IsRequester"]
    check_device_certificate(identity, device_id)
    assert_lifetime(identity, 10)
    assert identity.metadata.method == "ezca"
    assert identity.metadata.ca_id == offered[0].ca_id
    assert identity.metadata.template_id == offered[0].template_id
    assert directory.load().certificate == identity.certificate
    openssl_verify(identity, tmp_path / "verify")


def test_ezca_enroll_rsa_4096(live: LiveServer, tmp_path: Path) -> None:
    device_id = _device_id()
    with EzcaEnroller(live.base_url, live.admin_token, verify=live.ca_bundle) as ezca:
        identity = enroll_device(ezca, device_id, key_spec=KeySpec.RSA_4096, validity_days=10)
    assert isinstance(identity.key, rsa.RSAPrivateKey)
    assert identity.key.key_size == 4096
    check_device_certificate(identity, device_id)


def test_ezca_enroll_an_existing_domain(live: LiveServer) -> None:
    device_id = _device_id()
    with EzcaEnroller(live.base_url, live.admin_token, verify=live.ca_bundle) as ezca:
        assert ezca.register_domain(device_id) is True
        assert ezca.register_domain(device_id) is False
        identity = enroll_device(ezca, device_id)
    check_device_certificate(identity, device_id)


def test_ezca_renew_with_a_new_key_then_again(live: LiveServer, tmp_path: Path) -> None:
    device_id = _device_id()
    directory = DeviceDirectory(tmp_path / "dev")
    with EzcaEnroller(live.base_url, live.admin_token, verify=live.ca_bundle) as ezca:
        first = enroll_device(ezca, device_id, validity_days=10, directory=directory)
    # Renewal needs no bearer token: the certificate token is the only credential.
    with EzcaEnroller(live.base_url, verify=live.ca_bundle) as device_side:
        second = renew_identity(device_side, first, directory=directory)
        third = renew_identity(device_side, second, directory=directory)
    assert len({_spki(i.certificate) for i in (first, second, third)}) == 3
    assert len({i.serial_hex for i in (first, second, third)}) == 3
    assert isinstance(second.key, ec.EllipticCurvePrivateKey)
    check_device_certificate(third, device_id)
    assert_lifetime(third, 10)
    assert third.metadata.renewals == 2
    assert third.ca_bundle == first.ca_bundle
    loaded = directory.load()
    assert loaded.certificate == third.certificate
    assert loaded.metadata.renewals == 2
    openssl_verify(third, tmp_path / "verify")


def test_ezca_renew_keeping_the_key(live: LiveServer) -> None:
    with EzcaEnroller(live.base_url, live.admin_token, verify=live.ca_bundle) as ezca:
        first = enroll_device(ezca, _device_id(), key_spec=KeySpec.EC_P384)
        second = renew_identity(ezca, first, new_key=False, validity_days=3)
    assert _spki(first.certificate) == _spki(second.certificate)
    assert second.serial_hex != first.serial_hex
    assert_lifetime(second, 3)


def test_ezca_renew_refused_for_a_wrong_audience(live: LiveServer) -> None:
    with EzcaEnroller(live.base_url, live.admin_token, verify=live.ca_bundle) as ezca:
        first = enroll_device(ezca, _device_id())
    with (
        EzcaEnroller(live.base_url, verify=live.ca_bundle, audience="https://ezca.io") as wrong,
        pytest.raises(AuthenticationError) as caught,
    ):
        renew_identity(wrong, first)
    assert caught.value.code.startswith("certtoken.")


def test_ezca_renew_refused_after_revocation(live: LiveServer) -> None:
    with EzcaEnroller(live.base_url, live.admin_token, verify=live.ca_bundle) as ezca:
        first = enroll_device(ezca, _device_id())
        ezca._http.call("POST", "/api/CA/RevokeCertificateV2", json={"Thumbprint": first.sha1_hex})
        with pytest.raises(FleetPKIError):
            renew_identity(ezca, first)


def test_ezca_without_token_cannot_enroll(live: LiveServer) -> None:
    with (
        EzcaEnroller(live.base_url, verify=live.ca_bundle) as ezca,
        pytest.raises(AuthenticationError),
    ):
        enroll_device(ezca, _device_id())


def test_unreachable_server_is_one_clear_error(tmp_path: Path) -> None:
    with (
        EzcaEnroller("https://127.0.0.1:9", "token", verify=False) as ezca,
        pytest.raises(FleetPKIError) as caught,
    ):
        enroll_device(ezca, _device_id())
    assert caught.value.code == "client.unreachable"
    assert "token" not in caught.value.message


def test_v1_enroll_and_renew(live: LiveServer, tmp_path: Path) -> None:
    device_id = _device_id()
    directory = DeviceDirectory(tmp_path / "dev")
    with V1Enroller(
        live.base_url,
        live.admin_token,
        verify=live.ca_bundle,
        register_domain=True,
        owner_id=LOCAL_ADMIN_ID,
    ) as v1:
        first = enroll_device(v1, device_id, validity_days=5, directory=directory)
        second = renew_identity(v1, first, directory=directory)
    for identity in (first, second):
        check_device_certificate(identity, device_id)
        assert_lifetime(identity, 5)
    assert first.metadata.method == "v1"
    # /v1 names the template, whose AutoRenewPercentage the renewer may use.
    percentage = first.metadata.auto_renew_percentage
    assert percentage is not None
    assert 1 <= percentage <= 100
    assert _spki(first.certificate) != _spki(second.certificate)
    assert directory.load().serial_hex == second.serial_hex
    openssl_verify(second, tmp_path / "verify")


def test_renewer_against_the_server(live: LiveServer, tmp_path: Path) -> None:
    """The background renewer's step, on a fake clock, renews through the real server."""
    directory = DeviceDirectory(tmp_path / "dev")
    with EzcaEnroller(live.base_url, live.admin_token, verify=live.ca_bundle) as ezca:
        identity = enroll_device(ezca, _device_id(), validity_days=10, directory=directory)
        now = [identity.not_before]

        def wait(seconds: float) -> bool:
            now[0] += dt.timedelta(seconds=seconds)
            return False

        saved: list[DeviceIdentity] = []
        renewer = Renewer(
            identity,
            lambda current: renew_identity(ezca, current, directory=directory),
            on_renewed=saved.append,
            clock=lambda: now[0],
            wait=wait,
        )
        scheduled = renewer.next_renewal
        assert renewer.step()
    assert identity.not_before + identity.lifetime * (2 / 3 - 1 / 20) <= scheduled
    assert scheduled <= identity.not_before + identity.lifetime * (2 / 3 + 1 / 20)
    assert len(saved) == 1
    assert directory.load().certificate == saved[0].certificate != identity.certificate


def test_est_enroll_and_reenroll(live: LiveServer, tmp_path: Path) -> None:
    device_id = _device_id()
    with EzcaEnroller(live.base_url, live.admin_token, verify=live.ca_bundle) as ezca:
        ezca.register_domain(device_id)
    with EstEnroller(live.base_url, live.admin_token, verify=live.ca_bundle) as est:
        first = enroll_device(est, device_id)
        second = renew_identity(est, first)
    check_device_certificate(first, device_id)
    check_device_certificate(second, device_id)
    assert _spki(first.certificate) != _spki(second.certificate)
    openssl_verify(second, tmp_path / "verify")


def test_principal_from_a_jwt() -> None:
    token = jwt.encode({"oid": "abc", "upn": "alice@example.com"}, "k" * 32, algorithm="HS256")
    assert _principal_from_jwt(token) == ("abc", "alice@example.com")
    token = jwt.encode({"sub": "s-1"}, "k" * 32, algorithm="HS256")
    assert _principal_from_jwt(token) == ("s-1", "s-1")
    assert _principal_from_jwt("fpk_not_a_jwt") is None
