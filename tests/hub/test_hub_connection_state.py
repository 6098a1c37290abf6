"""Device connection state: the registry's connectionState, and its events on the Event Hub.

A paho-mqtt device connects and disconnects (cleanly, and by a revocation that closes
its session); the service API's ``GET /devices/{id}`` shows ``connectionState``
Connected while it is connected and Disconnected after, with
``connectionStateUpdatedTime`` and ``lastActivityTime``, on SQLite and PostgreSQL.
With ``hub_route_connection_state_events`` the unmodified azure-eventhub
``EventHubConsumerClient`` reads deviceConnected and deviceDisconnected events in the
device's partition, in order with its telemetry; without it nothing is emitted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_hub_eventhub import AZURE_PYTHON, _consume, _eventhub_string

from fleetpki.application import init_home
from fleetpki.hub.amqp.addresses import partition_of
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor, hub_sas
from fleetpki.services.authority import HierarchySpec
from fleetpki.services.hub_devices import ConnectionChange, DeviceSpec
from fleetpki.services.hub_routing import sequence_number
from fleetpki.settings import Settings
from support.hub import DeviceFiles, issue_device, issuing_ca
from support.mqtt_device import WAIT, Device, wait_until
from support.server import LiveServer, start_server

_NEVER = "0001-01-01T00:00:00Z"


def _registry(live: LiveServer, device_id: str) -> dict[str, Any]:
    """``GET /devices/{id}`` of the service API, as the service SDK reads it."""
    key = live.fleet.hub_sas.policy_keys("iothubowner").primary
    token = hub_sas.make_sas_token(
        f"localhost:{live.port}", "iothubowner", key, int(time.time()) + 3600
    )
    with httpx.Client(verify=ssl.create_default_context(cafile=live.ca_bundle)) as client:
        response = client.get(
            f"https://localhost:{live.port}/devices/{device_id}",
            headers={"Authorization": token},
            params={"api-version": "2021-04-12"},
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _files(live: LiveServer, device_id: str, tmp: Path) -> DeviceFiles:
    fleet = live.fleet
    files = issue_device(fleet, device_id, tmp)
    fleet.hub_trust.trust_local_ca(issuing_ca(fleet).id)
    fleet.hub_devices.put(DeviceSpec(device_id=device_id))
    return files


def _state(live: LiveServer, device_id: str) -> str:
    return str(_registry(live, device_id)["connectionState"])


def _revoke(live: LiveServer, files: DeviceFiles) -> None:
    live.fleet.certificates.revoke(
        Actor.local_admin(),
        format(files.certificate.serial_number, "X"),
        RevocationReason.KEY_COMPROMISE,
    )


def test_registry_shows_connection_state(tmp_path: Path, database_url: str) -> None:
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    with start_server(tmp_path / "home", database_url=database_url) as live:
        files = _files(live, "cs-dev", tmp_path)
        before = _registry(live, "cs-dev")
        assert before["connectionState"] == "Disconnected"
        assert before["connectionStateUpdatedTime"] == _NEVER
        assert before["lastActivityTime"] == _NEVER
        etag = before["etag"]

        device = Device(live.mqtt_port, live.ca_bundle, files)
        assert device.connect() == 0
        try:
            wait_until(lambda: _state(live, "cs-dev") == "Connected", "Connected")
            connected = _registry(live, "cs-dev")
            assert connected["connectionStateUpdatedTime"] != _NEVER
            assert connected["lastActivityTime"] == connected["connectionStateUpdatedTime"]
            assert connected["etag"] == etag  # the state is not a change of the identity
        finally:
            device.close()
        wait_until(lambda: _state(live, "cs-dev") == "Disconnected", "Disconnected")
        cleanly = _registry(live, "cs-dev")
        assert _time(cleanly["connectionStateUpdatedTime"]) > _time(
            connected["connectionStateUpdatedTime"]
        )
        assert cleanly["lastActivityTime"] == cleanly["connectionStateUpdatedTime"]

        # A revocation closes the session: Disconnected again.
        device = Device(live.mqtt_port, live.ca_bundle, files)
        assert device.connect() == 0
        try:
            wait_until(lambda: _state(live, "cs-dev") == "Connected", "Connected again")
            _revoke(live, files)
            assert device.disconnected.wait(WAIT)
            wait_until(lambda: _state(live, "cs-dev") == "Disconnected", "Disconnected")
        finally:
            device.close()
        # Not routed by default: nothing on the Event Hub (the stored telemetry).
        assert live.fleet.hub_messages.list_telemetry() == []


def test_a_takeover_leaves_the_device_connected(tmp_path: Path) -> None:
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    with start_server(tmp_path / "home", hub_route_connection_state_events=True) as live:
        files = _files(live, "cs-twice", tmp_path)
        first = Device(live.mqtt_port, live.ca_bundle, files)
        second = Device(live.mqtt_port, live.ca_bundle, files)
        try:
            assert first.connect() == 0
            assert second.connect() == 0  # the newer connection wins; the first is closed
            assert first.disconnected.wait(WAIT)
            wait_until(lambda: len(live.fleet.hub_messages.list_telemetry()) == 3, "3 events")
            # The first connection's end, after the second began, changes nothing more.
            _publish(second, "cs-twice", "still here")
            wait_until(lambda: len(live.fleet.hub_messages.list_telemetry()) == 4, "telemetry")
            assert _state(live, "cs-twice") == "Connected"
            ops = [
                m.properties.get("opType") or m.body.decode()
                for m in live.fleet.hub_messages.list_telemetry()
            ]
            assert ops == ["deviceConnected", "deviceDisconnected", "deviceConnected", "still here"]
        finally:
            first.close()
            second.close()


def test_statistics_count_recorded_connections(tmp_path: Path) -> None:
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    with start_server(tmp_path / "home") as live:
        files = _files(live, "cs-count", tmp_path)
        device = Device(live.mqtt_port, live.ca_bundle, files)
        assert device.connect() == 0
        try:
            wait_until(lambda: _state(live, "cs-count") == "Connected", "Connected")
            with live.fleet.store.transaction() as tx:
                assert tx.hub_devices.count_connected() == 1
        finally:
            device.close()
        wait_until(lambda: _state(live, "cs-count") == "Disconnected", "Disconnected")
        with live.fleet.store.transaction() as tx:
            assert tx.hub_devices.count_connected() == 0


def test_recorded_changes_are_strictly_later_per_device(
    tmp_path: Path, database_url: str, key_passphrase: None
) -> None:
    settings = Settings.default_for(tmp_path / "home", database_url).with_changes(
        hub_route_connection_state_events=True
    )
    fleet = init_home(settings, HierarchySpec()).app
    try:
        fleet.hub_devices.put(DeviceSpec(device_id="cs-clock"))
        at = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
        # The clock steps back between the connect and the disconnect; "ghost" is gone.
        fleet.hub_devices.record_connections(
            [
                ConnectionChange("cs-clock", True, at),
                ConnectionChange("ghost", True, at),
                ConnectionChange("cs-clock", False, at - dt.timedelta(seconds=5)),
            ]
        )
        device = fleet.hub_devices.get("cs-clock")
        later = at + dt.timedelta(microseconds=1)
        assert device.connection_state == "Disconnected"
        assert device.connection_state_updated_at == later
        assert device.last_activity_at == later
        events = fleet.hub_messages.list_telemetry()
        assert [(e.device_id, e.properties["opType"]) for e in events] == [
            ("cs-clock", "deviceConnected"),
            ("cs-clock", "deviceDisconnected"),
        ]
        assert [json.loads(e.body)["sequenceNumber"] for e in events] == [
            sequence_number(at),
            sequence_number(later),
        ]
        assert sequence_number(at) < sequence_number(later)
        assert events[0].system_properties["iothub-message-source"] == (
            "deviceConnectionStateEvents"
        )
        assert events[1].enqueued_at == later
    finally:
        fleet.close()


def _publish(device: Device, device_id: str, text: str, qos: int = 1) -> None:
    info = device.client.publish(f"devices/{device_id}/messages/events/", text, qos=qos)
    if qos:
        info.wait_for_publish(WAIT)


@pytest.mark.slow
def test_connection_state_events_on_the_event_hub(tmp_path: Path, database_url: str) -> None:
    if not AZURE_PYTHON.exists():
        pytest.fail("no .venv-azure: `make test` builds it with scripts/azure-venv.sh")
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    device_id = "cs-events"
    with start_server(
        tmp_path / "home", database_url=database_url, hub_route_connection_state_events=True
    ) as live:
        fleet = live.fleet
        connection = _eventhub_string(live)
        files = _files(live, device_id, tmp_path)
        device = Device(live.mqtt_port, live.ca_bundle, files)
        assert device.connect() == 0
        try:
            _publish(device, device_id, "one")
            _publish(device, device_id, "two")
            _publish(device, device_id, "three", qos=0)  # still in its batch at the DISCONNECT
        finally:
            device.close()
        wait_until(lambda: _state(live, device_id) == "Disconnected", "Disconnected")
        device = Device(live.mqtt_port, live.ca_bundle, files)
        assert device.connect() == 0
        try:
            _publish(device, device_id, "four")
            _revoke(live, files)
            assert device.disconnected.wait(WAIT)
        finally:
            device.close()
        wait_until(lambda: len(fleet.hub_messages.list_telemetry()) == 8, "8 stored events")
        port = str(live.amqp_port)
        read = _consume(live, tmp_path, connection, str(live.ca_bundle), port, "all", "8")
        assert read.get("errors") is None, read["errors"]
        hub_name = fleet.hub_eventhub.name
    events = read["events"]
    assert [(e["source"], e["properties"].get("opType") or e["body"]) for e in events] == [
        ("deviceConnectionStateEvents", "deviceConnected"),
        ("Telemetry", "one"),
        ("Telemetry", "two"),
        ("Telemetry", "three"),
        ("deviceConnectionStateEvents", "deviceDisconnected"),
        ("deviceConnectionStateEvents", "deviceConnected"),
        ("Telemetry", "four"),
        ("deviceConnectionStateEvents", "deviceDisconnected"),
    ]
    assert {e["partition"] for e in events} == {str(partition_of(device_id, 4))}
    numbers = [e["sequence_number"] for e in events]
    assert numbers == sorted(numbers)
    states = [e for e in events if e["source"] == "deviceConnectionStateEvents"]
    sequence = [json.loads(e["body"])["sequenceNumber"] for e in states]
    assert all(len(s) == 64 and int(s, 16) > 0 for s in sequence)
    assert sequence == sorted(sequence) and len(set(sequence)) == 4  # strictly increasing
    for event in states:
        assert event["device"] == device_id
        assert event["properties"]["deviceId"] == device_id
        assert event["properties"]["hubName"] == hub_name
        assert event["properties"]["iothub-message-schema"] == "deviceConnectionStateNotification"
        assert _time(event["properties"]["operationTimestamp"])
