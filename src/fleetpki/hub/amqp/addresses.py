"""The AMQP nodes of Azure IoT Hub and its Event Hubs-compatible endpoint, as pure parsing.

A link's address names a node, either as a path (``/messages/devicebound``) or as a URL
(``amqps://{host}/messages/devicebound``, which the service SDK's uamqp client sends):

* ``$cbs``: claims-based security, ``put-token`` requests and their answers (every
  client);
* ``/messages/devicebound``: cloud-to-device sends with
  ``to=/devices/{id}/messages/devicebound`` (azure-iot-hub's ``send_c2d_message``);
* ``/messages/servicebound/feedback``: delivery feedback (``iothub-ack``);
* ``$management``: ``READ`` of the Event Hub and of a partition (azure-eventhub);
* ``{entity}/ConsumerGroups/{group}/Partitions/{n}``: the telemetry of one partition
  (azure-eventhub's consumers).

Sources: azure-iot-hub 2.7.0 ``iothub_amqp_client.py``; azure-eventhub 5.15.1
``_consumer_client.py`` and ``_client_base.py``; learn.microsoft.com, iot-hub
"Communicate with your IoT hub by using the AMQP Protocol".
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = [
    "CBS",
    "DEFAULT_CONSUMER_GROUP",
    "DEVICEBOUND",
    "FEEDBACK",
    "MANAGEMENT",
    "Node",
    "NodeKind",
    "c2d_device_id",
    "parse_node",
    "partition_of",
]

CBS = "$cbs"
MANAGEMENT = "$management"
DEVICEBOUND = "messages/devicebound"
FEEDBACK = "messages/servicebound/feedback"
#: The consumer group every Event Hub has (names compare without case, as Azure's do).
DEFAULT_CONSUMER_GROUP = "$default"


class NodeKind(enum.Enum):
    """What a link attaches to."""

    CBS = "cbs"
    MANAGEMENT = "management"
    DEVICEBOUND = "devicebound"
    FEEDBACK = "feedback"
    PARTITION = "partition"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Node:
    """A parsed node address.

    Attributes:
        kind: which node.
        path: the address without scheme and host, without the leading ``/``.
        entity / consumer_group / partition: for a partition, its parts as sent.
    """

    kind: NodeKind
    path: str
    entity: str = ""
    consumer_group: str = ""
    partition: str = ""


def _path(address: str) -> str:
    if "://" in address:
        address = urlsplit(address).path
    return address.strip("/")


def parse_node(address: str | None) -> Node:
    """The node ``address`` names; ``NodeKind.UNKNOWN`` for anything else."""
    path = _path(address or "")
    lowered = path.lower()
    if lowered == CBS:
        return Node(NodeKind.CBS, path)
    if lowered == MANAGEMENT or lowered.endswith("/" + MANAGEMENT):
        return Node(NodeKind.MANAGEMENT, path)
    if lowered == DEVICEBOUND:
        return Node(NodeKind.DEVICEBOUND, path)
    if lowered == FEEDBACK:
        return Node(NodeKind.FEEDBACK, path)
    parts = path.split("/")
    if (
        len(parts) == 5
        and parts[1].lower() == "consumergroups"
        and parts[3].lower() == "partitions"
    ):
        return Node(NodeKind.PARTITION, path, parts[0], parts[2], parts[4])
    return Node(NodeKind.UNKNOWN, path)


def c2d_device_id(to: str | None) -> str | None:
    """The device of a cloud-to-device message's ``to`` (``/devices/{id}/messages/devicebound``).

    ``None`` when ``to`` is not of that form. The id is URL-decoded, as Azure encodes
    device ids in paths.
    """
    parts = _path(to or "").split("/")
    if len(parts) != 4 or parts[0] != "devices" or parts[2:] != ["messages", "devicebound"]:
        return None
    device_id = unquote(parts[1])
    return device_id or None


def partition_of(device_id: str, partitions: int) -> int:
    """The partition of ``device_id``'s telemetry: a stable hash, so each device keeps its order.

    SHA-256, not Python's ``hash`` (which changes from one process to the next).
    """
    digest = hashlib.sha256(device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % partitions
