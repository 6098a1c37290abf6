"""The device's MQTT connection against the real fleetpki hub and against mosquitto.

Devices enroll through a real server (EZCA routes over TLS); the hub is the hub
engineers' TLS listener (`support.hub.start_hub_thread`) trusting the same CA.
mosquitto, started here with ``require_certificate true``, shows that the TLS, CONNECT
and topic side is plain MQTT 3.1.1 that another broker accepts unchanged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetpki.device import (
    CloudMessage,
    DeviceClient,
    DeviceDirectory,
    DeviceIdentity,
    EzcaEnroller,
    MethodReply,
    MethodRequest,
    enroll_device,
    mqtt_username,
    renew_identity,
    start_auto_renewal,
)
from fleetpki.errors import AuthenticationError, FleetPKIError, ValidationError
from fleetpki.hub.backend import C2DMessage
from support.hub import LiveHub, start_hub_thread
from support.server import LiveServer, start_server

WAIT = 20.0


def wait_until(predicate: Callable[[], Any], what: str) -> None:
    """Poll until ``predicate`` holds (a generous bound, not a timing assertion)."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    # Only the CA side: this module runs its own hub on the same home (start_hub_thread).
    with start_server(tmp_path_factory.mktemp("device-mqtt") / "home", only="ca") as server:
        yield server


@pytest.fixture(scope="module")
def hub(live: LiveServer) -> Iterator[LiveHub]:
    with start_hub_thread(live.fleet) as running:
        yield running


@pytest.fixture
def enroll(live: LiveServer) -> Iterator[Callable[[], DeviceIdentity]]:
    with EzcaEnroller(live.base_url, live.admin_token, verify=live.ca_bundle) as ezca:

        def make() -> DeviceIdentity:
            return enroll_device(ezca, f"dev-{random.getrandbits(48):012x}", validity_days=10)

        yield make


@pytest.fixture
def device(enroll: Callable[[], DeviceIdentity], hub: LiveHub) -> DeviceIdentity:
    identity = enroll()
    hub.registry.add_device(identity.device_id)
    return identity


def test_username() -> None:
    assert mqtt_username("hub.example", "dev-1") == "hub.example/dev-1/?api-version=2021-04-12"
    assert (
        mqtt_username("h", "d", client_type="fleetpki device/0.1")
        == "h/d/?api-version=2021-04-12&DeviceClientType=fleetpki%20device%2F0.1"
    )


def test_telemetry_with_properties(device: DeviceIdentity, hub: LiveHub) -> None:
    with DeviceClient(device, "localhost", port=hub.port) as client:
        client.connect()
        assert client.is_connected
        client.send_telemetry(
            {"temperature": 31},
            properties={"temperatureAlert": "true", "a b/c": "x&y=z+1"},
            message_id="mid 1",
            correlation_id="cid/1",
        )
        client.send_telemetry(b"\x00raw", properties={})
    stored = [r for r in hub.registry.telemetry if r.device_id == device.device_id]
    assert [r.body for r in stored] == [b'{"temperature": 31}', b"\x00raw"]
    first = stored[0]
    assert first.properties == {"temperatureAlert": "true", "a b/c": "x&y=z+1"}
    assert first.system_properties["message-id"] == "mid 1"
    assert first.system_properties["correlation-id"] == "cid/1"
    assert first.system_properties["content-type"] == "application/json"
    assert first.system_properties["content-encoding"] == "utf-8"


def test_twin_get_and_reported_patch(device: DeviceIdentity, hub: LiveHub) -> None:
    with DeviceClient(device, "localhost", port=hub.port) as client:
        client.connect()
        twin = client.get_twin()
        assert twin["desired"]["$version"] >= 1
        version = client.patch_reported({"firmware": "1.2.3"})
        assert version is not None
        assert version > twin["reported"]["$version"]
        assert client.get_twin()["reported"]["firmware"] == "1.2.3"


def test_desired_patch_c2d_and_method(device: DeviceIdentity, hub: LiveHub) -> None:
    patches: queue.Queue[dict[str, Any]] = queue.Queue()
    messages: queue.Queue[CloudMessage] = queue.Queue()
    calls: list[MethodRequest] = []

    def reboot(request: MethodRequest) -> MethodReply:
        calls.append(request)
        return MethodReply(200, {"rebooting": True, "delay": request.payload["delay"]})

    with DeviceClient(device, "localhost", port=hub.port) as client:
        client.connect()
        client.on_desired_patch(patches.put)
        client.on_cloud_message(messages.put)
        client.on_method(reboot)
        version = hub.registry.patch_desired(device.device_id, {"interval": 30})
        patch = patches.get(timeout=WAIT)
        assert patch == {"interval": 30, "$version": version}
        hub.registry.send_c2d(
            device.device_id,
            C2DMessage("m-1", b"hello device", {"$.cid": "corr", "color": "red"}),
        )
        message = messages.get(timeout=WAIT)
        assert message.text() == "hello device"
        assert message.properties.system.message_id == "m-1"
        assert message.properties.system.correlation_id == "corr"
        assert message.properties.application["color"] == "red"
        result = hub.run(hub.broker.invoke_method(device.device_id, "reboot", {"delay": 5}))
        assert result.status == 200
        assert result.payload == {"rebooting": True, "delay": 5}
        assert calls[0].name == "reboot"


def test_method_handler_failure_answers_500(device: DeviceIdentity, hub: LiveHub) -> None:
    def broken(_request: MethodRequest) -> MethodReply:
        raise RuntimeError("boom")

    with DeviceClient(device, "localhost", port=hub.port) as client:
        client.connect()
        client.on_method(broken)
        result = hub.run(hub.broker.invoke_method(device.device_id, "anything", None))
    assert result.status == 500


def test_c2d_queued_while_offline_arrives_after_reconnect(
    device: DeviceIdentity, hub: LiveHub
) -> None:
    messages: queue.Queue[CloudMessage] = queue.Queue()
    with DeviceClient(device, "localhost", port=hub.port) as client:
        client.connect()
        client.on_cloud_message(messages.put)
        client.disconnect()
        hub.registry.send_c2d(device.device_id, C2DMessage("m-2", b"while away"))
        client.connect()
        assert messages.get(timeout=WAIT).body == b"while away"


def test_unregistered_device_is_refused(enroll: Callable[[], DeviceIdentity], hub: LiveHub) -> None:
    identity = enroll()
    with DeviceClient(identity, "localhost", port=hub.port) as client:
        with pytest.raises(AuthenticationError) as caught:
            client.connect()
        assert caught.value.code == "hub.refused"
        assert client.refused_code == 5
        assert not client.is_connected


def test_reconnect_with_a_renewed_certificate(
    device: DeviceIdentity, hub: LiveHub, live: LiveServer, tmp_path: Path
) -> None:
    directory = DeviceDirectory(tmp_path / "dev")
    with (
        EzcaEnroller(live.base_url, verify=live.ca_bundle) as ezca,
        DeviceClient(device, "localhost", port=hub.port) as client,
    ):
        client.connect()
        client.send_telemetry("before")
        renewed = renew_identity(ezca, device, directory=directory)
        client.reconnect(renewed)
        assert client.identity is renewed
        # The old certificate is revoked: the renewed session does not care.
        hub.registry.revoke(device.certificate)
        client.send_telemetry("after")
        assert client.is_connected
    payloads = [r.body for r in hub.registry.telemetry if r.device_id == device.device_id]
    assert payloads == [b"before", b"after"]


def test_auto_renewal_renews_saves_and_reconnects(
    device: DeviceIdentity, hub: LiveHub, live: LiveServer, tmp_path: Path
) -> None:
    directory = DeviceDirectory(tmp_path / "dev")
    now = [device.not_before]
    waits: list[float] = []
    release = threading.Event()

    def wait(seconds: float) -> bool:
        # The first wait jumps to the renewal time; the next one parks until the end.
        if waits:
            release.wait(WAIT)
            return True
        waits.append(seconds)
        now[0] += dt.timedelta(seconds=seconds)
        return False

    with (
        EzcaEnroller(live.base_url, verify=live.ca_bundle) as ezca,
        DeviceClient(device, "localhost", port=hub.port) as client,
    ):
        client.connect()
        renewer = start_auto_renewal(
            ezca, client, directory=directory, clock=lambda: now[0], wait=wait
        )
        try:
            wait_until(lambda: renewer.renewals == 1, "the renewal")
            wait_until(lambda: client.is_connected, "the reconnect")
        finally:
            release.set()
            renewer.stop()
        assert renewer.failures == 0
        assert client.identity is renewer.identity
        assert client.identity.serial_hex != device.serial_hex
        assert directory.load().certificate == client.identity.certificate
        client.send_telemetry("renewed")
    # Two thirds of the lifetime, give or take a twentieth.
    assert abs(waits[0] / device.lifetime.total_seconds() - 2 / 3) <= 1 / 20 + 1e-6


def test_revocation_closes_the_session_and_stops_retries(
    device: DeviceIdentity, hub: LiveHub
) -> None:
    with DeviceClient(device, "localhost", port=hub.port) as client:
        client.connect()
        hub.registry.revoke(device.certificate)
        # paho reconnects after the drop; the hub answers CONNACK 5 and the client stops.
        wait_until(lambda: client.refused_code == 5, "the refused reconnect")
        assert not client.is_connected
        with pytest.raises(FleetPKIError):
            client.send_telemetry("refused", timeout=2)


def test_reconnect_refuses_another_device(
    device: DeviceIdentity, enroll: Callable[[], DeviceIdentity], hub: LiveHub
) -> None:
    with (
        DeviceClient(device, "localhost", port=hub.port) as client,
        pytest.raises(ValidationError) as caught,
    ):
        client.reconnect(enroll())
    assert caught.value.code == "device.other_identity"


def test_untrusted_hub_certificate(device: DeviceIdentity, hub: LiveHub, tmp_path: Path) -> None:
    other = tmp_path / "other-root.pem"
    other.write_text(
        device.chain_pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    )
    with (
        DeviceClient(device, "localhost", port=hub.port, ca_bundle=other) as client,
        pytest.raises(FleetPKIError) as caught,
    ):
        client.connect()
    assert caught.value.code == "hub.unreachable"


def test_oversized_message(device: DeviceIdentity, hub: LiveHub) -> None:
    with DeviceClient(device, "localhost", port=hub.port) as client:
        client.connect()
        with pytest.raises(ValidationError) as caught:
            client.send_telemetry(b"x" * 262_145)
    assert caught.value.code == "hub.message_too_large"


def test_not_connected(device: DeviceIdentity, hub: LiveHub) -> None:
    with (
        DeviceClient(device, "localhost", port=hub.port) as client,
        pytest.raises(FleetPKIError) as caught,
    ):
        client.send_telemetry("x")
    assert caught.value.code == "hub.not_connected"


# --------------------------------------------------------------------------- mosquitto


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def mosquitto(live: LiveServer, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """mosquitto on TLS 1.2 requiring a client certificate from the fleetpki CA."""
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is missing: `make test` installs it (scripts/ensure-system-deps.sh)")
    files = live.fleet.server_certificates.ensure(hostname="localhost", host="127.0.0.1")
    # mosquitto started as root drops to the "mosquitto" user, which cannot enter the
    # pytest folders: give it copies it owns in a folder it may traverse.
    with tempfile.TemporaryDirectory(prefix="fleetpki-mosquitto-") as folder:
        os.chmod(folder, 0o711)
        tls = {}
        for name, source in (
            ("ca.pem", files.ca_bundle),
            ("server.pem", files.certfile),
            ("server.key", files.keyfile),
        ):
            target = Path(folder, name)
            shutil.copyfile(source, target)
            target.chmod(0o600)
            with contextlib.suppress(LookupError, PermissionError):
                shutil.chown(target, "mosquitto")
            tls[name] = target
        yield from _run_mosquitto(tls, tmp_path)


def _run_mosquitto(tls: dict[str, Path], tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = _free_port()
    log = tmp_path / "mosquitto.log"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                "persistence false",
                "log_dest stderr",
                "log_type all",
                f"listener {port} 127.0.0.1",
                f"cafile {tls['ca.pem']}",
                f"certfile {tls['server.pem']}",
                f"keyfile {tls['server.key']}",
                "require_certificate true",
                "tls_version tlsv1.2",
                "allow_anonymous true",
                "",
            ]
        )
    )
    with log.open("w") as log_file:
        process = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log_file
        )
    try:

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, "mosquitto to listen")
        yield port, log
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_against_mosquitto(
    mosquitto: tuple[int, Path],
    enroll: Callable[[], DeviceIdentity],
    live: LiveServer,
    tmp_path: Path,
) -> None:
    port, log = mosquitto
    watcher = enroll()
    folder = tmp_path / "watcher"
    DeviceDirectory(folder).save(watcher)
    subscriber = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "localhost",
            "-p",
            str(port),
            "-V",
            "mqttv311",
            "--cafile",
            str(folder / "ca-bundle.pem"),
            "--cert",
            str(folder / "device.pem"),
            "--key",
            str(folder / "device.key"),
            "-i",
            "watcher",
            "-t",
            "devices/#",
            "-q",
            "1",
            "-v",
            "-C",
            "2",
            "-W",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    device = enroll()
    try:
        wait_until(
            lambda: "watcher" in log.read_text() and "SUBACK" in log.read_text(), "the subscriber"
        )
        with DeviceClient(device, "localhost", port=port) as client:
            client.connect()
            client.send_telemetry(
                {"deviceId": device.device_id, "temperature": 33},
                properties={"temperatureAlert": "true"},
            )
            client.send_telemetry(b"second", properties={"k": "v w"}, message_id="m/2")
        out, err = subscriber.communicate(timeout=WAIT)
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
            subscriber.communicate()
    assert subscriber.returncode == 0, err
    base = f"devices/{device.device_id}/messages/events/"
    lines = out.splitlines()
    assert lines[0] == (
        f"{base}%24.ct=application%2Fjson&%24.ce=utf-8&temperatureAlert=true "
        + json.dumps({"deviceId": device.device_id, "temperature": 33})
    )
    assert lines[1] == f"{base}%24.mid=m%2F2&k=v%20w second"
    # mosquitto logs the CONNECT: MQTT 3.1.1 (p2), CleanSession 0 (c0), the Azure username.
    text = log.read_text()
    assert (
        f"as {device.device_id} (p2, c0, k60, u'localhost/{device.device_id}/?api-version=2021-04-12')"
        in text
    )
