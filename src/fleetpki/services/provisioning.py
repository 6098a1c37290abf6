"""Zero-touch provisioning: Azure DPS's registration, served beside the hub.

A device that holds a fleetpki certificate (or any certificate an enrollment attests)
asks the provisioning service where to connect; the service checks it, registers it in
the hub its enrollment allocates and answers with ``assignedHub`` and ``deviceId``
(shared/reference/azure-iot-hub-protocol.md §2). The device protocols are adapters
(MQTT in `fleetpki.hub.provisioning`, HTTPS in `fleetpki.api.dps`); this module owns
the decisions and the units of work.

A registration (:meth:`ProvisioningService.register`):

1. The ID scope must be this installation's and the registration id a valid one, equal
   to the body's ``registrationId`` (nothing is read before that).
2. One short read unit of work finds the enrollment and checks the certificate with the
   hub's one device-authentication policy (`fleetpki.hub.policy.DevicePolicy`, through
   `fleetpki.services.hub_authentication.DeviceAuthenticator`): an individual enrollment
   of the registration id pins its certificate (the policy's selfSigned check) and its
   chain must reach a verified hub CA; otherwise the chain must reach the CA of an
   enrollment group (the policy's certificateAuthority check, with that group's CA as the
   anchors), and the group is the one whose CA the chain ended at. Either way the CN must
   be the registration id, and fleetpki's own certificate table gives the revocation
   status of its CAs' certificates. The allocation is planned in the same unit of work.
3. With the transaction closed, a foreign CA's OCSP responder or CRL is asked, and the
   policy decides. A refusal is a 401 and writes nothing.
4. Too many registrations from one registration id: 429 with ``retry-after``, nothing
   written (`RegistrationThrottle`).
5. A linked hub is called through its connector (no transaction open); then one unit of
   work creates the device in the built-in hub when it is the target (certificate-
   authority authentication, the enrollment's initial twin), records the registration
   state and the operation the device will poll, and an audit entry.

Registering again is idempotent: the device is kept as it is in its hub, the same
allocation gives the same hub, and the reprovisioning policy says whether the device
may move (and take its twin) or is reset to the initial twin.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.connectors.connector import ConnectorError
from fleetpki.errors import (
    AuthenticationError,
    FleetPKIError,
    NotFoundError,
    ValidationError,
)
from fleetpki.hub.azure.dps import (
    RegistrationOperation,
    RegistrationState,
    RegistrationStatus,
    Substatus,
    check_registration_id,
    dps_error_number,
)
from fleetpki.hub.policy import (
    Admission,
    AuthType,
    DeviceStatus,
    PresentedCertificate,
    Refusal,
    RegistryEntry,
    RevocationVerdict,
    TrustedCAs,
)
from fleetpki.services.audit import write_audit
from fleetpki.services.context import Actor, Clock
from fleetpki.services.hub_authentication import DeviceAuthenticator
from fleetpki.services.hub_devices import DeviceSpec, put_device_in
from fleetpki.services.hub_etags import new_etag
from fleetpki.services.hub_links import HubLinkService
from fleetpki.services.hub_twins import replace_twin_in
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.services.provisioning_enrollments import (
    AllocatableHub,
    AllocationPolicy,
    EnrollmentKind,
    allocatable_hubs,
    hub_for,
)
from fleetpki.services.provisioning_requests import (
    DeviceCredentials,
    ProvisioningView,
    RegistrationRequest,
    StatusRequest,
)
from fleetpki.services.registration_throttle import (
    RegistrationThrottle,
)
from fleetpki.store.hub_models import (
    ProvisioningEnrollment,
    ProvisioningOperation,
    ProvisioningRegistration,
)

__all__ = ["ProvisioningService"]

_log = logging.getLogger("fleetpki.provisioning")

#: A device's registration payload is kept with its state; larger ones are refused.
_MAX_PAYLOAD_BYTES = 4096
#: Seconds a device is told to wait before it polls an operation.
_POLL_AFTER = 1


@dataclass(slots=True)
class _Plan:
    """What the read unit of work found and decided for one registration."""

    enrollment: str
    kind: EnrollmentKind
    group_id: str | None
    enabled: bool
    admission: Admission
    verdict: RevocationVerdict | None
    target: AllocatableHub | None
    target_host: str
    created_at: dt.datetime | None
    substatus: Substatus
    twin: dict[str, Any] | None
    reset_twin: bool
    previous_hub: str | None
    previous_device: str | None


@dataclass(slots=True)
class _Outcome:
    status: RegistrationStatus
    error: FleetPKIError | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _sha1(der: bytes) -> str:
    return hashlib.sha1(der).hexdigest().upper()  # noqa: S324 - a thumbprint


def _load(credentials: DeviceCredentials) -> tuple[x509.Certificate, list[x509.Certificate]]:
    if credentials.leaf_der is None:
        raise AuthenticationError(
            "provisioning.no_client_certificate",
            "X.509 registration needs a TLS client certificate",
        )
    try:
        leaf = x509.load_der_x509_certificate(credentials.leaf_der)
        chain = [x509.load_der_x509_certificate(der) for der in credentials.chain_der]
    except ValueError as exc:
        raise Refusal.BAD_CERTIFICATE.error() from exc
    return leaf, chain


def _twin_of(record: Any) -> dict[str, Any]:
    return {"tags": dict(record.tags), "properties": {"desired": dict(record.desired)}}


def _has_content(twin: Mapping[str, Any] | None) -> bool:
    if not twin:
        return False
    return bool(twin.get("tags")) or bool((twin.get("properties") or {}).get("desired"))


class ProvisioningService:
    """The registration side of the provisioning service (module docstring).

    Args:
        store: the database.
        clock: the source of "now".
        authenticator: the hub's device authentication (its one policy, revocation
            checker and trust cache).
        links: hub links, for the connectors of linked hubs.
        id_scope: this installation's ID scope.
        builtin_host: the built-in hub's host name.
        mqtt_port / api_port: where devices reach the service (for `show`).
        throttle: the per-registration-id rate limit.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        authenticator: DeviceAuthenticator,
        links: HubLinkService,
        id_scope: str,
        builtin_host: str,
        mqtt_port: int,
        api_port: int,
        throttle: RegistrationThrottle | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._auth = authenticator
        self._links = links
        self.id_scope = id_scope
        self.builtin_host = builtin_host
        self._ports = (mqtt_port, api_port)
        self.throttle = throttle or RegistrationThrottle()

    def show(self) -> ProvisioningView:
        """The ID scope, the endpoints and the hubs enrollments may allocate to."""
        with self._store.transaction() as tx:
            hubs = tuple(allocatable_hubs(tx, self.builtin_host))
            groups = len(tx.enrollments.list(EnrollmentKind.GROUP.value))
            individual = len(tx.enrollments.list(EnrollmentKind.INDIVIDUAL.value))
        return ProvisioningView(
            self.id_scope, self.builtin_host, *self._ports, hubs, groups, individual
        )

    def knows_scope(self, id_scope: str) -> bool:
        """Whether ``id_scope`` is this installation's (case-insensitively, as Azure)."""
        return id_scope.strip().lower() == self.id_scope.lower()

    def _check_scope(self, id_scope: str) -> None:
        if not self.knows_scope(id_scope):
            raise NotFoundError(
                "provisioning.unknown_id_scope",
                f"no provisioning service with ID scope {id_scope!r}",
            )

    # -- registration -------------------------------------------------------------------------

    def register(self, request: RegistrationRequest) -> RegistrationOperation:
        """Register a device (module docstring); the answer is the operation, finished.

        The device protocols answer it as DPS does: ``assigning`` with the operation id,
        and the outcome (``assigned``, ``disabled`` or ``failed``) when polled.

        Raises:
            NotFoundError: ``provisioning.unknown_id_scope``.
            ValidationError: ``provisioning.bad_registration_id``,
                ``provisioning.registration_id_mismatch``, ``provisioning.bad_payload``.
            AuthenticationError: ``provisioning.no_client_certificate`` and the policy's
                refusals (``hub.cn_mismatch``, ``hub.untrusted_ca``, ``hub.ca_unverified``,
                ``hub.certificate_revoked``, ``hub.wrong_auth_type``, ...).
            ThrottledError: ``provisioning.throttled``.
        """
        self._check_scope(request.id_scope)
        registration_id = check_registration_id(request.registration_id)
        if (
            request.body_registration_id is not None
            and request.body_registration_id != registration_id
        ):
            raise ValidationError(
                "provisioning.registration_id_mismatch",
                "the body's registrationId is not the registration id of the request",
            )
        try:
            payload_size = len(json.dumps(request.payload))
        except (TypeError, ValueError):
            raise ValidationError("provisioning.bad_payload", "the payload is not JSON") from None
        if payload_size > _MAX_PAYLOAD_BYTES:
            raise ValidationError(
                "provisioning.bad_payload", f"the payload is larger than {_MAX_PAYLOAD_BYTES} bytes"
            )
        leaf, chain = _load(request.credentials)
        now = self._clock()
        presented = PresentedCertificate(leaf, tuple(chain), registration_id)
        with self._store.transaction() as tx:
            plan = self._plan(tx, presented, now)
        # The transaction is closed: a foreign CA's responder holds no connection.
        device = self._auth.decide(plan.admission, plan.verdict, now)
        self.throttle.check(registration_id, now)
        # The operation is found again by this thumbprint (`operation_status`).
        sha1 = device.certificate_sha1 or _sha1(leaf.public_bytes(serialization.Encoding.DER))
        outcome = self._allocate(plan, registration_id)
        operation_id = f"4.{uuid.uuid4().hex[:16]}.{uuid.uuid4()}"
        with self._store.transaction() as tx:
            state = self._record(tx, plan, outcome, registration_id, sha1, now)
            tx.provisioning_operations.replace_for(
                ProvisioningOperation(
                    id=operation_id,
                    registration_id=registration_id,
                    certificate_sha1=sha1,
                    status=state.status.value,
                    state=state.to_json(),
                    created_at=now,
                )
            )
            write_audit(
                tx,
                Actor(principal_id=f"certificate:{sha1}", source=request.source),
                "provisioning.register",
                "registration",
                registration_id,
                at=now,
                details={
                    "status": state.status.value,
                    "hub": state.assigned_hub,
                    "enrollment": f"{plan.kind.value}:{plan.enrollment}",
                    "substatus": state.substatus.value if state.substatus else None,
                    "error": outcome.error.code if outcome.error else None,
                },
            )
        _log.info(
            "provisioning: %s %s%s",
            registration_id,
            state.status.value,
            f" to {state.assigned_hub}" if state.status is RegistrationStatus.ASSIGNED else "",
        )
        return RegistrationOperation(operation_id, state.status, state, _POLL_AFTER)

    def _plan(self, tx: UnitOfWork, presented: PresentedCertificate, now: dt.datetime) -> _Plan:
        registration_id = presented.client_id
        entry = RegistryEntry(registration_id, DeviceStatus.ENABLED, AuthType.CERTIFICATE_AUTHORITY)
        individual = tx.enrollments.get(EnrollmentKind.INDIVIDUAL.value, registration_id)
        if individual is not None:
            # The enrolled certificate, pinned by the policy's selfSigned check ...
            pinned = RegistryEntry(
                registration_id,
                DeviceStatus.ENABLED,
                AuthType.SELF_SIGNED,
                frozenset(
                    t for t in (individual.certificate_sha1, individual.certificate_sha256) if t
                ),
            )
            self._auth.policy.admit(presented, pinned, TrustedCAs(()), now)
            # ... and its chain up to a verified hub CA, by its certificateAuthority check.
            trusted = self._auth.hub_trusted(tx)
            admission, verdict = self._auth.admit_in(tx, presented, entry, trusted, now)
            return self._allocation_in(tx, individual, admission, verdict, None, registration_id)
        trusted, groups = self._group_anchors(tx)
        admission, verdict = self._auth.admit_in(tx, presented, entry, trusted, now)
        assert admission.anchor is not None
        anchor_sha1 = _sha1(admission.anchor.public_bytes(serialization.Encoding.DER))
        group = groups[anchor_sha1]
        return self._allocation_in(tx, group, admission, verdict, group.name, registration_id)

    def _group_anchors(
        self, tx: UnitOfWork
    ) -> tuple[TrustedCAs, dict[str, ProvisioningEnrollment]]:
        """Every group's CA as the policy's anchors, and the group of each anchor.

        A group for a hub CA of a fleetpki CA is also attested by the hub's certificates
        of that CA's other generations, the named one retired included (a renewed CA
        keeps its groups).
        """
        anchors = self._auth.trust.trust_anchors(tx)
        every = [(a, True) for a in anchors.verified] + [(a, False) for a in anchors.unverified]
        by_name = {a.name: a for a, _ in every}
        verified: list[x509.Certificate] = []
        unverified: list[x509.Certificate] = []
        groups: dict[str, ProvisioningEnrollment] = {}
        for record in tx.enrollments.list(EnrollmentKind.GROUP.value):
            named = by_name.get(record.ca_name or "")
            ca_id = record.fleetpki_ca_id or (named.fleetpki_ca_id if named else None)
            if named is None and ca_id is None:
                continue
            for anchor, is_verified in every:
                same = (named is not None and anchor.name == named.name) or (
                    ca_id is not None and anchor.fleetpki_ca_id == ca_id
                )
                if not same or anchor.sha1_hex.upper() in groups:
                    continue
                groups[anchor.sha1_hex.upper()] = record
                (verified if is_verified else unverified).append(anchor.certificate)
        return TrustedCAs(tuple(verified), tuple(unverified)), groups

    def _allocation_in(
        self,
        tx: UnitOfWork,
        record: ProvisioningEnrollment,
        admission: Admission,
        verdict: RevocationVerdict | None,
        group_id: str | None,
        registration_id: str,
    ) -> _Plan:
        hubs = allocatable_hubs(tx, self.builtin_host)
        previous = tx.registrations.get(registration_id)
        previous_hub = previous.assigned_hub if previous is not None else None
        if previous_hub is not None and not record.update_hub_assignment:
            target_host = previous_hub
        else:
            target_host = hub_for(
                record.hubs, registration_id, AllocationPolicy(record.allocation_policy)
            )
        target = next((h for h in hubs if h.host_name.lower() == target_host.lower()), None)
        initial = dict(record.initial_twin)
        moved = previous_hub is not None and previous_hub.lower() != target_host.lower()
        twin: dict[str, Any] | None = initial
        reset = False
        if previous_hub is None:
            substatus = Substatus.INITIAL_ASSIGNMENT
        elif moved and record.migrate_device_data:
            substatus = Substatus.DEVICE_DATA_MIGRATED
            if previous_hub.lower() == self.builtin_host.lower() and previous is not None:
                kept = tx.hub_devices.get(previous.device_id or registration_id)
                if kept is not None:
                    twin = _twin_of(kept)
        elif not record.migrate_device_data:
            substatus = Substatus.DEVICE_DATA_RESET
            reset = True
        else:
            assert previous is not None
            substatus = Substatus(previous.substatus or Substatus.INITIAL_ASSIGNMENT.value)
        return _Plan(
            enrollment=record.name,
            kind=EnrollmentKind(record.kind),
            group_id=group_id,
            enabled=record.status == "enabled",
            admission=admission,
            verdict=verdict,
            target=target,
            target_host=target_host,
            created_at=previous.created_at if previous is not None else None,
            substatus=substatus,
            twin=twin,
            reset_twin=reset,
            previous_hub=previous_hub,
            previous_device=previous.device_id if previous is not None else None,
        )

    def _allocate(self, plan: _Plan, device_id: str) -> _Outcome:
        """Register the device in a linked hub (network I/O, no transaction open)."""
        if not plan.enabled:
            return _Outcome(
                RegistrationStatus.DISABLED,
                AuthenticationError(
                    "provisioning.enrollment_disabled", "the enrollment is disabled"
                ),
            )
        if plan.target is None:
            return _Outcome(
                RegistrationStatus.FAILED,
                NotFoundError(
                    "provisioning.hub_unavailable",
                    f"hub {plan.target_host!r} is no longer linked to this provisioning service",
                ),
            )
        if plan.target.link is None:
            return _Outcome(RegistrationStatus.ASSIGNED)
        try:
            connector = self._links.link_connector(plan.target.link)
            try:
                connector.register_device(
                    device_id, initial_twin=plan.twin if _has_content(plan.twin) else None
                )
            finally:
                connector.close()
        except ConnectorError as exc:
            _log.warning(
                "provisioning: registering %s in linked hub %s failed: %s (%s)",
                device_id,
                plan.target.link,
                exc.message,
                exc.code,
            )
            return _Outcome(RegistrationStatus.FAILED, exc)
        except FleetPKIError as exc:
            return _Outcome(RegistrationStatus.FAILED, exc)
        return _Outcome(RegistrationStatus.ASSIGNED)

    def _record(
        self,
        tx: UnitOfWork,
        plan: _Plan,
        outcome: _Outcome,
        registration_id: str,
        sha1: str,
        now: dt.datetime,
    ) -> RegistrationState:
        device_id = registration_id
        assigned = outcome.status is RegistrationStatus.ASSIGNED
        if assigned and plan.target is not None and plan.target.link is None:
            self._put_builtin_device(tx, plan, device_id, now)
        registration = tx.registrations.get(registration_id)
        is_new = registration is None
        if registration is None:
            registration = ProvisioningRegistration(
                registration_id=registration_id, created_at=now, certificate_sha1=sha1
            )
        registration.enrollment_kind = plan.kind.value
        registration.enrollment_name = plan.enrollment
        registration.certificate_sha1 = sha1
        registration.status = outcome.status.value
        registration.updated_at = now
        registration.etag = new_etag()
        if assigned:
            registration.device_id = device_id
            registration.assigned_hub = plan.target_host
            registration.substatus = plan.substatus.value
            registration.error_code = None
            registration.error_message = None
        else:
            error = outcome.error
            assert error is not None
            registration.error_code = dps_error_number(error.http_status)
            registration.error_message = f"{error.message} ({error.code})"
        if is_new:
            tx.registrations.add(registration)
        tx.flush()
        return RegistrationState(
            registration_id=registration_id,
            status=outcome.status,
            created_at=registration.created_at,
            updated_at=now,
            etag=registration.etag,
            device_id=device_id if assigned else None,
            assigned_hub=plan.target_host if assigned else None,
            substatus=plan.substatus if assigned else None,
            enrollment_group_id=plan.group_id,
            error_code=None if assigned else registration.error_code,
            error_message=None if assigned else registration.error_message,
        )

    def _put_builtin_device(
        self, tx: UnitOfWork, plan: _Plan, device_id: str, now: dt.datetime
    ) -> None:
        """The device in the built-in hub: created with CA authentication and its twin,
        or kept as it is (disabled stays disabled); a reset policy resets its twin."""
        existing = tx.hub_devices.get(device_id)
        if existing is None:
            put_device_in(tx, DeviceSpec(device_id), now=now, seal=self._auth.seal)
            if _has_content(plan.twin):
                assert plan.twin is not None
                replace_twin_in(tx, device_id, plan.twin, now=now)
        elif plan.reset_twin:
            replace_twin_in(tx, device_id, plan.twin or {}, now=now)

    # -- operation status ---------------------------------------------------------------------

    def operation_status(self, request: StatusRequest) -> RegistrationOperation:
        """The operation a device polls; only the certificate that registered finds it.

        Raises:
            NotFoundError: ``provisioning.unknown_id_scope``,
                ``provisioning.operation_not_found`` (another registration's operation,
                another certificate, or an operation replaced by a newer registration).
            ValidationError: ``provisioning.bad_registration_id``.
            AuthenticationError: ``provisioning.no_client_certificate``.
        """
        self._check_scope(request.id_scope)
        check_registration_id(request.registration_id)
        if request.credentials.leaf_der is None:
            raise AuthenticationError(
                "provisioning.no_client_certificate",
                "X.509 registration needs a TLS client certificate",
            )
        sha1 = _sha1(request.credentials.leaf_der)
        with self._store.transaction() as tx:
            record = tx.provisioning_operations.get(request.operation_id)
            if (
                record is None
                or record.registration_id != request.registration_id
                or record.certificate_sha1 != sha1
            ):
                raise NotFoundError(
                    "provisioning.operation_not_found",
                    f"no operation {request.operation_id!r} of registration "
                    f"{request.registration_id!r}",
                )
            state = RegistrationState.from_json(record.state)
        return RegistrationOperation(record.id, state.status, state)

    def registration_state(self, registration_id: str) -> RegistrationState:
        """Where a registration id was provisioned (the DPS service API's registration
        state; the caller checks that an admin asks).

        Raises:
            NotFoundError: ``provisioning.registration_not_found``.
        """
        with self._store.transaction() as tx:
            record = tx.registrations.get(registration_id)
            if record is None:
                raise NotFoundError(
                    "provisioning.registration_not_found", f"no registration {registration_id!r}"
                )
            assigned = record.status == RegistrationStatus.ASSIGNED.value
            group = record.enrollment_name if record.enrollment_kind == "group" else None
            return RegistrationState(
                registration_id=record.registration_id,
                status=RegistrationStatus(record.status),
                created_at=record.created_at,
                updated_at=record.updated_at,
                etag=record.etag,
                device_id=record.device_id,
                assigned_hub=record.assigned_hub,
                substatus=Substatus(record.substatus) if record.substatus else None,
                enrollment_group_id=group,
                error_code=None if assigned else record.error_code,
                error_message=None if assigned else record.error_message,
            )
