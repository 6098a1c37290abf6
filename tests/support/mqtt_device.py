"""A paho-mqtt 2 device over TLS with its certificate, and a bounded wait for the tests."""

from __future__ import annotations

import json
import queue
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from support.hub import DeviceFiles

__all__ = ["WAIT", "Device", "connect_once", "wait_until"]

#: A generous bound for anything the tests wait for (never a timing assertion).
WAIT = 20.0


def wait_until(predicate: Callable[[], object], what: str, *, seconds: float = WAIT) -> None:
    """Poll ``predicate`` until true, failing the test after ``seconds`` (:data:`WAIT`)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


class Device:
    """A paho-mqtt 2 client connected as a device over TLS with its certificate; what the
    hub sends it waits in ``messages``."""

    def __init__(self, port: int, ca_file: Path, files: DeviceFiles) -> None:
        self.port = port
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=files.device_id, clean_session=False
        )
        context = ssl.create_default_context(cafile=str(ca_file))
        context.load_cert_chain(files.cert, files.key)
        self.client.tls_set_context(context)
        self.client.username_pw_set(f"localhost/{files.device_id}/?api-version=2021-04-12")
        self.client.reconnect_delay_set(60, 120)  # a refused or closed client stays away
        self.files = files
        self.connack: queue.Queue[int] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.disconnected = threading.Event()
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(_v311_code(rc))
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.on_disconnect = lambda *_: self.disconnected.set()

    def connect(self, keepalive: int = 60) -> int:
        """Connect and return the CONNACK return code (MQTT 3.1.1).

        paho closes the connection when a PINGREQ gets no PINGRESP within ``keepalive``.
        """
        self.client.connect("localhost", self.port, keepalive=keepalive)
        self.client.loop_start()
        return self.connack.get(timeout=WAIT)

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(WAIT), f"no SUBACK for {topic}"

    def next_message(self) -> mqtt.MQTTMessage:
        """The next message from the hub (waits at most :data:`WAIT` seconds)."""
        return self.messages.get(timeout=WAIT)

    def answer_methods(self, answer: Callable[[str, Any], tuple[int, Any]]) -> None:
        """Subscribe to direct methods and answer each with ``answer(name, payload)``."""

        def reply(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            name, rid = message.topic.split("/")[3], message.topic.split("$rid=")[1]
            status, body = answer(name, json.loads(message.payload or b"null"))
            self.client.publish(f"$iothub/methods/res/{status}/?$rid={rid}", json.dumps(body), 1)

        self.subscribe("$iothub/methods/POST/#")
        self.client.on_message = reply

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def _v311_code(reason: Any) -> int:
    names = {"Success": 0, "Server unavailable": 3, "Not authorized": 5}
    return names.get(str(reason), reason.value)


def connect_once(port: int, ca_file: Path, files: DeviceFiles) -> int:
    """Connect, read the CONNACK code, disconnect."""
    device = Device(port, ca_file, files)
    try:
        return device.connect()
    finally:
        device.close()
