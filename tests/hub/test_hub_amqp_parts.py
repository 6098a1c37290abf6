"""The AMQP side's parts alone: node addresses, start positions, the SASL gate, the
frame padder (against Proton's own client over an in-memory link), feedback on expiry,
and Event Hubs' way of signing tokens."""

from __future__ import annotations

import base64
import datetime as dt
import struct
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from proton import Collector, Connection, Data, Endpoint, Transport

from fleetpki.application import FleetPKI
from fleetpki.hub.amqp.addresses import NodeKind, c2d_device_id, parse_node, partition_of
from fleetpki.hub.amqp.engine import AmqpEngine
from fleetpki.hub.amqp.frames import _FIELDS
from fleetpki.hub.amqp.messages import parse_position
from fleetpki.hub.amqp.sasl import SaslGate
from fleetpki.hub.azure.sas import SasToken, sign
from fleetpki.services.hub_devices import DeviceSpec
from fleetpki.services.hub_eventhub import PositionKind


@pytest.mark.parametrize(
    ("address", "kind", "parts"),
    [
        ("$cbs", NodeKind.CBS, ("", "", "")),
        ("$management", NodeKind.MANAGEMENT, ("", "", "")),
        ("amqps://hub.example/messages/devicebound", NodeKind.DEVICEBOUND, ("", "", "")),
        ("/messages/devicebound", NodeKind.DEVICEBOUND, ("", "", "")),
        ("/messages/servicebound/feedback", NodeKind.FEEDBACK, ("", "", "")),
        (
            "amqps://hub.example/hub1/ConsumerGroups/$Default/Partitions/3",
            NodeKind.PARTITION,
            ("hub1", "$Default", "3"),
        ),
        ("hub1/consumergroups/cg/partitions/0", NodeKind.PARTITION, ("hub1", "cg", "0")),
        ("/messages/events", NodeKind.UNKNOWN, ("", "", "")),
        (None, NodeKind.UNKNOWN, ("", "", "")),
    ],
)
def test_node_addresses(address: str | None, kind: NodeKind, parts: tuple[str, ...]) -> None:
    node = parse_node(address)
    assert node.kind is kind
    assert (node.entity, node.consumer_group, node.partition) == parts


@pytest.mark.parametrize(
    ("to", "device"),
    [
        ("/devices/dev1/messages/devicebound", "dev1"),
        ("/devices/a%2Fb/messages/devicebound", "a/b"),
        ("devices/dev1/messages/devicebound", "dev1"),
        ("/devices/dev1/messages/events", None),
        ("/devices//messages/devicebound", None),
        ("/modules/m/messages/devicebound", None),
        (None, None),
    ],
)
def test_c2d_target_device(to: str | None, device: str | None) -> None:
    assert c2d_device_id(to) == device


def test_partitions_are_a_stable_hash() -> None:
    # Fixed values: a device must stay in its partition across processes and releases.
    assert [partition_of(f"device-{n}", 4) for n in range(8)] == [
        partition_of(f"device-{n}", 4) for n in range(8)
    ]
    assert {partition_of(f"device-{n}", 4) for n in range(64)} == {0, 1, 2, 3}
    assert (
        partition_of("dev1", 4)
        == int.from_bytes(__import__("hashlib").sha256(b"dev1").digest()[:8], "big") % 4
    )


_SELECTOR = "apache.org:selector-filter:string"


@pytest.mark.parametrize(
    ("selector", "position"),
    [
        ("amqp.annotation.x-opt-offset > '-1'", (PositionKind.OFFSET, "-1", False)),
        ("amqp.annotation.x-opt-offset > '@latest'", (PositionKind.OFFSET, "@latest", False)),
        ("amqp.annotation.x-opt-offset >= '12'", (PositionKind.OFFSET, "12", True)),
        (
            "amqp.annotation.x-opt-sequence-number > '7'",
            (PositionKind.SEQUENCE_NUMBER, "7", False),
        ),
        (
            "amqp.annotation.x-opt-enqueued-time > '1700000000000'",
            (PositionKind.ENQUEUED_TIME, "1700000000000", False),
        ),
    ],
)
def test_start_positions(selector: str, position: tuple[PositionKind, str, bool]) -> None:
    assert parse_position({_SELECTOR: selector}) == position


def test_no_filter_and_bad_selectors() -> None:
    assert parse_position(None) is None
    assert parse_position({"another-filter": "x"}) is None
    with pytest.raises(ValueError, match="unsupported selector"):
        parse_position({_SELECTOR: "amqp.annotation.x-opt-offset < '5'"})
    with pytest.raises(ValueError, match="unsupported selector"):
        parse_position({_SELECTOR: "1=1 OR amqp.annotation.x-opt-offset > '5'"})


def _sasl_init(mechanism: str) -> bytes:
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(0x41)
    data.put_list()
    data.enter()
    data.put_symbol(mechanism)
    data.exit()
    data.exit()
    body = data.encode()
    return struct.pack(">IBBH", 8 + len(body), 2, 1, 0) + body


@given(st.lists(st.integers(min_value=1, max_value=16), min_size=1, max_size=12))
def test_the_sasl_gate_takes_any_split(splits: list[int]) -> None:
    stream = b"AMQP\x03\x01\x00\x00" + _sasl_init("MSSBCBS") + b"AMQP\x00\x01\x00\x00rest"
    gate = SaslGate()
    reply, rest, start = b"", b"", 0
    for size in [*splits, len(stream)]:
        step = gate.receive(stream[start : start + size])
        assert not step.failed
        reply += step.reply
        rest += step.rest or b""
        start += size
        if start >= len(stream):
            break
    assert gate.mechanism == "MSSBCBS"
    assert rest == b"AMQP\x00\x01\x00\x00rest"
    assert reply.startswith(b"AMQP\x03\x01\x00\x00")


def test_garbage_is_refused() -> None:
    assert SaslGate().receive(b"GE\x00").failed  # no AMQP header can start so
    engine = AmqpEngine(_Quiet(), container_id="hub")
    engine.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # past the gate: Proton says no
    engine.output()
    assert engine.closed
    assert engine.error is not None


class _Quiet:
    """An engine handler that opens every link (the padder is what is tested here)."""

    def link_opened(self, link: Any) -> None:
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.open()

    def link_closed(self, link: Any) -> None:
        pass

    def link_flow(self, link: Any) -> None:
        pass

    def message_received(self, link: Any, delivery: Any, message: Any) -> None:
        pass

    def delivery_updated(self, link: Any, delivery: Any) -> None:
        pass


def _frames(stream: bytes) -> list[tuple[int, int]]:
    """(descriptor, field count) of each AMQP frame after the protocol header."""
    out = []
    rest = stream[8:]
    while rest:
        size = struct.unpack(">I", rest[:4])[0]
        body = rest[rest[4] * 4 : size]
        rest = rest[size:]
        if not body:
            continue
        assert body[:2] == b"\x00\x53"
        constructor = body[3]
        count = body[5] if constructor == 0xC0 else struct.unpack(">I", body[8:12])[0]
        assert constructor in (0xC0, 0xD0)  # never list0: azure-eventhub reads a count
        out.append((body[2], count))
    return out


def test_every_performative_is_sent_whole_and_proton_still_reads_it() -> None:
    server = AmqpEngine(_Quiet(), container_id="hub")
    client = Connection()
    client.container = "client"
    collector = Collector()
    client.collect(collector)
    transport = Transport(Transport.CLIENT)
    transport.sasl().allowed_mechs("ANONYMOUS")
    transport.bind(client)
    client.open()
    session = client.session()
    session.open()
    sender = session.sender("s")
    sender.target.address = "$cbs"
    sender.open()
    sent_by_server = b""
    sasl_done = False
    for _ in range(20):
        pending = transport.pending()
        if pending > 0:
            server.receive(transport.peek(pending) or b"")
            transport.pop(pending)
        out = server.output()
        if out:
            transport.push(out)
            if sasl_done:
                sent_by_server += out
            elif b"AMQP\x00\x01\x00\x00" in out:
                sasl_done = True
                sent_by_server += out[out.index(b"AMQP\x00\x01\x00\x00") :]
    assert client.state & Endpoint.REMOTE_ACTIVE
    assert sender.state & Endpoint.REMOTE_ACTIVE
    frames = _frames(sent_by_server)
    assert {d for d, _ in frames} >= {0x10, 0x11, 0x12}  # open, begin, attach
    for descriptor, count in frames:
        assert count == _FIELDS[descriptor]


def test_expired_c2d_messages_owe_expired_feedback(sqlite_fleet: FleetPKI) -> None:
    sqlite_fleet.hub_devices.put(DeviceSpec(device_id="dev-x"))
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
    messages = sqlite_fleet.hub_messages
    messages.enqueue_c2d(
        "dev-x", b"late", properties={"$.exp": past, "iothub-ack": "full"}, message_id="late"
    )
    messages.enqueue_c2d("dev-x", b"quiet", properties={"$.exp": past}, message_id="quiet")
    messages.enqueue_c2d("dev-x", b"live", properties={"iothub-ack": "positive"}, message_id="live")
    assert [m.message_id for m in messages.pending_c2d("dev-x")] == ["live"]
    (record,) = messages.due_feedback()
    assert (record.original_message_id, record.status_code) == ("late", "Expired")
    assert record.description == "Message expired"
    messages.mark_c2d_delivered("dev-x", "live")
    assert [(r.original_message_id, r.status_code) for r in messages.due_feedback()] == [
        ("late", "Expired"),
        ("live", "Success"),
    ]
    messages.complete_feedback([r.row_id for r in messages.due_feedback()])
    assert messages.due_feedback() == []


def test_event_hub_tokens_are_signed_with_the_key_text() -> None:
    key = base64.b64encode(b"k" * 32).decode()
    expiry = int(time.time()) + 60
    resource = "sb%3A%2F%2Fhub.example%2Fhub1"
    good = base64.b64encode(sign(resource, expiry, key, service_bus=True)).decode()
    iot_style = base64.b64encode(sign(resource, expiry, key)).decode()
    for signature, signed in ((good, 0), (iot_style, None)):
        token = SasToken.parse(
            f"SharedAccessSignature sr={resource}&sig={signature.replace('+', '%2B')}"
            f"&se={expiry}&skn=service"
        )
        assert token.service_bus
        assert token.host == "hub.example"
        assert token.signed_by([key]) == signed
