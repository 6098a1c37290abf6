"""Zero-touch provisioning with the unmodified azure-iot-device SDK (paho 1.6.1, .venv-azure).

``ProvisioningDeviceClient.create_from_x509_certificate`` registers with the provisioning
service of a real ``fleetpki serve``, over MQTT on the hub's port and over MQTT over
WebSockets on the API port; then ``IoTHubDeviceClient.create_from_x509_certificate``
connects to the hub it was given and sends telemetry. The SDK hard-codes ports 8883 and
443 (ref §0), so the server's hub binds 127.0.0.1:8883 and 127.0.0.1:443 is forwarded to
its API port; the test is skipped, saying so, when either cannot be bound.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.provisioning_enrollments import EnrollmentKind, EnrollmentSpec
from support.forward import forward_443
from support.hub import DeviceFiles, ForeignCA, issue_device
from support.hub_control import issuing_ca
from support.server import LiveServer, start_server

# The Azure SDKs dial fixed ports (8883, 443): tests that bind them share one xdist worker.
pytestmark = pytest.mark.xdist_group("azure_ports")

AZURE_PYTHON = Path(__file__).resolve().parents[2] / ".venv-azure" / "bin" / "python"
ADMIN = Actor.local_admin()
TWIN = {"tags": {"site": "plant-1"}, "properties": {"desired": {"interval": 30}}}

DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from azure.iot.device import IoTHubDeviceClient, Message, ProvisioningDeviceClient, X509

    cert, key, ca_file, scope, registration_id, transport, times = sys.argv[1:8]
    ca = open(ca_file).read()
    def say(*parts):
        print(*parts, flush=True)

    for _ in range(int(times)):
        provisioning = ProvisioningDeviceClient.create_from_x509_certificate(
            provisioning_host="localhost", registration_id=registration_id, id_scope=scope,
            x509=X509(cert_file=cert, key_file=key), server_verification_cert=ca,
            websockets=transport == "websockets",
        )
        try:
            result = provisioning.register()
        except Exception as exc:
            cause = exc.__cause__ or exc
            say("raised", type(exc).__name__, type(cause).__name__, str(cause)[:300])
            sys.exit(0)
        state = result.registration_state
        say("registered", result.status, state.assigned_hub, state.device_id, state.sub_status)
    client = IoTHubDeviceClient.create_from_x509_certificate(
        X509(cert_file=cert, key_file=key), hostname=state.assigned_hub,
        device_id=state.device_id, server_verification_cert=ca,
    )
    client.connect()
    message = Message(json.dumps({"deviceId": state.device_id, "temperature": 21}))
    message.custom_properties["temperatureAlert"] = "false"
    client.send_message(message)
    say("sent")
    twin = client.get_twin()
    say("desired", json.dumps({k: v for k, v in twin["desired"].items() if k != "$version"}))
    client.shutdown()
    """
)


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _run(
    server: LiveServer, files: DeviceFiles, tmp: Path, *, transport: str = "mqtt", times: int = 1
) -> list[str]:
    script = tmp / "provisioning_device.py"
    script.write_text(DEVICE_SCRIPT)
    scope = server.fleet.provisioning.id_scope
    args = [str(files.cert), str(files.key), str(server.ca_bundle), scope, files.device_id]
    done = subprocess.run(
        [str(AZURE_PYTHON), str(script), *args, transport, str(times)],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, (done.stdout, done.stderr[-3000:])
    return done.stdout.splitlines()


@pytest.mark.slow
def test_the_azure_sdk_provisions_and_connects(
    tmp_path: Path, key_passphrase: None, caplog: pytest.LogCaptureFixture
) -> None:
    if not AZURE_PYTHON.exists():
        pytest.fail("no .venv-azure: `make test` builds it with scripts/azure-venv.sh")
    if not _bindable(8883) or not _bindable(443):
        pytest.skip("the Azure SDK dials ports 8883 and 443 only, and one cannot be bound")
    with start_server(tmp_path / "home", mqtt_port=8883) as server, forward_443(server.port):
        fleet = server.fleet
        ca = issuing_ca(fleet)
        fleet.hub_trust.trust_local_ca(ca.id)
        fleet.provisioning_enrollments.add(
            ADMIN, EnrollmentSpec(EnrollmentKind.GROUP, "plant", ca=ca.id, initial_twin=TWIN)
        )
        hub = fleet.settings.hostname

        # Over MQTT on the hub's port: registered, then connected to the assigned hub.
        mqtt = issue_device(fleet, "dps-mqtt", tmp_path)
        assert _run(server, mqtt, tmp_path) == [
            f"registered assigned {hub} dps-mqtt initialAssignment",
            "sent",
            'desired {"interval": 30}',
        ]
        (stored,) = fleet.hub_messages.list_telemetry(device_id="dps-mqtt")
        assert stored.properties == {"temperatureAlert": "false"}
        assert fleet.hub_devices.get("dps-mqtt").auth_type == "certificateAuthority"

        # Over MQTT over WebSockets on port 443 (the API port).
        ws = issue_device(fleet, "dps-ws", tmp_path)
        assert _run(server, ws, tmp_path, transport="websockets") == [
            f"registered assigned {hub} dps-ws initialAssignment",
            "sent",
            'desired {"interval": 30}',
        ]
        assert len(fleet.hub_messages.list_telemetry(device_id="dps-ws")) == 1

        # Registering again (here twice in a row) is idempotent: same hub, same device.
        # The second registration comes within the throttle's interval: 429 with
        # retry-after, which the SDK waits before it sends the registration again.
        fleet.provisioning.throttle.interval = 4
        caplog.set_level(logging.WARNING, logger="fleetpki.hub.provisioning")
        assert _run(server, mqtt, tmp_path, times=2) == [
            f"registered assigned {hub} dps-mqtt initialAssignment",
            f"registered assigned {hub} dps-mqtt initialAssignment",
            "sent",
            'desired {"interval": 30}',
        ]
        assert "provisioning.throttled" in caplog.text
        fleet.provisioning.throttle.interval = 0
        assert [d.device_id for d in fleet.hub_devices.list()] == ["dps-mqtt", "dps-ws"]

        # A revoked certificate: 401 on the response topic; the SDK raises, no retry.
        revoked = issue_device(fleet, "dps-revoked", tmp_path)
        fleet.certificates.revoke(
            ADMIN, format(revoked.certificate.serial_number, "X"), RevocationReason.KEY_COMPROMISE
        )
        (line,) = _run(server, revoked, tmp_path)
        assert line.startswith("raised ClientError ServiceError") and "401" in line, line

        # An unknown CA: the same answer.
        stranger = ForeignCA().issue("dps-stranger", tmp_path)
        (line,) = _run(server, stranger, tmp_path)
        assert line.startswith("raised ClientError ServiceError") and "401" in line, line

        # A disabled enrollment: the operation ends "disabled", which the SDK raises.
        fleet.provisioning_enrollments.set_enabled(ADMIN, EnrollmentKind.GROUP, "plant", False)
        late = issue_device(fleet, "dps-late", tmp_path)
        (line,) = _run(server, late, tmp_path, transport="websockets")
        assert line.startswith("raised ClientError ServiceError") and "disabled" in line, line
        assert [d.device_id for d in fleet.hub_devices.list()] == ["dps-mqtt", "dps-ws"]
