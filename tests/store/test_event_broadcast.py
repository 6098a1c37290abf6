"""Broadcast outbox events on PostgreSQL: what closes sessions reaches other processes whole.

Two application objects on one PostgreSQL database stand for two processes: one commits
(a revocation, a blocked device, a desired patch), the other LISTENs as every hub node
does. A revocation and a disabled device arrive whole as ``EventBroadcast`` (a hub node
closes on it before its delivery), a desired patch only as "events written" (its
delivery brings it once), and a malformed broadcast is dropped without stopping the
listener.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conftest import make_csr
from fleetpki.application import FleetPKI, init_home
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.authority import HierarchySpec
from fleetpki.services.certificates import IssueCommand
from fleetpki.services.hub_devices import DeviceSpec, DeviceStatus
from fleetpki.services.hub_notices import closing_event_of
from fleetpki.services.notifications import (
    CertificateRevoked,
    DeviceBlocked,
    EventBroadcast,
    EventsWritten,
    Notification,
)
from fleetpki.settings import Settings
from fleetpki.store.repositories.events import BROADCAST_CHANNEL
from support.hub_control import issuing_ca
from support.mqtt_device import WAIT
from support.postgres import PostgresServer

pytestmark = pytest.mark.postgres

ADMIN = Actor.local_admin()


@pytest.fixture
def pair(
    postgres: PostgresServer, tmp_path: Path, key_passphrase: None
) -> Iterator[tuple[FleetPKI, FleetPKI, queue.Queue[Notification]]]:
    url = postgres.create_database(f"broadcast_{os.getpid()}_{tmp_path.name[-16:]}".lower())
    writer = init_home(Settings.default_for(tmp_path / "home", url), HierarchySpec()).app
    listener = FleetPKI.open(writer.settings)
    heard: queue.Queue[Notification] = queue.Queue()
    listener.events.subscribe(heard.put)
    listener.follow_other_processes()
    try:
        yield writer, listener, heard
    finally:
        listener.close()
        writer.close()


def _next_broadcast(heard: queue.Queue[Notification]) -> EventBroadcast:
    while True:
        notification = heard.get(timeout=WAIT)
        if isinstance(notification, EventBroadcast):
            return notification


def _issue(fleet: FleetPKI, name: str) -> str:
    ca = issuing_ca(fleet)
    fleet.domains.register(
        ADMIN, ca_id=ca.id, template_id=None, name=name,
        owners=[ADMIN.principal_id], requesters=[ADMIN.principal_id],
    )  # fmt: skip
    _, csr = make_csr(name)
    issued = fleet.certificates.issue(ADMIN, IssueCommand(ca_id=ca.id, csr=csr))
    return format(issued.issued.certificate.serial_number, "X")


def test_a_revocation_arrives_whole_in_another_process(
    pair: tuple[FleetPKI, FleetPKI, queue.Queue[Notification]],
) -> None:
    writer, _, heard = pair
    serial = _issue(writer, "broadcast-dev")
    writer.certificates.revoke(ADMIN, serial, RevocationReason.KEY_COMPROMISE)
    broadcast = _next_broadcast(heard)
    assert broadcast.event_type == "certificate.revoked"
    event = closing_event_of(broadcast)
    assert isinstance(event, CertificateRevoked)
    assert event.serial.upper() == serial.upper()
    assert event.sha1 is not None and len(event.sha1) == 40


def test_a_disabled_device_arrives_whole_but_a_desired_patch_does_not(
    pair: tuple[FleetPKI, FleetPKI, queue.Queue[Notification]],
) -> None:
    writer, _, heard = pair
    writer.hub_devices.put(DeviceSpec("twin-dev"))
    writer.hub_twins.patch("twin-dev", {"properties": {"desired": {"a": 1}}})
    writer.hub_devices.set_status("twin-dev", DeviceStatus.DISABLED)
    seen: list[Notification] = []
    while not any(isinstance(n, EventBroadcast) for n in seen):
        seen.append(heard.get(timeout=WAIT))
    broadcasts = [n for n in seen if isinstance(n, EventBroadcast)]
    # The patch committed first: its wake-up came, its broadcast never did.
    assert any(
        isinstance(n, EventsWritten) and "hub.desired_patched" in n.event_types for n in seen
    )
    assert [b.event_type for b in broadcasts] == ["hub.device_blocked"]
    assert closing_event_of(broadcasts[0]) == DeviceBlocked("twin-dev", "hub.device_disabled")


@pytest.mark.parametrize("garbage", ["not json", '{"type": "certificate.revoked"}', "[1, 2]"])
def test_a_malformed_broadcast_is_dropped_and_the_listener_goes_on(
    pair: tuple[FleetPKI, FleetPKI, queue.Queue[Notification]], garbage: str
) -> None:
    writer, _, heard = pair
    dsn = writer.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("SELECT pg_notify(%s, %s)", (BROADCAST_CHANNEL, garbage))
    serial = _issue(writer, "after-garbage")
    writer.certificates.revoke(ADMIN, serial, RevocationReason.KEY_COMPROMISE)
    broadcast = _next_broadcast(heard)
    assert broadcast.event_type == "certificate.revoked"
    assert broadcast.subject_id.upper() == serial.upper()
