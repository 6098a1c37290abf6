"""AMQP over WebSockets with the unmodified service SDK (uamqp's ``AmqpOverWebsocket``).

``IoTHubRegistryManager.from_connection_string(..., transport_type=AmqpOverWebsocket)``
dials port 443 only and upgrades ``/$servicebus/websocket/`` with ``AMQPWSB10``; the
HTTPS port serves it, so 127.0.0.1:443 is forwarded to the server's API port and the
test is skipped, saying so, when 443 cannot be bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from fleetpki.services.hub_devices import DeviceSpec
from support.api import row_counts
from support.forward import forward_port
from support.server import start_server

# Binds 127.0.0.1:443, which the SDK dials: one such test at a time under xdist.
pytestmark = pytest.mark.xdist_group("azure_ports")

AZURE_PYTHON = Path(__file__).resolve().parents[2] / ".venv-azure" / "bin" / "python"

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import certifi
    ca = sys.argv[2]
    certifi.where = lambda: ca  # uamqp reads its trust from certifi's bundle
    import uamqp
    from azure.iot.hub import IoTHubRegistryManager

    manager = IoTHubRegistryManager.from_connection_string(
        sys.argv[1], transport_type=uamqp.TransportType.AmqpOverWebsocket
    )
    out = {}
    for device in sys.argv[3:]:
        try:
            manager.send_c2d_message(device, "over websockets", properties={"messageId": "ws-1"})
            out[device] = "sent"
        except Exception as exc:
            out[device] = f"{type(exc).__name__}: {exc}"
    manager.amqp_svc_client.disconnect_sync()
    print(json.dumps(out), flush=True)
    """
)


@pytest.mark.slow
def test_send_c2d_message_over_websockets(tmp_path: Path) -> None:
    if not AZURE_PYTHON.exists():
        pytest.fail("no .venv-azure: `make test` builds it with scripts/azure-venv.sh")
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    script = tmp_path / "amqp_ws.py"
    script.write_text(SCRIPT)
    with start_server(tmp_path / "home") as live:
        live.fleet.hub_devices.put(DeviceSpec(device_id="ws-dev"))
        assert live.amqp_port  # the AMQP listener runs (the route needs it)
        service = live.fleet.hub_sas.connection_string("service", "localhost")
        with forward_port(443, live.port):
            before = row_counts(live.fleet)["hub_c2d"]
            done = subprocess.run(
                [
                    str(AZURE_PYTHON),
                    "-W",
                    "ignore",
                    str(script),
                    service,
                    str(live.ca_bundle),
                    "ws-dev",
                    "nobody",
                ],
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out == {"ws-dev": "sent", "nobody": "Exception: C2D message send failure"}
        assert row_counts(live.fleet)["hub_c2d"] == before + 1
        (queued,) = live.fleet.hub_messages.pending_c2d("ws-dev")
        assert (queued.message_id, queued.body) == ("ws-1", b"over websockets")
