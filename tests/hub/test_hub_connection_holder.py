"""Which connection holds a device: a late disconnect from a connection it has left is stale.

A device that moves from hub node A to node B (it reconnects to B while A still holds
its old session, or A notices the drop late) must stay Connected when A's disconnect
is recorded after B's connect; likewise on one node for a connection the device has
replaced. The service records the hub node and the session of each connect, and a
disconnect only from that node and session; a stale one writes nothing: no time, no
deviceDisconnected event. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetpki.application import FleetPKI, init_home
from fleetpki.services.authority import HierarchySpec
from fleetpki.services.hub_devices import ConnectionChange, DeviceSpec
from fleetpki.settings import Settings

DEVICE = "holder-dev"
T0 = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.fixture
def fleet(tmp_path: Path, database_url: str, key_passphrase: None) -> Iterator[FleetPKI]:
    settings = Settings.default_for(tmp_path / "home", database_url).with_changes(
        hub_route_connection_state_events=True
    )
    app = init_home(settings, HierarchySpec()).app
    try:
        app.hub_devices.put(DeviceSpec(device_id=DEVICE))
        yield app
    finally:
        app.close()


def _record(fleet: FleetPKI, node: str, change: ConnectionChange) -> None:
    fleet.hub_devices.record_connections([change], node=node)


def _events(fleet: FleetPKI) -> list[str]:
    return [str(m.properties["opType"]) for m in fleet.hub_messages.list_telemetry()]


def _state(fleet: FleetPKI) -> tuple[str, dt.datetime | None, dt.datetime | None]:
    device = fleet.hub_devices.get(DEVICE)
    return (device.connection_state, device.connection_state_updated_at, device.last_activity_at)


# A's disconnect is written after B's connect; its own time may be later (A noticed the
# drop late) or earlier (A's clock is behind, or it saw the drop first and wrote late).
@pytest.mark.parametrize("late_by", [5.0, -0.5], ids=["later-clock", "earlier-clock"])
def test_a_late_disconnect_from_the_node_the_device_left_leaves_it_connected(
    fleet: FleetPKI, late_by: float
) -> None:
    _record(fleet, "hub-a", ConnectionChange(DEVICE, True, _at(0), "a-1", order=10))
    _record(fleet, "hub-b", ConnectionChange(DEVICE, True, _at(1), "b-1", order=11))
    _record(fleet, "hub-a", ConnectionChange(DEVICE, False, _at(1 + late_by), "a-1"))

    assert _state(fleet) == ("Connected", _at(1), _at(1))
    assert _events(fleet) == ["deviceConnected", "deviceConnected"]

    # B's own disconnect is recorded, with its time and event.
    _record(fleet, "hub-b", ConnectionChange(DEVICE, False, _at(9), "b-1"))
    assert _state(fleet) == ("Disconnected", _at(9), _at(9))
    assert _events(fleet) == ["deviceConnected", "deviceConnected", "deviceDisconnected"]


def test_a_late_disconnect_of_a_replaced_connection_on_one_node_leaves_it_connected(
    fleet: FleetPKI,
) -> None:
    # The same node name, two connections: only the session tells them apart.
    _record(fleet, "hub-a", ConnectionChange(DEVICE, True, _at(0), "run-1"))
    _record(fleet, "hub-a", ConnectionChange(DEVICE, True, _at(1), "run-2"))
    _record(fleet, "hub-a", ConnectionChange(DEVICE, False, _at(2), "run-1"))
    assert _state(fleet) == ("Connected", _at(1), _at(1))
    assert _events(fleet) == ["deviceConnected", "deviceConnected"]


def test_a_disconnect_from_the_same_session_name_on_another_node_is_stale(
    fleet: FleetPKI,
) -> None:
    _record(fleet, "hub-b", ConnectionChange(DEVICE, True, _at(0), "s-1"))
    _record(fleet, "hub-a", ConnectionChange(DEVICE, False, _at(1), "s-1"))
    assert _state(fleet)[0] == "Connected"


def test_a_connect_older_than_the_recorded_session_is_ignored(fleet: FleetPKI) -> None:
    # B's connect (announced later: order 21) is written before A's (order 20), whose
    # connection then ends: the device is on B throughout.
    _record(fleet, "hub-b", ConnectionChange(DEVICE, True, _at(1), "b-1", order=21))
    _record(fleet, "hub-a", ConnectionChange(DEVICE, True, _at(2), "a-1", order=20))
    _record(fleet, "hub-a", ConnectionChange(DEVICE, False, _at(3), "a-1"))
    assert _state(fleet) == ("Connected", _at(1), _at(1))
    assert _events(fleet) == ["deviceConnected"]


@pytest.mark.parametrize(
    ("recorded", "state"),
    [
        # The node that held it stopped without a word; the device is back, on a node
        # that announced nothing (no other node runs): the connect applies.
        (ConnectionChange(DEVICE, True, _at(0), "a-1", order=30), "Connected"),
        # Disconnected: any connect applies, whatever its order.
        (ConnectionChange(DEVICE, False, _at(0), "a-1"), "Disconnected"),
    ],
    ids=["held-elsewhere-unannounced", "disconnected"],
)
def test_a_connect_applies(fleet: FleetPKI, recorded: ConnectionChange, state: str) -> None:
    _record(fleet, "hub-a", ConnectionChange(DEVICE, True, _at(-1), "a-1", order=30))
    _record(fleet, "hub-a", recorded)
    assert _state(fleet)[0] == state
    _record(fleet, "hub-b", ConnectionChange(DEVICE, True, _at(1), "b-1", order=0))
    assert _state(fleet) == ("Connected", _at(1), _at(1))
    _record(fleet, "hub-b", ConnectionChange(DEVICE, False, _at(2), "b-1"))
    assert _state(fleet)[0] == "Disconnected"


def test_a_disconnect_that_names_no_session_always_applies(fleet: FleetPKI) -> None:
    _record(fleet, "hub-b", ConnectionChange(DEVICE, True, _at(0), "b-1"))
    _record(fleet, "hub-a", ConnectionChange(DEVICE, False, _at(1)))
    assert _state(fleet) == ("Disconnected", _at(1), _at(1))


def test_a_repeated_disconnect_is_recorded_once(fleet: FleetPKI) -> None:
    _record(fleet, "hub-a", ConnectionChange(DEVICE, True, _at(0), "a-1"))
    _record(fleet, "hub-a", ConnectionChange(DEVICE, False, _at(1), "a-1"))
    _record(fleet, "hub-a", ConnectionChange(DEVICE, False, _at(2), "a-1"))
    assert _state(fleet) == ("Disconnected", _at(1), _at(1))
    assert _events(fleet) == ["deviceConnected", "deviceDisconnected"]


def test_changes_recorded_without_a_node_name_are_matched_by_session(fleet: FleetPKI) -> None:
    fleet.hub_devices.record_connections([ConnectionChange(DEVICE, True, _at(0), "s-1")])
    fleet.hub_devices.record_connections([ConnectionChange(DEVICE, True, _at(1), "s-2")])
    fleet.hub_devices.record_connections([ConnectionChange(DEVICE, False, _at(2), "s-1")])
    assert _state(fleet)[0] == "Connected"
    fleet.hub_devices.record_connections([ConnectionChange(DEVICE, False, _at(3), "s-2")])
    assert _state(fleet) == ("Disconnected", _at(3), _at(3))
