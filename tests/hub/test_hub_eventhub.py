"""The Event Hubs-compatible endpoint with the unmodified azure-eventhub (5.15, .venv-azure).

paho-mqtt devices send telemetry; ``EventHubConsumerClient.from_connection_string``
with the string of ``fleetpki hub connection-string --eventhub`` lists the partitions
(``$management``), reads every partition from the start, one partition from an
offset, and from ``@latest`` what is sent after it started; each event carries the
device id, enqueued time, sequence number, offset and application properties as Azure
annotates them, and every device's messages are in one partition, in order. After a
restart of the server the same events are read again: they are the stored telemetry.

The client is pointed at the hub's free AMQP port with its documented
``custom_endpoint_address`` and trusts the hub's CA through ``connection_verify``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fleetpki.application import FleetPKI
from fleetpki.hub.amqp.addresses import partition_of
from fleetpki.services.hub_devices import DeviceSpec
from support.hub import issue_device, issuing_ca
from support.mqtt_device import WAIT, Device, wait_until
from support.server import LiveServer, start_server
from test_cli import run

AZURE_PYTHON = Path(__file__).resolve().parents[2] / ".venv-azure" / "bin" / "python"

CONSUMER_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    from azure.eventhub import EventHubConsumerClient

    connection, ca, port, mode, count = sys.argv[1:6]
    count = int(count)
    client = EventHubConsumerClient.from_connection_string(
        connection, consumer_group=sys.argv[6] if len(sys.argv) > 6 else "$Default",
        connection_verify=ca, custom_endpoint_address=f"sb://localhost:{port}",
        retry_total=0,
    )
    out = {"events": []}
    done = threading.Event()

    def on_event(context, event):
        if event is None:
            return
        system = {k.decode(): v for k, v in event.system_properties.items()}
        out["events"].append({
            "partition": context.partition_id,
            "device": system["iothub-connection-device-id"].decode(),
            "enqueued": str(system["iothub-enqueuedtime"]),
            "source": system["iothub-message-source"].decode(),
            "sequence_number": event.sequence_number,
            "offset": event.offset,
            "enqueued_time": event.enqueued_time.isoformat(),
            "body": event.body_as_str(),
            "message_id": event.message_id if hasattr(event, "message_id") else None,
            "properties": {k.decode(): v.decode() for k, v in event.properties.items()},
        })
        if len(out["events"]) >= count:
            done.set()

    def on_error(context, error):
        out.setdefault("errors", []).append(f"{type(error).__name__}: {error}")
        done.set()

    def on_partition_initialize(context):
        print("ready", context.partition_id, flush=True)

    with client:
        if mode == "all":
            out["ids"] = client.get_partition_ids()
            props = client.get_eventhub_properties()
            out["name"] = props["eventhub_name"]
            out["partition"] = {
                k: str(v) for k, v in client.get_partition_properties("0").items()
            }
            kwargs = {"starting_position": "-1"}
        elif mode == "latest":
            kwargs = {"partition_id": sys.argv[7], "starting_position": "@latest"}
        else:  # "offset:<partition>:<offset>"
            _, partition, offset = mode.split(":")
            kwargs = {"partition_id": partition, "starting_position": offset}
        thread = threading.Thread(
            target=client.receive,
            kwargs=dict(
                on_event=on_event, on_error=on_error, max_wait_time=1,
                on_partition_initialize=on_partition_initialize, **kwargs,
            ),
            daemon=True,
        )
        thread.start()
        done.wait(60)
    print(json.dumps(out), flush=True)
    """
)


def _consume(live: LiveServer, tmp: Path, *args: str) -> dict[str, Any]:
    script = tmp / "eventhub_consumer.py"
    script.write_text(CONSUMER_SCRIPT)
    done = subprocess.run(
        [str(AZURE_PYTHON), "-W", "ignore", str(script), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _eventhub_string(live: LiveServer) -> str:
    return run(live.fleet.settings.home, "hub", "connection-string", "--eventhub").stdout.strip()


def _device(live: LiveServer, device_id: str, tmp: Path) -> Device:
    fleet = live.fleet
    files = issue_device(fleet, device_id, tmp)
    fleet.hub_trust.trust_local_ca(issuing_ca(fleet).id)
    fleet.hub_devices.put(DeviceSpec(device_id=device_id))
    device = Device(live.mqtt_port, live.ca_bundle, files)
    assert device.connect() == 0
    return device


def _send(device: Device, device_id: str, text: str, **properties: str) -> None:
    bag = "&".join(f"{k}={v}" for k, v in sorted(properties.items()))
    info = device.client.publish(f"devices/{device_id}/messages/events/{bag}", text, qos=1)
    info.wait_for_publish(WAIT)


DEVICES = ("eh-dev-a", "eh-dev-b", "eh-dev-c")


@pytest.mark.slow
def test_event_hub_consumer_reads_stored_telemetry_across_a_restart(tmp_path: Path) -> None:
    if not AZURE_PYTHON.exists():
        pytest.fail("no .venv-azure: `make test` builds it with scripts/azure-venv.sh")
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    home = tmp_path / "home"
    sent: dict[str, list[str]] = {d: [f"{d} #{n}" for n in range(3)] for d in DEVICES}
    with start_server(home) as live:
        connection = _eventhub_string(live)
        hub_name = live.fleet.hub_eventhub.name
        assert connection.startswith("Endpoint=sb://localhost/;SharedAccessKeyName=iothubowner;")
        assert connection.endswith(f";EntityPath={hub_name}")
        devices = {d: _device(live, d, tmp_path) for d in DEVICES}
        try:
            for n in range(3):
                for d in DEVICES:
                    _send(devices[d], d, sent[d][n], n=str(n), colour="blue")
            wait_until(
                lambda: len(live.fleet.hub_messages.list_telemetry()) == 9, "stored telemetry"
            )
            port = str(live.amqp_port)
            first = _consume(live, tmp_path, connection, str(live.ca_bundle), port, "all", "9")
            assert first.get("errors") is None, first["errors"]
            assert first["ids"] == ["0", "1", "2", "3"]
            assert first["name"] == hub_name
            assert first["partition"]["eventhub_name"] == hub_name
            _check_events(first["events"], sent)

            # From an offset: the events of one partition after its first one.
            target = next(e for e in first["events"] if e["device"] == DEVICES[0])
            later = _consume(
                live,
                tmp_path,
                connection,
                str(live.ca_bundle),
                port,
                f"offset:{target['partition']}:{target['offset']}",
                "2",
            )
            assert [e["body"] for e in later["events"] if e["device"] == DEVICES[0]] == sent[
                DEVICES[0]
            ][1:]

            # From @latest: only what is sent after the receiver started.
            after: list[str] = []
            latest = _consume_latest(
                live, tmp_path, connection, devices[DEVICES[1]], DEVICES[1], after
            )
            assert latest["events"]
            assert all(e["body"] in after for e in latest["events"])
            # Wait until all of them are stored, for the count after the restart.
            wait_until(
                lambda: len(live.fleet.hub_messages.list_telemetry()) == 9 + len(after),
                "stored telemetry",
            )
        finally:
            for device in devices.values():
                device.close()
    # A restart: the stored telemetry is still the Event Hub.
    with start_server(home, existing=True) as again:
        restarted = _consume(
            again,
            tmp_path,
            connection,
            str(again.ca_bundle),
            str(again.amqp_port),
            "all",
            str(9 + len(after)),
        )
        assert restarted.get("errors") is None, restarted["errors"]
        sent[DEVICES[1]].extend(after)
        _check_events(restarted["events"], sent)


def _consume_latest(
    live: LiveServer, tmp: Path, connection: str, device: Device, device_id: str, sent: list[str]
) -> dict[str, Any]:
    """Read one event of ``device_id``'s partition from ``@latest``; ``sent`` gets what was sent."""
    script = tmp / "eventhub_consumer.py"
    script.write_text(CONSUMER_SCRIPT)
    partition = str(partition_of(device_id, 4))
    args = [connection, str(live.ca_bundle), str(live.amqp_port), "latest", "1", "$Default"]
    process = subprocess.Popen(
        [str(AZURE_PYTHON), "-W", "ignore", str(script), *args, partition],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        assert ready.startswith("ready"), (ready, process.stderr.read() if process.stderr else "")
        # The receiver's position is fixed when its link attaches, some time after
        # "ready": send until one arrives; only messages sent after "ready" may come.
        number = 0
        while process.poll() is None and number < 200:
            _send(device, device_id, f"after latest {number}", n="latest")
            sent.append(f"after latest {number}")
            number += 1
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.5)
        stdout, stderr = process.communicate(timeout=120)
        lines.put(stdout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    result: dict[str, Any] = json.loads(lines.get().strip().splitlines()[-1])
    return result


def _check_events(events: list[dict[str, Any]], sent: dict[str, list[str]]) -> None:
    by_device: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_device.setdefault(event["device"], []).append(event)
    assert {d: [e["body"] for e in got] for d, got in by_device.items()} == sent
    for device_id, got in by_device.items():
        # One partition per device (a stable hash), in the order sent.
        assert {e["partition"] for e in got} == {str(partition_of(device_id, 4))}
        numbers = [e["sequence_number"] for e in got]
        assert numbers == sorted(numbers)
        assert [e["offset"] for e in got] == [str(n) for n in numbers]
        for event in got:
            assert event["source"] == "Telemetry"
            assert event["enqueued_time"]
            if not event["body"].startswith("after latest"):
                assert event["properties"]["colour"] == "blue"


@pytest.mark.slow
def test_routed_twin_change_events(tmp_path: Path) -> None:
    if not AZURE_PYTHON.exists():
        pytest.fail("no .venv-azure: `make test` builds it with scripts/azure-venv.sh")
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    with start_server(tmp_path / "home", hub_route_twin_change_events=True) as live:
        fleet = live.fleet
        connection = _eventhub_string(live)
        device = _device(live, "eh-events", tmp_path)
        try:
            _send(device, "eh-events", "before")
            info = device.client.publish(
                "$iothub/twin/PATCH/properties/reported/?$rid=1", json.dumps({"fw": "1.2"}), qos=1
            )
            info.wait_for_publish(WAIT)
            wait_until(lambda: fleet.hub_twins.get("eh-events").reported_version > 1, "reported")
            fleet.hub_twins.patch("eh-events", {"properties": {"desired": {"rate": 5}}})
            _send(device, "eh-events", "after")
            wait_until(lambda: len(fleet.hub_messages.list_telemetry()) == 4, "stored events")
        finally:
            device.close()
        port = str(live.amqp_port)
        read = _consume(live, tmp_path, connection, str(live.ca_bundle), port, "all", "4")
        assert read.get("errors") is None, read["errors"]
    events = read["events"]
    assert [(e["source"], e["properties"].get("opType")) for e in events] == [
        ("Telemetry", None),
        ("twinChangeEvents", "updateTwin"),
        ("twinChangeEvents", "updateTwin"),
        ("Telemetry", None),
    ]
    assert {e["partition"] for e in events} == {str(partition_of("eh-events", 4))}
    reported, desired = (json.loads(e["body"]) for e in events[1:3])
    assert reported["properties"]["reported"]["fw"] == "1.2"
    assert desired["properties"]["desired"] == {"rate": 5, "$version": desired["version"]}
    for event in events[1:3]:
        assert event["device"] == "eh-events"
        assert event["properties"]["deviceId"] == "eh-events"
        assert event["properties"]["hubName"] == fleet.hub_eventhub.name
        assert event["properties"]["iothub-message-schema"] == "twinChangeNotification"


def test_twin_changes_are_not_routed_by_default(sqlite_fleet: FleetPKI) -> None:
    sqlite_fleet.hub_devices.put(DeviceSpec(device_id="quiet"))
    sqlite_fleet.hub_twins.patch("quiet", {"properties": {"desired": {"rate": 5}}})
    sqlite_fleet.hub_twins.patch_reported("quiet", {"fw": "1"})
    assert sqlite_fleet.hub_messages.list_telemetry() == []
