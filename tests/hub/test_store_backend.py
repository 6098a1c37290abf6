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
from fleetpki.services import Actor, certificates, hub_messages, hub_registry, hub_trust
from fleetpki.services.hub_registry import DeviceSpec, DeviceStatus
from fleetpki.services.outbox import CERTIFICATE_REVOKED, enqueue_event
from support.hub_control import issue_device_certificate, issuing_ca


def test_backend_end_to_end(sqlite_fleet: FleetPKI) -> None:
    fleet = sqlite_fleet
    with fleet.transaction() as session:
        hub_trust.trust_local_ca(session, fleet.keystore, issuing_ca(fleet).id, now=fleet.now())
        hub_registry.put_device(session, DeviceSpec("dev-1"), now=fleet.now())
    leaf, chain, record = issue_device_certificate(fleet, "dev-1")
    backend = StoreHubBackend(fleet, revocation_poll=0.05)
    seen: list[HubEvent] = []
    backend.add_listener(seen.append)
    try:
        device = backend.authenticate(leaf, chain, "dev-1", fleet.now())
        assert (device.device_id, device.certificate_serial) == ("dev-1", record.serial_hex)
        backend.store_telemetry(
            [TelemetryRecord("dev-1", None, fleet.now(), b"hi", {"message-id": "1"}, {"a": None})]
        )
        with fleet.transaction() as session:
            assert [m.body for m in hub_messages.list_messages(session)] == [b"hi"]
        assert backend.patch_reported("dev-1", {"x": 1}) == 2
        twin = backend.get_twin("dev-1")
        assert twin.document()["reported"] == {"x": 1, "$version": 2}
        with fleet.transaction() as session:
            hub_messages.enqueue_c2d(session, "dev-1", b"c2d", now=fleet.now(), message_id="m1")
        assert [m.message_id for m in backend.pending_c2d("dev-1")] == ["m1"]
        backend.mark_c2d_delivered("dev-1", "m1")
        assert backend.pending_c2d("dev-1") == []
        # A revocation made by another application (as another process would): only
        # the outbox row reaches this hub node, through its own delivery.
        other = FleetPKI.open(fleet.settings)
        try:
            with other.transaction() as session:
                enqueue_event(
                    session,
                    CERTIFICATE_REVOKED,
                    "ABC",
                    {"serial": "ABC", "sha1": "00" * 20},
                    at=other.now(),
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
        with fleet.transaction() as session:
            certificates.revoke(
                session,
                Actor.local_admin(),
                certificates.get_certificate(session, record.serial_hex),
                RevocationReason.KEY_COMPROMISE,
                now=fleet.now(),
            )
            hub_registry.set_device_status(session, "dev-1", DeviceStatus.DISABLED, now=fleet.now())
        assert CertificateRevoked(sha1=record.sha1_hex, serial=record.serial_hex) in seen
        assert DeviceBlocked("dev-1", "hub.device_disabled") in seen
        assert C2DQueued("dev-1") in seen
        with pytest.raises(AuthenticationError):
            backend.authenticate(leaf, chain, "dev-1", fleet.now())
    finally:
        backend.remove_listener(seen.append)
