"""The TLS hub against mosquitto_pub and mosquitto_sub with client certificates."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetpki.application import FleetPKI
from fleetpki.hub.backend import C2DMessage
from support.hub import DeviceFiles, LiveHub, issue_device, start_hub_thread


@pytest.fixture
def hub(sqlite_fleet: FleetPKI) -> Iterator[LiveHub]:
    with start_hub_thread(sqlite_fleet) as live:
        yield live


@pytest.fixture
def dev1(sqlite_fleet: FleetPKI, hub: LiveHub, tmp_path: Path) -> DeviceFiles:
    hub.registry.add_device("dev1")
    return issue_device(sqlite_fleet, "dev1", tmp_path)


def _tls_args(hub: LiveHub, files: DeviceFiles, client_id: str = "dev1") -> list[str]:
    return [
        "-h", "localhost", "-p", str(hub.port), "-V", "mqttv311", "-i", client_id,
        "-u", f"localhost/{client_id}/?api-version=2019-10-01",
        "--cafile", str(hub.ca_file), "--cert", str(files.cert), "--key", str(files.key),
    ]  # fmt: skip


def test_mosquitto_pub_telemetry_is_stored(hub: LiveHub, dev1: DeviceFiles) -> None:
    topic = "devices/dev1/messages/events/%24.ct=text%2Fplain&site=north%20gate"
    done = subprocess.run(
        ["mosquitto_pub", *_tls_args(hub, dev1), "-q", "1", "-t", topic, "-m", "21.5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    (record,) = hub.registry.telemetry
    assert record.body == b"21.5"
    assert record.system_properties == {"content-type": "text/plain"}
    assert record.properties == {"site": "north gate"}


def test_mosquitto_pub_on_another_devices_topic_is_dropped(
    hub: LiveHub, dev1: DeviceFiles, caplog: pytest.LogCaptureFixture
) -> None:
    subprocess.run(
        [
            "mosquitto_pub",
            *_tls_args(hub, dev1),
            "-q",
            "1",
            "-t",
            "devices/dev2/messages/events/",
            "-m",
            "spoof",
        ],
        capture_output=True,
        timeout=30,
    )
    assert not hub.registry.telemetry
    deadline = time.monotonic() + 20
    while "azure.topic_not_allowed" not in caplog.text:
        assert time.monotonic() < deadline, "no log line"
        time.sleep(0.02)


def test_mosquitto_sub_receives_c2d(hub: LiveHub, dev1: DeviceFiles) -> None:
    with subprocess.Popen(
        [
            "mosquitto_sub",
            *_tls_args(hub, dev1),
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "30",
            "-v",
            "-t",
            "devices/dev1/messages/devicebound/#",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        deadline = time.monotonic() + 20
        while not hub.call(lambda: _subscribed(hub)):
            assert time.monotonic() < deadline, "mosquitto_sub never subscribed"
            time.sleep(0.02)
        hub.registry.send_c2d("dev1", C2DMessage("m1", b"open the gate"))
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    topic, _, payload = out.strip().partition(" ")
    assert topic.startswith("devices/dev1/messages/devicebound/%24.mid=m1&")
    assert payload == "open the gate"


def _subscribed(hub: LiveHub) -> bool:
    link = hub.broker._live.get("dev1")
    session = link.mqtt.session if link is not None else None
    return session is not None and bool(session.subscriptions)


def test_mosquitto_pub_with_an_unknown_device_is_refused(
    sqlite_fleet: FleetPKI, hub: LiveHub, tmp_path: Path
) -> None:
    ghost = issue_device(sqlite_fleet, "ghost", tmp_path)
    done = subprocess.run(
        [
            "mosquitto_pub",
            *_tls_args(hub, ghost, "ghost"),
            "-q",
            "1",
            "-t",
            "devices/ghost/x",
            "-m",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "not authori" in (done.stderr + done.stdout).lower()
