"""The provisioning service's use cases on both databases: enrollments and registration.

Devices present real certificates from the fleet's issuing CA (or a foreign CA); the
checks are the hub's one policy, reached through the service; nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from fleetpki.application import FleetPKI
from fleetpki.errors import (
    AuthenticationError,
    ConflictError,
    FleetPKIError,
    NotFoundError,
    PermissionDenied,
    ThrottledError,
    ValidationError,
)
from fleetpki.hub.azure.dps import RegistrationStatus, Substatus
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.provisioning_enrollments import (
    AllocationPolicy,
    EnrollmentKind,
    EnrollmentSpec,
    ReprovisionPolicy,
)
from fleetpki.services.provisioning_requests import (
    DeviceCredentials,
    RegistrationRequest,
    StatusRequest,
)
from support.api import row_counts
from support.hub_control import ForeignCA, issue_device_certificate, issuing_ca

ADMIN = Actor.local_admin()
TWIN = {"tags": {"site": "plant-1"}, "properties": {"desired": {"interval": 30}}}


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _credentials(leaf: x509.Certificate, chain: list[x509.Certificate]) -> DeviceCredentials:
    return DeviceCredentials(_der(leaf), tuple(_der(c) for c in chain))


def _trusted_group(fleet: FleetPKI, name: str = "plant", **changes: object) -> None:
    ca = issuing_ca(fleet)
    fleet.hub_trust.trust_local_ca(ca.id)
    spec = EnrollmentSpec(EnrollmentKind.GROUP, name, ca=ca.id, initial_twin=TWIN)
    fleet.provisioning_enrollments.add(ADMIN, _replace(spec, **changes))


def _replace(spec: EnrollmentSpec, **changes: object) -> EnrollmentSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def _request(
    fleet: FleetPKI,
    name: str,
    leaf: x509.Certificate,
    chain: list[x509.Certificate],
    **changes: object,
) -> RegistrationRequest:
    request = RegistrationRequest(
        fleet.provisioning.id_scope, name, _credentials(leaf, chain), body_registration_id=name
    )
    import dataclasses

    return dataclasses.replace(request, **changes)  # type: ignore[arg-type]


def _moving_clock(fleet: FleetPKI) -> Callable[[float], None]:
    """Stop the fleet's clock, to be moved forward only by ``advance`` (so that the
    registration throttle lets a device again). Stopped, not running: on a busy machine
    a registration and the row counts around it took over the throttle's 1 s, and a
    second registration meant to be throttled was not (seen in CI's suite)."""
    offset = [0.0]
    stopped = fleet.clock()

    def clock() -> dt.datetime:
        return stopped + dt.timedelta(seconds=offset[0])

    fleet.clock = clock

    def advance(seconds: float) -> None:
        offset[0] += seconds

    return advance


def test_a_group_device_is_assigned_to_the_hub_with_its_initial_twin(fleet: FleetPKI) -> None:
    _trusted_group(fleet)
    leaf, chain, _ = issue_device_certificate(fleet, "dev-1")
    operation = fleet.provisioning.register(_request(fleet, "dev-1", leaf, chain))
    assert operation.status is RegistrationStatus.ASSIGNED
    state = operation.state
    assert state is not None
    assert state.assigned_hub == fleet.settings.hostname
    assert state.device_id == "dev-1"
    assert state.substatus is Substatus.INITIAL_ASSIGNMENT
    assert state.enrollment_group_id == "plant"
    assert operation.assigning().to_json() == {
        "operationId": operation.operation_id,
        "status": "assigning",
    }
    device = fleet.hub_devices.get("dev-1")
    assert (device.auth_type, device.status) == ("certificateAuthority", "enabled")
    twin = fleet.hub_twins.get("dev-1")
    assert twin.tags == {"site": "plant-1"}
    assert twin.desired == {"interval": 30}
    polled = fleet.provisioning.operation_status(
        StatusRequest(
            fleet.provisioning.id_scope,
            "dev-1",
            operation.operation_id,
            _credentials(leaf, chain),
        )
    )
    assert polled.to_json() == operation.to_json()
    # The hub itself now authenticates the device: provisioning made it connectable.
    assert fleet.hub_authentication.authenticate(leaf, chain, "dev-1", dt.datetime.now(dt.UTC))


def test_registering_again_is_idempotent(fleet: FleetPKI) -> None:
    advance = _moving_clock(fleet)
    _trusted_group(fleet)
    leaf, chain, _ = issue_device_certificate(fleet, "dev-2")
    first = fleet.provisioning.register(_request(fleet, "dev-2", leaf, chain))
    # The operator changes the twin in the hub; a second registration keeps it.
    fleet.hub_twins.patch("dev-2", {"properties": {"desired": {"interval": 5}}})
    advance(5)
    renewed, renewed_chain, _ = issue_device_certificate(fleet, "dev-2")  # after a renewal
    second = fleet.provisioning.register(_request(fleet, "dev-2", renewed, renewed_chain))
    assert second.status is RegistrationStatus.ASSIGNED
    assert first.state is not None and second.state is not None
    assert second.state.assigned_hub == first.state.assigned_hub
    assert second.state.substatus is Substatus.INITIAL_ASSIGNMENT
    assert second.state.created_at == first.state.created_at
    assert second.operation_id != first.operation_id
    assert fleet.hub_twins.get("dev-2").desired == {"interval": 5}
    assert [d.device_id for d in fleet.hub_devices.list()] == ["dev-2"]
    # The first operation was replaced by the second: it is not found any more.
    with pytest.raises(NotFoundError) as caught:
        fleet.provisioning.operation_status(
            StatusRequest(
                fleet.provisioning.id_scope,
                "dev-2",
                first.operation_id,
                _credentials(leaf, chain),
            )
        )
    assert caught.value.code == "provisioning.operation_not_found"


def test_a_reset_policy_gives_the_device_its_initial_twin_again(fleet: FleetPKI) -> None:
    advance = _moving_clock(fleet)
    _trusted_group(fleet, reprovision=ReprovisionPolicy(migrate_device_data=False))
    leaf, chain, _ = issue_device_certificate(fleet, "dev-3")
    fleet.provisioning.register(_request(fleet, "dev-3", leaf, chain))
    fleet.hub_twins.patch("dev-3", {"properties": {"desired": {"interval": 5}}})
    advance(5)
    again = fleet.provisioning.register(_request(fleet, "dev-3", leaf, chain))
    assert again.state is not None
    assert again.state.substatus is Substatus.DEVICE_DATA_RESET
    assert fleet.hub_twins.get("dev-3").desired == {"interval": 30}


def test_a_disabled_enrollment_answers_disabled_and_registers_nothing(fleet: FleetPKI) -> None:
    _trusted_group(fleet)
    fleet.provisioning_enrollments.set_enabled(ADMIN, EnrollmentKind.GROUP, "plant", False)
    leaf, chain, _ = issue_device_certificate(fleet, "dev-4")
    operation = fleet.provisioning.register(_request(fleet, "dev-4", leaf, chain))
    assert operation.status is RegistrationStatus.DISABLED
    assert operation.state is not None
    assert operation.state.assigned_hub is None
    assert "provisioning.enrollment_disabled" in (operation.state.error_message or "")
    assert fleet.hub_devices.list() == []


def _refused(fleet: FleetPKI, request: RegistrationRequest) -> FleetPKIError:
    before = row_counts(fleet)
    with pytest.raises(FleetPKIError) as caught:
        fleet.provisioning.register(request)
    assert row_counts(fleet) == before
    return caught.value


def test_a_revoked_certificate_is_refused_as_the_hub_refuses_it(fleet: FleetPKI) -> None:
    _trusted_group(fleet)
    leaf, chain, view = issue_device_certificate(fleet, "dev-5")
    fleet.certificates.revoke(ADMIN, view.serial_hex, RevocationReason.KEY_COMPROMISE)
    error = _refused(fleet, _request(fleet, "dev-5", leaf, chain))
    assert isinstance(error, AuthenticationError)
    assert error.code == "hub.certificate_revoked"


def test_an_unknown_ca_is_refused(fleet: FleetPKI) -> None:
    _trusted_group(fleet)
    foreign = ForeignCA()
    leaf = foreign.sign("dev-6")
    error = _refused(fleet, _request(fleet, "dev-6", leaf, [foreign.certificate]))
    assert (type(error), error.code) == (AuthenticationError, "hub.untrusted_ca")


def test_a_ca_the_hub_trusts_but_no_group_names_is_refused(fleet: FleetPKI) -> None:
    fleet.hub_trust.trust_local_ca(issuing_ca(fleet).id)
    leaf, chain, _ = issue_device_certificate(fleet, "dev-7")
    error = _refused(fleet, _request(fleet, "dev-7", leaf, chain))
    assert error.code == "hub.untrusted_ca"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"registration_id": "other-id"}, "hub.cn_mismatch"),
        ({"body_registration_id": "other-id"}, "provisioning.registration_id_mismatch"),
        ({"id_scope": "0ne00000000"}, "provisioning.unknown_id_scope"),
        ({"registration_id": "bad/id"}, "provisioning.bad_registration_id"),
        ({"payload": {"x": "y" * 5000}}, "provisioning.bad_payload"),
        ({"credentials": DeviceCredentials(None)}, "provisioning.no_client_certificate"),
        ({"credentials": DeviceCredentials(b"not a certificate")}, "hub.bad_certificate"),
    ],
)
def test_bad_registrations_change_nothing(
    fleet: FleetPKI, changes: dict[str, object], code: str
) -> None:
    _trusted_group(fleet)
    leaf, chain, _ = issue_device_certificate(fleet, "dev-8")
    changes = dict(changes)
    if changes.get("registration_id") == "other-id":
        changes["body_registration_id"] = "other-id"
    error = _refused(fleet, _request(fleet, "dev-8", leaf, chain, **changes))
    assert error.code == code


def test_too_many_registrations_are_throttled_and_change_nothing(fleet: FleetPKI) -> None:
    advance = _moving_clock(fleet)
    _trusted_group(fleet)
    leaf, chain, _ = issue_device_certificate(fleet, "dev-9")
    fleet.provisioning.register(_request(fleet, "dev-9", leaf, chain))
    error = _refused(fleet, _request(fleet, "dev-9", leaf, chain))
    assert isinstance(error, ThrottledError)
    assert (error.code, error.http_status, error.retry_after) == ("provisioning.throttled", 429, 1)
    advance(1)
    assert fleet.provisioning.register(_request(fleet, "dev-9", leaf, chain)).status is (
        RegistrationStatus.ASSIGNED
    )


def test_a_poll_with_another_devices_operation_finds_nothing(fleet: FleetPKI) -> None:
    _trusted_group(fleet)
    leaf, chain, _ = issue_device_certificate(fleet, "dev-10")
    other, other_chain, _ = issue_device_certificate(fleet, "dev-11")
    operation = fleet.provisioning.register(_request(fleet, "dev-10", leaf, chain))
    scope = fleet.provisioning.id_scope
    for registration_id, credentials in (
        ("dev-11", _credentials(other, other_chain)),  # another device, its own name
        ("dev-10", _credentials(other, other_chain)),  # another device, this one's name
    ):
        with pytest.raises(NotFoundError) as caught:
            fleet.provisioning.operation_status(
                StatusRequest(scope, registration_id, operation.operation_id, credentials)
            )
        assert caught.value.code == "provisioning.operation_not_found"


def test_an_individual_enrollment_pins_its_certificate(fleet: FleetPKI) -> None:
    fleet.hub_trust.trust_local_ca(issuing_ca(fleet).id)
    leaf, chain, _ = issue_device_certificate(fleet, "dev-12")
    fleet.provisioning_enrollments.add(
        ADMIN,
        EnrollmentSpec(
            EnrollmentKind.INDIVIDUAL,
            "dev-12",
            certificate=leaf.public_bytes(serialization.Encoding.PEM),
        ),
    )
    operation = fleet.provisioning.register(_request(fleet, "dev-12", leaf, chain))
    assert operation.status is RegistrationStatus.ASSIGNED
    assert operation.state is not None and operation.state.enrollment_group_id is None
    other, other_chain, _ = issue_device_certificate(fleet, "dev-12")  # same CN, not pinned
    error = _refused(fleet, _request(fleet, "dev-12", other, other_chain))
    assert error.code == "hub.wrong_auth_type"


def test_enrollment_groups_are_managed_by_admins(fleet: FleetPKI) -> None:
    _trusted_group(fleet)
    (group,) = fleet.provisioning_enrollments.list(ADMIN, EnrollmentKind.GROUP)
    assert (group.name, group.enabled, group.allocation) == ("plant", True, AllocationPolicy.STATIC)
    assert group.hubs == (fleet.settings.hostname,)
    assert group.ca_name == issuing_ca(fleet).name
    disabled = fleet.provisioning_enrollments.set_enabled(
        ADMIN, EnrollmentKind.GROUP, "plant", False
    )
    assert not disabled.enabled and disabled.etag != group.etag
    with pytest.raises(PermissionDenied):
        fleet.provisioning_enrollments.list(
            Actor("11111111-1111-4111-8111-111111111111"), EnrollmentKind.GROUP
        )
    with pytest.raises(ConflictError) as stale:
        fleet.provisioning_enrollments.delete(
            ADMIN, EnrollmentKind.GROUP, "plant", if_match=group.etag
        )
    assert stale.value.code == "precondition.failed"
    fleet.provisioning_enrollments.delete(ADMIN, EnrollmentKind.GROUP, "plant")
    assert fleet.provisioning_enrollments.list(ADMIN, EnrollmentKind.GROUP) == []


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"name": "bad id!"}, "provisioning.bad_enrollment_id"),
        ({"ca": "no-such-ca"}, "hub.ca_not_found"),
        ({"ca": None}, "provisioning.ca_required"),
        ({"hubs": ("nowhere.example",)}, "provisioning.unknown_hub"),
        ({"hubs": ("localhost", "127.0.0.1")}, "provisioning.unknown_hub"),
        ({"initial_twin": {"properties": {"reported": {}}}}, "provisioning.bad_twin"),
        ({"initial_twin": {"tags": []}}, "provisioning.bad_twin"),
        ({"name": "plant"}, "provisioning.enrollment_exists"),
        ({"name": "other"}, "provisioning.ca_in_use"),
    ],
)
def test_bad_enrollments_change_nothing(
    fleet: FleetPKI, changes: dict[str, object], code: str
) -> None:
    _trusted_group(fleet)
    ca = issuing_ca(fleet)
    spec = _replace(EnrollmentSpec(EnrollmentKind.GROUP, "plant", ca=ca.id), **changes)
    before = row_counts(fleet)
    with pytest.raises(FleetPKIError) as caught:
        fleet.provisioning_enrollments.add(ADMIN, spec)
    assert caught.value.code == code
    assert row_counts(fleet) == before


def test_an_unverified_hub_ca_cannot_attest_a_group(fleet: FleetPKI) -> None:
    foreign = ForeignCA()
    fleet.hub_trust.upload("foreign", foreign.certificate.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ValidationError) as caught:
        fleet.provisioning_enrollments.add(
            ADMIN, EnrollmentSpec(EnrollmentKind.GROUP, "g", ca="foreign")
        )
    assert caught.value.code == "provisioning.ca_unverified"


def test_the_id_scope_is_azures_form_and_fixed_per_home(fleet: FleetPKI) -> None:
    view = fleet.provisioning.show()
    assert view.id_scope.startswith("0ne") and len(view.id_scope) == 11
    assert view.hubs[0].host_name == fleet.settings.hostname
    assert view.hubs[0].link is None


def test_a_group_follows_its_ca_to_a_new_generation_after_the_named_one_is_gone(
    fleet: FleetPKI,
) -> None:
    from fleetpki.services.ca_lifecycle import RenewCommand

    _trusted_group(fleet)
    ca = issuing_ca(fleet)
    old_name = next(
        h.name for h in fleet.hub_trust.list() if h.sha1_hex.upper() == ca.sha1_hex.upper()
    )
    generation = fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(rekey=True))
    assert generation.state == "active"
    # The generation the group named leaves the hub (as a retirement removes it).
    fleet.hub_trust.delete(old_name)
    leaf, chain, _ = issue_device_certificate(fleet, "dev-gen2")
    assert chain[0].fingerprint(hashes.SHA256()) == generation.certificate.fingerprint(
        hashes.SHA256()
    )
    operation = fleet.provisioning.register(_request(fleet, "dev-gen2", leaf, chain))
    assert operation.status is RegistrationStatus.ASSIGNED
    assert operation.state is not None and operation.state.enrollment_group_id == "plant"
