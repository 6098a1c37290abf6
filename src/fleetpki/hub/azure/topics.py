"""Azure IoT Hub's MQTT dialect: the CONNECT username, topic names and property bags.

Everything here is pure string work over the facts in ``shared/reference/azure-iot-hub-
protocol.md`` (cited below as "ref §1.x"). Percent-encoding follows the device SDK: it
encodes with ``quote(..., safe="")`` and decodes with ``unquote``, never the ``_plus``
variants, so a literal ``+`` stays a ``+`` (ref §1.6). Device and module ids are
percent-encoded in topic names by the SDK and sent raw in the CONNECT username (ref §1.3).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum, StrEnum
from urllib.parse import quote, unquote

from fleetpki.errors import ValidationError

__all__ = [
    "DESIRED_PATCH_FILTER",
    "METHODS_FILTER",
    "TWIN_RESPONSE_FILTER",
    "AzureProtocolError",
    "AzureProtocolErrorCode",
    "C2DAck",
    "ClientIdentity",
    "ConnectUsername",
    "DeviceMessage",
    "MessageProperties",
    "MethodResponse",
    "SystemProperties",
    "Telemetry",
    "TwinGetRequest",
    "TwinReportedPatch",
    "c2d_topic",
    "decode_property_bag",
    "desired_patch_topic",
    "encode_property_bag",
    "is_own_topic",
    "is_plain_telemetry",
    "method_request_topic",
    "module_input_topic",
    "parse_device_topic",
    "parse_username",
    "twin_response_topic",
]

#: The filters the SDK subscribes to for twin responses, desired patches and methods (ref §1.5).
TWIN_RESPONSE_FILTER = "$iothub/twin/res/#"
DESIRED_PATCH_FILTER = "$iothub/twin/PATCH/properties/desired/#"
METHODS_FILTER = "$iothub/methods/POST/#"

_TWIN_PREFIX = "$iothub/twin/"
_METHODS_PREFIX = "$iothub/methods/"
_MAX_ID_LENGTH = 128


class AzureProtocolErrorCode(StrEnum):
    """The stable codes an `AzureProtocolError` carries."""

    MALFORMED = "azure.malformed"
    BAD_USERNAME = "azure.bad_username"
    BAD_CLIENT_ID = "azure.bad_client_id"
    TOPIC_NOT_ALLOWED = "azure.topic_not_allowed"


class AzureProtocolError(ValidationError):
    """A username, topic or property bag does not follow Azure IoT Hub's MQTT dialect.

    Args:
        reason: a sentence naming what is wrong, safe to log and show.
        code: one of `AzureProtocolErrorCode`.
    """

    code: AzureProtocolErrorCode

    def __init__(
        self, reason: str, code: AzureProtocolErrorCode = AzureProtocolErrorCode.MALFORMED
    ) -> None:
        super().__init__(code, reason)
        self.reason = reason


def _quote(value: str) -> str:
    # urlencode(quote_via=quote) passes safe="": "/" is encoded too (ref §1.6).
    return quote(value, safe="")


def _unquote(value: str) -> str:
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError as exc:
        raise AzureProtocolError("a percent-escape does not decode as UTF-8") from exc


def _split_pairs(text: str) -> Iterable[tuple[str, str | None]]:
    """Split ``k=v&k2=v2`` on ``&`` and then the first ``=``, and unquote both parts."""
    for entry in text.split("&"):
        if not entry:
            continue
        key, sep, value = entry.partition("=")
        yield _unquote(key), (_unquote(value) if sep else None)


# --- identities and the CONNECT username (ref §1.3, §1.9) ------------------------------------


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """A device, or a module of a device, as named by its MQTT client id."""

    device_id: str
    module_id: str | None = None

    @classmethod
    def from_client_id(cls, client_id: str) -> ClientIdentity:
        """Parse ``{deviceId}`` or ``{deviceId}/{moduleId}`` (ref §1.3, §1.9).

        Raises:
            AzureProtocolError: empty parts, more than one ``/`` or over 128 characters.
        """
        device_id, slash, module_id = client_id.partition("/")
        parts = [device_id, module_id] if slash else [device_id]
        for part in parts:
            if not part or "/" in part or len(part) > _MAX_ID_LENGTH:
                raise AzureProtocolError(
                    "the client id must be '{deviceId}' or '{deviceId}/{moduleId}'",
                    AzureProtocolErrorCode.BAD_CLIENT_ID,
                )
        return cls(device_id, module_id if slash else None)

    @property
    def client_id(self) -> str:
        """The MQTT client id: ``d`` or ``d/m``."""
        if self.module_id is None:
            return self.device_id
        return f"{self.device_id}/{self.module_id}"

    @property
    def topic_base(self) -> str:
        """``devices/{d}`` or ``devices/{d}/modules/{m}``, ids percent-encoded like the SDK."""
        base = f"devices/{_quote(self.device_id)}"
        if self.module_id is None:
            return base
        return f"{base}/modules/{_quote(self.module_id)}"


@dataclass(frozen=True, slots=True)
class ConnectUsername:
    """The parts of a hub CONNECT username ``{host}/{clientId}/?{query}``."""

    host: str
    identity: ClientIdentity
    query: Mapping[str, str | None] = field(default_factory=dict)

    @property
    def api_version(self) -> str | None:
        """The ``api-version`` the SDK asked for."""
        return self.query.get("api-version")

    @property
    def client_type(self) -> str | None:
        """``DeviceClientType``: the SDK's user agent, decoded."""
        return self.query.get("DeviceClientType")

    @property
    def model_id(self) -> str | None:
        """The IoT Plug and Play ``model-id``, if the device sent one."""
        return self.query.get("model-id")


def _normalize_host(host: str) -> str:
    """Lower-case, without a trailing dot or a ``:port``, for a lenient compare (ref §1.3)."""
    host = host.strip().lower()
    if host.startswith("["):  # [IPv6]:port
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    else:
        name, colon, port = host.rpartition(":")
        if colon and port.isdigit() and ":" not in name:
            host = name
    return host.rstrip(".")


def parse_username(
    username: str | None, client_id: str, *, hub_hostnames: Iterable[str] | None = None
) -> ConnectUsername:
    """Check a CONNECT username against the client id and split it (ref §1.3).

    The username must be ``{host}/{clientId}/?{query}`` with the client id of the packet
    itself; host and client id are not percent-encoded, query values are.

    Args:
        username: the CONNECT username (``None`` if absent).
        client_id: the CONNECT client id.
        hub_hostnames: names the hub answers to. If given, the host part must be one of
            them, compared leniently: case, a trailing dot and a port are ignored (the
            SDK puts its ``hostname`` argument there even when it connects through a
            gateway). ``None`` skips the host check.

    Raises:
        AzureProtocolError: ``azure.bad_username``, or ``azure.bad_client_id``.
    """
    identity = ClientIdentity.from_client_id(client_id)
    if not username:
        raise AzureProtocolError("a username is required", AzureProtocolErrorCode.BAD_USERNAME)
    host, slash, rest = username.partition("/")
    prefix = client_id + "/"
    if not host or not slash or not rest.startswith(prefix):
        raise AzureProtocolError(
            "the username must be '{host}/{clientId}/?{query}' with the packet's client id",
            AzureProtocolErrorCode.BAD_USERNAME,
        )
    tail = rest[len(prefix) :]
    if tail and not tail.startswith("?"):
        raise AzureProtocolError(
            "the username's query must follow '/?'", AzureProtocolErrorCode.BAD_USERNAME
        )
    if hub_hostnames is not None:
        known = {_normalize_host(name) for name in hub_hostnames}
        if _normalize_host(host) not in known:
            raise AzureProtocolError(
                "the username names another hub", AzureProtocolErrorCode.BAD_USERNAME
            )
    return ConnectUsername(host, identity, dict(_split_pairs(tail[1:])))


# --- property bags (ref §1.6) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SystemProperties:
    """The ``$.``-prefixed message properties IoT Hub gives a meaning to (ref §1.6)."""

    output_name: str | None = None  # $.on
    message_id: str | None = None  # $.mid
    correlation_id: str | None = None  # $.cid
    user_id: str | None = None  # $.uid
    content_type: str | None = None  # $.ct
    content_encoding: str | None = None  # $.ce
    interface_id: str | None = None  # $.ifid
    expiry_time_utc: str | None = None  # $.exp


# In the SDK's outbound order; the field order of SystemProperties matches it.
_SYSTEM_KEYS: tuple[tuple[str, str], ...] = tuple(
    zip(
        ("$.on", "$.mid", "$.cid", "$.uid", "$.ct", "$.ce", "$.ifid", "$.exp"),
        (f.name for f in fields(SystemProperties)),
        strict=True,
    )
)
_SYSTEM_ATTRIBUTE = dict(_SYSTEM_KEYS)


@dataclass(frozen=True, slots=True)
class MessageProperties:
    """A decoded property bag: system properties apart, application properties as sent.

    An application property sent as a bare ``key`` (no ``=``) has the value ``None``;
    ``key=`` gives the empty string.
    """

    system: SystemProperties = field(default_factory=SystemProperties)
    application: Mapping[str, str | None] = field(default_factory=dict)


def decode_property_bag(bag: str) -> MessageProperties:
    """Decode a property bag from a topic (ref §1.6).

    Split on ``&``, then on the first ``=``, and ``unquote`` (never ``unquote_plus``) each
    part. Known ``$.`` keys go to `SystemProperties` (a bare one is ignored); everything
    else, unknown ``$.`` keys included, is an application property. A repeated key keeps
    its last value.

    Raises:
        AzureProtocolError: a percent-escape that does not decode as UTF-8.
    """
    system: dict[str, str] = {}
    application: dict[str, str | None] = {}
    for key, value in _split_pairs(bag):
        attribute = _SYSTEM_ATTRIBUTE.get(key)
        if attribute is None:
            application[key] = value
        elif value is not None:
            system[attribute] = value
    return MessageProperties(SystemProperties(**system), application)


def encode_property_bag(
    properties: MessageProperties, *, extra_system: Iterable[tuple[str, str]] = ()
) -> str:
    """Encode a property bag the way the SDK does (ref §1.6, §1.7).

    System properties first, in the SDK's order, then ``extra_system`` pairs (``$.to``,
    ``iothub-ack``), then application properties sorted by key. Every pair is ``k=v``
    (``None`` is sent as an empty value), encoded like ``urlencode(quote_via=quote)``.

    Raises:
        AzureProtocolError: an application key that is a system key.
    """
    pairs = [
        (key, value)
        for key, attribute in _SYSTEM_KEYS
        if (value := getattr(properties.system, attribute)) is not None
    ]
    pairs.extend(extra_system)
    for key in properties.application:
        if key in _SYSTEM_ATTRIBUTE:
            raise AzureProtocolError(f"{key!r} is a system property, not an application one")
    pairs.extend(sorted((k, v or "") for k, v in properties.application.items()))
    return "&".join(f"{_quote(key)}={_quote(value)}" for key, value in pairs)


# --- device-to-hub topics (ref §1.5, §1.9) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Telemetry:
    """``devices/{d}[/modules/{m}]/messages/events/{bag}``: a device-to-cloud message."""

    properties: MessageProperties


@dataclass(frozen=True, slots=True)
class TwinGetRequest:
    """``$iothub/twin/GET/?$rid={rid}``: answer on `twin_response_topic` with status 200."""

    rid: str


@dataclass(frozen=True, slots=True)
class TwinReportedPatch:
    """``$iothub/twin/PATCH/properties/reported/?$rid={rid}``: answer 204 with ``$version``."""

    rid: str


@dataclass(frozen=True, slots=True)
class MethodResponse:
    """``$iothub/methods/res/{status}/?$rid={rid}``: a device's answer to a direct method."""

    status: int
    rid: str


DeviceMessage = Telemetry | TwinGetRequest | TwinReportedPatch | MethodResponse


def _own_levels(levels: list[str], identity: ClientIdentity, *, wildcards: bool) -> int:
    """How many leading levels name ``identity`` (``devices/d`` or ``.../modules/m``); 0 if not.

    Ids are compared after unquoting, so both the SDK's percent-encoded form and a raw id
    are recognised. In a filter, a wildcard level never counts as an id.
    """

    def names(level: str, wanted: str) -> bool:
        if wildcards and level in ("+", "#"):
            return False
        try:
            return _unquote(level) == wanted
        except AzureProtocolError:
            return False

    if len(levels) < 3 or levels[0] != "devices" or not names(levels[1], identity.device_id):
        return 0
    if identity.module_id is None:
        return 0 if levels[2] == "modules" else 2
    if len(levels) < 5 or levels[2] != "modules" or not names(levels[3], identity.module_id):
        return 0
    return 4


def is_own_topic(topic: str, identity: ClientIdentity, *, is_filter: bool = False) -> bool:
    """Whether a device may publish on ``topic`` (or subscribe to it, with ``is_filter``).

    Allowed: ``devices/{its id}/...`` (``devices/{d}/modules/{its module}/...`` for a
    module, and no other module's topics for a device), ``$iothub/twin/...`` and
    ``$iothub/methods/...``. Anything else, including filters with a wildcard in place of
    an id, belongs to someone else.
    """
    if topic.startswith((_TWIN_PREFIX, _METHODS_PREFIX)):
        return True
    return _own_levels(topic.split("/"), identity, wildcards=is_filter) > 0


def _split_request(topic: str, path: str) -> dict[str, str | None] | None:
    """If ``topic`` is ``{path}/?{query}`` (the ``/`` optional), return the query pairs."""
    head, question, query = topic.partition("?")
    if head.rstrip("/") != path:
        return None
    return dict(_split_pairs(query)) if question else {}


def _rid(query: dict[str, str | None]) -> str:
    rid = query.get("$rid")
    if not rid:
        raise AzureProtocolError("the request has no $rid")
    return rid


def parse_device_topic(topic: str, identity: ClientIdentity) -> DeviceMessage:
    """Classify a PUBLISH topic from ``identity`` (ref §1.5, §1.9).

    Raises:
        AzureProtocolError: ``azure.topic_not_allowed`` for another device's topics or an
            unknown one; ``azure.malformed`` for a known topic with bad parameters.
    """
    if topic.startswith(_TWIN_PREFIX):
        if (pairs := _split_request(topic, "$iothub/twin/GET")) is not None:
            return TwinGetRequest(_rid(pairs))
        if (pairs := _split_request(topic, "$iothub/twin/PATCH/properties/reported")) is not None:
            return TwinReportedPatch(_rid(pairs))
    elif topic.startswith("$iothub/methods/res/"):
        head, _, query = topic.partition("?")
        levels = head.rstrip("/").split("/")  # $iothub, methods, res, {status}
        if len(levels) == 4:
            try:
                status = int(_unquote(levels[3]))
            except ValueError as exc:
                raise AzureProtocolError("the method status is not an integer") from exc
            return MethodResponse(status, _rid(dict(_split_pairs(query))))
    else:
        levels = topic.split("/")
        own = _own_levels(levels, identity, wildcards=False)
        # .../messages/events/{bag}, the bag possibly empty and the slash optional.
        if own and levels[own : own + 2] == ["messages", "events"] and len(levels) <= own + 3:
            bag = levels[own + 2] if len(levels) == own + 3 else ""
            return Telemetry(decode_property_bag(bag))
    raise AzureProtocolError(
        "devices may publish only telemetry, twin requests and method responses on their "
        "own topics",
        AzureProtocolErrorCode.TOPIC_NOT_ALLOWED,
    )


def is_plain_telemetry(topic: str, identity: ClientIdentity) -> bool:
    """Whether ``topic`` is ``identity``'s telemetry topic with an empty property bag.

    ``devices/{d}/messages/events/`` (or ``devices/{d}/modules/{m}/...``), the final
    slash optional: what `parse_device_topic` reads as a `Telemetry` without
    properties, told here with a few string compares and no objects (the hot path of a
    device sending telemetry). Ids holding a ``%`` are left to `parse_device_topic`,
    which unquotes them.
    """
    head = topic[:-1] if topic[-1:] == "/" else topic
    if not head.endswith("/messages/events"):
        return False
    device_id, module_id = identity.device_id, identity.module_id
    if "%" in device_id:
        return False
    if module_id is None:
        return head == f"devices/{device_id}/messages/events"
    return (
        "%" not in module_id and head == f"devices/{device_id}/modules/{module_id}/messages/events"
    )


# --- hub-to-device topics (ref §1.5, §1.6, §1.7) --------------------------------------------


class C2DAck(Enum):
    """The feedback a cloud-to-device sender asked for (``iothub-ack``)."""

    NONE = "none"
    POSITIVE = "positive"
    NEGATIVE = "negative"
    FULL = "full"


def c2d_topic(device_id: str, properties: MessageProperties, *, ack: C2DAck = C2DAck.NONE) -> str:
    """``devices/{id}/messages/devicebound/{bag}``, shaped like Azure's (ref §1.6).

    The bag carries the system properties, ``$.to`` and ``iothub-ack`` (which the SDK
    ignores but Azure sends), then the application properties.
    """
    base = ClientIdentity(device_id).topic_base
    extra = (("$.to", f"/devices/{device_id}/messages/devicebound"), ("iothub-ack", ack.value))
    return f"{base}/messages/devicebound/{encode_property_bag(properties, extra_system=extra)}"


def module_input_topic(
    identity: ClientIdentity, input_name: str, properties: MessageProperties
) -> str:
    """``devices/{d}/modules/{m}/inputs/{name}/{bag}`` (ref §1.9)."""
    if identity.module_id is None:
        raise AzureProtocolError("only modules have inputs")
    bag = encode_property_bag(properties)
    return f"{identity.topic_base}/inputs/{_quote(input_name)}/{bag}"


def twin_response_topic(status: int, rid: str, version: int | None = None) -> str:
    """``$iothub/twin/res/{status}/?$rid={rid}[&$version={n}]`` (ref §1.5, §1.7).

    A reported-properties PATCH is answered 204 with the new reported ``$version``.
    """
    topic = f"$iothub/twin/res/{status}/?$rid={_quote(rid)}"
    if version is not None:
        topic += f"&$version={version}"
    return topic


def desired_patch_topic(version: int) -> str:
    """``$iothub/twin/PATCH/properties/desired/?$version={n}`` (ref §1.5).

    The body must carry the changed keys *and* ``"$version"`` (ref §1.7).
    """
    return f"$iothub/twin/PATCH/properties/desired/?$version={version}"


def method_request_topic(method_name: str, rid: str) -> str:
    """``$iothub/methods/POST/{name}/?$rid={rid}``; the SDK unquotes the name (ref §1.7)."""
    return f"$iothub/methods/POST/{_quote(method_name)}/?$rid={_quote(rid)}"
