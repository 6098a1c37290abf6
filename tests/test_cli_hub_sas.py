"""``fleetpki hub device add --auth`` and ``hub device connection-string``, on a real home."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from test_cli import run


def _refused(home: Path, *args: str, code: str) -> None:
    done = run(home, *args, ok=False)
    assert done.returncode == 1, done.stderr
    assert f"({code})" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_sas_device_and_its_connection_string(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "init")
    run(home, "hub", "device", "add", "sas-001", "--auth", "sas")
    (device,) = json.loads(run(home, "hub", "device", "list", "-o", "json").stdout)
    keys = device["authentication"]["symmetricKey"]
    assert device["authentication"]["type"] == "sas"
    line = run(home, "hub", "device", "connection-string", "sas-001").stdout.strip()
    fields = dict(part.split("=", 1) for part in line.split(";"))
    # No port in HostName: the device SDK dials 8883 or 443 on it (ref §0).
    assert set(fields) == {"HostName", "DeviceId", "SharedAccessKey"}
    assert ":" not in fields["HostName"]
    assert (fields["DeviceId"], fields["SharedAccessKey"]) == ("sas-001", keys["primaryKey"])
    secondary = run(
        home,
        "hub",
        "device",
        "connection-string",
        "sas-001",
        "--secondary",
        "--hostname",
        "hub.lan",
    ).stdout.strip()
    assert secondary == f"HostName=hub.lan;DeviceId=sas-001;SharedAccessKey={keys['secondaryKey']}"


def test_given_keys_and_refusals(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "init")
    key = base64.b64encode(b"p" * 32).decode()
    run(home, "hub", "device", "add", "sas-002", "--auth", "sas", "--primary-key", key)
    line = run(home, "hub", "device", "connection-string", "sas-002").stdout.strip()
    assert line.endswith(f"SharedAccessKey={key}")
    _refused(
        home,
        "hub",
        "device",
        "add",
        "sas-003",
        "--auth",
        "sas",
        "--primary-key",
        "short",
        code="hub.bad_symmetric_key",
    )
    run(home, "hub", "device", "add", "ca-001")
    _refused(home, "hub", "device", "connection-string", "ca-001", code="hub.not_a_sas_device")
    _refused(home, "hub", "device", "connection-string", "ghost", code="hub.device_not_found")
    _refused(
        home,
        "hub",
        "device",
        "connection-string",
        "sas-002",
        "--hostname",
        "hub:8883",
        code="hub.bad_hostname",
    )
    devices = json.loads(run(home, "hub", "device", "list", "-o", "json").stdout)
    assert [d["deviceId"] for d in devices] == ["ca-001", "sas-002"]
    run(home, "hub", "device", "add", "pinned", "--auth", "self-signed", "--thumbprint", "AB" * 20)
    shown = json.loads(run(home, "hub", "device", "show", "pinned", "-o", "json").stdout)
    assert shown["x509Thumbprint"]["primaryThumbprint"] == "AB" * 20
    _refused(
        home,
        "hub",
        "device",
        "add",
        "nopin",
        "--auth",
        "self-signed",
        code="hub.thumbprint_required",
    )
