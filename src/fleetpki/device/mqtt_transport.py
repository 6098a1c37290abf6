"""The device client's MQTT-over-TLS plumbing: the CONNECT username, CONNACK codes, sockets.

Azure IoT Hub's device protocol is MQTT 3.1.1 over TLS with a username that names the
hub, the device and the API version (ref §1.3); paho-mqtt 2 speaks it, with two gaps
filled here: its CONNACK codes come back as MQTT 5 reason codes, and it leaves the
socket of a failed handshake open.
"""

from __future__ import annotations

import ssl
from urllib.parse import quote

import paho.mqtt.client as mqtt

__all__ = [
    "API_VERSION",
    "DEFAULT_MQTT_PORT",
    "REFUSED_CREDENTIALS",
    "ClosingSSLSocket",
    "close_socket",
    "connack_code",
    "mqtt_username",
]

#: The service API version the username names.
API_VERSION = "2021-04-12"
#: Azure IoT Hub's MQTT-over-TLS port (the SDK hard-codes it; here it is only a default).
DEFAULT_MQTT_PORT = 8883
# CONNACK return codes that mean "these credentials will not do" (MQTT 3.1.1 §3.2.2.3).
REFUSED_CREDENTIALS = frozenset({4, 5})
# paho 2 maps MQTT 3.1.1 CONNACK codes onto MQTT 5 reason codes; this maps them back.
_V5_TO_V311 = {0: 0, 132: 1, 133: 2, 136: 3, 134: 4, 135: 5}


def connack_code(reason_code: int) -> int:
    """The MQTT 3.1.1 CONNACK return code (§3.2.2.3) for paho 2's MQTT 5 reason code."""
    return _V5_TO_V311.get(reason_code, reason_code)


def mqtt_username(
    hostname: str,
    device_id: str,
    *,
    api_version: str = API_VERSION,
    client_type: str | None = None,
    model_id: str | None = None,
) -> str:
    """The CONNECT username ``{hostname}/{deviceId}/?api-version=...`` (ref §1.3).

    Host and device id are sent as they are; query values are percent-encoded with
    ``quote`` (a space becomes ``%20``), as the SDK does.
    """
    query = f"api-version={quote(api_version, safe='')}"
    if client_type:
        query += f"&DeviceClientType={quote(client_type, safe='')}"
    if model_id:
        query += f"&model-id={quote(model_id, safe='')}"
    return f"{hostname}/{device_id}/?{query}"


class ClosingSSLSocket(ssl.SSLSocket):
    """An SSL socket that closes itself when its handshake fails.

    paho-mqtt leaves the socket of a failed handshake (an untrusted hub certificate)
    unclosed; its file descriptor would linger until garbage collection.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def close_socket(client: mqtt.Client) -> None:
    """Close a socket paho left open after a failed connect (no ResourceWarning)."""
    sock = getattr(client, "_sock", None)
    if sock is not None:
        try:
            sock.close()
        finally:
            client._sock = None
