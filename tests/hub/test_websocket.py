"""MQTT over WebSockets at /$iothub/websocket on the HTTPS port, with paho-mqtt as the device."""

from __future__ import annotations

import json
import ssl
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor, authority, certificates, hub_registry, hub_trust
from fleetpki.services.hub_messages import list_messages
from fleetpki.services.hub_registry import DeviceSpec
from support.hub import DeviceFiles, issue_device
from support.server import LiveServer, start_server

WAIT = 20.0


def _prepare(server: LiveServer, device_id: str, tmp: Path) -> DeviceFiles:
    fleet = server.fleet
    files = issue_device(fleet, device_id, tmp)
    with fleet.transaction() as session:
        issuing = next(c for c in authority.list_cas(session) if c.tier == "issuing")
        hub_trust.trust_local_ca(session, fleet.keystore, issuing.id, now=fleet.now())
        hub_registry.put_device(session, DeviceSpec(device_id=device_id), now=fleet.now())
    return files


def _client(server: LiveServer, files: DeviceFiles) -> tuple[mqtt.Client, dict[str, object]]:
    state: dict[str, object] = {
        "connack": None,
        "closed": threading.Event(),
        "ready": threading.Event(),
    }
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=files.device_id,
        clean_session=False,
        protocol=MQTTProtocolVersion.MQTTv311,
        transport="websockets",
    )
    client.ws_set_options(path="/$iothub/websocket")
    context = ssl.create_default_context(cafile=str(server.ca_bundle))
    context.load_cert_chain(str(files.cert), str(files.key))
    client.tls_set_context(context)
    client.username_pw_set(f"localhost/{files.device_id}/?api-version=2021-04-12", None)

    def on_connect(_c, _u, _f, reason, _p):  # type: ignore[no-untyped-def]
        state["connack"] = reason.value
        state["ready"].set()  # type: ignore[attr-defined]

    def on_disconnect(_c, _u, _f, reason, _p):  # type: ignore[no-untyped-def]
        state["closed"].set()  # type: ignore[attr-defined]
        state["ready"].set()  # type: ignore[attr-defined]

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    return client, state


def test_telemetry_c2d_and_revocation_over_websockets(tmp_path: Path) -> None:
    with start_server(tmp_path / "home") as server:
        files = _prepare(server, "ws-dev", tmp_path)
        client, state = _client(server, files)
        received: list[bytes] = []
        got_c2d = threading.Event()

        def on_message(_c, _u, message):  # type: ignore[no-untyped-def]
            received.append(message.payload)
            got_c2d.set()

        client.on_message = on_message
        client.connect("127.0.0.1", server.port)
        client.loop_start()
        try:
            assert state["ready"].wait(WAIT)  # type: ignore[attr-defined]
            assert state["connack"] == 0
            info = client.publish(
                "devices/ws-dev/messages/events/alert=yes", json.dumps({"t": 21}), qos=1
            )
            info.wait_for_publish(WAIT)
            with server.fleet.transaction() as session:
                stored = list_messages(session, device_id="ws-dev")
            assert [(m.body, m.properties) for m in stored] == [(b'{"t": 21}', {"alert": "yes"})]

            sub = client.subscribe("devices/ws-dev/messages/devicebound/#", qos=1)
            assert sub[0] == mqtt.MQTT_ERR_SUCCESS
            time.sleep(0.2)
            from fleetpki.services.hub_messages import enqueue_c2d

            with server.fleet.transaction() as session:
                enqueue_c2d(session, "ws-dev", b"hello over websockets", now=server.fleet.now())
            assert got_c2d.wait(WAIT)
            assert received == [b"hello over websockets"]

            with server.fleet.transaction() as session:
                record = certificates.get_certificate(
                    session, format(files.certificate.serial_number, "X")
                )
                certificates.revoke(
                    session,
                    Actor.local_admin(),
                    record,
                    RevocationReason.KEY_COMPROMISE,
                    now=server.fleet.now(),
                )
            assert state["closed"].wait(WAIT)  # type: ignore[attr-defined]
        finally:
            client.loop_stop()
            client.disconnect()

        refused, refused_state = _client(server, files)
        refused.reconnect_delay_set(60, 60)
        refused.connect("127.0.0.1", server.port)
        refused.loop_start()
        try:
            assert refused_state["ready"].wait(WAIT)  # type: ignore[attr-defined]
            assert refused_state["connack"] == 135  # paho's v5 code for CONNACK 5 (not authorized)
        finally:
            refused.loop_stop()
            refused.disconnect()


def test_unknown_device_is_refused_over_websockets(tmp_path: Path) -> None:
    with start_server(tmp_path / "home") as server:
        files = _prepare(server, "ws-known", tmp_path)
        stranger = issue_device(server.fleet, "ws-stranger", tmp_path)
        client, state = _client(server, stranger)
        client.reconnect_delay_set(60, 60)
        client.connect("127.0.0.1", server.port)
        client.loop_start()
        try:
            assert state["ready"].wait(WAIT)  # type: ignore[attr-defined]
            assert state["connack"] == 135
        finally:
            client.loop_stop()
            client.disconnect()
        assert files.device_id == "ws-known"
