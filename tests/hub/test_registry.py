"""The hub registry on both backends: devices and etags, twins, statistics, messages, authentication."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from fleetpki.errors import AuthenticationError, ConflictError, FleetPKIError, NotFoundError
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import (
    Actor,
    FleetPKI,
    certificates,
    hub_messages,
    hub_registry,
    hub_trust,
)
from fleetpki.services.delivery import ConsumerWorker
from fleetpki.services.events import HubEventListener
from fleetpki.services.hub_registry import AuthType, DeviceSpec, DeviceStatus
from fleetpki.services.outbox import CERTIFICATE_REVOKED
from support.hub_control import authenticator, issue_device_certificate, issuing_ca


class Recorder(HubEventListener):
    """Collects notifications."""

    def __init__(self) -> None:
        self.blocked: list[tuple[str, str]] = []
        self.revoked: list[tuple[str, str | None]] = []
        self.desired: list[tuple[str, dict[str, Any], int]] = []
        self.c2d: list[str] = []

    def on_device_blocked(self, device_id: str, reason: str) -> None:
        self.blocked.append((device_id, reason))

    def on_certificate_revoked(self, serial: str, sha1: str | None) -> None:
        self.revoked.append((serial, sha1))

    def on_desired_patched(self, device_id: str, patch: Mapping[str, Any], version: int) -> None:
        self.desired.append((device_id, dict(patch), version))

    def on_c2d_queued(self, device_id: str) -> None:
        self.c2d.append(device_id)


@pytest.fixture
def events(fleet: FleetPKI) -> Iterator[Recorder]:
    recorder = Recorder()
    fleet.events.subscribe(recorder)
    yield recorder
    fleet.events.unsubscribe(recorder)


def _add(fleet: FleetPKI, device_id: str = "dev-1", **kwargs: Any) -> None:
    with fleet.transaction() as session:
        hub_registry.put_device(session, DeviceSpec(device_id, **kwargs), now=fleet.now())


def _trust(fleet: FleetPKI) -> None:
    with fleet.transaction() as session:
        hub_trust.trust_local_ca(session, fleet.keystore, issuing_ca(fleet).id, now=fleet.now())


def test_create_get_list_and_conflict(fleet: FleetPKI) -> None:
    with fleet.transaction() as session:
        record, created = hub_registry.put_device(session, DeviceSpec("dev-1"), now=fleet.now())
        assert created
        assert (record.status, record.auth_type, record.desired_version) == (
            "enabled",
            "certificateAuthority",
            1,
        )
    with fleet.transaction() as session:
        assert hub_registry.get_device(session, "dev-1").etag == record.etag
        assert [d.device_id for d in hub_registry.list_devices(session)] == ["dev-1"]
        with pytest.raises(ConflictError) as info:
            hub_registry.put_device(session, DeviceSpec("dev-1"), now=fleet.now())
        assert (info.value.code, info.value.http_status) == ("hub.device_exists", 409)


@pytest.mark.parametrize(
    ("if_match", "ok"),
    [('"*"', True), ("*", True), ("ETAG", True), ('"ETAG"', True), ('"other"', False)],
)
def test_if_match(fleet: FleetPKI, if_match: str, ok: bool) -> None:
    _add(fleet)
    with fleet.transaction() as session:
        etag = hub_registry.get_device(session, "dev-1").etag
    header = if_match.replace("ETAG", etag)
    with fleet.transaction() as session:
        spec = DeviceSpec("dev-1", status=DeviceStatus.DISABLED, status_reason="maintenance")
        if ok:
            record, created = hub_registry.put_device(
                session, spec, now=fleet.now(), if_match=header
            )
            assert not created
            assert record.etag != etag
            assert (record.status, record.status_reason) == ("disabled", "maintenance")
        else:
            with pytest.raises(ConflictError) as info:
                hub_registry.put_device(session, spec, now=fleet.now(), if_match=header)
            assert (info.value.code, info.value.http_status) == ("precondition.failed", 412)


@pytest.mark.parametrize(
    ("device_id", "kwargs", "code"),
    [
        ("bad id", {}, "hub.bad_device_id"),
        ("x" * 129, {}, "hub.bad_device_id"),
        ("dev", {"auth_type": AuthType.SAS}, "hub.bad_auth_type"),
        ("dev", {"auth_type": AuthType.SELF_SIGNED}, "hub.thumbprint_required"),
        (
            "dev",
            {"auth_type": AuthType.SELF_SIGNED, "primary_thumbprint": "xyz"},
            "hub.bad_thumbprint",
        ),
    ],
)
def test_bad_devices_are_refused(
    fleet: FleetPKI, device_id: str, kwargs: dict[str, Any], code: str
) -> None:
    with fleet.transaction() as session, pytest.raises(FleetPKIError) as info:
        hub_registry.put_device(session, DeviceSpec(device_id, **kwargs), now=fleet.now())
    assert info.value.code == code


def test_disable_and_delete_notify_after_commit_only(fleet: FleetPKI, events: Recorder) -> None:
    _add(fleet)

    def disable_then_fail() -> None:
        with fleet.transaction() as session:
            hub_registry.set_device_status(session, "dev-1", DeviceStatus.DISABLED, now=fleet.now())
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        disable_then_fail()
    assert events.blocked == []
    with fleet.transaction() as session:
        hub_registry.set_device_status(
            session, "dev-1", DeviceStatus.DISABLED, reason="stolen", now=fleet.now()
        )
        assert events.blocked == []
    assert events.blocked == [("dev-1", "hub.device_disabled")]
    with fleet.transaction() as session:
        record = hub_registry.set_device_status(
            session, "dev-1", DeviceStatus.ENABLED, now=fleet.now()
        )
        assert record.status_reason is None
        hub_registry.delete_device(session, "dev-1", if_match='"*"')
    assert events.blocked[-1] == ("dev-1", "hub.unknown_device")
    with fleet.transaction() as session, pytest.raises(NotFoundError):
        hub_registry.get_device(session, "dev-1")


def test_statistics(fleet: FleetPKI) -> None:
    for name in ("a", "b", "c"):
        _add(fleet, name)
    with fleet.transaction() as session:
        hub_registry.set_device_status(session, "b", DeviceStatus.DISABLED, now=fleet.now())
        hub_registry.record_connection(session, "a", connected=True, now=fleet.now())
    with fleet.transaction() as session:
        stats = hub_registry.registry_statistics(session)
        assert (stats.total, stats.enabled, stats.disabled) == (3, 2, 1)
        assert hub_registry.connected_device_count(session) == 1


def test_twin_patch_merges_and_bumps_desired_version(fleet: FleetPKI, events: Recorder) -> None:
    _add(fleet)
    with fleet.transaction() as session:
        twin = hub_registry.patch_twin(
            session,
            "dev-1",
            {
                "tags": {"site": "a"},
                "properties": {"desired": {"rate": 5, "cfg": {"x": 1, "y": 2}}},
            },
            now=fleet.now(),
        )
        etag = twin.twin_etag
    assert events.desired == [("dev-1", {"rate": 5, "cfg": {"x": 1, "y": 2}}, 2)]
    with fleet.transaction() as session:
        twin = hub_registry.patch_twin(
            session,
            "dev-1",
            {"properties": {"desired": {"rate": None, "cfg": {"y": None, "z": 3}, "$version": 9}}},
            now=fleet.now(),
            if_match=f'"{etag}"',
        )
        assert twin.desired == {"cfg": {"x": 1, "z": 3}}
        assert twin.desired_version == 3
        assert twin.tags == {"site": "a"}
        with pytest.raises(ConflictError):
            hub_registry.patch_twin(
                session, "dev-1", {"tags": {}}, now=fleet.now(), if_match='"old"'
            )


def test_twin_replace_and_reported(fleet: FleetPKI, events: Recorder) -> None:
    _add(fleet)
    with fleet.transaction() as session:
        hub_registry.patch_twin(
            session, "dev-1", {"properties": {"desired": {"a": 1, "b": 2}}}, now=fleet.now()
        )
    with fleet.transaction() as session:
        twin = hub_registry.replace_twin(
            session,
            "dev-1",
            {"tags": {"t": 1}, "properties": {"desired": {"b": 3}}},
            now=fleet.now(),
        )
        assert (twin.tags, twin.desired, twin.desired_version) == ({"t": 1}, {"b": 3}, 3)
        assert hub_registry.patch_reported(session, "dev-1", {"fw": "1.0"}, now=fleet.now()) == 2
        assert (
            hub_registry.patch_reported(session, "dev-1", {"fw": None, "ok": True}, now=fleet.now())
            == 3
        )
        assert hub_registry.get_twin(session, "dev-1").reported == {"ok": True}
    assert events.desired[-1] == ("dev-1", {"a": None, "b": 3}, 3)


def test_telemetry_batches_and_paging(fleet: FleetPKI) -> None:
    now = fleet.now()
    batch = [
        hub_messages.TelemetryInput(
            device_id=f"dev-{i % 2}",
            enqueued_at=now + dt.timedelta(milliseconds=i),
            body=b"\x00" + bytes([i]),
            system_properties={"content-type": "application/json"},
            properties={"k": "v w", "flag": None},
        )
        for i in range(10)
    ]
    with fleet.transaction() as session:
        hub_messages.store_telemetry(session, batch)
    with fleet.transaction() as session:
        everything = hub_messages.list_messages(session)
        assert [m.body for m in everything] == [item.body for item in batch]
        assert everything[0].properties == {"k": "v w", "flag": None}
        assert everything[0].enqueued_at == now
        odd = hub_messages.list_messages(
            session, device_id="dev-1", after_id=everything[1].id, limit=2
        )
        assert [m.body[1] for m in odd] == [3, 5]


def test_c2d_queue(fleet: FleetPKI, events: Recorder) -> None:
    _add(fleet)
    with fleet.transaction() as session:
        first = hub_messages.enqueue_c2d(
            session, "dev-1", b"one", now=fleet.now(), properties={"a": "b"}
        )
        hub_messages.enqueue_c2d(session, "dev-1", b"two", now=fleet.now(), message_id="m2")
        with pytest.raises(NotFoundError):
            hub_messages.enqueue_c2d(session, "nobody", b"x", now=fleet.now())
    assert events.c2d == ["dev-1", "dev-1"]
    with fleet.transaction() as session:
        assert [m.body for m in hub_messages.pending_c2d(session, "dev-1")] == [b"one", b"two"]
        assert hub_registry.get_device(session, "dev-1").c2d_count == 2
        hub_messages.mark_c2d_delivered(session, "dev-1", first.message_id, now=fleet.now())
        hub_messages.mark_c2d_delivered(session, "dev-1", first.message_id, now=fleet.now())
    with fleet.transaction() as session:
        assert [m.message_id for m in hub_messages.pending_c2d(session, "dev-1")] == ["m2"]
        assert hub_registry.get_device(session, "dev-1").c2d_count == 1


def test_authenticate_a_ca_device_and_its_refusals(fleet: FleetPKI) -> None:
    _trust(fleet)
    hub = authenticator(fleet)
    leaf, chain, record = issue_device_certificate(fleet, "dev-1")
    with pytest.raises(AuthenticationError) as info:
        hub.authenticate(leaf, chain, "dev-1", fleet.now())
    assert info.value.code == "hub.unknown_device"
    _add(fleet)
    device = hub.authenticate(leaf, [leaf, *chain], "dev-1", fleet.now())
    assert (device.device_id, device.certificate_serial) == ("dev-1", record.serial_hex)
    assert device.certificate_sha1 == record.sha1_hex
    assert device.fleetpki_ca_id == issuing_ca(fleet).id
    with pytest.raises(AuthenticationError) as info:
        hub.authenticate(leaf, chain, "dev-2", fleet.now())
    assert info.value.code == "hub.cn_mismatch"
    with fleet.transaction() as session:
        hub_registry.set_device_status(session, "dev-1", DeviceStatus.DISABLED, now=fleet.now())
    with pytest.raises(AuthenticationError) as info:
        hub.authenticate(leaf, chain, "dev-1", fleet.now())
    assert info.value.code == "hub.device_disabled"


def test_revocation_refuses_and_reaches_listeners(fleet: FleetPKI, events: Recorder) -> None:
    _trust(fleet)
    _add(fleet)
    leaf, chain, record = issue_device_certificate(fleet, "dev-1")
    with fleet.transaction() as session:
        certificates.revoke(
            session,
            Actor.local_admin(),
            certificates.get_certificate(session, record.serial_hex),
            RevocationReason.KEY_COMPROMISE,
            now=fleet.now(),
        )
    # A revocation committed in this process is dispatched right after its commit.
    assert events.revoked == [(record.serial_hex, record.sha1_hex)]
    with pytest.raises(AuthenticationError) as info:
        authenticator(fleet).authenticate(leaf, chain, "dev-1", fleet.now())
    assert info.value.code == "hub.certificate_revoked"


def test_revocation_reaches_a_consumer_through_its_own_delivery(fleet: FleetPKI) -> None:
    """The hub node's consumer gets the outbox event once, however often it looks."""
    _leaf, _chain, record = issue_device_certificate(fleet, "dev-2")
    delivered: list[tuple[str, str]] = []
    worker = ConsumerWorker(
        fleet.delivery,
        fleet.events,
        "hub:test",
        [CERTIFICATE_REVOKED],
        lambda d: delivered.append((d.event_type, d.subject_id)),
    )
    fleet.delivery.register(worker.consumer, worker.event_types)
    with fleet.transaction() as session:
        certificates.revoke(
            session,
            Actor.local_admin(),
            certificates.get_certificate(session, record.serial_hex),
            RevocationReason.KEY_COMPROMISE,
            now=fleet.now(),
        )
    assert worker.run_once() == 1
    assert worker.run_once() == 0
    assert delivered == [(CERTIFICATE_REVOKED, record.serial_hex)]
    assert fleet.delivery.backlog("hub:test").pending == 0


def test_self_signed_device_by_thumbprint(fleet: FleetPKI) -> None:
    leaf, _chain, record = issue_device_certificate(fleet, "dev-ss")
    _add(
        fleet,
        "dev-ss",
        auth_type=AuthType.SELF_SIGNED,
        primary_thumbprint="00" * 20,
        secondary_thumbprint=record.sha1_hex.lower(),
    )
    hub = authenticator(fleet)
    device = hub.authenticate(leaf, [], "dev-ss", fleet.now())
    assert device.auth_type is AuthType.SELF_SIGNED
    with fleet.transaction() as session:
        hub_registry.put_device(
            session,
            DeviceSpec("dev-ss", auth_type=AuthType.SELF_SIGNED, primary_thumbprint="11" * 20),
            now=fleet.now(),
            if_match="*",
        )
    with pytest.raises(AuthenticationError) as info:
        hub.authenticate(leaf, [], "dev-ss", fleet.now())
    assert info.value.code == "hub.wrong_auth_type"
