"""The device directory: key mode 0600, optional encryption, chain, CA bundle, metadata."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetpki.device import DeviceDirectory, DeviceIdentity, DeviceMetadata, client_ssl_context
from fleetpki.errors import NotFoundError, ValidationError

NOW = dt.datetime.now(dt.UTC)


def _certificate(
    key: ec.EllipticCurvePrivateKey,
    subject: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: str,
    *,
    ca: bool,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def make_identity(device_id: str = "dev-id") -> DeviceIdentity:
    root_key = ec.generate_private_key(ec.SECP256R1())
    issuing_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate(root_key, "Root", root_key, "Root", ca=True)
    issuing = _certificate(issuing_key, "Issuing", root_key, "Root", ca=True)
    leaf = _certificate(key, device_id, issuing_key, "Issuing", ca=False)
    metadata = DeviceMetadata(device_id, "ezca", "https://ca.example", "ca-1", "tpl-1", 80)
    return DeviceIdentity(key, leaf, (issuing,), (root,), metadata)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("passphrase", [None, b"correct horse", "text passphrase"])
def test_save_and_load(tmp_path: Path, passphrase: bytes | str | None) -> None:
    identity = make_identity()
    old_umask = os.umask(0)
    try:
        DeviceDirectory(tmp_path / "dev", passphrase).save(identity)
    finally:
        os.umask(old_umask)
    folder = tmp_path / "dev"
    assert _mode(folder / "device.key") == 0o600
    assert _mode(folder) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == [
        "ca-bundle.pem",
        "device.json",
        "device.key",
        "device.pem",
    ]
    loaded = DeviceDirectory(folder, passphrase).load()
    assert loaded.certificate == identity.certificate
    assert loaded.chain == identity.chain
    assert loaded.ca_bundle == identity.ca_bundle
    assert loaded.metadata == identity.metadata
    assert loaded.key.private_numbers() == identity.key.private_numbers()  # type: ignore[union-attr]
    pem = (folder / "device.key").read_bytes()
    if passphrase is None:
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    else:
        assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
        assert secret not in pem


def test_encrypted_key_opens_with_openssl(tmp_path: Path) -> None:
    import subprocess

    DeviceDirectory(tmp_path, b"s3cret").save(make_identity())
    ok = subprocess.run(
        [
            "openssl",
            "pkey",
            "-in",
            str(tmp_path / "device.key"),
            "-passin",
            "pass:s3cret",
            "-noout",
        ],
        capture_output=True,
    )
    assert ok.returncode == 0
    bad = subprocess.run(
        ["openssl", "pkey", "-in", str(tmp_path / "device.key"), "-passin", "pass:wrong", "-noout"],
        capture_output=True,
    )
    assert bad.returncode != 0


@pytest.mark.parametrize(
    ("saved_with", "loaded_with", "code"),
    [
        (b"right", b"wrong", "device.bad_passphrase"),
        (b"right", None, "device.key_locked"),
        (None, b"unneeded", "device.key_not_encrypted"),
    ],
)
def test_passphrase_mismatch(
    tmp_path: Path, saved_with: bytes | None, loaded_with: bytes | None, code: str
) -> None:
    DeviceDirectory(tmp_path, saved_with).save(make_identity())
    with pytest.raises(ValidationError) as caught:
        DeviceDirectory(tmp_path, loaded_with).load()
    assert caught.value.code == code
    for secret in (b"right", b"wrong", b"unneeded"):
        assert secret.decode() not in str(caught.value)


def test_readable_key_is_refused(tmp_path: Path) -> None:
    DeviceDirectory(tmp_path).save(make_identity())
    (tmp_path / "device.key").chmod(0o640)
    with pytest.raises(ValidationError) as caught:
        DeviceDirectory(tmp_path).load()
    assert caught.value.code == "device.key_permissions"


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as caught:
        DeviceDirectory(tmp_path).load()
    assert caught.value.code == "device.not_enrolled"
    assert not DeviceDirectory(tmp_path).exists()


def test_key_and_certificate_must_match(tmp_path: Path) -> None:
    directory = DeviceDirectory(tmp_path)
    directory.save(make_identity())
    other = make_identity()
    (tmp_path / "device.pem").write_text(other.chain_pem)
    with pytest.raises(ValidationError) as caught:
        directory.load()
    assert caught.value.code == "device.key_mismatch"


def test_interrupted_renewal_save_is_completed(tmp_path: Path) -> None:
    directory = DeviceDirectory(tmp_path)
    first = make_identity()
    directory.save(first)
    new_key = ec.generate_private_key(ec.SECP256R1())
    issuing_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate(new_key, "dev-id", issuing_key, "Issuing", ca=False)
    renewed = first.renewed(new_key, leaf, first.chain, now=NOW)
    # Simulate a crash after the key was renamed but before the certificate was.
    DeviceDirectory(tmp_path / "scratch").save(renewed)
    for name in ("device.pem", "device.json", "ca-bundle.pem"):
        (tmp_path / "scratch" / name).replace(tmp_path / f"{name}.new")
    (tmp_path / "scratch" / "device.key").replace(tmp_path / "device.key")
    loaded = directory.load()
    assert loaded.certificate == leaf
    assert loaded.metadata.renewals == 1
    assert not list(tmp_path.glob("*.new"))


def test_renewed_counts_and_checks(tmp_path: Path) -> None:
    identity = make_identity()
    with pytest.raises(ValidationError) as caught:
        identity.renewed(ec.generate_private_key(ec.SECP256R1()), identity.certificate, (), now=NOW)
    assert caught.value.code == "device.key_mismatch"
    again = identity.renewed(identity.key, identity.certificate, identity.chain, now=NOW)
    assert again.metadata.renewals == 1
    assert again.metadata.renewed_at == NOW
    assert again.ca_bundle == identity.ca_bundle


def test_metadata_json(tmp_path: Path) -> None:
    identity = make_identity()
    DeviceDirectory(tmp_path).save(identity)
    data = json.loads((tmp_path / "device.json").read_text())
    assert data["device_id"] == "dev-id"
    assert data["certificate"]["serial"] == identity.serial_hex
    assert data["certificate"]["sha1"] == identity.sha1_hex
    assert "key" not in json.dumps(data).lower().replace("key_", "")
    (tmp_path / "device.json").write_text('{"version": 99}')
    with pytest.raises(ValidationError) as caught:
        DeviceDirectory(tmp_path).load()
    assert caught.value.code == "device.bad_metadata"


def test_identity_repr_has_no_key() -> None:
    identity = make_identity()
    pem = identity.key_pem().decode()
    assert "PRIVATE" not in repr(identity)
    assert pem.splitlines()[1] not in repr(identity)
    assert "encrypted" in repr(DeviceDirectory("/x", b"pw")) and "pw" not in repr(
        DeviceDirectory("/x", b"pw")
    )


def test_client_ssl_context_loads_the_chain() -> None:
    identity = make_identity()
    context = client_ssl_context(identity)
    assert context.verify_mode.name == "CERT_REQUIRED"
    assert context.check_hostname
    assert context.minimum_version.name == "TLSv1_2"
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "Root"),),)]
    # The serialised key never reaches an unencrypted file.
    assert identity.key_pem(b"x") != identity.key_pem()
    assert serialization.load_pem_private_key(identity.key_pem(b"x"), b"x")
