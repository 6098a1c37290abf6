"""Two hub nodes on one PostgreSQL: what changes anywhere reaches the node holding the session.

Two real ``fleetpki serve --only hub --hub-node ...`` processes share one home and its
PostgreSQL database; paho-mqtt devices connect over TLS to one node or the other. The
changes are made in this test process, a third one (as the CLI, an API worker or another
node would make them): a revocation, a disabled device, a cloud-to-device message, a
desired-properties patch and a direct method must each reach the node that holds the
device's session, and leave the other node's devices alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import select

from fleetpki.application import FleetPKI, init_home
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services.authority import HierarchySpec
from fleetpki.services.context import Actor
from fleetpki.services.hub_devices import DeviceSpec, DeviceStatus
from fleetpki.services.hub_methods import DeviceNotOnline
from fleetpki.settings import Settings
from fleetpki.store.hub_models import HubNode
from support.database import raw_session
from support.hub import DeviceFiles, issue_device, trust_issuing_ca
from support.mqtt_device import WAIT, wait_until
from support.postgres import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

NODES = ("node-a", "node-b")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class HubNodes:
    """Two hub processes on one database, and this process's own application on it."""

    fleet: FleetPKI
    ports: dict[str, int]
    ca_file: Path
    certs: Path

    def device(self, device_id: str, node: str) -> Client:
        """Register and certify ``device_id``, then connect it to ``node``."""
        self.fleet.hub_devices.put(DeviceSpec(device_id))
        files = issue_device(self.fleet, device_id, self.certs)
        client = Client(self.ports[node], self.ca_file, files)
        assert client.connect() == 0
        return client


class Client:
    """A paho-mqtt 2 device over TLS with its incoming messages in a queue."""

    def __init__(self, port: int, ca_file: Path, files: DeviceFiles) -> None:
        self.files = files
        self.port = port
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=files.device_id, clean_session=False
        )
        context = ssl.create_default_context(cafile=str(ca_file))
        context.load_cert_chain(files.cert, files.key)
        self.client.tls_set_context(context)
        self.client.username_pw_set(f"localhost/{files.device_id}/?api-version=2021-04-12")
        self.client.reconnect_delay_set(60, 120)  # a closed client stays away
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[Any] = queue.Queue()
        self.disconnected = threading.Event()
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(rc)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_disconnect = lambda *_: self.disconnected.set()

    def connect(self) -> int:
        """Connect; the CONNACK code (0 accepted)."""
        self.client.connect("localhost", self.port, keepalive=60)
        self.client.loop_start()
        code = self.connack.get(timeout=WAIT)
        # paho 2 reports MQTT 3.1.1 CONNACK codes as v5 reason codes (§3.2.2.3).
        return {"Success": 0, "Not authorized": 5}.get(str(code), int(code.value))

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(WAIT)

    def next_message(self) -> mqtt.MQTTMessage:
        """The next message from the hub."""
        return self.messages.get(timeout=WAIT)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def _live_nodes(fleet: FleetPKI) -> set[str]:
    with raw_session(fleet) as session:
        return set(session.scalars(select(HubNode.name)))


def _start_node(home: Path, node: str, port: int, log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "FLEETPKI_HOME": str(home)}
    with log.open("w") as sink:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "fleetpki", "serve", "--only", "hub"),
                *("--hub-node", node, "--mqtt-port", str(port)),
            ],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _wait_listening(fleet: FleetPKI, process: subprocess.Popen[str], node: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while node not in _live_nodes(fleet):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


@pytest.fixture(scope="module")
def nodes(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory, key_passphrase: None
) -> Iterator[HubNodes]:
    folder = tmp_path_factory.mktemp("hub-nodes")
    url = postgres.create_database(f"nodes_{os.getpid()}")
    fleet = init_home(Settings.default_for(folder / "home", url), HierarchySpec()).app
    trust_issuing_ca(fleet)
    ports = {node: _free_port() for node in NODES}
    processes: list[subprocess.Popen[str]] = []
    try:
        # One after the other: the first makes the home's server certificate.
        for node in NODES:
            log = folder / f"{node}.log"
            process = _start_node(fleet.settings.home, node, ports[node], log)
            processes.append(process)
            _wait_listening(fleet, process, node, log)
        yield HubNodes(fleet, ports, fleet.settings.home / "tls" / "ca-bundle.pem", folder)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        fleet.close()


def test_a_revocation_made_elsewhere_closes_the_session_on_the_node_holding_it(
    nodes: HubNodes,
) -> None:
    revoked = nodes.device("rev-b", "node-b")
    bystander = nodes.device("rev-a", "node-a")
    try:
        nodes.fleet.certificates.revoke(
            Actor.local_admin(),
            format(revoked.files.certificate.serial_number, "X"),
            RevocationReason.KEY_COMPROMISE,
        )
        assert revoked.disconnected.wait(WAIT), "node-b did not close the revoked session"
        # And the certificate is refused on the other node from now on.
        again = Client(nodes.ports["node-a"], nodes.ca_file, revoked.files)
        try:
            assert again.connect() == 5
        finally:
            again.close()
        assert not bystander.disconnected.is_set()
    finally:
        revoked.close()
        bystander.close()


def test_a_disabled_device_is_closed_on_the_node_holding_it(nodes: HubNodes) -> None:
    disabled = nodes.device("off-a", "node-a")
    bystander = nodes.device("off-b", "node-b")
    try:
        nodes.fleet.hub_devices.set_status("off-a", DeviceStatus.DISABLED)
        assert disabled.disconnected.wait(WAIT), "node-a did not close the disabled device"
        assert not bystander.disconnected.is_set()
    finally:
        disabled.close()
        bystander.close()


def test_a_c2d_message_reaches_the_node_holding_the_session(nodes: HubNodes) -> None:
    device = nodes.device("c2d-b", "node-b")
    try:
        device.subscribe("devices/c2d-b/messages/devicebound/#")
        nodes.fleet.hub_messages.enqueue_c2d("c2d-b", b"hello from elsewhere", message_id="m1")
        message = device.next_message()
        assert message.payload == b"hello from elsewhere"
        assert message.topic.startswith("devices/c2d-b/messages/devicebound/%24.mid=m1")
        wait_until(lambda: not nodes.fleet.hub_messages.pending_c2d("c2d-b"), "the delivery record")
    finally:
        device.close()


def test_a_desired_patch_reaches_the_node_holding_the_session(nodes: HubNodes) -> None:
    device = nodes.device("twin-a", "node-a")
    try:
        device.subscribe("$iothub/twin/PATCH/properties/desired/#")
        twin = nodes.fleet.hub_twins.patch("twin-a", {"properties": {"desired": {"interval": 30}}})
        message = device.next_message()
        assert message.topic == (
            f"$iothub/twin/PATCH/properties/desired/?$version={twin.desired_version}"
        )
        assert json.loads(message.payload)["interval"] == 30
    finally:
        device.close()


@pytest.mark.parametrize("node", NODES)
def test_a_direct_method_reaches_the_node_holding_the_session(nodes: HubNodes, node: str) -> None:
    device_id = f"method-{node}"
    device = nodes.device(device_id, node)
    try:
        device.subscribe("$iothub/methods/POST/#")

        def answer(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            rid = msg.topic.split("$rid=")[1]
            body = json.dumps({"echo": json.loads(msg.payload), "node": node})
            device.client.publish(f"$iothub/methods/res/200/?$rid={rid}", body, qos=1)

        device.client.on_message = answer
        result = asyncio.run(
            nodes.fleet.hub_methods.invoke(device_id, "reboot", {"delay": 1}, timeout=WAIT)
        )
        assert result.as_json() == {"status": 200, "payload": {"echo": {"delay": 1}, "node": node}}
    finally:
        device.close()


def test_a_direct_method_to_a_device_no_node_holds_is_404103(nodes: HubNodes) -> None:
    nodes.fleet.hub_devices.put(DeviceSpec("method-nowhere"))
    with pytest.raises(DeviceNotOnline) as caught:
        asyncio.run(nodes.fleet.hub_methods.invoke("method-nowhere", "reboot", None, timeout=5))
    assert caught.value.azure_error_code == 404103
