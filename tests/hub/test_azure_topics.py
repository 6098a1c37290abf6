"""Azure IoT Hub's MQTT dialect: usernames, property bags, topics, checked against the reference."""

from __future__ import annotations

import contextlib
from urllib.parse import quote, unquote, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetpki.errors import ValidationError
from fleetpki.hub.azure import (
    DESIRED_PATCH_FILTER,
    METHODS_FILTER,
    TWIN_RESPONSE_FILTER,
    AzureProtocolError,
    AzureProtocolErrorCode,
    C2DAck,
    ClientIdentity,
    MessageProperties,
    MethodResponse,
    SystemProperties,
    Telemetry,
    TwinGetRequest,
    TwinReportedPatch,
    c2d_topic,
    decode_property_bag,
    desired_patch_topic,
    encode_property_bag,
    is_own_topic,
    is_plain_telemetry,
    method_request_topic,
    module_input_topic,
    parse_device_topic,
    parse_username,
    twin_response_topic,
)
from fleetpki.hub.protocol import validate_topic_filter, validate_topic_name

# Captured from azure-iot-device 2.14.0 (reference §1.6).
CAPTURED_BAG = (
    "%24.mid=mid%201&%24.cid=cid%2F1&%24.ct=application%2Fjson&%24.ce=utf-8"
    "&alert=yes%20%26%20no&b%3Dc=d"
)
CAPTURED_USERNAME = (
    "localhost/dev1/?api-version=2019-10-01&DeviceClientType="
    "azure-iot-device-iothub-py%2F2.14.0%283.11.7%3BLinux%205.15%3Bx86_64%29"
)
DEVICE = ClientIdentity("dev1")
MODULE = ClientIdentity("dev1", "mod1")


def sdk_extract_properties(topic: str) -> dict[str, str]:
    """What the device SDK does with a response topic (ref §1.7): after '?', split on '&'
    then on '=', unquote both, strip '$' from keys; a key without a value is an error."""
    result = {}
    for entry in topic.split("?")[1].split("&"):
        key, value = entry.split("=")
        result[unquote(key).lstrip("$")] = unquote(value)
    return result


# --- usernames (ref §1.3) -----------------------------------------------------------------------


def test_the_captured_username() -> None:
    parsed = parse_username(CAPTURED_USERNAME, "dev1", hub_hostnames=["localhost"])
    assert parsed.host == "localhost"
    assert parsed.identity == DEVICE
    assert parsed.api_version == "2019-10-01"
    assert parsed.client_type == "azure-iot-device-iothub-py/2.14.0(3.11.7;Linux 5.15;x86_64)"
    assert parsed.model_id is None


@pytest.mark.parametrize(
    ("username", "client_id", "identity"),
    [
        ("hub.example/dev1/?api-version=2019-10-01", "dev1", DEVICE),
        ("hub.example/dev1/", "dev1", DEVICE),
        ("hub.example/dev1/mod1/?api-version=2019-10-01", "dev1/mod1", MODULE),
        # Device ids may hold - . + % _ # * ? ! ( ) , = @ $ ' and are sent raw.
        ("hub.example/a+b?c#d=e/?api-version=1", "a+b?c#d=e", ClientIdentity("a+b?c#d=e")),
        ("hub.example/x%20y/?api-version=1", "x%20y", ClientIdentity("x%20y")),
    ],
)
def test_usernames_accepted(username: str, client_id: str, identity: ClientIdentity) -> None:
    assert parse_username(username, client_id, hub_hostnames=["hub.example"]).identity == identity


def test_the_model_id_is_read() -> None:
    username = "h/dev1/?api-version=2020-09-30&DeviceClientType=x&model-id=dtmi%3Acom%3Aa%3B1"
    assert parse_username(username, "dev1").model_id == "dtmi:com:a;1"


@pytest.mark.parametrize(
    "host", ["HUB.Example", "hub.example.", "hub.example:8883", "alias.example"]
)
def test_the_host_is_compared_leniently(host: str) -> None:
    username = f"{host}/dev1/?api-version=1"
    parsed = parse_username(username, "dev1", hub_hostnames=["hub.example", "ALIAS.example"])
    assert parsed.host == host


@pytest.mark.parametrize("host", ["[::1]:8883", "[::1]", "127.0.0.1", "127.0.0.1:8883"])
def test_ip_literals_as_hosts(host: str) -> None:
    parsed = parse_username(f"{host}/dev1/?a=1", "dev1", hub_hostnames=["::1", "127.0.0.1"])
    assert parsed.identity.device_id == "dev1"


@pytest.mark.parametrize(
    ("username", "client_id", "code"),
    [
        (None, "dev1", AzureProtocolErrorCode.BAD_USERNAME),
        ("", "dev1", AzureProtocolErrorCode.BAD_USERNAME),
        ("hub.example/dev2/?a=1", "dev1", AzureProtocolErrorCode.BAD_USERNAME),
        ("hub.example/dev1?a=1", "dev1", AzureProtocolErrorCode.BAD_USERNAME),
        ("hub.example/dev1/a=1", "dev1", AzureProtocolErrorCode.BAD_USERNAME),
        ("hub.example/dev1x/?a=1", "dev1", AzureProtocolErrorCode.BAD_USERNAME),
        ("/dev1/?a=1", "dev1", AzureProtocolErrorCode.BAD_USERNAME),
        ("other.example/dev1/?a=1", "dev1", AzureProtocolErrorCode.BAD_USERNAME),
        # DPS usernames have no '?' (ref §2).
        (
            "0ne00/registrations/dev1/api-version=2019-03-31",
            "dev1",
            AzureProtocolErrorCode.BAD_USERNAME,
        ),
        ("hub.example//?a=1", "", AzureProtocolErrorCode.BAD_CLIENT_ID),
        ("hub.example/a/b/c/?a=1", "a/b/c", AzureProtocolErrorCode.BAD_CLIENT_ID),
        ("hub.example/a//?a=1", "a/", AzureProtocolErrorCode.BAD_CLIENT_ID),
        (f"hub.example/{'x' * 129}/?a=1", "x" * 129, AzureProtocolErrorCode.BAD_CLIENT_ID),
    ],
)
def test_usernames_refused(username: str | None, client_id: str, code: str) -> None:
    with pytest.raises(AzureProtocolError) as caught:
        parse_username(username, client_id, hub_hostnames=["hub.example"])
    assert caught.value.code == code
    assert isinstance(caught.value, ValidationError)


# --- property bags (ref §1.6) --------------------------------------------------------------------


def test_the_captured_property_bag() -> None:
    properties = decode_property_bag(CAPTURED_BAG)
    assert properties.system == SystemProperties(
        message_id="mid 1",
        correlation_id="cid/1",
        content_type="application/json",
        content_encoding="utf-8",
    )
    assert properties.application == {"alert": "yes & no", "b=c": "d"}


def test_encoding_reproduces_the_captured_bag() -> None:
    properties = MessageProperties(
        SystemProperties(
            message_id="mid 1",
            correlation_id="cid/1",
            content_type="application/json",
            content_encoding="utf-8",
        ),
        {"b=c": "d", "alert": "yes & no"},  # sorted on the way out, like the SDK
    )
    assert encode_property_bag(properties) == CAPTURED_BAG


@pytest.mark.parametrize(
    ("bag", "application"),
    [
        ("a=1+2", {"a": "1+2"}),  # a literal '+' stays a '+': unquote, never unquote_plus
        ("a+b=c+d", {"a+b": "c+d"}),
        ("a=1%2B2", {"a": "1+2"}),
        ("a=x%20y", {"a": "x y"}),
        ("key", {"key": None}),  # a bare key means None ...
        ("key=", {"key": ""}),  # ... and key= the empty string
        ("a=b=c", {"a": "b=c"}),  # split on the first '='
        ("", {}),
        ("&&a=1&", {"a": "1"}),
        ("a=1&a=2", {"a": "2"}),
        ("%24.unknown=1", {"$.unknown": "1"}),
        (
            "iothub-creation-time-utc=2024-01-01T00%3A00%3A00Z",
            {"iothub-creation-time-utc": "2024-01-01T00:00:00Z"},
        ),
        ("%C3%A9t%C3%A9=%E2%82%AC", {"été": "€"}),
    ],
)
def test_application_properties_decode(bag: str, application: dict[str, str | None]) -> None:
    assert decode_property_bag(bag).application == application


@pytest.mark.parametrize(
    ("bag", "system"),
    [
        ("%24.on=out1", SystemProperties(output_name="out1")),
        ("$.mid=raw", SystemProperties(message_id="raw")),
        (
            "%24.uid=u&%24.ifid=urn%3Aazureiot%3ASecurity%3ASecurityAgent%3A1",
            SystemProperties(user_id="u", interface_id="urn:azureiot:Security:SecurityAgent:1"),
        ),
        (
            "%24.exp=2030-01-01T00%3A00%3A00",
            SystemProperties(expiry_time_utc="2030-01-01T00:00:00"),
        ),
        ("%24.mid", SystemProperties()),  # a bare system key carries nothing
    ],
)
def test_system_properties_decode(bag: str, system: SystemProperties) -> None:
    assert decode_property_bag(bag).system == system


def test_a_bad_percent_escape_is_refused() -> None:
    with pytest.raises(AzureProtocolError):
        decode_property_bag("a=%FF")


def test_encoding_matches_urlencode_with_quote() -> None:
    properties = MessageProperties(application={"k/&=": "v +/&=$", "z": "", "a": "x"})
    expected = urlencode(sorted(properties.application.items()), quote_via=quote)
    assert encode_property_bag(properties) == expected


def test_encoding_orders_system_keys_like_the_sdk() -> None:
    properties = MessageProperties(
        SystemProperties(
            expiry_time_utc="e",
            interface_id="i",
            content_encoding="ce",
            content_type="ct",
            user_id="u",
            correlation_id="c",
            message_id="m",
            output_name="o",
        )
    )
    keys = [pair.split("=")[0] for pair in encode_property_bag(properties).split("&")]
    assert keys == [
        "%24.on",
        "%24.mid",
        "%24.cid",
        "%24.uid",
        "%24.ct",
        "%24.ce",
        "%24.ifid",
        "%24.exp",
    ]


def test_encoding_writes_none_as_an_empty_value() -> None:
    # Every pair is k=v: the SDK drops a response whose key lacks '=' (ref §1.7).
    assert encode_property_bag(MessageProperties(application={"k": None})) == "k="


def test_an_application_key_may_not_be_a_system_key() -> None:
    with pytest.raises(AzureProtocolError):
        encode_property_bag(MessageProperties(application={"$.mid": "x"}))


property_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
system_properties = st.builds(SystemProperties, *[st.none() | property_text for _ in range(8)])
application_properties = st.dictionaries(
    property_text.filter(lambda key: not key.startswith("$.")), property_text, max_size=5
)


@given(system_properties, application_properties)
def test_property_bag_round_trip(system: SystemProperties, application: dict[str, str]) -> None:
    properties = MessageProperties(system, application)
    bag = encode_property_bag(properties)
    assert decode_property_bag(bag) == properties
    # Whatever the values, the bag is usable inside one MQTT topic level.
    assert "/" not in bag
    if bag:
        validate_topic_name(bag)


@given(st.text(max_size=60))
def test_decoding_any_text_raises_only_azure_errors(bag: str) -> None:
    with contextlib.suppress(AzureProtocolError):
        decode_property_bag(bag)


# --- device-to-hub topics (ref §1.5) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "identity", "expected"),
    [
        ("devices/dev1/messages/events/", DEVICE, Telemetry(MessageProperties())),
        ("devices/dev1/messages/events", DEVICE, Telemetry(MessageProperties())),
        (
            f"devices/dev1/messages/events/{CAPTURED_BAG}",
            DEVICE,
            Telemetry(decode_property_bag(CAPTURED_BAG)),
        ),
        (
            "devices/dev1/modules/mod1/messages/events/%24.on=out1",
            MODULE,
            Telemetry(MessageProperties(SystemProperties(output_name="out1"))),
        ),
        # The SDK percent-encodes ids in topics: 'a b+c' becomes 'a%20b%2Bc'.
        (
            "devices/a%20b%2Bc/messages/events/",
            ClientIdentity("a b+c"),
            Telemetry(MessageProperties()),
        ),
        ("$iothub/twin/GET/?$rid=42", DEVICE, TwinGetRequest("42")),
        ("$iothub/twin/GET/?$rid=a%20b", DEVICE, TwinGetRequest("a b")),
        ("$iothub/twin/PATCH/properties/reported/?$rid=7", DEVICE, TwinReportedPatch("7")),
        ("$iothub/twin/PATCH/properties/reported/?$rid=7", MODULE, TwinReportedPatch("7")),
        ("$iothub/methods/res/200/?$rid=1", DEVICE, MethodResponse(200, "1")),
        ("$iothub/methods/res/-1/?$rid=x%2Fy", DEVICE, MethodResponse(-1, "x/y")),
    ],
)
def test_device_topics(topic: str, identity: ClientIdentity, expected: object) -> None:
    assert parse_device_topic(topic, identity) == expected


@pytest.mark.parametrize(
    ("topic", "identity"),
    [
        ("devices/dev2/messages/events/", DEVICE),
        ("devices/dev1/modules/mod1/messages/events/", DEVICE),  # a device posing as its module
        ("devices/dev1/modules/mod2/messages/events/", MODULE),
        ("devices/dev1/messages/events/", MODULE),  # a module posing as its device
        ("devices/dev1/messages/devicebound/x", DEVICE),
        ("devices/dev1/messages/events/a/b", DEVICE),
        ("devices/dev1/twin", DEVICE),
        ("$iothub/twin/PATCH/properties/desired/?$version=1", DEVICE),
        ("$iothub/methods/POST/m/?$rid=1", DEVICE),
        ("$iothub/methods/res/200/extra/?$rid=1", DEVICE),
        ("$iothub/other", DEVICE),
        ("$dps/registrations/PUT/iotdps-register/?$rid=1", DEVICE),
        ("telemetry", DEVICE),
    ],
)
def test_topics_a_device_may_not_publish(topic: str, identity: ClientIdentity) -> None:
    with pytest.raises(AzureProtocolError) as caught:
        parse_device_topic(topic, identity)
    assert caught.value.code == AzureProtocolErrorCode.TOPIC_NOT_ALLOWED


@pytest.mark.parametrize(
    "topic",
    [
        "$iothub/twin/GET/",
        "$iothub/twin/GET/?$version=1",
        "$iothub/twin/GET/?$rid=",
        "$iothub/methods/res/200/",
        "$iothub/methods/res/ok/?$rid=1",
        "devices/dev1/messages/events/a=%FF",
    ],
)
def test_known_topics_with_bad_parameters(topic: str) -> None:
    with pytest.raises(AzureProtocolError) as caught:
        parse_device_topic(topic, DEVICE)
    assert caught.value.code == AzureProtocolErrorCode.MALFORMED


@pytest.mark.parametrize(
    ("topic_filter", "identity", "allowed"),
    [
        ("devices/dev1/messages/devicebound/#", DEVICE, True),
        (TWIN_RESPONSE_FILTER, DEVICE, True),
        (DESIRED_PATCH_FILTER, DEVICE, True),
        (METHODS_FILTER, DEVICE, True),
        ("devices/dev1/modules/mod1/inputs/#", MODULE, True),
        ("devices/dev1/#", DEVICE, True),
        ("devices/a%20b/messages/devicebound/#", ClientIdentity("a b"), True),
        ("devices/dev2/messages/devicebound/#", DEVICE, False),
        ("devices/+/messages/devicebound/#", DEVICE, False),
        ("devices/#", DEVICE, False),
        ("devices/dev1/modules/mod1/inputs/#", DEVICE, False),
        ("devices/dev1/modules/+/inputs/#", MODULE, False),
        ("devices/dev1/messages/devicebound/#", MODULE, False),
        ("#", DEVICE, False),
        ("$iothub/#", DEVICE, False),
        ("$iothub/+/res/#", DEVICE, False),
        ("+/dev1/messages/devicebound/#", DEVICE, False),
    ],
)
def test_own_subscriptions(topic_filter: str, identity: ClientIdentity, allowed: bool) -> None:
    validate_topic_filter(topic_filter)
    assert is_own_topic(topic_filter, identity, is_filter=True) is allowed


def test_a_device_named_like_a_wildcard_cannot_subscribe_with_it() -> None:
    assert not is_own_topic("devices/+/messages/devicebound/#", ClientIdentity("+"), is_filter=True)
    assert is_own_topic("devices/%2B/messages/devicebound/#", ClientIdentity("+"), is_filter=True)


# --- hub-to-device topics (ref §1.5-§1.7) -------------------------------------------------------


def test_c2d_topic_has_azures_shape() -> None:
    properties = MessageProperties(SystemProperties(message_id="m-1", content_encoding="utf-8"))
    assert c2d_topic("dev1", properties) == (
        "devices/dev1/messages/devicebound/%24.mid=m-1&%24.ce=utf-8"
        "&%24.to=%2Fdevices%2Fdev1%2Fmessages%2Fdevicebound&iothub-ack=none"
    )


def test_c2d_topic_as_the_sdk_reads_it() -> None:
    properties = MessageProperties(
        SystemProperties(message_id="m 1", correlation_id="c/1"), {"a+b": "x&y", "e": ""}
    )
    topic = c2d_topic("dev 1", properties, ack=C2DAck.FULL)
    validate_topic_name(topic)
    parts = topic.split("/")
    # The SDK takes the bag from level 4 and splits it on '&' and '=' (ref §1.6).
    assert parts[:4] == ["devices", "dev%201", "messages", "devicebound"]
    pairs = dict(entry.split("=") for entry in parts[4].split("&"))
    decoded = {unquote(k): unquote(v) for k, v in pairs.items()}
    assert decoded == {
        "$.mid": "m 1",
        "$.cid": "c/1",
        "$.to": "/devices/dev 1/messages/devicebound",
        "iothub-ack": "full",
        "a+b": "x&y",
        "e": "",
    }


def test_module_input_topic() -> None:
    topic = module_input_topic(MODULE, "in 1", MessageProperties(application={"k": "v"}))
    assert topic == "devices/dev1/modules/mod1/inputs/in%201/k=v"
    with pytest.raises(AzureProtocolError):
        module_input_topic(DEVICE, "in", MessageProperties())


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (twin_response_topic(200, "abc"), "$iothub/twin/res/200/?$rid=abc"),
        (twin_response_topic(204, "1", version=6), "$iothub/twin/res/204/?$rid=1&$version=6"),
        (twin_response_topic(400, "a b/c"), "$iothub/twin/res/400/?$rid=a%20b%2Fc"),
        (desired_patch_topic(12), "$iothub/twin/PATCH/properties/desired/?$version=12"),
        (method_request_topic("reboot", "7"), "$iothub/methods/POST/reboot/?$rid=7"),
        (method_request_topic("a/b c", "7"), "$iothub/methods/POST/a%2Fb%20c/?$rid=7"),
    ],
)
def test_hub_to_device_topics(topic: str, expected: str) -> None:
    assert topic == expected
    validate_topic_name(topic)


def test_twin_response_as_the_sdk_reads_it() -> None:
    topic = twin_response_topic(204, "5b2f/x y", version=6)
    assert topic.split("/")[3] == "204"  # the status is path segment 4 (ref §1.7)
    assert sdk_extract_properties(topic) == {"rid": "5b2f/x y", "version": "6"}


def test_method_request_as_the_sdk_reads_it() -> None:
    topic = method_request_topic("do/it now", "r-1")
    assert unquote(topic.split("/")[3]) == "do/it now"
    assert sdk_extract_properties(topic) == {"rid": "r-1"}


@given(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30))
def test_any_rid_survives_the_twin_round_trip(rid: str) -> None:
    # The device's request, as the SDK writes it (quote with safe=""), parsed by us ...
    request = f"$iothub/twin/GET/?$rid={quote(rid, safe='')}"
    parsed = parse_device_topic(request, DEVICE)
    assert parsed == TwinGetRequest(rid)
    # ... and our answer, as the SDK reads it.
    assert sdk_extract_properties(twin_response_topic(200, parsed.rid))["rid"] == rid


@given(st.text(max_size=80))
def test_parsing_any_topic_raises_only_azure_errors(topic: str) -> None:
    with contextlib.suppress(AzureProtocolError):
        parse_device_topic(topic, DEVICE)
    is_own_topic(topic, DEVICE)


def test_the_package_exports_the_module_whole() -> None:
    import fleetpki.hub.azure as azure
    from fleetpki.hub.azure import topics

    assert sorted(azure.__all__) == sorted(topics.__all__)
    for name in azure.__all__:
        assert getattr(azure, name) is getattr(topics, name)


@pytest.mark.parametrize(
    ("topic", "identity", "plain"),
    [
        ("devices/dev1/messages/events/", DEVICE, True),
        ("devices/dev1/messages/events", DEVICE, True),
        ("devices/dev1/modules/mod1/messages/events/", MODULE, True),
        ("devices/dev1/modules/mod1/messages/events", MODULE, True),
        ("devices/dev1/messages/events/$.ct=application%2Fjson", DEVICE, False),
        ("devices/dev1/messages/events/&", DEVICE, False),
        ("devices/dev1/messages/events//", DEVICE, False),
        ("devices/dev2/messages/events/", DEVICE, False),
        ("devices/dev1/messages/events/", MODULE, False),  # a module sends on its own topic
        ("devices/dev1/modules/mod1/messages/events/", DEVICE, False),
        ("devices/dev1/modules/mod2/messages/events/", MODULE, False),
        ("devices/dev1/messages/devicebound/", DEVICE, False),
        ("$iothub/twin/GET/?$rid=1", DEVICE, False),
        ("", DEVICE, False),
        # Percent-encoded ids are left to parse_device_topic, which unquotes them.
        ("devices/a%20b/messages/events/", ClientIdentity("a b"), False),
        ("devices/a%2520b/messages/events/", ClientIdentity("a%20b"), False),
        ("devices/a%20b/messages/events/", ClientIdentity("a%20b"), False),
    ],
)
def test_plain_telemetry_topics(topic: str, identity: ClientIdentity, plain: bool) -> None:
    assert is_plain_telemetry(topic, identity) is plain


_ids = st.text(st.sampled_from("ab%2/0 +é"), min_size=1, max_size=6)


@given(
    _ids,
    st.one_of(st.none(), _ids),
    st.lists(
        st.sampled_from(
            ["devices", "dev1", "a", "%20", "modules", "messages", "events", "", "$.mid=1", "&"]
        ),
        max_size=7,
    ),
)
def test_a_plain_telemetry_topic_is_telemetry_without_properties(
    device_id: str, module_id: str | None, levels: list[str]
) -> None:
    # The fast path says yes only where the full parser finds telemetry with no properties.
    identity = ClientIdentity(
        device_id.replace("/", "_"), module_id and module_id.replace("/", "_")
    )
    own = f"devices/{identity.device_id}" + (
        "" if identity.module_id is None else f"/modules/{identity.module_id}"
    )
    for topic in ("/".join(levels), f"{own}/messages/events/", f"{own}/{'/'.join(levels)}"):
        if is_plain_telemetry(topic, identity):
            assert parse_device_topic(topic, identity) == Telemetry(MessageProperties())
    if "%" not in own:
        assert is_plain_telemetry(f"{own}/messages/events/", identity)
        assert is_plain_telemetry(f"{own}/messages/events", identity)
