"""The encrypted-file keystore: keys generated into files, discarded when unused."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from fleetpki.application import FleetPKI
from fleetpki.errors import FleetPKIError
from fleetpki.keystore import FileKeyStore
from fleetpki.pki.keys import KeySpec
from fleetpki.services import Actor
from fleetpki.services.ca_lifecycle import RenewCommand
from support.api import row_counts
from support.hub_control import issuing_ca


@pytest.mark.parametrize("spec", [KeySpec.EC_P256, KeySpec.RSA_2048], ids=lambda s: s.value)
def test_a_generated_key_lives_in_one_encrypted_file_until_discarded(
    tmp_path: Path, spec: KeySpec
) -> None:
    keystore = FileKeyStore(tmp_path / "keys", b"passphrase")
    signer = keystore.generate(spec)
    [path] = (tmp_path / "keys").iterdir()
    assert signer.key_ref == f"file:{path.name}"
    assert path.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    reopened = FileKeyStore(tmp_path / "keys", b"passphrase").signer(signer.key_ref)
    assert reopened.public_key() == signer.public_key()

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = dt.datetime.now(dt.UTC)
    certificate = reopened.sign_certificate(
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(signer.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    certificate.verify_directly_issued_by(certificate)
    assert isinstance(certificate.signature_hash_algorithm, hashes.SHA256)

    keystore.discard(signer.key_ref)
    assert list((tmp_path / "keys").iterdir()) == []
    with pytest.raises(FleetPKIError) as info:
        FileKeyStore(tmp_path / "keys", b"passphrase").signer(signer.key_ref)
    assert info.value.code == "keystore.key_missing"
    keystore.discard(signer.key_ref)  # a second discard is a no-op


def test_a_refused_rekey_leaves_no_key_file(sqlite_fleet: FleetPKI) -> None:
    keys = sqlite_fleet.settings.keys_dir
    files = sorted(keys.iterdir())
    before = row_counts(sqlite_fleet)
    ca = issuing_ca(sqlite_fleet)
    with pytest.raises(FleetPKIError) as info:
        sqlite_fleet.ca_lifecycle.renew(
            Actor.local_admin(), ca.id, RenewCommand(rekey=True, days=36500)
        )
    assert info.value.code == "ca.days_beyond_parent"
    assert sorted(keys.iterdir()) == files
    assert row_counts(sqlite_fleet) == before
