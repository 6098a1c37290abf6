"""Two processes on one PostgreSQL: `fleetpki cert revoke` in one, the live session in another.

The hub runs in this test process with a one-hour outbox poll, so only PostgreSQL's
LISTEN/NOTIFY can wake its consumer in time; the revocation is made by the real CLI
in a subprocess, as an operator beside ``fleetpki serve`` would make it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from fleetpki.application import FleetPKI, init_home
from fleetpki.services.authority import HierarchySpec
from fleetpki.services.hub_devices import DeviceSpec
from fleetpki.settings import Settings
from fleetpki.store.models import EventDeliveryRecord, OutboxEvent
from support.database import raw_session
from support.hub import issue_device, start_hub_thread
from support.mqtt_device import WAIT, Device, wait_until
from support.postgres import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

FLEETPKI = str(Path(sys.executable).parent / "fleetpki")


@pytest.fixture
def pg_fleet(postgres: PostgresServer, tmp_path: Path, key_passphrase: None) -> Iterator[FleetPKI]:
    """A fleetpki home whose database is on the session's PostgreSQL server."""
    url = postgres.create_database(f"cross_{os.getpid()}_{tmp_path.name[-20:]}".lower())
    app = init_home(Settings.default_for(tmp_path / "home", url), HierarchySpec()).app
    yield app
    app.close()


def _deliveries(fleet: FleetPKI, serial: str) -> dict[str, str]:
    with raw_session(fleet) as session:
        rows = session.execute(
            select(EventDeliveryRecord.consumer, EventDeliveryRecord.status)
            .join(OutboxEvent, OutboxEvent.id == EventDeliveryRecord.event_id)
            .where(OutboxEvent.subject_id == serial)
        )
        return {str(consumer): str(status) for consumer, status in rows}


def test_a_revocation_in_another_process_closes_the_live_session(
    pg_fleet: FleetPKI, tmp_path: Path
) -> None:
    fleet = pg_fleet
    fleet.hub_devices.put(DeviceSpec("xp-1"))
    files = issue_device(fleet, "xp-1", tmp_path)
    serial = format(files.certificate.serial_number, "X")
    # A second consumer that never runs: its delivery must stay its own.
    fleet.delivery.register("link:idle", ["certificate.revoked"])
    with start_hub_thread(fleet, revocation_poll=3600) as hub:
        device = Device(hub.port, hub.ca_file, files)
        try:
            assert device.connect() == 0
            env = {**os.environ, "FLEETPKI_HOME": str(fleet.settings.home)}
            done = subprocess.run(
                [FLEETPKI, "cert", "revoke", serial, "--reason", "keyCompromise"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            assert device.disconnected.wait(WAIT), "the hub did not close the live session"
            wait_until(lambda: not hub.broker.is_connected("xp-1"), "the session to close")
            wait_until(
                lambda: _deliveries(fleet, serial).get("hub:builtin") == "done",
                "the hub node's delivery to be recorded",
            )
        finally:
            device.close()
    assert _deliveries(fleet, serial) == {"hub:builtin": "done", "link:idle": "pending"}
