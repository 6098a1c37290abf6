"""MQTT over WebSockets at /$iothub/websocket on the HTTPS port (reference §1.2).

Real clients against a real server (API and hub in one loop): paho-mqtt 2.x with
``transport="websockets"``; a raw client that sends paho 1.6.1's exact handshake and
splits and joins MQTT packets across frames; and the unmodified Azure device SDK with
``websockets=True`` from .venv-azure, which dials port 443 only, so its test forwards
127.0.0.1:443 to the API port and is skipped, saying so, when 443 cannot be bound.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import subprocess
import textwrap
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.hub_devices import DeviceSpec
from support.forward import forward_443
from support.hub import DeviceFiles, issue_device
from support.hub_control import issuing_ca
from support.server import LiveServer, start_server

WAIT = 20.0
PATH = "/$iothub/websocket"
AZURE_PYTHON = Path(__file__).resolve().parents[2] / ".venv-azure" / "bin" / "python"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _prepare(server: LiveServer, device_id: str, tmp: Path) -> DeviceFiles:
    """Issue a device certificate, trust the issuing CA and register the device."""
    fleet = server.fleet
    files = issue_device(fleet, device_id, tmp)
    fleet.hub_trust.trust_local_ca(issuing_ca(fleet).id)
    fleet.hub_devices.put(DeviceSpec(device_id=device_id))
    return files


# -- paho-mqtt 2.x ---------------------------------------------------------------


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
    client.ws_set_options(path=PATH)
    context = ssl.create_default_context(cafile=str(server.ca_bundle))
    context.load_cert_chain(str(files.cert), str(files.key))
    client.tls_set_context(context)
    client.username_pw_set(f"localhost/{files.device_id}/?api-version=2021-04-12", None)
    client.reconnect_delay_set(60, 60)

    def on_connect(_c, _u, _f, reason, _p):  # type: ignore[no-untyped-def]
        state["connack"] = reason.value
        state["ready"].set()  # type: ignore[attr-defined]

    def on_disconnect(_c, _u, _f, reason, _p):  # type: ignore[no-untyped-def]
        state["closed"].set()  # type: ignore[attr-defined]
        state["ready"].set()  # type: ignore[attr-defined]

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    return client, state


def _connack_of(server: LiveServer, files: DeviceFiles) -> object:
    """Connect once with paho over WebSockets and return the CONNACK code it saw."""
    client, state = _client(server, files)
    client.connect("127.0.0.1", server.port)
    client.loop_start()
    try:
        assert state["ready"].wait(WAIT)  # type: ignore[attr-defined]
        return state["connack"]
    finally:
        client.loop_stop()
        client.disconnect()


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
            assert info.is_published()
            # Stored before the PUBACK.
            stored = server.fleet.hub_messages.list_telemetry(device_id="ws-dev")
            assert [(m.body, m.properties) for m in stored] == [(b'{"t": 21}', {"alert": "yes"})]

            # Queued first: the subscription delivers it.
            server.fleet.hub_messages.enqueue_c2d("ws-dev", b"hello over websockets")
            assert client.subscribe("devices/ws-dev/messages/devicebound/#", qos=1)[0] == 0
            assert got_c2d.wait(WAIT)
            assert received == [b"hello over websockets"]

            # Live revocation closes the WebSocket session too.
            server.fleet.certificates.revoke(
                Actor.local_admin(),
                format(files.certificate.serial_number, "X"),
                RevocationReason.KEY_COMPROMISE,
            )
            assert state["closed"].wait(WAIT)  # type: ignore[attr-defined]
        finally:
            client.loop_stop()
            client.disconnect()

        # paho 2.x reports CONNACK 5 (not authorized) as the v5 code 135.
        assert _connack_of(server, files) == 135


def test_unknown_device_is_refused_over_websockets(tmp_path: Path) -> None:
    with start_server(tmp_path / "home") as server:
        _prepare(server, "ws-known", tmp_path)
        stranger = issue_device(server.fleet, "ws-stranger", tmp_path)
        assert _connack_of(server, stranger) == 135


# -- a raw client: paho 1.6.1's handshake, packets split and joined across frames --


def _tls_socket(server: LiveServer, files: DeviceFiles | None) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(server.ca_bundle))
    if files is not None:
        context.load_cert_chain(str(files.cert), str(files.key))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    return context.wrap_socket(raw, server_hostname="localhost")


def _paho_1_6_handshake(sock: ssl.SSLSocket, port: int) -> tuple[str, list[str], str]:
    """Send paho 1.6.1's request (header casing and order included); return the answer.

    Returns the status line, the header lines and the ``Sec-WebSocket-Key`` sent.
    """
    key = base64.b64encode(os.urandom(16)).decode()
    headers = {
        "Host": f"localhost:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Origin": f"https://localhost:{port}",
        "Sec-WebSocket-Key": key,
        "Sec-Websocket-Version": "13",
        "Sec-Websocket-Protocol": "mqtt",
    }
    request = "\r\n".join(
        [f"GET {PATH} HTTP/1.1", "\r\n".join(f"{k}: {v}" for k, v in headers.items()), "\r\n"]
    )
    sock.sendall(request.encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(1)  # one byte at a time, as paho does: nothing beyond the head
        assert chunk, answer
        answer += chunk
    status, *lines = answer.decode().split("\r\n")[:-2]
    return status, lines, key


def _frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = bytes([0x80 | opcode, 0x80 | length])
    else:
        head = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _exactly(sock: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the server closed the connection mid-frame"
        data += chunk
    return data


def _read_frame(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """One unmasked server frame: ``(opcode, payload)``."""
    first, second = _exactly(sock, 2)
    assert second & 0x80 == 0, "server frames are not masked"
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(_exactly(sock, 2), "big")
    elif length == 127:
        length = int.from_bytes(_exactly(sock, 8), "big")
    return first & 0x0F, _exactly(sock, length)


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _connect_packet(client_id: str) -> bytes:
    """The Azure SDK's CONNECT: MQTT 3.1.1, username only, CleanSession 0, keepalive 60."""
    body = (
        _mqtt_string("MQTT")
        + bytes([4, 0x80])
        + (60).to_bytes(2, "big")
        + _mqtt_string(client_id)
        + _mqtt_string(f"localhost/{client_id}/?api-version=2021-04-12")
    )
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


def test_paho_1_6_handshake_and_packets_split_and_joined_across_frames(tmp_path: Path) -> None:
    with start_server(tmp_path / "home") as server:
        files = _prepare(server, "ws-raw", tmp_path)
        with _tls_socket(server, files) as sock:
            status, lines, key = _paho_1_6_handshake(sock, server.port)
            assert status.startswith("HTTP/1.1 101"), (status, lines)
            # paho 1.6.1 splits header lines on ": " and insists that any line naming
            # "connection" also says "upgrade".
            headers = dict(line.split(": ", 1) for line in lines)
            names = {name.lower(): value for name, value in headers.items()}
            assert all("upgrade" in line.lower() for line in lines if "connection" in line.lower())
            assert "upgrade" in names["connection"].lower()
            expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest())
            assert names["sec-websocket-accept"] == expected.decode()
            assert names["sec-websocket-protocol"] == "mqtt"

            # CONNECT split inside its fixed header; its tail joined with a PINGREQ.
            connect = _connect_packet("ws-raw")
            sock.sendall(_frame(0x2, connect[:1]))
            sock.sendall(_frame(0x2, connect[1:5]))
            sock.sendall(_frame(0x2, connect[5:] + b"\xc0\x00"))
            received = b""
            while len(received) < 6:
                opcode, payload = _read_frame(sock)
                assert opcode == 0x2, (opcode, payload)
                received += payload
            assert received == b"\x20\x02\x00\x00" + b"\xd0\x00"  # CONNACK 0, PINGRESP

            # The broker sees the leaf and the chain the device sent (leaf + issuing CA).
            link = server.prepared.app.state.hub_broker._live["ws-raw"]
            leaf, chain = link.peer_certificates()
            assert leaf == files.certificate.public_bytes(serialization.Encoding.DER)
            assert len(chain) == 1

            # MQTT travels in binary frames only (MQTT 3.1.1 §6.0): a text frame closes.
            sock.sendall(_frame(0x1, b"PINGREQ"))
            opcode, payload = _read_frame(sock)
            assert (opcode, payload[:2]) == (0x8, (1003).to_bytes(2, "big"))


def test_refused_without_a_client_certificate_over_websockets(tmp_path: Path) -> None:
    with start_server(tmp_path / "home") as server:
        _prepare(server, "ws-anon", tmp_path)
        with _tls_socket(server, None) as sock:
            status, _lines, _key = _paho_1_6_handshake(sock, server.port)
            assert status.startswith("HTTP/1.1 101")
            sock.sendall(_frame(0x2, _connect_packet("ws-anon")))
            opcode, payload = _read_frame(sock)
            assert (opcode, payload) == (0x2, b"\x20\x02\x00\x05")  # CONNACK 5
            assert _read_frame(sock)[0] == 0x8  # then the WebSocket closes


def test_no_hub_answers_503(tmp_path: Path) -> None:
    with start_server(tmp_path / "home", only="ca") as server:
        files = issue_device(server.fleet, "ws-nohub", tmp_path)
        with _tls_socket(server, files) as sock:
            status, _lines, _key = _paho_1_6_handshake(sock, server.port)
        assert status.startswith("HTTP/1.1 503"), status


# -- the unmodified Azure device SDK (paho 1.6.1) ----------------------------------

AZURE_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    from azure.iot.device import IoTHubDeviceClient, Message, X509

    cert, key, ca, device_id = sys.argv[1:5]
    client = IoTHubDeviceClient.create_from_x509_certificate(
        X509(cert_file=cert, key_file=key), hostname="localhost", device_id=device_id,
        server_verification_cert=open(ca).read(), websockets=True,
    )
    got = threading.Event()
    def on_message(message):
        print("c2d", message.data.decode(), flush=True)
        got.set()
    try:
        client.connect()
    except Exception as exc:
        print("refused", type(exc).__name__, flush=True)
        client.shutdown()
        sys.exit(0)
    print("connected", flush=True)
    message = Message("hello over 443")
    message.custom_properties["colour"] = "blue & green"
    client.send_message(message)
    print("sent", flush=True)
    twin = client.get_twin()
    print("twin", json.dumps(sorted(twin)), flush=True)
    client.on_message_received = on_message
    if not got.wait(60):
        print("timeout", flush=True)
        sys.exit(1)
    client.shutdown()
    print("done", flush=True)
    """
)


def _run_azure_device(server: LiveServer, files: DeviceFiles, tmp: Path) -> list[str]:
    script = tmp / "azure_ws_device.py"
    script.write_text(AZURE_DEVICE_SCRIPT)
    args = [str(files.cert), str(files.key), str(server.ca_bundle), files.device_id]
    done = subprocess.run(
        [str(AZURE_PYTHON), str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.stdout, done.stderr[-3000:])
    return done.stdout.splitlines()


@pytest.mark.slow
@pytest.mark.xdist_group("azure_ports")  # binds 127.0.0.1:443, which the SDK dials
def test_azure_device_sdk_over_websockets(tmp_path: Path) -> None:
    if not AZURE_PYTHON.exists():
        pytest.fail("no .venv-azure: `make test` builds it with scripts/azure-venv.sh")
    with start_server(tmp_path / "home") as server, forward_443(server.port):
        files = _prepare(server, "ws-sdk", tmp_path)
        server.fleet.hub_messages.enqueue_c2d("ws-sdk", b"to the SDK")
        lines = _run_azure_device(server, files, tmp_path)
        assert lines == [
            "connected",
            "sent",
            'twin ["desired", "reported"]',
            "c2d to the SDK",
            "done",
        ]
        (stored,) = server.fleet.hub_messages.list_telemetry(device_id="ws-sdk")
        assert stored.body == b"hello over 443"
        assert stored.properties == {"colour": "blue & green"}

        # An unknown device gets CONNACK 5, which the SDK raises as CredentialError.
        stranger = issue_device(server.fleet, "ws-sdk-stranger", tmp_path)
        assert _run_azure_device(server, stranger, tmp_path) == ["refused CredentialError"]
