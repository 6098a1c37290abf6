"""DPS over MQTT on the hub's port with paho-mqtt 2.x against a real server: bad input
is answered as DPS answers it (CONNACK 5, or a 4xx on the response topic, or the
connection dropped) and changes nothing in the database."""

from __future__ import annotations

import json
import queue
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fleetpki.hub.azure.dps import (
    DPS_RESPONSE_FILTER,
    dps_register_topic,
    dps_status_topic,
    dps_username,
    parse_response_topic,
)
from fleetpki.services import Actor
from fleetpki.services.provisioning_enrollments import EnrollmentKind, EnrollmentSpec
from support.api import row_counts
from support.hub import DeviceFiles, issue_device
from support.hub_control import issuing_ca
from support.server import LiveServer, start_server

WAIT = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DpsClient:
    """A DPS client over paho: CONNECT with a DPS username, then requests and answers."""

    def __init__(self, port: int, ca: Path, files: DeviceFiles, username: str, client_id: str):
        self.answers: queue.Queue[tuple[int, dict[str, str], Any]] = queue.Queue()
        self.connack: queue.Queue[int] = queue.Queue()
        self.closed = queue.Queue[bool]()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(files.cert), str(files.key))
        client.tls_set_context(context)
        client.username_pw_set(username, None)
        client.reconnect_delay_set(60, 60)
        client.on_connect = lambda _c, _u, _f, reason, _p: self.connack.put(reason.value)
        client.on_disconnect = lambda *_: self.closed.put(True)
        client.on_message = self._on_message
        self.client = client
        client.connect("127.0.0.1", port)
        client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        status, properties = parse_response_topic(message.topic)
        self.answers.put((status, properties, json.loads(message.payload)))

    def subscribe(self, topic: str = DPS_RESPONSE_FILTER) -> None:
        self.client.subscribe(topic, qos=1)

    def request(self, topic: str, body: bytes) -> tuple[int, dict[str, str], Any]:
        self.client.publish(topic, body, qos=1)
        return self.answers.get(timeout=WAIT)

    def register(self, rid: str, registration_id: str, body: bytes | None = None) -> Any:
        payload = (
            body
            if body is not None
            else json.dumps({"payload": None, "registrationId": registration_id}).encode()
        )
        return self.request(dps_register_topic(rid), payload)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Setup:
    server: LiveServer
    port: int
    scope: str
    first: DeviceFiles
    second: DeviceFiles

    def client(
        self, files: DeviceFiles, registration_id: str, scope: str | None = None
    ) -> DpsClient:
        username = dps_username(scope or self.scope, registration_id, "paho")
        return DpsClient(self.port, self.server.ca_bundle, files, username, registration_id)

    def connected(self, files: DeviceFiles, registration_id: str) -> DpsClient:
        client = self.client(files, registration_id)
        assert client.connack.get(timeout=WAIT) == 0
        client.subscribe()
        return client


@pytest.fixture(name="setup")
def setup_fixture(tmp_path: Path, key_passphrase: None) -> Iterator[Setup]:
    port = _free_port()  # start_server does not report the hub's port
    with start_server(
        tmp_path / "home", mqtt_port=port, provisioning_register_interval_seconds=0
    ) as server:
        fleet = server.fleet
        ca = issuing_ca(fleet)
        fleet.hub_trust.trust_local_ca(ca.id)
        fleet.provisioning_enrollments.add(
            Actor.local_admin(), EnrollmentSpec(EnrollmentKind.GROUP, "plant", ca=ca.id)
        )
        yield Setup(
            server,
            port,
            fleet.provisioning.id_scope,
            issue_device(fleet, "mqtt-dev", tmp_path),
            issue_device(fleet, "mqtt-other", tmp_path),
        )


def test_register_and_poll(setup: Setup) -> None:
    client = setup.connected(setup.first, "mqtt-dev")
    try:
        status, properties, body = client.register("r1", "mqtt-dev")
        assert (status, properties["rid"], body["status"]) == (202, "r1", "assigning")
        assert properties["retry-after"] == "1"
        status, properties, body = client.request(dps_status_topic("r2", body["operationId"]), b" ")
    finally:
        client.close()
    assert (status, properties["rid"], body["status"]) == (200, "r2", "assigned")
    assert body["registrationState"]["deviceId"] == "mqtt-dev"
    assert setup.server.fleet.hub_devices.get("mqtt-dev") is not None


def test_an_unknown_id_scope_is_connack_5_and_changes_nothing(setup: Setup) -> None:
    before = row_counts(setup.server.fleet)
    client = setup.client(setup.first, "mqtt-dev", scope="0ne00000000")
    try:
        # paho 2.x reports CONNACK 5 (not authorized) as the v5 code 135.
        assert client.connack.get(timeout=WAIT) == 135
    finally:
        client.close()
    assert row_counts(setup.server.fleet) == before


# (name, the registration id of the username, the register body, status, stable code)
BAD_REGISTERS = [
    ("registration id is not the CN", "mqtt-other", None, 401, "hub.cn_mismatch"),
    ("body registrationId differs", "mqtt-dev",
     b'{"registrationId": "mqtt-other", "payload": null}', 400,
     "provisioning.registration_id_mismatch"),
    ("malformed payload", "mqtt-dev", b"{not json", 400, "provisioning.bad_payload"),
    ("payload not an object", "mqtt-dev", b"[1]", 400, "provisioning.bad_payload"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("registration_id", "body", "status", "code"),
    [pytest.param(r, b, s, c, id=n) for n, r, b, s, c in BAD_REGISTERS],
)
def test_bad_registrations_are_refused_on_the_response_topic_and_change_nothing(
    setup: Setup, registration_id: str, body: bytes | None, status: int, code: str
) -> None:
    before = row_counts(setup.server.fleet)
    client = setup.connected(setup.first, registration_id)
    try:
        answer_status, properties, answer = client.register("bad", registration_id, body)
    finally:
        client.close()
    assert (answer_status, properties["rid"]) == (status, "bad")
    assert answer["code"] == code
    assert answer["errorCode"] // 1000 == status
    assert row_counts(setup.server.fleet) == before


def test_polling_another_devices_operation_is_404_and_changes_nothing(setup: Setup) -> None:
    first = setup.connected(setup.first, "mqtt-dev")
    try:
        _, _, body = first.register("r1", "mqtt-dev")
    finally:
        first.close()
    before = row_counts(setup.server.fleet)
    second = setup.connected(setup.second, "mqtt-other")
    try:
        status, _, answer = second.request(dps_status_topic("r2", body["operationId"]), b" ")
    finally:
        second.close()
    assert (status, answer["code"]) == (404, "provisioning.operation_not_found")
    assert row_counts(setup.server.fleet) == before


def test_too_many_registrations_are_429_with_retry_after(setup: Setup) -> None:
    setup.server.fleet.provisioning.throttle.interval = 60
    client = setup.connected(setup.first, "mqtt-dev")
    try:
        assert client.register("r1", "mqtt-dev")[0] == 202
        before = row_counts(setup.server.fleet)
        status, properties, answer = client.register("r2", "mqtt-dev")
    finally:
        client.close()
    assert (status, answer["code"]) == (429, "provisioning.throttled")
    assert 1 <= int(properties["retry-after"]) <= 60
    assert row_counts(setup.server.fleet) == before


@pytest.mark.parametrize(
    "action",
    ["subscribe to a hub topic", "publish to a hub topic"],
)
def test_other_topics_drop_the_connection_and_change_nothing(setup: Setup, action: str) -> None:
    before = row_counts(setup.server.fleet)
    client = setup.client(setup.first, "mqtt-dev")
    try:
        assert client.connack.get(timeout=WAIT) == 0
        if action.startswith("subscribe"):
            client.subscribe("devices/mqtt-dev/messages/devicebound/#")
        else:
            client.client.publish("devices/mqtt-dev/messages/events/", b"x", qos=1)
        assert client.closed.get(timeout=WAIT)
    finally:
        client.close()
    assert row_counts(setup.server.fleet) == before
