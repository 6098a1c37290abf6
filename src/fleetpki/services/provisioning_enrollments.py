"""The provisioning service's enrollments: who may register, and where each one is sent.

Azure DPS's two kinds of X.509 enrollment:

* an **enrollment group** is attested by a CA the hub trusts and has verified by proof
  of possession (``caReferences.primary``, the hub CA's name): any certificate chaining
  to it whose CN is the registration id may register, as it could connect to the hub;
* an **individual enrollment** names one registration id and the one certificate it
  must present (pinned by thumbprint); the certificate must still chain to a verified
  hub CA, so that its revocation is checked as the hub checks it.

Each has its allocation (``static``: one hub; ``hashed``: evenly across several, by a
hash of the registration id, so a device keeps its hub while the list is unchanged),
hubs named by host name (the built-in hub, or a hub link's hub: an Azure IoT Hub or
another fleetpki), an initial twin, enabled or disabled, and a reprovisioning policy
(``updateHubAssignment``, ``migrateDeviceData``, as Azure's ``reprovisionPolicy``).

Every use is for admins; a refused change writes nothing.
"""

from __future__ import annotations

import builtins
import datetime as dt
import enum
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.errors import ConflictError, NotFoundError, PermissionDenied, ValidationError
from fleetpki.hub.azure.dps import check_registration_id
from fleetpki.pki.issuance import thumbprints
from fleetpki.services.audit import write_audit
from fleetpki.services.context import Actor, Clock
from fleetpki.services.hub_etags import check_if_match, new_etag
from fleetpki.services.hub_link_settings import LinkKind
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.store.hub_models import HubLink, ProvisioningEnrollment

__all__ = [
    "AllocatableHub",
    "AllocationPolicy",
    "EnrollmentKind",
    "EnrollmentSpec",
    "EnrollmentView",
    "ProvisioningEnrollmentService",
    "ReprovisionPolicy",
    "allocatable_hubs",
    "enrollment_view",
    "hub_for",
    "link_host",
]

#: Enrollment group ids: as Azure allows them (letters, digits and ``- . _ :``, up to 128).
_GROUP_ID_EXTRA = frozenset("-._:")
_MAX_NAME = 128
#: An initial twin is stored with the enrollment and written to each new device.
_MAX_TWIN_BYTES = 8192
_MAX_HUBS = 32


class EnrollmentKind(enum.StrEnum):
    """An enrollment group, or an individual enrollment."""

    GROUP = "group"
    INDIVIDUAL = "individual"


class AllocationPolicy(enum.StrEnum):
    """How a hub is chosen for a device (Azure's ``allocationPolicy``)."""

    #: One hub (``iotHubHostName``).
    STATIC = "static"
    #: Evenly across ``iotHubs``, by a hash of the registration id.
    HASHED = "hashed"

    @classmethod
    def parse(cls, text: str) -> AllocationPolicy:
        """Parse a policy name, case-insensitively.

        Raises:
            ValidationError: ``provisioning.bad_allocation`` (Azure's ``geoLatency`` and
                ``custom`` are not served).
        """
        for member in cls:
            if member.value == text.strip().lower():
                return member
        raise ValidationError(
            "provisioning.bad_allocation",
            f"allocation policy {text!r} is not served: use static or hashed",
        )


@dataclass(frozen=True, slots=True)
class ReprovisionPolicy:
    """What a device's next registration may change (Azure's ``reprovisionPolicy``).

    Attributes:
        update_hub_assignment: a registration is allocated again (and may move the
            device); off, the device stays on the hub it was first given.
        migrate_device_data: a device that moves takes its twin with it (from the
            built-in hub); off, its twin is reset to the enrollment's initial twin, on
            every registration.
    """

    update_hub_assignment: bool = True
    migrate_device_data: bool = True


@dataclass(frozen=True, slots=True)
class EnrollmentSpec:
    """An enrollment as it is created or replaced.

    Attributes:
        kind: group or individual.
        name: the enrollment group id, or the individual enrollment's registration id.
        ca: for a group, the hub CA that attests it: its name in the hub, or the id of
            the fleetpki CA whose certificate the hub holds (``fleetpki hub trust``).
        certificate: for an individual enrollment, the device's certificate (PEM or DER).
        allocation: static or hashed.
        hubs: the hubs to allocate to: host names, or hub link names; none means the
            built-in hub.
        initial_twin: ``{"tags": {...}, "properties": {"desired": {...}}}``.
        enabled: whether devices may register through it.
        reprovision: the reprovisioning policy.
    """

    kind: EnrollmentKind
    name: str
    ca: str | None = None
    certificate: bytes | None = field(default=None, repr=False)
    allocation: AllocationPolicy = AllocationPolicy.STATIC
    hubs: tuple[str, ...] = ()
    initial_twin: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    reprovision: ReprovisionPolicy = ReprovisionPolicy()


@dataclass(frozen=True, slots=True)
class EnrollmentView:
    """An enrollment as the CLI and the DPS service API present it."""

    kind: EnrollmentKind
    name: str
    ca_name: str | None
    certificate_der: bytes | None
    certificate_sha1: str | None
    certificate_sha256: str | None
    allocation: AllocationPolicy
    hubs: tuple[str, ...]
    initial_twin: Mapping[str, Any]
    enabled: bool
    reprovision: ReprovisionPolicy
    etag: str
    created_at: dt.datetime
    updated_at: dt.datetime
    registrations: int


@dataclass(frozen=True, slots=True)
class AllocatableHub:
    """A hub devices may be sent to.

    Attributes:
        host_name: where its devices connect (``assignedHub``).
        link: the hub link that drives it, ``None`` for this process's built-in hub.
    """

    host_name: str
    link: str | None


def enrollment_view(tx: UnitOfWork, record: ProvisioningEnrollment) -> EnrollmentView:
    """The view of an enrollment (call inside the unit of work that read it)."""
    return EnrollmentView(
        kind=EnrollmentKind(record.kind),
        name=record.name,
        ca_name=record.ca_name,
        certificate_der=record.certificate_der,
        certificate_sha1=record.certificate_sha1,
        certificate_sha256=record.certificate_sha256,
        allocation=AllocationPolicy(record.allocation_policy),
        hubs=tuple(record.hubs),
        initial_twin=dict(record.initial_twin),
        enabled=record.status == "enabled",
        reprovision=ReprovisionPolicy(record.update_hub_assignment, record.migrate_device_data),
        etag=record.etag,
        created_at=record.created_at,
        updated_at=record.updated_at,
        registrations=tx.registrations.count_for(record.kind, record.name),
    )


def link_host(record: HubLink, builtin_host: str) -> str:
    """Where the devices of a linked hub connect: the built-in hub's host for a builtin
    link; the host of an azure link's service URL (another fleetpki), else Azure's
    ``{hub}.azure-devices.net``."""
    if record.kind != LinkKind.AZURE.value:
        return builtin_host
    if record.service_url:
        host = urlsplit(record.service_url).hostname
        if host:
            return host
    return f"{record.hub_name}.azure-devices.net"


def allocatable_hubs(tx: UnitOfWork, builtin_host: str) -> list[AllocatableHub]:
    """The built-in hub, then every linked hub with a host of its own, by link name."""
    hubs = [AllocatableHub(builtin_host, None)]
    seen = {builtin_host.lower()}
    for record in tx.hub_links.list():
        host = link_host(record, builtin_host)
        if host.lower() not in seen:
            seen.add(host.lower())
            hubs.append(AllocatableHub(host, record.name))
    return hubs


def _require_admin(actor: Actor) -> None:
    if not actor.is_admin:
        raise PermissionDenied("auth.admin_required", "only admins manage enrollments")


def _check_name(spec: EnrollmentSpec) -> None:
    name = spec.name
    if spec.kind is EnrollmentKind.INDIVIDUAL:
        check_registration_id(name)
        return
    if (
        not name
        or len(name) > _MAX_NAME
        or any(not (c.isascii() and (c.isalnum() or c in _GROUP_ID_EXTRA)) for c in name)
    ):
        raise ValidationError(
            "provisioning.bad_enrollment_id",
            "an enrollment group id is 1-128 letters, digits, '-', '.', '_' or ':'",
        )


def _check_twin(document: Mapping[str, Any]) -> dict[str, Any]:
    """The initial twin, as ``{"tags": {...}, "properties": {"desired": {...}}}``."""
    if not isinstance(document, Mapping):
        raise ValidationError("provisioning.bad_twin", "the initial twin must be a JSON object")
    unknown = set(document) - {"tags", "properties"}
    if unknown:
        raise ValidationError(
            "provisioning.bad_twin",
            f"an initial twin holds tags and properties.desired, not {', '.join(sorted(unknown))}",
        )
    tags = document.get("tags")
    tags = {} if tags is None else tags
    properties = document.get("properties")
    properties = {} if properties is None else properties
    if not isinstance(tags, Mapping) or not isinstance(properties, Mapping):
        raise ValidationError("provisioning.bad_twin", "tags and properties must be JSON objects")
    if set(properties) - {"desired"}:
        raise ValidationError(
            "provisioning.bad_twin", "an initial twin sets desired properties only"
        )
    desired = properties.get("desired")
    desired = {} if desired is None else desired
    if not isinstance(desired, Mapping):
        raise ValidationError("provisioning.bad_twin", "properties.desired must be a JSON object")
    desired = {k: v for k, v in desired.items() if not str(k).startswith("$")}
    twin: dict[str, Any] = {"tags": dict(tags), "properties": {"desired": desired}}
    try:
        size = len(json.dumps(twin))
    except (TypeError, ValueError):
        raise ValidationError("provisioning.bad_twin", "the initial twin is not JSON") from None
    if size > _MAX_TWIN_BYTES:
        raise ValidationError(
            "provisioning.bad_twin", f"the initial twin is larger than {_MAX_TWIN_BYTES} bytes"
        )
    return twin


def _parse_certificate(data: bytes) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ValidationError("certificate.malformed", "not a PEM or DER certificate") from exc


def _resolve_ca(tx: UnitOfWork, ca: str | None) -> tuple[str, str | None]:
    """The hub CA a group names (a hub CA's name, or a fleetpki CA's id): its name, and
    the fleetpki CA behind it when it is one."""
    if not ca:
        raise ValidationError(
            "provisioning.ca_required", "an enrollment group is attested by a hub CA (--ca)"
        )
    record = tx.hub_cas.get_by_name(ca)
    if record is None:
        try:
            ca_id = str(uuid.UUID(ca))
        except ValueError:
            ca_id = None
        local = tx.cas.get(ca_id) if ca_id else None
        if local is not None:
            record = tx.hub_cas.find_by_sha1(local.sha1_hex)
            if record is None:
                raise NotFoundError(
                    "hub.ca_not_found",
                    f"the hub does not trust CA {ca_id}; run `fleetpki hub trust {ca_id}` first",
                )
    if record is None:
        raise NotFoundError("hub.ca_not_found", f"no hub CA named {ca!r}")
    if not record.is_verified:
        raise ValidationError(
            "provisioning.ca_unverified",
            f"hub CA {record.name!r} is not verified by proof of possession; verify it first",
        )
    return record.name, record.fleetpki_ca_id


def _resolve_hubs(tx: UnitOfWork, spec: EnrollmentSpec, builtin_host: str) -> builtins.list[str]:
    hubs = allocatable_hubs(tx, builtin_host)
    by_name = {h.host_name.lower(): h.host_name for h in hubs}
    by_link = {h.link: h.host_name for h in hubs if h.link is not None}
    for record in tx.hub_links.list():
        by_link.setdefault(record.name, link_host(record, builtin_host))
    chosen: list[str] = []
    for wanted in spec.hubs or (builtin_host,):
        host = by_link.get(wanted) or by_name.get(wanted.strip().lower())
        if host is None:
            known = ", ".join(sorted({h.host_name for h in hubs} | set(by_link)))
            raise ValidationError(
                "provisioning.unknown_hub",
                f"{wanted!r} is neither the built-in hub nor a linked hub ({known})",
            )
        if host not in chosen:
            chosen.append(host)
    if len(chosen) > _MAX_HUBS:
        raise ValidationError("provisioning.bad_allocation", f"at most {_MAX_HUBS} hubs")
    if spec.allocation is AllocationPolicy.STATIC and len(chosen) != 1:
        raise ValidationError(
            "provisioning.bad_allocation",
            "static allocation sends every device to one hub; use hashed for several",
        )
    return chosen


class ProvisioningEnrollmentService:
    """Enrollment groups and individual enrollments: add, replace, list, show, disable, delete.

    Args:
        store: the database.
        clock: the source of "now".
        builtin_host: the built-in hub's host name (``Settings.hostname``).
    """

    def __init__(self, store: Store, clock: Clock, *, builtin_host: str) -> None:
        self._store = store
        self._clock = clock
        self.builtin_host = builtin_host

    def hubs(self) -> builtins.list[AllocatableHub]:
        """The hubs enrollments may allocate to: the built-in hub and the linked hubs."""
        with self._store.transaction() as tx:
            return allocatable_hubs(tx, self.builtin_host)

    def add(self, actor: Actor, spec: EnrollmentSpec) -> EnrollmentView:
        """Create an enrollment (admins only).

        Raises:
            PermissionDenied: ``auth.admin_required``.
            ValidationError: ``provisioning.bad_enrollment_id``,
                ``provisioning.bad_registration_id``, ``provisioning.ca_required``,
                ``provisioning.ca_unverified``, ``provisioning.certificate_required``,
                ``certificate.malformed``, ``provisioning.unknown_hub``,
                ``provisioning.bad_allocation``, ``provisioning.bad_twin``.
            NotFoundError: ``hub.ca_not_found``.
            ConflictError: ``provisioning.enrollment_exists``, ``provisioning.ca_in_use``.
        """
        view, _ = self._write(actor, spec, if_match=None, create_only=True)
        return view

    def put(
        self, actor: Actor, spec: EnrollmentSpec, *, if_match: str | None = None
    ) -> tuple[EnrollmentView, bool]:
        """Create or replace an enrollment (the DPS service API's PUT); whether created.

        Raises:
            ConflictError: ``precondition.failed`` when ``if_match`` is not its etag;
                and the errors of :meth:`add`.
        """
        return self._write(actor, spec, if_match=if_match, create_only=False)

    def _write(
        self, actor: Actor, spec: EnrollmentSpec, *, if_match: str | None, create_only: bool
    ) -> tuple[EnrollmentView, bool]:
        _require_admin(actor)
        _check_name(spec)
        twin = _check_twin(spec.initial_twin)
        now = self._clock()
        with self._store.transaction() as tx:
            ca_name: str | None = None
            ca_id: str | None = None
            der: bytes | None = None
            if spec.kind is EnrollmentKind.GROUP:
                ca_name, ca_id = _resolve_ca(tx, spec.ca)
            else:
                if spec.certificate is None:
                    raise ValidationError(
                        "provisioning.certificate_required",
                        "an individual enrollment names the device's certificate",
                    )
                der = _parse_certificate(spec.certificate).public_bytes(serialization.Encoding.DER)
            hubs = _resolve_hubs(tx, spec, self.builtin_host)
            record = tx.enrollments.get(spec.kind.value, spec.name)
            if record is not None and create_only:
                raise ConflictError(
                    "provisioning.enrollment_exists",
                    f"an {spec.kind.value} enrollment {spec.name!r} exists",
                )
            if record is None and if_match is not None and if_match.strip().strip('"') != "*":
                raise NotFoundError(
                    "provisioning.enrollment_not_found",
                    f"no {spec.kind.value} enrollment {spec.name!r}",
                )
            if record is not None:
                check_if_match(if_match, record.etag)
            if ca_name is not None:
                for other in tx.enrollments.list(EnrollmentKind.GROUP.value):
                    same_ca = other.ca_name == ca_name or (
                        ca_id is not None and other.fleetpki_ca_id == ca_id
                    )
                    if same_ca and other.name != spec.name:
                        raise ConflictError(
                            "provisioning.ca_in_use",
                            f"enrollment group {other.name!r} is attested by hub CA "
                            f"{ca_name!r} already",
                        )
            created = record is None
            if record is None:
                record = ProvisioningEnrollment(
                    id=str(uuid.uuid4()),
                    kind=spec.kind.value,
                    name=spec.name,
                    created_at=now,
                )
            record.ca_name = ca_name
            record.fleetpki_ca_id = ca_id
            record.certificate_der = der
            sha1, sha256 = thumbprints(der) if der is not None else (None, None)
            record.certificate_sha1 = sha1
            record.certificate_sha256 = sha256
            record.allocation_policy = spec.allocation.value
            record.hubs = hubs
            record.initial_twin = twin
            record.status = "enabled" if spec.enabled else "disabled"
            record.update_hub_assignment = spec.reprovision.update_hub_assignment
            record.migrate_device_data = spec.reprovision.migrate_device_data
            record.etag = new_etag()
            record.updated_at = now
            if created:
                tx.enrollments.add(record)
            write_audit(
                tx,
                actor,
                "provisioning.enrollment.add" if created else "provisioning.enrollment.replace",
                f"enrollment_{spec.kind.value}",
                spec.name,
                at=now,
                details={"hubs": hubs, "allocation": spec.allocation.value, "ca": ca_name},
            )
            tx.flush()
            return enrollment_view(tx, record), created

    def list(self, actor: Actor, kind: EnrollmentKind) -> builtins.list[EnrollmentView]:
        """Every enrollment of ``kind``, by name (admins only).

        Raises:
            PermissionDenied: ``auth.admin_required``.
        """
        _require_admin(actor)
        with self._store.transaction() as tx:
            return [enrollment_view(tx, r) for r in tx.enrollments.list(kind.value)]

    def get(self, actor: Actor, kind: EnrollmentKind, name: str) -> EnrollmentView:
        """One enrollment (admins only).

        Raises:
            PermissionDenied: ``auth.admin_required``.
            NotFoundError: ``provisioning.enrollment_not_found``.
        """
        _require_admin(actor)
        with self._store.transaction() as tx:
            return enrollment_view(tx, _require(tx, kind, name))

    def set_enabled(
        self, actor: Actor, kind: EnrollmentKind, name: str, enabled: bool
    ) -> EnrollmentView:
        """Enable or disable an enrollment; a disabled one answers registrations
        ``disabled`` (devices already provisioned keep their hub registration).

        Raises:
            PermissionDenied: ``auth.admin_required``.
            NotFoundError: ``provisioning.enrollment_not_found``.
        """
        _require_admin(actor)
        now = self._clock()
        with self._store.transaction() as tx:
            record = _require(tx, kind, name)
            status = "enabled" if enabled else "disabled"
            if record.status != status:
                record.status = status
                record.etag = new_etag()
                record.updated_at = now
                write_audit(
                    tx,
                    actor,
                    f"provisioning.enrollment.{'enable' if enabled else 'disable'}",
                    f"enrollment_{kind.value}",
                    name,
                    at=now,
                )
            return enrollment_view(tx, record)

    def delete(
        self, actor: Actor, kind: EnrollmentKind, name: str, *, if_match: str | None = None
    ) -> None:
        """Remove an enrollment; its devices stay registered in their hubs.

        Raises:
            PermissionDenied: ``auth.admin_required``.
            NotFoundError: ``provisioning.enrollment_not_found``.
            ConflictError: ``precondition.failed``.
        """
        _require_admin(actor)
        with self._store.transaction() as tx:
            record = _require(tx, kind, name)
            check_if_match(if_match, record.etag)
            tx.enrollments.delete(record)
            write_audit(
                tx,
                actor,
                "provisioning.enrollment.delete",
                f"enrollment_{kind.value}",
                name,
                at=self._clock(),
            )


def _require(tx: UnitOfWork, kind: EnrollmentKind, name: str) -> ProvisioningEnrollment:
    record = tx.enrollments.get(kind.value, name)
    if record is None:
        raise NotFoundError(
            "provisioning.enrollment_not_found", f"no {kind.value} enrollment {name!r}"
        )
    return record


def hub_for(hubs: Sequence[str], registration_id: str, policy: AllocationPolicy) -> str:
    """The hub a registration is allocated to: the one hub, or one chosen evenly by a
    SHA-256 of the registration id (the same id always gets the same hub from one list).
    """
    if policy is AllocationPolicy.STATIC or len(hubs) == 1:
        return hubs[0]
    digest = int.from_bytes(hashlib.sha256(registration_id.encode()).digest()[:8], "big")
    return hubs[digest % len(hubs)]
