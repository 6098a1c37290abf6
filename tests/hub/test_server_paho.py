"""The TLS hub against paho-mqtt 2.x: telemetry, twins, methods, C2D, sessions and refusals."""

from __future__ import annotations

import json
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from fleetpki.application import FleetPKI
from fleetpki.hub.backend import C2DMessage
from fleetpki.hub.methods import DeviceNotOnline, MethodResult
from fleetpki.hub.protocol import Connect, encode
from fleetpki.hub.server import READ_BUFFER_SIZE
from support.hub import DeviceFiles, ForeignCA, LiveHub, issue_device, start_hub_thread

WAIT = 20.0


def wait_until(predicate: Any, what: str) -> None:
    """Poll ``predicate`` until true (never a timing assertion: a generous bound only)."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _v311_code(reason: Any) -> int:
    """paho 2 reports MQTT 3.1.1 CONNACK codes as v5 reason codes; map them back (§3.2.2.3)."""
    names = {"Success": 0, "Not authorized": 5, "Bad user name or password": 4}
    return names.get(str(reason), reason.value)


class Device:
    """A paho client connected as a device, with its incoming messages in a queue."""

    def __init__(
        self,
        hub: LiveHub,
        files: DeviceFiles,
        *,
        client_id: str | None = None,
        clean_session: bool = False,
        tls_version: ssl.TLSVersion | None = None,
        username: str | None = None,
    ) -> None:
        self.client_id = client_id or files.device_id
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=clean_session,
        )
        context = ssl.create_default_context(cafile=str(hub.ca_file))
        if tls_version is not None:
            context.minimum_version = context.maximum_version = tls_version
        context.load_cert_chain(files.cert, files.key)
        self.client.tls_set_context(context)
        self.client.username_pw_set(
            username
            if username is not None
            else f"localhost/{self.client_id}/?api-version=2019-10-01"
        )
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[int] = queue.Queue()
        self.disconnected = threading.Event()
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(_v311_code(rc))
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.hub = hub

    def connect(self) -> int:
        """Connect and return the CONNACK return code."""
        self.disconnected.clear()
        self.client.connect("localhost", self.hub.port, keepalive=60)
        self.client.loop_start()
        return self.connack.get(timeout=WAIT)

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(WAIT)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        """Publish and wait for the PUBACK."""
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(WAIT)

    def next_message(self) -> mqtt.MQTTMessage:
        """The next message from the hub."""
        return self.messages.get(timeout=WAIT)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def hub(sqlite_fleet: FleetPKI) -> Iterator[LiveHub]:
    with start_hub_thread(sqlite_fleet) as live:
        yield live


@pytest.fixture
def dev1(sqlite_fleet: FleetPKI, hub: LiveHub, tmp_path: Path) -> DeviceFiles:
    hub.registry.add_device("dev1")
    return issue_device(sqlite_fleet, "dev1", tmp_path / "certs")


@pytest.fixture
def device(hub: LiveHub, dev1: DeviceFiles) -> Iterator[Device]:
    client = Device(hub, dev1)
    assert client.connect() == 0
    yield client
    client.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_connects_over_tls_12_and_13(hub: LiveHub, dev1: DeviceFiles, version: Any) -> None:
    client = Device(hub, dev1, tls_version=version)
    try:
        assert client.connect() == 0
    finally:
        client.close()


def test_telemetry_is_stored_with_exact_properties_before_the_puback(
    hub: LiveHub, device: Device
) -> None:
    topic = "devices/dev1/messages/events/%24.mid=mid%201&%24.ct=application%2Fjson&a%2Bb=c%2Bd&e%3Df=x%26y"
    device.publish(topic, b'{"t": 21.5}')
    # PUBACK came back, so the message is already stored.
    (record,) = hub.registry.telemetry
    assert record.device_id == "dev1"
    assert record.body == b'{"t": 21.5}'
    assert record.system_properties == {"message-id": "mid 1", "content-type": "application/json"}
    assert record.properties == {"a+b": "c+d", "e=f": "x&y"}


def test_many_messages_are_batched_and_all_acknowledged(hub: LiveHub, device: Device) -> None:
    infos = [
        device.client.publish("devices/dev1/messages/events/", f"m{i}", qos=1) for i in range(200)
    ]
    for info in infos:
        info.wait_for_publish(WAIT)
    assert [r.body for r in hub.registry.telemetry] == [f"m{i}".encode() for i in range(200)]


def test_a_message_larger_than_the_shared_read_buffer_is_stored_whole(
    hub: LiveHub, device: Device
) -> None:
    # The hub's connections read into one buffer of READ_BUFFER_SIZE bytes: a PUBLISH
    # bigger than it arrives over several reads and is put together whole.
    body = bytes(range(256)) * (READ_BUFFER_SIZE // 256) + b"tail"
    device.publish("devices/dev1/messages/events/", body)
    device.publish("devices/dev1/messages/events/", b"after")
    assert [r.body for r in hub.registry.telemetry] == [body, b"after"]


def test_twin_get_is_answered_without_a_subscription(hub: LiveHub, device: Device) -> None:
    hub.registry.patch_desired("dev1", {"interval": 5})
    device.publish("$iothub/twin/GET/?$rid=r1", " ")
    message = device.next_message()
    assert message.topic == "$iothub/twin/res/200/?$rid=r1"
    body = json.loads(message.payload)
    assert body["desired"] == {"interval": 5, "$version": 2}
    assert body["reported"] == {"$version": 1}


def test_reported_patch_answers_204_with_version(hub: LiveHub, device: Device) -> None:
    device.subscribe("$iothub/twin/res/#")
    device.publish("$iothub/twin/PATCH/properties/reported/?$rid=7", json.dumps({"fw": "1.2"}))
    message = device.next_message()
    assert message.topic == "$iothub/twin/res/204/?$rid=7&$version=2"
    assert hub.registry.get_twin("dev1").reported == {"fw": "1.2"}


def test_desired_patch_is_pushed_with_version(hub: LiveHub, device: Device) -> None:
    device.subscribe("$iothub/twin/PATCH/properties/desired/#")
    hub.registry.patch_desired("dev1", {"interval": 9})
    message = device.next_message()
    assert message.topic == "$iothub/twin/PATCH/properties/desired/?$version=2"
    assert json.loads(message.payload) == {"interval": 9, "$version": 2}


def test_direct_method_round_trip(hub: LiveHub, device: Device) -> None:
    device.subscribe("$iothub/methods/POST/#")

    def answer(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        rid = msg.topic.split("$rid=")[1]
        name = msg.topic.split("/")[3]
        body = json.dumps({"echo": json.loads(msg.payload), "name": name})
        device.client.publish(f"$iothub/methods/res/201/?$rid={rid}", body, qos=1)

    device.client.on_message = answer
    result = hub.run(hub.broker.invoke_method("dev1", "reboot", {"delay": 1}, timeout=WAIT))
    assert isinstance(result, MethodResult)
    assert result.as_json() == {"status": 201, "payload": {"echo": {"delay": 1}, "name": "reboot"}}


def test_direct_method_to_an_offline_device_is_404103(hub: LiveHub) -> None:
    with pytest.raises(DeviceNotOnline) as caught:
        hub.run(hub.broker.invoke_method("dev1", "reboot", None, timeout=1))
    assert caught.value.azure_error_code == 404103


def test_c2d_is_delivered_live_and_after_reconnect(hub: LiveHub, dev1: DeviceFiles) -> None:
    first = Device(hub, dev1)
    assert first.connect() == 0
    first.subscribe("devices/dev1/messages/devicebound/#")
    hub.registry.send_c2d("dev1", C2DMessage("m1", b"live", {"$.cid": "c1", "colour": "blue"}))
    message = first.next_message()
    assert message.topic == (
        "devices/dev1/messages/devicebound/%24.mid=m1&%24.cid=c1"
        "&%24.to=%2Fdevices%2Fdev1%2Fmessages%2Fdevicebound&iothub-ack=none&colour=blue"
    )
    assert message.payload == b"live"
    wait_until(lambda: not hub.registry.pending_c2d("dev1"), "the delivery to be recorded")
    first.close()
    wait_until(lambda: not hub.broker.is_connected("dev1"), "the disconnect")
    hub.registry.send_c2d("dev1", C2DMessage("m2", b"queued"))
    # A new client with the same id and no SUBSCRIBE: the session kept the subscription.
    second = Device(hub, dev1)
    try:
        assert second.connect() == 0
        assert second.next_message().payload == b"queued"
    finally:
        second.close()


def test_a_new_connection_drops_the_old_one(hub: LiveHub, dev1: DeviceFiles) -> None:
    first, second = Device(hub, dev1), Device(hub, dev1)
    first.client.reconnect_delay_set(60, 120)
    try:
        assert first.connect() == 0
        assert second.connect() == 0
        assert first.disconnected.wait(WAIT)
        second.publish("devices/dev1/messages/events/", b"x")
    finally:
        first.close()
        second.close()


def test_publishing_on_another_devices_topic_drops_the_connection(
    hub: LiveHub, device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    device.client.reconnect_delay_set(60, 120)
    device.client.publish("devices/dev2/messages/events/", b"spoof", qos=1)
    assert device.disconnected.wait(WAIT)
    assert not hub.registry.telemetry
    wait_until(lambda: "azure.topic_not_allowed" in caplog.text, "the log line")


def test_subscribing_to_another_devices_topic_drops_the_connection(
    device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    device.client.reconnect_delay_set(60, 120)
    device.client.subscribe("devices/+/messages/devicebound/#", qos=1)
    assert device.disconnected.wait(WAIT)
    wait_until(lambda: "azure.topic_not_allowed" in caplog.text, "the log line")


def _refused(hub: LiveHub, files: DeviceFiles, **kwargs: Any) -> int:
    client = Device(hub, files, **kwargs)
    client.client.reconnect_delay_set(60, 120)
    try:
        return client.connect()
    finally:
        client.close()


@pytest.mark.parametrize(
    "case",
    [
        "unknown_device",
        "device_disabled",
        "cn_mismatch",
        "untrusted_ca",
        "ca_unverified",
        "certificate_revoked",
        "bad_username",
    ],
)
def test_refusals_get_connack_5_and_a_logged_reason(
    case: str,
    sqlite_fleet: FleetPKI,
    hub: LiveHub,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kwargs: dict[str, Any] = {}
    code = f"hub.{case}"
    if case == "unknown_device":
        files = issue_device(sqlite_fleet, "ghost", tmp_path)
    elif case == "device_disabled":
        hub.registry.add_device("dev9", enabled=False)
        files = issue_device(sqlite_fleet, "dev9", tmp_path)
    elif case == "cn_mismatch":
        hub.registry.add_device("dev9")
        files = issue_device(sqlite_fleet, "other", tmp_path)
        kwargs["client_id"] = "dev9"
    elif case in ("untrusted_ca", "ca_unverified"):
        hub.registry.add_device("dev9")
        foreign = ForeignCA()
        if case == "ca_unverified":
            hub.registry.trust_ca(foreign.certificate, verified=False)
        files = foreign.issue("dev9", tmp_path)
    elif case == "certificate_revoked":
        hub.registry.add_device("dev9")
        files = issue_device(sqlite_fleet, "dev9", tmp_path)
        hub.registry.revoke(files.certificate)
    else:
        hub.registry.add_device("dev9")
        files = issue_device(sqlite_fleet, "dev9", tmp_path)
        kwargs["username"] = "otherhub/dev9/?api-version=2019-10-01"
        code = "azure.bad_username"
    assert _refused(hub, files, **kwargs) == 5
    wait_until(lambda: code in caplog.text, f"a log line with {code}")


def test_no_client_certificate_gets_connack_5(hub: LiveHub) -> None:
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    with (
        socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(encode(Connect("dev1", False, 60, "localhost/dev1/?api-version=x")))
        assert tls.recv(4) == b"\x20\x02\x00\x05"


@pytest.mark.parametrize("how", ["revoke", "disable", "delete"])
def test_blocking_a_device_closes_its_live_session_and_refuses_it(
    how: str, hub: LiveHub, dev1: DeviceFiles, device: Device
) -> None:
    device.client.reconnect_delay_set(60, 120)
    if how == "revoke":
        hub.registry.revoke(dev1.certificate)
    elif how == "disable":
        hub.registry.set_enabled("dev1", False)
    else:
        hub.registry.delete_device("dev1")
    assert device.disconnected.wait(WAIT)
    wait_until(lambda: not hub.broker.is_connected("dev1"), "the session to close")
    assert _refused(hub, dev1) == 5


def test_keepalive_is_enforced(hub: LiveHub, dev1: DeviceFiles) -> None:
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    context.load_cert_chain(dev1.cert, dev1.key)
    with (
        socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(encode(Connect("dev1", True, 1, "localhost/dev1/?api-version=x")))
        assert tls.recv(4) == b"\x20\x02\x00\x00"
        # Silent for longer than 1.5 x keepalive: the hub closes the connection.
        assert tls.recv(1) == b""
