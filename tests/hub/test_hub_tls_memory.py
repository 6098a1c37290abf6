"""What the hub keeps of a TLS handshake once the CONNECT has read the peer's certificates.

`fleetpki.hub.tls.release_handshake_memory` empties the chain OpenSSL keeps of the
handshake and the memory BIOs' buffers, for idle memory per connection; the hub's
context keeps no session cache and decodes no peer certificate into a dict. The
connection must go on as before: the leaf still readable, telemetry acknowledged,
pings answered, a revocation still closing the session, and resumption from tickets.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from fleetpki.application import FleetPKI
from fleetpki.hub.protocol import Connect, encode, encode_publish
from fleetpki.hub.server import HubConnection
from fleetpki.hub.tls import HubSSLObject, peer_certificates, session_cache_mode
from support.hub import DeviceFiles, LiveHub, issue_device, start_hub_thread

WAIT = 20.0


@pytest.fixture
def hub(sqlite_fleet: FleetPKI) -> Iterator[LiveHub]:
    with start_hub_thread(sqlite_fleet) as live:
        yield live


@pytest.fixture
def dev1(sqlite_fleet: FleetPKI, hub: LiveHub, tmp_path: Path) -> DeviceFiles:
    hub.registry.add_device("dev1")
    return issue_device(sqlite_fleet, "dev1", tmp_path / "certs")


def _recv(tls: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = tls.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _connect(
    hub: LiveHub,
    files: DeviceFiles,
    context: ssl.SSLContext,
    session: ssl.SSLSession | None = None,
) -> ssl.SSLSocket:
    context.load_cert_chain(files.cert, files.key)
    raw = socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT)
    tls = context.wrap_socket(raw, server_hostname="localhost", session=session)
    tls.sendall(encode(Connect("dev1", True, 60, "localhost/dev1/?api-version=2019-10-01")))
    assert _recv(tls, 4) == b"\x20\x02\x00\x00"  # CONNACK 0
    return tls


def _server_side(hub: LiveHub) -> tuple[bytes | None, list[bytes]]:
    """What the hub's connection of dev1 can still read of the peer's certificates."""

    def read() -> tuple[bytes | None, list[bytes]]:
        link = hub.broker._live["dev1"]
        assert isinstance(link, HubConnection)
        assert link._transport is not None
        return peer_certificates(link._transport.get_extra_info("ssl_object"))

    return hub.call(read)


def _still_serves(hub: LiveHub, tls: ssl.SSLSocket) -> None:
    tls.sendall(encode_publish("devices/dev1/messages/events/", b"t=21", 1, False, False, 7))
    assert _recv(tls, 4) == b"\x40\x02\x00\x07"  # PUBACK 7, after the message was stored
    assert [r.body for r in hub.registry.telemetry] == [b"t=21"]
    tls.sendall(b"\xc0\x00")  # PINGREQ
    assert _recv(tls, 2) == b"\xd0\x00"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_chain_is_freed_after_the_connect_and_the_session_goes_on(
    hub: LiveHub, dev1: DeviceFiles, version: ssl.TLSVersion
) -> None:
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    context.minimum_version = context.maximum_version = version
    with _connect(hub, dev1, context) as tls:
        leaf, others = _server_side(hub)
        # The device sent its issuing CA too (support.hub.issue_device): freed; the leaf stays.
        assert leaf == dev1.certificate.public_bytes(serialization.Encoding.DER)
        assert others == []
        _still_serves(hub, tls)
        hub.registry.revoke(dev1.certificate)
        tls.settimeout(WAIT)
        assert _recv(tls, 1) == b""  # closed by the revocation
    deadline = time.monotonic() + WAIT
    while hub.broker.is_connected("dev1"):
        assert time.monotonic() < deadline, "the session did not close"
        time.sleep(0.01)


def test_a_tls12_session_without_a_ticket_is_not_cached_and_its_chain_is_freed(
    hub: LiveHub, dev1: DeviceFiles
) -> None:
    # The hub's context keeps no stateful session cache: a TLS 1.2 client that takes no
    # ticket gets a session without an id, its chain is freed like the others, and a
    # reconnection offering that session makes a full handshake (and is accepted).
    assert session_cache_mode(hub.server.ssl_context) == 0  # type: ignore[arg-type]
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_TICKET
    with _connect(hub, dev1, context) as tls:
        leaf, others = _server_side(hub)
        assert leaf == dev1.certificate.public_bytes(serialization.Encoding.DER)
        assert others == []
        _still_serves(hub, tls)
        session = tls.session
    assert session is not None and not session.has_ticket
    with _connect(hub, dev1, context, session=session) as again:
        assert not again.session_reused
        assert _server_side(hub)[0] == leaf
    assert hub.server.ssl_context is not None
    assert hub.server.ssl_context.session_stats()["number"] == 0


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_session_resumed_from_its_ticket_is_accepted(
    hub: LiveHub, dev1: DeviceFiles, version: ssl.TLSVersion
) -> None:
    # Resumption from stateless tickets stays: the resumed session still carries the
    # device's leaf, which the CONNECT reads, and the session goes on.
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    context.minimum_version = context.maximum_version = version
    with _connect(hub, dev1, context) as tls:
        _still_serves(hub, tls)  # TLS 1.3 tickets arrive after the handshake: read them
        session = tls.session
    assert session is not None and session.has_ticket
    with _connect(hub, dev1, context, session=session) as again:
        assert again.session_reused
        leaf, _ = _server_side(hub)
        assert leaf == dev1.certificate.public_bytes(serialization.Encoding.DER)
        again.sendall(b"\xc0\x00")  # PINGREQ
        assert _recv(again, 2) == b"\xd0\x00"


def test_the_decoded_peer_certificate_is_not_kept(hub: LiveHub, dev1: DeviceFiles) -> None:
    # uvloop keeps getpeercert()'s answer as the transport's "peercert" for the
    # connection's life; the hub's SSL object decodes nothing, the DER stays readable.
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    with _connect(hub, dev1, context):

        def extra() -> tuple[object, object]:
            link = hub.broker._live["dev1"]
            assert isinstance(link, HubConnection)
            assert link._transport is not None
            ssl_object = link._transport.get_extra_info("ssl_object")
            assert isinstance(ssl_object, HubSSLObject)
            return link._transport.get_extra_info("peercert"), ssl_object.getpeercert(True)

        decoded, der = hub.call(extra)
        assert decoded is None
        assert der == dev1.certificate.public_bytes(serialization.Encoding.DER)
