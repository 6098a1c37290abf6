"""Symmetric-key devices with the unmodified Azure SDKs (both in .venv-azure), end to end.

The service SDK (azure-iot-hub) creates a sas device over the REST API, reads its
generated keys and rotates its primary key; the device SDK (azure-iot-device) connects
with ``create_from_connection_string`` and sends telemetry, and is refused (its
``CredentialError``, i.e. CONNACK 5) with a wrong key and with the rotated-out key.

The device SDK dials port 8883 only (ref §0), so the server's hub listens there and the
test is skipped, saying so, when that port is taken.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from support.server import start_server

# The Azure SDKs dial fixed ports (8883, 443): tests that bind them share one xdist worker.
pytestmark = pytest.mark.xdist_group("azure_ports")

AZURE_PYTHON = Path(__file__).resolve().parents[2] / ".venv-azure" / "bin" / "python"

SCRIPT = textwrap.dedent(
    """
    import base64, json, os, sys
    from azure.iot.device import IoTHubDeviceClient, Message
    from azure.iot.device.exceptions import CredentialError
    from azure.iot.hub import IoTHubRegistryManager

    service, ca = sys.argv[1], open(sys.argv[2]).read()
    out = {}

    def device_string(key):
        return f"HostName=localhost;DeviceId=sasdev;SharedAccessKey={key}"

    def connect(key, text=None):
        client = IoTHubDeviceClient.create_from_connection_string(
            device_string(key), server_verification_cert=ca, connection_retry=False
        )
        try:
            client.connect()
        except CredentialError:
            return "refused"
        if text is not None:
            message = Message(text)
            message.message_id = "sas-mid"
            message.custom_properties["auth"] = "sas"
            client.send_message(message)
        client.shutdown()
        return "sent" if text is not None else "connected"

    manager = IoTHubRegistryManager.from_connection_string(service)
    created = manager.create_device_with_sas("sasdev", None, None, "enabled")
    keys = created.authentication.symmetric_key
    out["created"] = [created.authentication.type, len(base64.b64decode(keys.primary_key))]
    out["first"] = connect(keys.primary_key, "hello from a key")
    out["secondary"] = connect(keys.secondary_key)
    out["wrong_key"] = connect(base64.b64encode(os.urandom(32)).decode())
    device = manager.get_device("sasdev")
    new_primary = base64.b64encode(os.urandom(32)).decode()
    rotated = manager.update_device_with_sas("sasdev", device.etag, new_primary, None, "enabled")
    out["rotated"] = [
        rotated.authentication.symmetric_key.primary_key == new_primary,
        rotated.authentication.symmetric_key.secondary_key == keys.secondary_key,
    ]
    out["old_primary"] = connect(keys.primary_key)
    out["new_primary"] = connect(new_primary)
    print(json.dumps(out), flush=True)
    """
)


def _port_8883_free() -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 8883))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_sas_device_with_the_unmodified_azure_sdks(tmp_path: Path) -> None:
    if not AZURE_PYTHON.exists():
        pytest.fail("no .venv-azure: `make test` builds it with scripts/azure-venv.sh")
    if not _port_8883_free():
        pytest.skip("127.0.0.1:8883 is taken, and the Azure device SDK cannot use another port")
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    script = tmp_path / "sas_sdks.py"
    script.write_text(SCRIPT)
    with start_server(tmp_path / "home", mqtt_port=8883) as live:
        service = live.fleet.hub_sas.connection_string("iothubowner", f"localhost:{live.port}")
        env = {**os.environ, "REQUESTS_CA_BUNDLE": str(live.ca_bundle)}
        result = subprocess.run(
            [str(AZURE_PYTHON), "-W", "ignore", str(script), service, str(live.ca_bundle)],
            capture_output=True,
            text=True,
            env=env,
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        out = json.loads(result.stdout.strip().splitlines()[-1])
        assert out == {
            "created": ["sas", 32],
            "first": "sent",
            "secondary": "connected",
            "wrong_key": "refused",
            "rotated": [True, True],
            "old_primary": "refused",
            "new_primary": "connected",
        }
        (message,) = live.fleet.hub_messages.list_telemetry(device_id="sasdev")
        assert message.body == b"hello from a key"
        assert message.system_properties["message-id"] == "sas-mid"
        assert message.properties == {"auth": "sas"}
