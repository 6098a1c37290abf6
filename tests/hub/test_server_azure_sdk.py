"""The TLS hub against the unmodified azure-iot-device SDK (paho 1.6.1, in .venv-azure).

The SDK hard-codes port 8883 (ref §0), so this test binds 127.0.0.1:8883 and is
skipped, saying so, when that port is taken or the SDK's virtualenv is missing.
"""

from __future__ import annotations

import json
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from fleetpki.application import FleetPKI
from fleetpki.hub.backend import C2DMessage
from support.hub import issue_device, start_hub_thread

# The Azure SDKs dial fixed ports (8883, 443): tests that bind them share one xdist worker.
pytestmark = pytest.mark.xdist_group("azure_ports")

AZURE_PYTHON = Path(__file__).resolve().parents[2] / ".venv-azure" / "bin" / "python"

DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse, X509

    cert, key, ca = sys.argv[1:4]
    said = threading.Lock()
    def say(*parts):
        # Handlers run on the SDK's threads: one locked write per line, or lines interleave.
        with said:
            sys.stdout.write(" ".join(parts) + "\\n"); sys.stdout.flush()

    client = IoTHubDeviceClient.create_from_x509_certificate(
        X509(cert_file=cert, key_file=key), hostname="localhost", device_id="sdkdev",
        server_verification_cert=open(ca).read(),
    )
    desired, c2d, method = threading.Event(), threading.Event(), threading.Event()
    def on_patch(patch):
        say("desired", json.dumps(patch, sort_keys=True)); desired.set()
    def on_message(message):
        say("c2d", message.data.decode(), json.dumps(message.custom_properties, sort_keys=True))
        c2d.set()
    def on_method(request):
        say("method", request.name, json.dumps(request.payload))
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, {"ok": True}))
        method.set()
    client.connect()
    say("connected")
    message = Message("hello")
    message.message_id = "mid-1"
    message.custom_properties["colour"] = "blue & green"
    client.send_message(message)
    say("sent")
    twin = client.get_twin()
    say("twin", json.dumps(twin, sort_keys=True))
    client.patch_twin_reported_properties({"fw": "2.0"})
    say("reported")
    client.on_twin_desired_properties_patch_received = on_patch
    client.on_message_received = on_message
    client.on_method_request_received = on_method
    say("handlers")
    for event in (desired, c2d, method):
        if not event.wait(60):
            say("timeout"); sys.exit(1)
    client.shutdown()
    say("done")
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
def test_azure_device_sdk_end_to_end(sqlite_fleet: FleetPKI, tmp_path: Path) -> None:
    if not AZURE_PYTHON.exists():
        pytest.fail("no .venv-azure: `make test` builds it with scripts/azure-venv.sh")
    if not _port_8883_free():
        pytest.skip("127.0.0.1:8883 is taken, and the Azure SDK cannot use another port")
    files = issue_device(sqlite_fleet, "sdkdev", tmp_path)
    script = tmp_path / "device.py"
    script.write_text(DEVICE_SCRIPT)
    with start_hub_thread(sqlite_fleet, port=8883) as hub:
        hub.registry.add_device("sdkdev")
        hub.registry.patch_desired("sdkdev", {"interval": 5})
        with subprocess.Popen(
            [str(AZURE_PYTHON), str(script), str(files.cert), str(files.key), str(hub.ca_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            assert process.stdout is not None
            lines: list[str] = []
            try:
                for line in process.stdout:
                    lines.append(line.strip())
                    if line.startswith("handlers"):
                        break
                assert lines[:2] == ["connected", "sent"], lines
                twin = json.loads(lines[2].removeprefix("twin "))
                assert twin["desired"] == {"interval": 5, "$version": 2}
                assert lines[3] == "reported"
                # The handlers are set: wait until the SDK has subscribed, then push.
                deadline = time.monotonic() + 60
                while not hub.call(lambda: _subscribed(hub)):
                    assert time.monotonic() < deadline, "the SDK never subscribed"
                    time.sleep(0.05)
                hub.registry.patch_desired("sdkdev", {"interval": 9})
                hub.registry.send_c2d("sdkdev", C2DMessage("c1", b"to device", {"k": "v"}))
                result = hub.run(hub.broker.invoke_method("sdkdev", "reboot", {"in": 1}, 30))
                assert result.as_json() == {"status": 200, "payload": {"ok": True}}
                rest = process.stdout.read()
                process.wait(60)
            finally:
                if process.poll() is None:
                    process.kill()
            stderr = process.stderr.read() if process.stderr else ""
        lines += rest.splitlines()
        assert process.returncode == 0, (lines, stderr[-2000:])
        assert 'desired {"$version": 3, "interval": 9}' in lines
        assert 'c2d to device {"k": "v"}' in lines
        assert 'method reboot {"in": 1}' in lines
        (record,) = hub.registry.telemetry
        assert record.body == b"hello"
        assert record.system_properties["message-id"] == "mid-1"
        assert record.properties == {"colour": "blue & green"}
        assert hub.registry.get_twin("sdkdev").reported == {"fw": "2.0"}


def _subscribed(hub: object) -> bool:
    from support.hub import LiveHub

    assert isinstance(hub, LiveHub)
    link = hub.broker._live.get("sdkdev")
    session = link.mqtt.session if link is not None else None
    if session is None:
        return False
    wanted = (
        "$iothub/twin/PATCH/properties/desired/#",
        "devices/sdkdev/messages/devicebound/#",
        "$iothub/methods/POST/#",
    )
    return all(topic in session.subscriptions for topic in wanted)
