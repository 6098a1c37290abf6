"""Bad input on the hub's AMQP port, each refused and nothing stored (issue 15 item 5).

The client is Apache Qpid Proton's blocking client over real TLS (SASL ANONYMOUS),
with tokens made here the way the SDKs make them: put-tokens with a wrong key, an
expired one, one for another hub, a device's own token, one of a policy without
ServiceConnect; links without a claim; a cloud-to-device message to an unknown device,
one over Azure's 64 KiB, one without a device in ``to``; an unknown consumer group,
Event Hub or partition; and a frame over the negotiated maximum frame size.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_plus, urlencode

import pytest
from cryptography import x509
from proton import Data, Delivery, Message, SSLDomain
from proton.utils import BlockingConnection, LinkDetached

from fleetpki.application import FleetPKI
from fleetpki.hub.azure.sas import device_resource_uri, make_device_token, sign
from fleetpki.services.hub_devices import DeviceSpec
from fleetpki.services.hub_sas import make_sas_token
from support.api import row_counts
from support.hub import LiveHub, start_hub_thread
from support.server import start_server

HOST = "localhost"


@pytest.fixture(name="hub")
def hub_fixture(sqlite_fleet: FleetPKI) -> Iterator[LiveHub]:
    sqlite_fleet.hub_devices.put(DeviceSpec(device_id="dev-1"))
    with start_hub_thread(sqlite_fleet) as hub:
        yield hub


class Client:
    """A Proton blocking client on the hub's AMQP port, with a ``$cbs`` request/response pair."""

    def __init__(self, hub: LiveHub) -> None:
        domain = SSLDomain(SSLDomain.MODE_CLIENT)
        domain.set_trusted_ca_db(str(hub.ca_file))
        domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
        assert hub.server.amqp is not None
        self.connection = BlockingConnection(
            f"amqps://{HOST}:{hub.server.amqp.port}",
            ssl_domain=domain,
            timeout=20,
            sasl_enabled=True,
            allowed_mechs="ANONYMOUS",
        )
        self._cbs_sender = self.connection.create_sender("$cbs")
        self._cbs_receiver = self.connection.create_receiver("$cbs")
        self._next_id = 0

    def put_token(self, token: str, audience: str) -> tuple[int, str]:
        """Put ``token`` for ``audience``; the answer's status code and description."""
        self._next_id += 1
        request = Message(
            body=token,
            properties={
                "operation": "put-token",
                "type": "servicebus.windows.net:sastoken",
                "name": audience,
            },
        )
        request.id = self._next_id
        self._cbs_sender.send(request)
        answer = self._cbs_receiver.receive(timeout=20)
        assert answer.correlation_id == self._next_id
        return int(answer.properties["status-code"]), str(answer.properties["status-description"])

    def close(self) -> None:
        self.connection.close()


@pytest.fixture(name="client")
def client_fixture(hub: LiveHub) -> Iterator[Client]:
    client = Client(hub)
    yield client
    client.close()


def _policy_token(
    fleet: FleetPKI, policy: str = "service", *, sr: str = HOST, ttl: int = 3600
) -> str:
    keys = fleet.hub_sas.policy_keys(policy)
    return make_sas_token(sr, policy, keys.primary, int(time.time()) + ttl)


def _wrong_key_token() -> str:
    key = base64.b64encode(os.urandom(32)).decode()
    return make_sas_token(HOST, "service", key, int(time.time()) + 3600)


def _eventhub_token(fleet: FleetPKI, audience: str, *, key: str | None = None) -> str:
    # As azure-eventhub's generate_sas_token: HMAC keyed with the key's text.
    key = key or fleet.hub_sas.policy_keys("service").primary
    expiry = int(time.time()) + 3600
    signature = base64.b64encode(sign(quote_plus(audience), expiry, key, service_bus=True))
    fields = {"sr": audience, "sig": signature, "se": str(expiry), "skn": "service"}
    return "SharedAccessSignature " + urlencode(fields)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda fleet: _wrong_key_token(), 401, "hub.sas_bad_signature"),
        (lambda fleet: _policy_token(fleet, ttl=-10), 401, "hub.sas_expired"),
        (lambda fleet: _policy_token(fleet, sr="other-hub.example"), 401, "hub.sas_wrong_host"),
        (lambda fleet: _policy_token(fleet, "registryRead"), 403, "hub.sas_forbidden"),
        (lambda fleet: "not a token", 401, "hub.sas_missing"),
        # A device's own token (no skn, signed with its key) is no service credential.
        (
            lambda fleet: make_device_token(
                device_resource_uri(HOST, "dev-1"),
                base64.b64encode(os.urandom(32)).decode(),
                int(time.time()) + 3600,
            ),
            401,
            "hub.sas_malformed",
        ),
    ],
    ids=["wrong-key", "expired", "other-hub", "no-service-connect", "not-a-token", "device-token"],
)
def test_bad_tokens_are_refused_and_grant_nothing(
    hub: LiveHub, client: Client, make: object, status: int, code: str
) -> None:
    token = make(hub.backend.fleet)  # type: ignore[operator]
    assert client.put_token(token, f"https://{HOST}") == (status, code)
    # Without a claim, the cloud-to-device node stays shut.
    with pytest.raises(LinkDetached) as refused:
        client.connection.create_sender("/messages/devicebound")
    assert refused.value.condition == "amqp:unauthorized-access"


def test_a_token_for_another_event_hub_entity_is_refused(hub: LiveHub, client: Client) -> None:
    fleet = hub.backend.fleet
    token = _eventhub_token(fleet, f"sb://{HOST}/other-entity")
    assert client.put_token(token, f"sb://{HOST}/{fleet.hub_eventhub.name}") == (
        401,
        "hub.sas_wrong_audience",
    )


def _c2d(to: str, body: bytes = b"hello") -> Message:
    message = Message(body=body, inferred=True)
    message.id = "mid-bad"
    message.address = to
    return message


@pytest.mark.parametrize(
    ("to", "body", "condition"),
    [
        ("/devices/nobody/messages/devicebound", b"hello", "amqp:not-found"),
        (
            "/devices/dev-1/messages/devicebound",
            b"x" * (64 * 1024 + 1),
            "amqp:link:message-size-exceeded",
        ),
        ("/devices/dev-1/messages/events", b"hello", "amqp:invalid-field"),
        (None, b"hello", "amqp:invalid-field"),
    ],
    ids=["unknown-device", "over-64-KiB", "not-devicebound", "no-to"],
)
def test_bad_c2d_messages_are_rejected_and_nothing_is_stored(
    hub: LiveHub, client: Client, to: str | None, body: bytes, condition: str
) -> None:
    fleet = hub.backend.fleet
    assert client.put_token(_policy_token(fleet), f"https://{HOST}") == (202, "Accepted")
    sender = client.connection.create_sender("/messages/devicebound")
    before = row_counts(fleet)
    delivery = sender.send(_c2d(to, body), error_states=[])  # type: ignore[arg-type]
    assert delivery.remote_state == Delivery.REJECTED
    assert delivery.remote.condition is not None
    assert delivery.remote.condition.name == condition
    if condition == "amqp:not-found":
        assert delivery.remote.condition.description == "ErrorCode:DeviceNotFound;nobody"
    assert row_counts(fleet) == before
    assert fleet.hub_messages.pending_c2d("dev-1") == []


def test_a_good_c2d_message_is_accepted_and_queued(hub: LiveHub, client: Client) -> None:
    """The check that the refusals above refuse for their reason, not for any send."""
    fleet = hub.backend.fleet
    assert client.put_token(_policy_token(fleet), f"https://{HOST}") == (202, "Accepted")
    sender = client.connection.create_sender("/messages/devicebound")
    delivery = sender.send(_c2d("/devices/dev-1/messages/devicebound"), error_states=[])
    assert delivery.remote_state == Delivery.ACCEPTED
    (queued,) = fleet.hub_messages.pending_c2d("dev-1")
    assert (queued.message_id, queued.body) == ("mid-bad", b"hello")


@pytest.mark.parametrize(
    ("path", "condition"),
    [
        ("{hub}/ConsumerGroups/analytics/Partitions/0", "amqp:not-found"),
        ("{hub}/ConsumerGroups/$Default/Partitions/4", "amqp:not-found"),
        ("{hub}/ConsumerGroups/$Default/Partitions/zero", "amqp:not-found"),
        ("another-hub/ConsumerGroups/$Default/Partitions/0", "amqp:not-found"),
    ],
    ids=[
        "unknown-consumer-group",
        "partition-out-of-range",
        "partition-not-a-number",
        "other-entity",
    ],
)
def test_unknown_event_hub_nodes_are_refused(
    hub: LiveHub, client: Client, path: str, condition: str
) -> None:
    fleet = hub.backend.fleet
    name = fleet.hub_eventhub.name
    # A claim for the whole namespace covers every entity: the refusal is the node's.
    assert client.put_token(_eventhub_token(fleet, f"sb://{HOST}/"), f"sb://{HOST}/") == (
        202,
        "Accepted",
    )
    with pytest.raises(LinkDetached) as refused:
        client.connection.create_receiver(f"amqps://{HOST}/{path.format(hub=name)}")
    assert refused.value.condition == condition


def test_a_partition_needs_a_claim(hub: LiveHub, client: Client) -> None:
    name = hub.backend.fleet.hub_eventhub.name
    with pytest.raises(LinkDetached) as refused:
        client.connection.create_receiver(f"{name}/ConsumerGroups/$Default/Partitions/0")
    assert refused.value.condition == "amqp:unauthorized-access"


def _tls(hub: LiveHub) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    assert hub.server.amqp is not None
    raw = socket.create_connection(("127.0.0.1", hub.server.amqp.port), timeout=20)
    return context.wrap_socket(raw, server_hostname=HOST)


def _read_until_closed(sock: ssl.SSLSocket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_frame_over_the_size_limit_closes_the_connection(hub: LiveHub) -> None:
    with _tls(hub) as sock:
        # SASL ANONYMOUS (AMQP 1.0 §5.3), then the AMQP header and an open frame.
        sock.sendall(b"AMQP\x03\x01\x00\x00")
        init = b"\x00\x53\x41\xc0\x0c\x01\xa3\x09ANONYMOUS"
        sock.sendall(struct.pack(">IBBH", 8 + len(init), 2, 1, 0) + init)
        sock.sendall(b"AMQP\x00\x01\x00\x00")
        open_frame = b"\x00\x53\x10\xc0\x05\x01\xa1\x02me"
        sock.sendall(struct.pack(">IBBH", 8 + len(open_frame), 2, 0, 0) + open_frame)
        # A frame header announcing 1 MiB, over the 64 KiB the hub offered.
        sock.sendall(struct.pack(">IBBH", 1 << 20, 2, 0, 0) + b"\x00" * 1024)
        received = _read_until_closed(sock)
    assert b"amqp:connection:framing-error" in received
    assert b"\x00\x53\x18" in received  # a close performative


def test_an_unknown_sasl_mechanism_is_refused(hub: LiveHub) -> None:
    with _tls(hub) as sock:
        sock.sendall(b"AMQP\x03\x01\x00\x00")
        init = b"\x00\x53\x41\xc0\x08\x01\xa3\x05PLAIN"
        sock.sendall(struct.pack(">IBBH", 8 + len(init), 2, 1, 0) + init)
        received = _read_until_closed(sock)
    # The mechanisms offered, then sasl-outcome with code 1 (auth), then the close.
    assert received.startswith(b"AMQP\x03\x01\x00\x00")
    frames = []
    rest = received[8:]
    while rest:
        size = struct.unpack(">I", rest[:4])[0]
        data = Data()
        data.decode(rest[8:size])
        frames.append(data.get_object())
        rest = rest[size:]
    mechanisms, outcome = frames
    assert mechanisms.descriptor == 0x40
    assert list(mechanisms.value[0]) == ["MSSBCBS", "ANONYMOUS"]
    assert (outcome.descriptor, outcome.value[0]) == (0x44, 1)


def _served_serial(port: int, ca_file: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=20) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as sock,
    ):
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_the_amqp_port_serves_a_reissued_server_certificate(tmp_path: Path) -> None:
    """The AMQP port shares the MQTT port's TLS context, which the refresher reloads."""
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    with start_server(tmp_path / "home") as live:
        port = live.amqp_port
        before = _served_serial(port, live.ca_bundle)
        assert before == _served_serial(live.mqtt_port, live.ca_bundle)
        # Without its files the certificate is due: the refresher issues and loads anew.
        live.prepared.tls.certfile.unlink()
        assert live.loop is not None
        renewed = asyncio.run_coroutine_threadsafe(
            live.prepared.tls_refresher.refresh(), live.loop
        ).result(timeout=60)
        assert renewed
        after = _served_serial(port, live.ca_bundle)
        assert after != before
        assert after == _served_serial(live.mqtt_port, live.ca_bundle)
