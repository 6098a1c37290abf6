"""Cloud-to-device over AMQP with the unmodified service SDK, to a paho-mqtt device.

``IoTHubRegistryManager.send_c2d_message`` (azure-iot-hub 2.7.0 on uamqp 1.6.11, in
.venv-azure) opens AMQP over TLS to its HostName on port 5671, puts its SAS token to
``$cbs`` and sends to ``/messages/devicebound``; the hub queues the message and the
MQTT device receives it with its message id and properties. The device's PUBACK
answers ``iothub-ack=full`` with a "Success" record on
``/messages/servicebound/feedback``, read here by uamqp's own ``ReceiveClient`` with
the same CBS authentication as the SDK's (azure-iot-hub 2.7.0 has no feedback
receiver of its own). A message to an unknown device is rejected and nothing is stored.

uamqp dials 5671 only (``uamqp.constants.DEFAULT_AMQPS_PORT``), so 127.0.0.1:5671 is
forwarded to the hub's free AMQP port, and the test is skipped, saying so, when 5671
is taken. uamqp trusts certifi's bundle only, so the scripts point ``certifi.where`` at
the hub's CA, as a user appends the CA to that bundle.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import textwrap
from pathlib import Path

import pytest

from fleetpki.services.hub_devices import DeviceSpec
from support.api import row_counts
from support.forward import forward_port
from support.hub import issue_device, issuing_ca
from support.mqtt_device import WAIT, Device, wait_until
from support.server import LiveServer, start_server

# Binds 127.0.0.1:5671, which the SDK dials: one such test at a time under xdist.
pytestmark = pytest.mark.xdist_group("azure_ports")

AZURE_PYTHON = Path(__file__).resolve().parents[2] / ".venv-azure" / "bin" / "python"

SEND_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import certifi
    ca = sys.argv[2]
    certifi.where = lambda: ca  # uamqp reads its trust from certifi's bundle
    from azure.iot.hub import IoTHubRegistryManager

    manager = IoTHubRegistryManager.from_connection_string(sys.argv[1])
    out = {}
    for device, text, properties in json.loads(sys.argv[3]):
        try:
            manager.send_c2d_message(device, text, properties=properties)
            out[device] = "sent"
        except Exception as exc:
            out[device] = f"{type(exc).__name__}: {exc}"
    manager.amqp_svc_client.disconnect_sync()
    print(json.dumps(out), flush=True)
    """
)

FEEDBACK_SCRIPT = textwrap.dedent(
    """
    import base64, hashlib, hmac, json, sys, time, urllib.parse
    import certifi
    ca = sys.argv[2]
    certifi.where = lambda: ca
    import uamqp
    from azure.core.credentials import AccessToken

    fields = dict(part.split("=", 1) for part in sys.argv[1].split(";"))
    host, policy, key = fields["HostName"], fields["SharedAccessKeyName"], fields["SharedAccessKey"]

    def get_token():  # as azure-iot-hub 2.7.0's IoTHubAmqpClientSharedAccessKeyAuth
        expiry = int(time.time() + 3600)
        mac = hmac.HMAC(base64.b64decode(key), f"{host}\\n{expiry}".encode(), hashlib.sha256)
        sig = urllib.parse.quote(base64.b64encode(mac.digest()))
        token = f"SharedAccessSignature sr={host}&sig={sig}&se={expiry}&skn={policy}"
        return AccessToken(token, expiry)

    auth = uamqp.authentication.JWTTokenAuth(
        audience="https://" + host, uri="https://" + host, get_token=get_token,
        token_type=b"servicebus.windows.net:sastoken",
    )
    auth.update_token()
    source = "amqps://" + host.split(":")[0] + "/messages/servicebound/feedback"
    client = uamqp.ReceiveClient(source, auth=auth, timeout=int(sys.argv[3]))
    batches = []
    for message in client.receive_messages_iter():
        batches.append({
            "content_type": str(message.properties.content_type, "utf-8"),
            "records": json.loads(b"".join(message.get_data())),
        })
        message.accept()
        break
    client.close()
    print(json.dumps(batches), flush=True)
    """
)


def _azure(script: str, *args: str, tmp: Path) -> str:
    path = tmp / "amqp_sdk.py"
    path.write_text(script)
    done = subprocess.run(
        [str(AZURE_PYTHON), "-W", "ignore", str(path), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _device(live: LiveServer, device_id: str, tmp: Path) -> tuple[Device, queue.Queue[object]]:
    fleet = live.fleet
    files = issue_device(fleet, device_id, tmp)
    fleet.hub_trust.trust_local_ca(issuing_ca(fleet).id)
    fleet.hub_devices.put(DeviceSpec(device_id=device_id))
    device = Device(live.mqtt_port, live.ca_bundle, files)
    received: queue.Queue[object] = queue.Queue()
    device.client.on_message = lambda _c, _u, message: received.put(message)
    assert device.connect() == 0
    subscribed: queue.Queue[object] = queue.Queue()
    device.client.on_subscribe = lambda *args: subscribed.put(args)
    device.client.subscribe(f"devices/{device_id}/messages/devicebound/#", qos=1)
    subscribed.get(timeout=WAIT)
    return device, received


@pytest.mark.slow
def test_send_c2d_message_reaches_an_mqtt_device_with_feedback(tmp_path: Path) -> None:
    if not AZURE_PYTHON.exists():
        pytest.fail("no .venv-azure: `make test` builds it with scripts/azure-venv.sh")
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    with start_server(tmp_path / "home") as live:
        device, received = _device(live, "amqp-dev", tmp_path)
        service = live.fleet.hub_sas.connection_string("service", f"localhost:{live.port}")
        sends = [
            [
                "amqp-dev",
                "hello over amqp",
                {"messageId": "mid-1", "correlationId": "cid-1", "iothub-ack": "full", "k": "v w"},
            ],
            ["nobody", "to no one", {}],
        ]
        try:
            with forward_port(5671, live.amqp_port):
                before = row_counts(live.fleet)["hub_c2d"]
                out = json.loads(
                    _azure(
                        SEND_SCRIPT, service, str(live.ca_bundle), json.dumps(sends), tmp=tmp_path
                    )
                )
                assert out == {"amqp-dev": "sent", "nobody": "Exception: C2D message send failure"}
                # The unknown device's message was refused before anything was stored.
                assert row_counts(live.fleet)["hub_c2d"] == before + 1

                message = received.get(timeout=WAIT)
                assert message.payload == b"hello over amqp"  # type: ignore[attr-defined]
                topic = message.topic  # type: ignore[attr-defined]
                assert topic.startswith("devices/amqp-dev/messages/devicebound/")
                bag = topic.split("/devicebound/", 1)[1].split("&")
                assert "%24.mid=mid-1" in bag
                assert "%24.cid=cid-1" in bag
                assert "iothub-ack=full" in bag
                assert "k=v%20w" in bag
                # paho PUBACKs the message: it is delivered, and its feedback is due.
                wait_until(
                    lambda: live.fleet.hub_messages.pending_c2d("amqp-dev") == [],
                    "the device's PUBACK",
                )

                batches = json.loads(
                    _azure(FEEDBACK_SCRIPT, service, str(live.ca_bundle), "60000", tmp=tmp_path)
                )
                (batch,) = batches
                assert batch["content_type"] == "application/vnd.microsoft.iothub.feedback.json"
                (record,) = batch["records"]
                assert record["originalMessageId"] == "mid-1"
                assert record["statusCode"] == "Success"
                assert record["description"] == "Success"
                assert record["deviceId"] == "amqp-dev"
                assert record["deviceGenerationId"]
                assert record["enqueuedTimeUtc"].endswith("Z")
                # Accepted by the receiver: owed no more.
                wait_until(
                    lambda: live.fleet.hub_messages.due_feedback() == [], "the feedback accepted"
                )
        finally:
            device.close()
