"""Symmetric-key devices on the live TLS hub: SAS tokens as CONNECT passwords (ref §1.3, §3.1).

paho-mqtt 2 sends exactly what the Azure device SDK sends for a connection string: the
username ``{host}/{deviceId}/?api-version=..`` and the token as the password, with no
client certificate. Refusals are checked on the wire too: a CONNECT pipelined with a
PUBLISH, so that "nothing stored" means the hub dropped a message it had already read.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from fleetpki.application import FleetPKI
from fleetpki.hub.azure.sas import device_resource_uri, generate_key, make_device_token
from fleetpki.hub.protocol import Connect, Publish, QoS, encode
from fleetpki.services.hub_devices import AuthType, DeviceSpec, HubDeviceView
from support.hub import LiveHub, start_hub_thread
from support.mqtt_device import WAIT

TOPIC = "devices/{}/messages/events/"


@pytest.fixture
def hub(sqlite_fleet: FleetPKI) -> Iterator[LiveHub]:
    with start_hub_thread(sqlite_fleet) as live:
        yield live


def _add_sas(fleet: FleetPKI, device_id: str, **keys: str) -> HubDeviceView:
    device, _ = fleet.hub_devices.put(DeviceSpec(device_id, auth_type=AuthType.SAS, **keys))
    assert device.primary_key and device.secondary_key
    return device


def _token(device_id: str, key: str, ttl: int = 3600, host: str = "localhost") -> str:
    return make_device_token(device_resource_uri(host, device_id), key, int(time.time()) + ttl)


class SasDevice:
    """A paho client that authenticates as the Azure SDK does for a connection string."""

    def __init__(self, hub: LiveHub, client_id: str, token: str) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.client.tls_set_context(ssl.create_default_context(cafile=str(hub.ca_file)))
        self.client.username_pw_set(f"localhost/{client_id}/?api-version=2019-10-01", token)
        self.client.reconnect_delay_set(60, 120)  # a closed client stays away
        self.connack: queue.Queue[int] = queue.Queue()
        self.disconnected = threading.Event()
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(
            0 if str(rc) == "Success" else 5 if str(rc) == "Not authorized" else rc.value
        )
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.port = hub.port

    def connect(self) -> int:
        """Connect and return the CONNACK code."""
        self.client.connect("localhost", self.port, keepalive=60)
        self.client.loop_start()
        return self.connack.get(timeout=WAIT)

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and wait for the PUBACK."""
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def _pipelined(hub: LiveHub, client_id: str, password: bytes | None) -> bytes:
    """CONNECT and a QoS 1 telemetry PUBLISH in one write; the hub's first answer."""
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    connect = Connect(client_id, True, 60, f"localhost/{client_id}/?api-version=x", password)
    publish = Publish(TOPIC.format(client_id), b"smuggled", QoS.AT_LEAST_ONCE, packet_id=1)
    with (
        socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(encode(connect) + encode(publish))
        answer = tls.recv(4)
        assert tls.recv(1) == b""  # and the hub closes the connection
        return answer


def test_a_sas_device_connects_and_its_telemetry_is_stored(
    sqlite_fleet: FleetPKI, hub: LiveHub
) -> None:
    device = _add_sas(sqlite_fleet, "sas-1")
    client = SasDevice(hub, "sas-1", _token("sas-1", device.primary_key or ""))
    try:
        assert client.connect() == 0
        client.publish(TOPIC.format("sas-1") + "%24.mid=m1&k=v", b"hello")
    finally:
        client.close()
    (record,) = hub.registry.telemetry
    assert (record.device_id, record.body) == ("sas-1", b"hello")
    assert (record.system_properties["message-id"], record.properties) == (
        "m1",
        {"k": "v"},
    )


def _refused_cases(fleet: FleetPKI) -> dict[str, tuple[str, bytes | None]]:
    one = _add_sas(fleet, "sas-1")
    two = _add_sas(fleet, "sas-2")
    fleet.hub_devices.put(DeviceSpec("ca-1"))
    key_one = one.primary_key or ""
    key_two = two.primary_key or ""
    return {
        "wrong key": ("sas-1", _token("sas-1", generate_key()).encode()),
        "expired": ("sas-1", _token("sas-1", key_one, ttl=-5).encode()),
        # Another device's token (its resource and its key), and this device's token
        # presented by another device.
        "other device's token": ("sas-1", _token("sas-2", key_two).encode()),
        "token for sas-1 as sas-2": ("sas-2", _token("sas-1", key_one).encode()),
        "another hub": ("sas-1", _token("sas-1", key_one, host="evil.example").encode()),
        "policy token": ("sas-1", (_token("sas-1", key_one) + "&skn=device").encode()),
        "not a token": ("sas-1", b"hunter2"),
        "not UTF-8": ("sas-1", b"\xff\xfe"),
        "X.509 device with a token": ("ca-1", _token("ca-1", key_one).encode()),
        "unregistered": ("ghost", _token("ghost", key_one).encode()),
        "no credential": ("sas-1", None),
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong key",
        "expired",
        "other device's token",
        "token for sas-1 as sas-2",
        "another hub",
        "policy token",
        "not a token",
        "not UTF-8",
        "X.509 device with a token",
        "unregistered",
        "no credential",
    ],
)
def test_refused_tokens_get_connack_5_and_nothing_is_stored(
    sqlite_fleet: FleetPKI, hub: LiveHub, case: str
) -> None:
    client_id, password = _refused_cases(sqlite_fleet)[case]
    assert _pipelined(hub, client_id, password) == b"\x20\x02\x00\x05"
    assert hub.registry.telemetry == []
    # The same connection with a good token is let in and its message stored: the
    # refusal above is the token's, not the wire form's.
    if client_id == "sas-1":
        key = sqlite_fleet.hub_devices.get("sas-1").primary_key or ""
        assert _pipelined_accepted(hub, "sas-1", _token("sas-1", key).encode())
        assert [r.body for r in hub.registry.telemetry] == [b"smuggled"]


def _pipelined_accepted(hub: LiveHub, client_id: str, password: bytes) -> bool:
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    connect = Connect(client_id, True, 60, f"localhost/{client_id}/?api-version=x", password)
    publish = Publish(TOPIC.format(client_id), b"smuggled", QoS.AT_LEAST_ONCE, packet_id=1)
    with (
        socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(encode(connect) + encode(publish))
        received = b""
        while len(received) < 8:  # CONNACK 0, then the PUBACK after the commit
            chunk = tls.recv(8 - len(received))
            assert chunk, received
            received += chunk
        return received == b"\x20\x02\x00\x00\x40\x02\x00\x01"


def test_token_expiry_ends_the_session(
    sqlite_fleet: FleetPKI, hub: LiveHub, caplog: pytest.LogCaptureFixture
) -> None:
    device = _add_sas(sqlite_fleet, "sas-1")
    client = SasDevice(hub, "sas-1", _token("sas-1", device.primary_key or "", ttl=2))
    caplog.set_level(logging.INFO, logger="fleetpki.hub")
    try:
        assert client.connect() == 0
        assert client.disconnected.wait(WAIT), "the session outlived its token"
    finally:
        client.close()
    assert any("hub.sas_expired" in r.getMessage() for r in caplog.records)
    assert not hub.broker.is_connected("sas-1")


def test_replacing_a_key_ends_the_sessions_it_signed_only(
    sqlite_fleet: FleetPKI, hub: LiveHub
) -> None:
    device = _add_sas(sqlite_fleet, "sas-1")
    old_primary, secondary = device.primary_key or "", device.secondary_key or ""
    on_primary = SasDevice(hub, "sas-1", _token("sas-1", old_primary))
    # Another device that happens to have the same keys is not touched by sas-1's change.
    _add_sas(sqlite_fleet, "sas-2", primary_key=old_primary, secondary_key=secondary)
    on_secondary = SasDevice(hub, "sas-2", _token("sas-2", secondary))
    try:
        assert on_primary.connect() == 0
        assert on_secondary.connect() == 0
        new_primary = generate_key()
        # The service API's PUT /devices/{id} with a new symmetricKey (If-Match: *).
        sqlite_fleet.hub_devices.put(
            DeviceSpec("sas-1", auth_type=AuthType.SAS, primary_key=new_primary),
            if_match='"*"',
        )
        assert on_primary.disconnected.wait(WAIT), "the old key's session went on"
        kept = sqlite_fleet.hub_devices.get("sas-1")
        assert (kept.primary_key, kept.secondary_key) == (new_primary, secondary)
        # sas-2's keys are the same but they are its own: its session stays.
        _assert_alive(hub, on_secondary, "sas-2")
    finally:
        on_primary.close()
        on_secondary.close()
    assert _pipelined(hub, "sas-1", _token("sas-1", old_primary).encode()) == b"\x20\x02\x00\x05"
    assert _pipelined_accepted(hub, "sas-1", _token("sas-1", new_primary).encode())
    assert _pipelined_accepted(hub, "sas-1", _token("sas-1", secondary).encode())


def test_a_secondary_key_session_survives_a_primary_rotation(
    sqlite_fleet: FleetPKI, hub: LiveHub
) -> None:
    device = _add_sas(sqlite_fleet, "sas-1")
    on_primary = SasDevice(hub, "sas-1", _token("sas-1", device.primary_key or ""))
    try:
        assert on_primary.connect() == 0
        sqlite_fleet.hub_devices.put(
            DeviceSpec("sas-1", auth_type=AuthType.SAS, secondary_key=generate_key()),
            if_match='"*"',
        )
        # Only the secondary key changed; the session signed by the primary stays.
        _assert_alive(hub, on_primary, "sas-1")
    finally:
        on_primary.close()


def test_changing_the_authentication_type_ends_a_sas_session(
    sqlite_fleet: FleetPKI, hub: LiveHub
) -> None:
    device = _add_sas(sqlite_fleet, "sas-1")
    client = SasDevice(hub, "sas-1", _token("sas-1", device.primary_key or ""))
    try:
        assert client.connect() == 0
        sqlite_fleet.hub_devices.put(DeviceSpec("sas-1"), if_match='"*"')
        assert client.disconnected.wait(WAIT)
    finally:
        client.close()
    assert sqlite_fleet.hub_devices.get("sas-1").primary_key is None


def _assert_alive(hub: LiveHub, client: SasDevice, device_id: str) -> None:
    """The session still works: a message sent now is acknowledged and stored.

    Called after a round trip through the hub's loop, which orders it after the
    handling of any event published before: a session closed by it reads nothing more.
    """
    hub.call(lambda: None)
    client.publish(TOPIC.format(device_id), b"still here")
    assert b"still here" in [r.body for r in hub.registry.telemetry if r.device_id == device_id]
    assert not client.disconnected.is_set()
