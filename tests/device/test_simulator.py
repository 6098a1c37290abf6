"""The tutorial simulator end to end against ``fleetpki serve`` (CA, hub and service API).

The server from `support.server.start_server` runs the HTTPS API, the hub's service API
and the MQTT hub; the hub trusts the issuing CA by proof of possession. The simulator
registers each device through the service API with a SAS connection string, registers
the domain, enrolls through the EZCA routes, connects and sends the tutorial's messages;
the test reads them back from the hub's message store.
"""

from __future__ import annotations

import json
import os
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from fleetpki.cli.main import app
from fleetpki.device import (
    HubConnectionString,
    ServiceApiRegistry,
    SimulatorSettings,
    sas_token,
    simulate_device,
    telemetry_message,
)
from fleetpki.device.simulator import HUMIDITY_RANGE, TEMPERATURE_RANGE
from fleetpki.pki.keys import KeySpec
from support.server import LiveServer, start_server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Serve:
    """A running ``fleetpki serve`` with the hub's MQTT port and a service connection string."""

    live: LiveServer
    mqtt_port: int
    connection_string: str


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    # start_server does not report the hub's port: choose a free one for it.
    mqtt_port = _free_port()
    home = tmp_path_factory.mktemp("device-simulate") / "home"
    with start_server(home, mqtt_port=mqtt_port) as live:
        fleet = live.fleet
        fleet.hub_trust.trust_local_ca(fleet.cas.current_issuer().id)
        connection = fleet.hub_sas.connection_string(
            "iothubowner", hostname=f"localhost:{live.port}"
        )
        yield Serve(live, mqtt_port, connection)


def _stored(serve: Serve, device_id: str) -> list[tuple[dict[str, object], dict[str, object]]]:
    rows = serve.live.fleet.hub_messages.list_telemetry(device_id=device_id)
    return [(json.loads(r.body), dict(r.properties)) for r in rows]


def _check_messages(serve: Serve, device_id: str, count: int = 5) -> None:
    stored = _stored(serve, device_id)
    assert [body["messageId"] for body, _ in stored] == list(range(1, count + 1))
    for body, properties in stored:
        assert set(body) == {"deviceId", "messageId", "temperature", "humidity"}
        assert body["deviceId"] == device_id
        assert isinstance(body["temperature"], int)
        assert isinstance(body["humidity"], int)
        assert TEMPERATURE_RANGE[0] <= body["temperature"] <= TEMPERATURE_RANGE[1]
        assert HUMIDITY_RANGE[0] <= body["humidity"] <= HUMIDITY_RANGE[1]
        alert = "true" if body["temperature"] > 30 else "false"
        assert properties == {"temperatureAlert": alert}


def test_simulate_one_device(serve: Serve, tmp_path: Path) -> None:
    steps: list[tuple[str, str]] = []
    settings = SimulatorSettings(
        server_url=serve.live.base_url,
        token=serve.live.admin_token,
        hub_host="localhost",
        verify=serve.live.ca_bundle,
        mqtt_port=serve.mqtt_port,
        directory=tmp_path / "devices",
    )
    with ServiceApiRegistry(serve.connection_string, verify=serve.live.ca_bundle) as registry:
        result = simulate_device(
            settings, registry=registry, report=lambda s, d: steps.append((s, d))
        )
        entry = registry.get_device(result.identity.device_id)
    device_id = result.identity.device_id
    # A random GUID, registered with certificate-authority authentication.
    assert len(device_id) == 36 and device_id.count("-") == 4
    assert entry["authentication"]["type"] == "certificateAuthority"
    assert entry["status"] == "enabled"
    assert result.registered_in_hub is True
    # The tutorial's key and lifetime.
    assert isinstance(result.identity.key, rsa.RSAPrivateKey)
    assert result.identity.key.key_size == 4096
    assert result.identity.lifetime.days == 10
    assert (tmp_path / "devices" / device_id / "device.key").exists()
    assert [s for s, _ in steps] == [
        "choose CA",
        "device id",
        "register in hub",
        "register domain",
        "certificate",
        "connect",
        *["telemetry"] * 5,
    ]
    _check_messages(serve, device_id)
    assert [b for b, _ in _stored(serve, device_id)] == list(result.sent)


def test_registering_twice_is_fine(serve: Serve) -> None:
    device_id = f"dev-{random.getrandbits(40):010x}"
    with ServiceApiRegistry(serve.connection_string, verify=serve.live.ca_bundle) as registry:
        assert registry.register_device(device_id) is True
        assert registry.register_device(device_id) is False
    assert serve.live.fleet.hub_devices.get(device_id).auth_type == "certificateAuthority"


def test_cli_simulate(serve: Serve, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "device",
            "simulate",
            "--count",
            "2",
            "--key",
            "ec-p256",
            "--server",
            serve.live.base_url,
            "--token",
            serve.live.admin_token,
            "--ca-bundle",
            str(serve.live.ca_bundle),
            "--hub-host",
            "localhost",
            "--mqtt-port",
            str(serve.mqtt_port),
            "--hub-connection-string",
            serve.connection_string,
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    device_ids = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(device_ids) == 2
    for device_id in device_ids:
        assert device_id in result.output
        _check_messages(serve, device_id)
    assert "register in hub" in result.output
    # Nothing secret reaches the output.
    assert serve.live.admin_token not in result.output
    assert HubConnectionString.parse(serve.connection_string).key not in result.output


def test_cli_refused_without_registration(serve: Serve) -> None:
    result = CliRunner().invoke(
        app,
        [
            "device",
            "simulate",
            "--key",
            "ec-p256",
            "--server",
            serve.live.base_url,
            "--token",
            serve.live.admin_token,
            "--ca-bundle",
            str(serve.live.ca_bundle),
            "--hub-host",
            "localhost",
            "--mqtt-port",
            str(serve.mqtt_port),
        ],
    )
    assert result.exit_code == 1
    assert "skipped: no hub registry given" in result.output
    assert "hub.refused" in result.output
    assert serve.live.admin_token not in result.output


def test_cli_needs_a_token() -> None:
    result = CliRunner().invoke(
        app, ["device", "simulate", "--server", "https://x"], env={"FLEETPKI_TOKEN": ""}
    )
    assert result.exit_code == 1
    assert "cli.token_required" in result.output


@pytest.mark.parametrize("seed", range(20))
def test_telemetry_message(seed: int) -> None:
    body, properties = telemetry_message("dev", 3, random.Random(seed))
    assert body["deviceId"] == "dev" and body["messageId"] == 3
    assert 20 <= body["temperature"] <= 34
    assert 60 <= body["humidity"] <= 79
    assert properties == {"temperatureAlert": str(body["temperature"] > 30).lower()}


def test_sas_token_shape() -> None:
    import base64
    import datetime as dt
    import hashlib
    import hmac
    from urllib.parse import unquote

    key = base64.b64encode(b"k" * 32).decode()
    expiry = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    token = sas_token("localhost:8443", key, key_name="iothubowner", expiry=expiry)
    assert token.startswith("SharedAccessSignature sr=localhost%3A8443&sig=")
    fields = dict(
        pair.split("=", 1) for pair in token.removeprefix("SharedAccessSignature ").split("&")
    )
    assert fields["se"] == str(int(expiry.timestamp()))
    assert fields["skn"] == "iothubowner"
    expected = hmac.new(
        base64.b64decode(key), f"{fields['sr']}\n{fields['se']}".encode(), hashlib.sha256
    ).digest()
    assert base64.b64decode(unquote(fields["sig"])) == expected
    assert "+" not in fields["sig"] and "=" not in fields["sig"]


@pytest.mark.parametrize(
    "text",
    [
        "HostName=h;SharedAccessKeyName=p",
        "HostName=h;SharedAccessKey=a2V5",
        "SharedAccessKeyName=p;SharedAccessKey=a2V5",
        "HostName=h;SharedAccessKeyName=p;SharedAccessKey=not base64!",
    ],
)
def test_bad_connection_strings(text: str) -> None:
    from fleetpki.errors import ValidationError

    with pytest.raises(ValidationError) as caught:
        HubConnectionString.parse(text)
    assert caught.value.code == "hub.bad_connection_string"
    assert "a2V5" not in str(caught.value)


def test_connection_string_keeps_its_key_out_of_repr() -> None:
    parsed = HubConnectionString.parse("HostName=h:1;SharedAccessKeyName=p;SharedAccessKey=a2V5")
    assert (parsed.host_name, parsed.key_name, parsed.key) == ("h:1", "p", "a2V5")
    assert "a2V5" not in repr(parsed)


def test_key_spec_option_is_checked() -> None:
    result = CliRunner().invoke(app, ["device", "simulate", "--key", "dsa-1024", "--token", "t"])
    assert result.exit_code != 0
    assert KeySpec.RSA_4096.value in result.output
