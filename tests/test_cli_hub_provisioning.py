"""``fleetpki hub provisioning show``, ``hub enrollment-group`` and ``hub enrollment``, on a real home."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from test_cli import run


def _issuing_ca(home: Path) -> str:
    cas = json.loads(run(home, "ca", "list", "-o", "json").stdout)
    return next(c["id"] for c in cas if c["tier"] == "issuing")


def _refused(home: Path, *args: str, code: str) -> None:
    done = run(home, *args, ok=False)
    assert done.returncode == 1, done.stderr
    assert f"({code})" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_enrollment_groups_from_add_to_delete(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "init")
    shown = json.loads(run(home, "hub", "provisioning", "show", "-o", "json").stdout)
    assert shown["idScope"].startswith("0ne") and len(shown["idScope"]) == 11
    assert shown["enrollmentGroups"] == 0
    ca_id = _issuing_ca(home)

    # A CA the hub does not trust yet is refused, and nothing is added.
    _refused(
        home, "hub", "enrollment-group", "add", "plant", "--ca", ca_id, code="hub.ca_not_found"
    )
    assert json.loads(run(home, "hub", "enrollment-group", "list", "-o", "json").stdout) == []

    run(home, "hub", "trust", ca_id)
    twin = '{"tags": {"site": "plant-1"}, "properties": {"desired": {"interval": 30}}}'
    run(home, "hub", "enrollment-group", "add", "plant", "--ca", ca_id, "--twin", twin,
        "--reset-device-data")  # fmt: skip
    (group,) = json.loads(run(home, "hub", "enrollment-group", "list", "-o", "json").stdout)
    assert group["enrollmentGroupId"] == "plant"
    assert group["initialTwin"] == json.loads(twin)
    assert group["allocationPolicy"] == "static"
    assert group["reprovisionPolicy"] == {"updateHubAssignment": True, "migrateDeviceData": False}
    assert group["provisioningStatus"] == "enabled"
    table = run(home, "hub", "enrollment-group", "show", "plant").stdout
    assert "enabled" in table and "static" in table

    # One CA attests one group; a second is refused.
    _refused(
        home,
        "hub",
        "enrollment-group",
        "add",
        "other",
        "--ca",
        ca_id,
        code="provisioning.ca_in_use",
    )
    _refused(home, "hub", "enrollment-group", "add", "x", "--ca", ca_id, "--allocation", "geoLatency",
             code="provisioning.bad_allocation")  # fmt: skip
    _refused(home, "hub", "enrollment-group", "add", "x", "--ca", ca_id, "--hub", "nowhere.example",
             code="provisioning.unknown_hub")  # fmt: skip

    run(home, "hub", "enrollment-group", "disable", "plant")
    shown_group = json.loads(
        run(home, "hub", "enrollment-group", "show", "plant", "-o", "json").stdout
    )
    assert shown_group["provisioningStatus"] == "disabled"
    assert (
        json.loads(run(home, "hub", "provisioning", "show", "-o", "json").stdout)[
            "enrollmentGroups"
        ]
        == 1
    )
    run(home, "hub", "enrollment-group", "delete", "plant")
    _refused(
        home, "hub", "enrollment-group", "show", "plant", code="provisioning.enrollment_not_found"
    )


def test_an_individual_enrollment(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "init")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "solo-1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "solo-1.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    run(home, "hub", "enrollment", "add", "solo-1", "--certificate", str(path))
    (enrollment,) = json.loads(run(home, "hub", "enrollment", "list", "-o", "json").stdout)
    info = enrollment["attestation"]["x509"]["clientCertificates"]["primary"]["info"]
    assert info["sha1Thumbprint"] == certificate.fingerprint(hashes.SHA1()).hex().upper()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    _refused(home, "hub", "enrollment", "add", "solo-2", "--certificate", str(garbage),
             code="certificate.malformed")  # fmt: skip
    _refused(home, "hub", "enrollment", "add", "bad!id", "--certificate", str(path),
             code="provisioning.bad_registration_id")  # fmt: skip
    run(home, "hub", "enrollment", "disable", "solo-1")
    shown = json.loads(run(home, "hub", "enrollment", "show", "solo-1", "-o", "json").stdout)
    assert shown["provisioningStatus"] == "disabled"
    run(home, "hub", "enrollment", "delete", "solo-1")
    assert json.loads(run(home, "hub", "enrollment", "list", "-o", "json").stdout) == []
