"""Two hub nodes on one PostgreSQL: what changes anywhere reaches the node holding the session.

Two real ``fleetpki serve --only hub --hub-node ...`` processes share one home and its
PostgreSQL database; paho-mqtt devices connect over TLS to one node or the other. The
changes are made in this test process, a third one (as the CLI, an API worker or another
node would make them): a revocation, a disabled device, a cloud-to-device message, a
desired-properties patch and a direct method must each reach the node that holds the
device's session, and leave the other node's devices alone. A device that moves to the
other node stays Connected in the registry when the node it left records its end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from fleetpki.application import FleetPKI, init_home
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services.authority import HierarchySpec
from fleetpki.services.context import Actor
from fleetpki.services.hub_devices import DeviceSpec, DeviceStatus
from fleetpki.services.hub_methods import DeviceNotOnline
from fleetpki.settings import Settings
from fleetpki.store.hub_models import HubDevice, HubNode
from support.database import raw_session
from support.hub import issue_device, trust_issuing_ca
from support.mqtt_device import WAIT, Device, wait_until
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

    def device(self, device_id: str, node: str) -> Device:
        """Register and certify ``device_id``, then connect it to ``node``."""
        self.fleet.hub_devices.put(DeviceSpec(device_id))
        files = issue_device(self.fleet, device_id, self.certs)
        client = Device(self.ports[node], self.ca_file, files)
        assert client.connect() == 0
        return client


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
                # No AMQP: both nodes would dial for 5671 (and parallel tests with them).
                *("--amqp-port", "-1"),
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
        again = Device(nodes.ports["node-a"], nodes.ca_file, revoked.files)
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
        device.answer_methods(lambda name, body: (200, {"echo": body, "node": node, "name": name}))
        result = asyncio.run(
            nodes.fleet.hub_methods.invoke(device_id, "reboot", {"delay": 1}, timeout=WAIT)
        )
        assert result.as_json() == {
            "status": 200,
            "payload": {"echo": {"delay": 1}, "node": node, "name": "reboot"},
        }
    finally:
        device.close()


def test_a_direct_method_to_a_device_no_node_holds_is_404103(nodes: HubNodes) -> None:
    nodes.fleet.hub_devices.put(DeviceSpec("method-nowhere"))
    with pytest.raises(DeviceNotOnline) as caught:
        asyncio.run(nodes.fleet.hub_methods.invoke("method-nowhere", "reboot", None, timeout=5))
    assert caught.value.azure_error_code == 404103


def test_a_device_that_connects_to_another_node_is_closed_on_the_first(nodes: HubNodes) -> None:
    first = nodes.device("moving", "node-a")
    second = Device(nodes.ports["node-b"], nodes.ca_file, first.files)
    try:
        assert second.connect() == 0
        # One connection per client id across nodes, as within one: the newer wins.
        assert first.disconnected.wait(WAIT), "node-a kept the older session"
        second.answer_methods(lambda name, body: (200, {"on": "node-b"}))
        result = asyncio.run(nodes.fleet.hub_methods.invoke("moving", "where", None, timeout=WAIT))
        assert result.as_json() == {"status": 200, "payload": {"on": "node-b"}}
        assert not second.disconnected.is_set()
    finally:
        second.close()
        first.close()


def _recorded(fleet: FleetPKI, device_id: str) -> tuple[str, str | None]:
    """The registry's connection state of ``device_id`` and the node it names."""
    with raw_session(fleet) as session:
        device = session.get(HubDevice, device_id)
        return device.connection_state, device.connection_node


def _node_reports_none_since(fleet: FleetPKI, node: str, since: dt.datetime) -> bool:
    with raw_session(fleet) as session:
        row = session.get(HubNode, node)
        return row is not None and row.heartbeat_at > since and row.connected == 0


def test_a_device_that_moved_stays_connected_when_the_node_it_left_records_its_end(
    nodes: HubNodes,
) -> None:
    first = nodes.device("moved", "node-a")
    connected_at = dt.datetime.now(dt.UTC)
    second = Device(nodes.ports["node-b"], nodes.ca_file, first.files)
    marker = None
    try:
        wait_until(lambda: _recorded(nodes.fleet, "moved") == ("Connected", "node-a"), "on a")
        assert second.connect() == 0
        assert first.disconnected.wait(WAIT), "node-a kept the older session"
        wait_until(lambda: _recorded(nodes.fleet, "moved") == ("Connected", "node-b"), "on b")
        # node-a forgets the closed connection when it queues its disconnect: once its
        # heartbeat counts no device, that disconnect is queued; a connect to node-a
        # after it is recorded after it (one queue per node).
        wait_until(
            lambda: _node_reports_none_since(nodes.fleet, "node-a", connected_at),
            "node-a holding no device",
        )
        marker = nodes.device("moved-marker", "node-a")
        wait_until(
            lambda: _recorded(nodes.fleet, "moved-marker") == ("Connected", "node-a"), "marker"
        )
        # node-a's disconnect of the first connection came after node-b's connect.
        assert _recorded(nodes.fleet, "moved") == ("Connected", "node-b")
        assert nodes.fleet.hub_devices.get("moved").connection_state == "Connected"
        second.close()
        wait_until(
            lambda: _recorded(nodes.fleet, "moved") == ("Disconnected", "node-b"), "its end on b"
        )
    finally:
        second.close()
        first.close()
        if marker is not None:
            marker.close()
