"""The database-backed HubBackend: what the MQTT broker sees of the control plane."""

from __future__ import annotations

import time

import pytest

from fleetpki.application import FleetPKI
from fleetpki.errors import AuthenticationError
from fleetpki.hub.backend import (
    C2DQueued,
    CertificateRevoked,
    DeviceBlocked,
    HubEvent,
    TelemetryRecord,
)
from fleetpki.hub.store_backend import StoreHubBackend
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.hub_devices import DeviceSpec, DeviceStatus
from fleetpki.services.outbox import CERTIFICATE_REVOKED
from support.hub_control import issue_device_certificate, issuing_ca


def test_backend_end_to_end(sqlite_fleet: FleetPKI) -> None:
    fleet = sqlite_fleet
    fleet.hub_trust.trust_local_ca(issuing_ca(fleet).id)
    fleet.hub_devices.put(DeviceSpec("dev-1"))
    leaf, chain, record = issue_device_certificate(fleet, "dev-1")
    backend = StoreHubBackend(fleet, revocation_poll=0.05)
    seen: list[HubEvent] = []
    backend.add_listener(seen.append)
    try:
        device = backend.authenticate(leaf, chain, "dev-1", fleet.now())
        assert (device.device_id, device.certificate_serial) == ("dev-1", record.serial_hex)
        backend.store_telemetry(
            [
                TelemetryRecord(
                    "dev-1", fleet.now(), b"hi", {"message-id": "1"}, {"a": None}, module_id=None
                )
            ]
        )
        assert [m.body for m in fleet.hub_messages.list_telemetry()] == [b"hi"]
        assert backend.patch_reported("dev-1", {"x": 1}) == 2
        twin = backend.get_twin("dev-1")
        assert twin.document()["reported"] == {"x": 1, "$version": 2}
        fleet.hub_messages.enqueue_c2d("dev-1", b"c2d", message_id="m1")
        assert [m.message_id for m in backend.pending_c2d("dev-1")] == ["m1"]
        backend.mark_c2d_delivered("dev-1", "m1")
        assert backend.pending_c2d("dev-1") == []
        # A revocation made by another application (as another process would): only
        # the outbox row reaches this hub node, through its own delivery. No service
        # writes a bare event, so the other application's unit of work arranges it.
        other = FleetPKI.open(fleet.settings)
        try:
            with other.store.transaction() as tx:
                tx.events.append(
                    CERTIFICATE_REVOKED, "ABC", {"serial": "ABC", "sha1": "00" * 20}, at=other.now()
                )
        finally:
            other.close()
        deadline = time.monotonic() + 5
        while (
            CertificateRevoked(sha1="00" * 20, serial="ABC") not in seen
            or fleet.delivery.backlog("hub:builtin").pending
        ):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        fleet.certificates.revoke(
            Actor.local_admin(), record.serial_hex, RevocationReason.KEY_COMPROMISE
        )
        fleet.hub_devices.set_status("dev-1", DeviceStatus.DISABLED)
        assert CertificateRevoked(sha1=record.sha1_hex, serial=record.serial_hex) in seen
        assert DeviceBlocked("dev-1", "hub.device_disabled") in seen
        assert C2DQueued("dev-1") in seen
        with pytest.raises(AuthenticationError):
            backend.authenticate(leaf, chain, "dev-1", fleet.now())
    finally:
        backend.remove_listener(seen.append)
