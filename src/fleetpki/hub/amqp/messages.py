"""AMQP messages in and out of the hub's nodes: their Azure shapes, built and read.

* Claims-based security (``$cbs``) answers and ``$management`` answers carry
  ``status-code`` (an int) and ``status-description`` as application properties and
  the request's ``message-id`` as their ``correlation-id`` (the AMQP management draft,
  as the SDKs read it: uamqp's ``amqp_management.c``, azure-eventhub's
  ``_pyamqp/management_link.py``).
* A cloud-to-device message's system properties map onto the names the MQTT side
  stores (``$.cid``, ``$.ct``, ``$.ce``, ``$.exp``); ``iothub-ack`` stays an
  application property, as on Azure.
* A telemetry event carries Azure's annotations: ``x-opt-sequence-number``,
  ``x-opt-offset``, ``x-opt-enqueued-time`` and ``iothub-connection-device-id``,
  ``iothub-enqueuedtime``, ``iothub-message-source`` (learn.microsoft.com, iot-hub
  "Create and read IoT Hub messages", system properties of device-to-cloud messages).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

from proton import Data, Described, Message, int32, symbol, timestamp

from fleetpki.services.hub_eventhub import PartitionEvent, PositionKind
from fleetpki.services.hub_messages import C2DFeedback

__all__ = [
    "FEEDBACK_CONTENT_TYPE",
    "application_properties",
    "body_bytes",
    "c2d_properties",
    "event_message",
    "feedback_message",
    "parse_position",
    "source_filters",
    "status_reply",
]

#: The content type of a feedback batch (learn.microsoft.com, iot-hub "Cloud-to-device
#: messages", "Message feedback").
FEEDBACK_CONTENT_TYPE = "application/vnd.microsoft.iothub.feedback.json"
_SELECTOR_FILTER = "apache.org:selector-filter:string"
_SELECTOR = re.compile(
    r"^\s*amqp\.annotation\.x-opt-(offset|sequence-number|enqueued-time)\s*(>=|>)\s*'([^']*)'\s*$"
)
_POSITION_KINDS = {
    "offset": PositionKind.OFFSET,
    "sequence-number": PositionKind.SEQUENCE_NUMBER,
    "enqueued-time": PositionKind.ENQUEUED_TIME,
}


def status_reply(request: Message, code: int, description: str, body: Any = None) -> Message:
    """An answer to a ``$cbs`` or ``$management`` request."""
    reply: Any = Message(body=body)  # Proton's property types are narrower than its values
    reply.correlation_id = request.id
    reply.address = request.reply_to
    reply.properties = {"status-code": int32(code), "status-description": description}
    return cast(Message, reply)


def application_properties(message: Message) -> dict[Any, Any]:
    """A message's application properties (empty when it has none)."""
    return dict(cast(Any, message.properties) or {})


def body_bytes(message: Message) -> bytes:
    """A message's body as bytes: a Data section, or an AMQP string or binary value."""
    body = message.body
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, list) and all(isinstance(b, bytes | memoryview) for b in body):
        return b"".join(bytes(b) for b in body)
    return json.dumps(body, default=str).encode()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, symbol) and value == "None":
        # Proton's Python binding hands out an absent content type or encoding as
        # symbol(None), which is the text "None".
        return None
    if isinstance(value, bytes | memoryview):
        return bytes(value).decode(errors="replace")
    return str(value)


def c2d_properties(message: Message) -> dict[str, str]:
    """The stored properties of a cloud-to-device message sent over AMQP."""
    properties: dict[str, str] = {}
    for key, value in application_properties(message).items():
        text = _text(value)
        if text is not None:
            properties[str(key)] = text
    for name, value in (
        ("$.cid", message.correlation_id),
        ("$.ct", message.content_type),
        ("$.ce", message.content_encoding),
    ):
        text = _text(value)
        if text:
            properties[name] = text
    if message.expiry_time:
        expiry = dt.datetime.fromtimestamp(float(message.expiry_time), dt.UTC)
        properties["$.exp"] = expiry.isoformat().replace("+00:00", "Z")
    return properties


def feedback_message(records: Sequence[C2DFeedback]) -> Message:
    """One batch of feedback records, as Azure sends them (a JSON array)."""
    body = [
        {
            "originalMessageId": r.original_message_id,
            "description": r.description,
            "statusCode": r.status_code,
            "deviceId": r.device_id,
            "deviceGenerationId": r.device_generation_id,
            "enqueuedTimeUtc": r.enqueued_at.astimezone(dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        }
        for r in records
    ]
    message = Message(body=json.dumps(body).encode(), inferred=True)
    message.id = str(uuid.uuid4())
    message.content_type = FEEDBACK_CONTENT_TYPE
    message.content_encoding = "utf-8"
    message.address = "/messages/servicebound/feedback"
    return message


def _milliseconds(at: dt.datetime) -> timestamp:
    return timestamp(int(at.timestamp() * 1000))


def event_message(event: PartitionEvent) -> Message:
    """A stored telemetry message as an Event Hubs event."""
    message = Message(body=event.body, inferred=True)
    system = event.system_properties
    if system.get("message-id"):
        message.id = str(system["message-id"])
    if system.get("correlation-id"):
        message.correlation_id = str(system["correlation-id"])
    if system.get("content-type"):
        message.content_type = symbol(str(system["content-type"]))
    if system.get("content-encoding"):
        message.content_encoding = symbol(str(system["content-encoding"]))
    if system.get("user-id"):
        message.user_id = str(system["user-id"]).encode()
    properties: Any = {str(k): v for k, v in event.properties.items() if v is not None}
    message.properties = properties
    annotations: dict[symbol, Any] = {
        symbol("x-opt-sequence-number"): event.sequence_number,
        symbol("x-opt-offset"): event.offset,
        symbol("x-opt-enqueued-time"): _milliseconds(event.enqueued_at),
        symbol("iothub-connection-device-id"): event.device_id,
        symbol("iothub-enqueuedtime"): _milliseconds(event.enqueued_at),
        symbol("iothub-message-source"): str(system.get("iothub-message-source", "Telemetry")),
    }
    if event.module_id:
        annotations[symbol("iothub-connection-module-id")] = event.module_id
    if system.get("interface-id"):
        annotations[symbol("iothub-interface-id")] = str(system["interface-id"])
    message.annotations = cast(Any, annotations)
    return message


def parse_position(filters: Mapping[Any, Any] | None) -> tuple[PositionKind, str, bool] | None:
    """The start position of azure-eventhub's selector filter, or ``None`` when absent.

    The filter is ``amqp.annotation.x-opt-offset > '-1'`` (or ``>=``, or the sequence
    number, or the enqueued time in milliseconds; azure-eventhub 5.15
    ``_utils.event_position_selector``).

    Raises:
        ValueError: a selector that is not of that form.
    """
    if not filters:
        return None
    for key, value in filters.items():
        if str(key) != _SELECTOR_FILTER:
            continue
        text = value.value if isinstance(value, Described) else value
        text = _text(text) or ""
        match = _SELECTOR.match(text)
        if match is None:
            raise ValueError(f"unsupported selector {text!r}")
        kind, operator, position = match.groups()
        return _POSITION_KINDS[kind], position, operator == ">="
    return None


def source_filters(data: Data) -> Mapping[Any, Any] | None:
    """A terminus's filter set as a mapping (Proton hands it out as ``Data``)."""
    data.rewind()
    if not data.next():
        return None
    value = data.get_object()
    return value if isinstance(value, Mapping) else None
