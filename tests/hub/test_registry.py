"""The hub registry services on both backends: devices and etags, twins, statistics, messages,
authentication, and two applications in one process that share nothing."""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from fleetpki.application import FleetPKI
from fleetpki.errors import AuthenticationError, ConflictError, FleetPKIError, NotFoundError
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.delivery import ConsumerWorker
from fleetpki.services.events import HubEventListener
from fleetpki.services.hub_devices import AuthType, ConnectionChange, DeviceSpec, DeviceStatus
from fleetpki.services.hub_messages import TelemetryInput
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
    fleet.hub_devices.put(DeviceSpec(device_id, **kwargs))


def _trust(fleet: FleetPKI) -> None:
    fleet.hub_trust.trust_local_ca(issuing_ca(fleet).id)


def test_create_get_list_and_conflict(fleet: FleetPKI) -> None:
    record, created = fleet.hub_devices.put(DeviceSpec("dev-1"))
    assert created
    assert (record.status, record.auth_type) == ("enabled", "certificateAuthority")
    assert fleet.hub_twins.get("dev-1").desired_version == 1
    assert fleet.hub_devices.get("dev-1").etag == record.etag
    assert [d.device_id for d in fleet.hub_devices.list()] == ["dev-1"]
    with pytest.raises(ConflictError) as info:
        fleet.hub_devices.put(DeviceSpec("dev-1"))
    assert (info.value.code, info.value.http_status) == ("hub.device_exists", 409)


@pytest.mark.parametrize(
    ("if_match", "ok"),
    [('"*"', True), ("*", True), ("ETAG", True), ('"ETAG"', True), ('"other"', False)],
)
def test_if_match(fleet: FleetPKI, if_match: str, ok: bool) -> None:
    _add(fleet)
    etag = fleet.hub_devices.get("dev-1").etag
    header = if_match.replace("ETAG", etag)
    spec = DeviceSpec("dev-1", status=DeviceStatus.DISABLED, status_reason="maintenance")
    if ok:
        record, created = fleet.hub_devices.put(spec, if_match=header)
        assert not created
        assert record.etag != etag
        assert (record.status, record.status_reason) == ("disabled", "maintenance")
    else:
        with pytest.raises(ConflictError) as info:
            fleet.hub_devices.put(spec, if_match=header)
        assert (info.value.code, info.value.http_status) == ("precondition.failed", 412)
        assert fleet.hub_devices.get("dev-1").status == "enabled"


@pytest.mark.parametrize(
    ("device_id", "kwargs", "code"),
    [
        ("bad id", {}, "hub.bad_device_id"),
        ("x" * 129, {}, "hub.bad_device_id"),
        ("dev", {"auth_type": AuthType.SAS, "primary_key": "c2hvcnQ="}, "hub.bad_symmetric_key"),
        (
            "dev",
            {"auth_type": AuthType.SAS, "secondary_key": "no base64!"},
            "hub.bad_symmetric_key",
        ),
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
    with pytest.raises(FleetPKIError) as info:
        fleet.hub_devices.put(DeviceSpec(device_id, **kwargs))
    assert info.value.code == code
    assert fleet.hub_devices.list() == []


def test_disable_and_delete_notify_after_commit_only(fleet: FleetPKI, events: Recorder) -> None:
    _add(fleet)
    # A refused change notifies no one: a stale etag rolls the unit of work back.
    with pytest.raises(ConflictError):
        fleet.hub_devices.set_status("dev-1", DeviceStatus.DISABLED, if_match='"stale"')
    assert events.blocked == []
    assert fleet.hub_devices.get("dev-1").status == "enabled"
    record = fleet.hub_devices.set_status("dev-1", DeviceStatus.DISABLED, reason="stolen")
    assert (record.status, record.status_reason) == ("disabled", "stolen")
    assert events.blocked == [("dev-1", "hub.device_disabled")]
    record = fleet.hub_devices.set_status("dev-1", DeviceStatus.ENABLED)
    assert record.status_reason is None
    fleet.hub_devices.delete("dev-1", if_match='"*"')
    assert events.blocked[-1] == ("dev-1", "hub.unknown_device")
    with pytest.raises(NotFoundError):
        fleet.hub_devices.get("dev-1")


def test_notifications_wait_for_the_commit(fleet: FleetPKI, events: Recorder) -> None:
    """A use case run inside a unit that rolls back never reaches a listener."""
    from fleetpki.services.hub_devices import set_status_in

    _add(fleet)

    def disable_then_fail() -> None:
        with fleet.store.transaction() as tx:
            set_status_in(tx, "dev-1", DeviceStatus.DISABLED, now=fleet.now())
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        disable_then_fail()
    assert events.blocked == []
    assert fleet.hub_devices.get("dev-1").status == "enabled"
    with fleet.store.transaction() as tx:
        set_status_in(tx, "dev-1", DeviceStatus.DISABLED, now=fleet.now())
        assert events.blocked == []
    assert events.blocked == [("dev-1", "hub.device_disabled")]


def test_statistics(fleet: FleetPKI) -> None:
    for name in ("a", "b", "c"):
        _add(fleet, name)
    fleet.hub_devices.set_status("b", DeviceStatus.DISABLED)
    now = fleet.now()
    fleet.hub_devices.record_connections(
        [
            ConnectionChange("a", True, now),
            ConnectionChange("ghost", True, now),  # deleted meanwhile: ignored
        ]
    )
    stats = fleet.hub_statistics.devices()
    assert (stats.total, stats.enabled, stats.disabled) == (3, 2, 1)
    assert fleet.hub_statistics.connected_devices() == 1
    assert fleet.hub_devices.get("a").connection_state == "Connected"


def test_twin_patch_merges_and_bumps_desired_version(fleet: FleetPKI, events: Recorder) -> None:
    _add(fleet)
    twin = fleet.hub_twins.patch(
        "dev-1",
        {
            "tags": {"site": "a"},
            "properties": {"desired": {"rate": 5, "cfg": {"x": 1, "y": 2}}},
        },
    )
    etag = twin.etag
    assert events.desired == [("dev-1", {"rate": 5, "cfg": {"x": 1, "y": 2}}, 2)]
    twin = fleet.hub_twins.patch(
        "dev-1",
        {"properties": {"desired": {"rate": None, "cfg": {"y": None, "z": 3}, "$version": 9}}},
        if_match=f'"{etag}"',
    )
    assert twin.desired == {"cfg": {"x": 1, "z": 3}}
    assert twin.desired_version == 3
    assert twin.tags == {"site": "a"}
    with pytest.raises(ConflictError):
        fleet.hub_twins.patch("dev-1", {"tags": {}}, if_match='"old"')
    assert fleet.hub_twins.get("dev-1").tags == {"site": "a"}


def test_twin_replace_and_reported(fleet: FleetPKI, events: Recorder) -> None:
    _add(fleet)
    fleet.hub_twins.patch("dev-1", {"properties": {"desired": {"a": 1, "b": 2}}})
    twin = fleet.hub_twins.replace("dev-1", {"tags": {"t": 1}, "properties": {"desired": {"b": 3}}})
    assert (twin.tags, twin.desired, twin.desired_version) == ({"t": 1}, {"b": 3}, 3)
    assert fleet.hub_twins.patch_reported("dev-1", {"fw": "1.0"}) == 2
    assert fleet.hub_twins.patch_reported("dev-1", {"fw": None, "ok": True}) == 3
    assert fleet.hub_twins.get("dev-1").reported == {"ok": True}
    assert events.desired[-1] == ("dev-1", {"a": None, "b": 3}, 3)


def test_telemetry_batches_and_paging(fleet: FleetPKI) -> None:
    now = fleet.now()
    batch = [
        TelemetryInput(
            device_id=f"dev-{i % 2}",
            enqueued_at=now + dt.timedelta(milliseconds=i),
            body=b"\x00" + bytes([i]),
            system_properties={"content-type": "application/json"},
            properties={"k": "v w", "flag": None},
        )
        for i in range(10)
    ]
    fleet.hub_messages.store_telemetry(batch)
    everything = fleet.hub_messages.list_telemetry()
    assert [m.body for m in everything] == [item.body for item in batch]
    assert everything[0].properties == {"k": "v w", "flag": None}
    assert everything[0].enqueued_at == now
    odd = fleet.hub_messages.list_telemetry(device_id="dev-1", after_id=everything[1].id, limit=2)
    assert [m.body[1] for m in odd] == [3, 5]
    assert fleet.hub_messages.latest_id() == everything[-1].id
    assert fleet.hub_messages.latest_id("dev-0") == everything[-2].id
    assert fleet.hub_messages.latest_id("nobody") == 0


def test_telemetry_rows_read_back_as_written(fleet: FleetPKI) -> None:
    # The batch goes to the driver's executemany, encoded by the repository itself:
    # what the ORM reads back must be what was given, on both backends.
    east = dt.timezone(dt.timedelta(hours=2))
    at = dt.datetime(2026, 12, 4, 22, 30, 0, tzinfo=east)  # 20:30:00.000000 UTC
    fleet.hub_messages.store_telemetry(
        [
            TelemetryInput("dev-1", at, b"plain"),
            TelemetryInput(
                "dev-1",
                at + dt.timedelta(microseconds=1),
                b"\xff\x00",
                {"message-id": "m 1", "content-type": "application/json"},
                {"ünï": "cödé", "bare": None},
                module_id="mod-a",
            ),
        ]
    )
    plain, full = fleet.hub_messages.list_telemetry()
    assert (plain.device_id, plain.module_id, plain.body) == ("dev-1", None, b"plain")
    assert (plain.system_properties, plain.properties) == ({}, {})
    assert plain.enqueued_at == at and plain.enqueued_at.tzinfo == dt.UTC
    assert (full.module_id, full.body) == ("mod-a", b"\xff\x00")
    assert full.system_properties == {"message-id": "m 1", "content-type": "application/json"}
    assert full.properties == {"ünï": "cödé", "bare": None}
    assert full.enqueued_at == at + dt.timedelta(microseconds=1)
    # Times compare in the database as the ORM's own bound values do.
    assert fleet.hub_messages.recent_telemetry("dev-1", limit=1)[0].id == full.id
    with fleet.store.transaction() as tx:
        assert tx.hub_telemetry.last_id_at(at) == plain.id
        assert tx.hub_telemetry.last_id_at(at - dt.timedelta(microseconds=1)) == 0


def test_a_large_telemetry_batch_is_stored_whole_and_in_order(fleet: FleetPKI) -> None:
    # 701 rows: SQLite writes them in statements of 512, 128, 32, 16, 8, 4 and 1 rows.
    now = fleet.now()
    batch = [
        TelemetryInput(f"dev-{i % 3}", now + dt.timedelta(microseconds=i // 7), str(i).encode())
        for i in range(701)
    ]
    fleet.hub_messages.store_telemetry(batch)
    stored = fleet.hub_messages.list_telemetry(limit=1000)
    assert [(m.device_id, m.enqueued_at, m.body) for m in stored] == [
        (item.device_id, item.enqueued_at, item.body) for item in batch
    ]


def test_telemetry_times_are_stored_as_sqlalchemy_stores_them(sqlite_fleet: FleetPKI) -> None:
    # SQLite compares times as text: the repository's must be SQLAlchemy's DATETIME text,
    # microseconds always written, or a bound time would not compare right with it.
    fleet = sqlite_fleet
    at = dt.datetime(2026, 12, 4, 20, 30, tzinfo=dt.UTC)
    fleet.hub_messages.store_telemetry([TelemetryInput("dev-1", at, b"x")])
    database = fleet.settings.home / "fleetpki.db"
    with contextlib.closing(sqlite3.connect(database)) as connection:
        rows = connection.execute(
            "SELECT enqueued_at, system_properties, properties FROM hub_messages"
        ).fetchall()
    assert rows == [("2026-12-04 20:30:00.000000", "{}", "{}")]


def test_telemetry_with_a_naive_time_is_refused_whole(fleet: FleetPKI) -> None:
    now = fleet.now()
    with pytest.raises(ValueError, match="naive"):
        fleet.hub_messages.store_telemetry(
            [
                TelemetryInput("dev-1", now, b"ok"),
                TelemetryInput("dev-1", now.replace(tzinfo=None), b"x"),
            ]
        )
    assert fleet.hub_messages.list_telemetry() == []


def test_c2d_queue(fleet: FleetPKI, events: Recorder) -> None:
    _add(fleet)
    first = fleet.hub_messages.enqueue_c2d("dev-1", b"one", properties={"a": "b"})
    fleet.hub_messages.enqueue_c2d("dev-1", b"two", message_id="m2")
    with pytest.raises(NotFoundError):
        fleet.hub_messages.enqueue_c2d("nobody", b"x")
    with pytest.raises(FleetPKIError) as info:
        fleet.hub_messages.enqueue_c2d("dev-1", b"x" * (64 * 1024 + 1))
    assert info.value.code == "hub.message_too_large"
    assert events.c2d == ["dev-1", "dev-1"]
    assert [m.body for m in fleet.hub_messages.pending_c2d("dev-1")] == [b"one", b"two"]
    assert fleet.hub_devices.get("dev-1").c2d_count == 2
    fleet.hub_messages.mark_c2d_delivered("dev-1", first.message_id)
    fleet.hub_messages.mark_c2d_delivered("dev-1", first.message_id)
    assert [m.message_id for m in fleet.hub_messages.pending_c2d("dev-1")] == ["m2"]
    assert fleet.hub_devices.get("dev-1").c2d_count == 1
    fleet.hub_devices.delete("dev-1")
    assert fleet.hub_messages.pending_c2d("dev-1") == []


def test_send_c2d_writes_an_audit_entry(fleet: FleetPKI) -> None:
    admin = Actor.local_admin()
    _add(fleet)
    sent = fleet.hub_messages.send_c2d(admin, "dev-1", b"reboot", message_id="r1")
    assert (sent.message_id, sent.status) == ("r1", "pending")
    (entry,) = fleet.audit.latest(admin, object_type="hub_device", object_id="dev-1")
    assert (entry.action, entry.details) == ("hub.c2d_send", {"message_id": "r1", "bytes": 6})
    with pytest.raises(NotFoundError):
        fleet.hub_messages.send_c2d(admin, "ghost", b"x")
    assert fleet.audit.latest(admin, object_type="hub_device", object_id="ghost") == []


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
    _add(fleet, "dev-2")
    with pytest.raises(AuthenticationError) as info:
        hub.authenticate(leaf, chain, "dev-2", fleet.now())
    assert info.value.code == "hub.cn_mismatch"
    fleet.hub_devices.set_status("dev-1", DeviceStatus.DISABLED)
    with pytest.raises(AuthenticationError) as info:
        hub.authenticate(leaf, chain, "dev-1", fleet.now())
    assert info.value.code == "hub.device_disabled"


def test_revocation_refuses_and_reaches_listeners(fleet: FleetPKI, events: Recorder) -> None:
    _trust(fleet)
    _add(fleet)
    leaf, chain, record = issue_device_certificate(fleet, "dev-1")
    fleet.certificates.revoke(
        Actor.local_admin(), record.serial_hex, RevocationReason.KEY_COMPROMISE
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
    fleet.certificates.revoke(
        Actor.local_admin(), record.serial_hex, RevocationReason.KEY_COMPROMISE
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
    fleet.hub_devices.put(
        DeviceSpec("dev-ss", auth_type=AuthType.SELF_SIGNED, primary_thumbprint="11" * 20),
        if_match="*",
    )
    with pytest.raises(AuthenticationError) as info:
        hub.authenticate(leaf, [], "dev-ss", fleet.now())
    assert info.value.code == "hub.wrong_auth_type"


class _RecordingInvoker:
    """The live hub's side of a direct method, answering every call with 200."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    async def invoke(
        self, device_id: str, method: str, payload: Any, timeout: float
    ) -> tuple[int, Any]:
        self.calls.append((device_id, method, payload))
        return 200, {"echo": payload}

    def holds(self, device_id: str) -> bool:
        return True

    def connected_device_count(self) -> int:
        return 7

    @property
    def node(self) -> str:
        return "recording"


@pytest.fixture
def other_fleet(tmp_path: Any, key_passphrase: None) -> Iterator[FleetPKI]:
    """A second application in this process, on a database of its own."""
    from fleetpki.application import init_home
    from fleetpki.services.authority import HierarchySpec
    from fleetpki.settings import Settings

    app = init_home(Settings.default_for(tmp_path / "other"), HierarchySpec()).app
    yield app
    app.close()


def test_two_applications_do_not_share_the_method_invoker(
    fleet: FleetPKI, other_fleet: FleetPKI
) -> None:
    import asyncio

    _add(fleet)
    _add(other_fleet)
    invoker = _RecordingInvoker()
    fleet.hub_methods.attach(invoker)
    assert fleet.hub_methods.current() is invoker
    assert other_fleet.hub_methods.current() is None
    result = asyncio.run(fleet.hub_methods.invoke("dev-1", "reboot", {"in": 1}, 5))
    assert (result.status, result.payload) == (200, {"echo": {"in": 1}})
    with pytest.raises(NotFoundError) as info:
        asyncio.run(other_fleet.hub_methods.invoke("dev-1", "reboot", {"in": 2}, 5))
    assert info.value.code == "hub.device_not_online"
    with pytest.raises(NotFoundError) as info:
        asyncio.run(fleet.hub_methods.invoke("ghost", "reboot", None, 5))
    assert info.value.code == "hub.device_not_found"
    assert invoker.calls == [("dev-1", "reboot", {"in": 1})]
    assert fleet.hub_statistics.connected_devices() == 7
    assert other_fleet.hub_statistics.connected_devices() == 0
    fleet.hub_methods.detach(_RecordingInvoker())  # another invoker: this one stays
    assert fleet.hub_methods.current() is invoker
    fleet.hub_methods.detach(invoker)
    assert fleet.hub_methods.current() is None


def test_two_applications_do_not_share_the_trust_cache(
    fleet: FleetPKI, other_fleet: FleetPKI
) -> None:
    with fleet.store.transaction() as tx:
        empty = fleet.hub_trust.trust_anchors(tx)
    assert (empty.verified, empty.unverified) == ((), ())
    _trust(fleet)
    with fleet.store.transaction() as tx:
        mine = fleet.hub_trust.trust_anchors(tx)
        # Unchanged hub_cas: the parsed anchors are reused, not read again.
        assert fleet.hub_trust.trust_anchors(tx) is mine
    with other_fleet.store.transaction() as tx:
        theirs = other_fleet.hub_trust.trust_anchors(tx)
    assert [a.fleetpki_ca_id for a in mine.verified] == [issuing_ca(fleet).id]
    assert (theirs.verified, theirs.unverified) == ((), ())
    # A change made by another application on the same database (as another process
    # would make it) is seen on the next read.
    same_database = FleetPKI.open(fleet.settings)
    try:
        same_database.hub_trust.delete(mine.verified[0].name)
    finally:
        same_database.close()
    with fleet.store.transaction() as tx:
        assert fleet.hub_trust.trust_anchors(tx).verified == ()
