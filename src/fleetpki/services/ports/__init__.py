"""What the services need from outside them, declared as Protocols that store/ implements.

A use case is one call on a service object; the service opens one unit of work with
``store.transaction()``, reaches the data through the repositories the unit of work
holds, and returns plain views (frozen dataclasses), never ORM objects. Nothing here
knows about SQLAlchemy: ``fleetpki.store`` implements these Protocols
(:class:`fleetpki.store.unit_of_work.SqlStore`), and the application object
(:class:`fleetpki.application.FleetPKI`) wires the implementation in.

Entities are the records of ``fleetpki.store.models`` (plain mapped classes): services
read and change their attributes inside a unit of work, and the unit of work writes
the changes at commit. Services never build queries or touch a session.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from fleetpki.services.ports.ca import (
    AuditRepository,
    CARepository,
    CertificateRepository,
    DomainRepository,
    PortalSessionRepository,
    PrincipalRepository,
    TemplateRepository,
    TokenRepository,
    UsedTokenRepository,
)
from fleetpki.services.ports.events import EventLog, Notification

# -- hub side ports --
from fleetpki.services.ports.hub import (
    HubAuditTrail,
    HubC2DRepository,
    HubCARepository,
    HubDeviceRepository,
    HubLinkPinRepository,
    HubLinkRepository,
    HubSasPolicyRepository,
    HubTelemetryRepository,
)
from fleetpki.services.ports.hub_nodes import HubMethodCallRepository, HubNodeRepository
from fleetpki.services.ports.provisioning import (
    EnrollmentRepository,
    OperationRepository,
    RegistrationRepository,
)

__all__ = ["EventLog", "Notification", "Store", "UnitOfWork"]


class UnitOfWork(Protocol):
    """One database transaction and the repositories bound to it.

    Everything done through it commits together when the ``with`` block of
    :meth:`Store.transaction` ends normally, and is rolled back when it raises.
    """

    @property
    def events(self) -> EventLog:
        """The outbox: events for other consumers, written with the change."""
        ...

    # -- repositories of the CA side (services/ports/ca.py) -------------------------------

    @property
    def cas(self) -> CARepository:
        """Certificate authorities."""
        ...

    @property
    def templates(self) -> TemplateRepository:
        """Issuance templates."""
        ...

    @property
    def certificates(self) -> CertificateRepository:
        """Issued leaf certificates."""
        ...

    @property
    def domains(self) -> DomainRepository:
        """Domains with their owners and requesters."""
        ...

    @property
    def principals(self) -> PrincipalRepository:
        """Principals (users, service identities)."""
        ...

    @property
    def tokens(self) -> TokenRepository:
        """API tokens."""
        ...

    @property
    def used_tokens(self) -> UsedTokenRepository:
        """Certificate-token ids already accepted."""
        ...

    @property
    def audit(self) -> AuditRepository:
        """The audit log."""
        ...

    @property
    def portal_sessions(self) -> PortalSessionRepository:
        """Signed-in portal sessions."""
        ...

    # -- repositories of the hub side (services/ports/hub.py) -----------------------------

    @property
    def hub_devices(self) -> HubDeviceRepository:
        """The hub's device registry (identities and twins)."""
        ...

    @property
    def hub_cas(self) -> HubCARepository:
        """CA certificates uploaded to the hub."""
        ...

    @property
    def link_pins(self) -> HubLinkPinRepository:
        """Devices that hub links pinned to a thumbprint after a revocation."""
        ...

    @property
    def hub_telemetry(self) -> HubTelemetryRepository:
        """Stored device-to-cloud messages."""
        ...

    @property
    def hub_c2d(self) -> HubC2DRepository:
        """The cloud-to-device queue."""
        ...

    @property
    def hub_sas_policies(self) -> HubSasPolicyRepository:
        """Shared-access policies of the hub's service API."""
        ...

    @property
    def hub_links(self) -> HubLinkRepository:
        """Hub links and the CAs each one trusts."""
        ...

    @property
    def hub_nodes(self) -> HubNodeRepository:
        """The hub nodes on this database and their heartbeats."""
        ...

    @property
    def hub_method_calls(self) -> HubMethodCallRepository:
        """Direct methods relayed to the node holding the device."""
        ...

    @property
    def enrollments(self) -> EnrollmentRepository:
        """The provisioning service's enrollment groups and individual enrollments."""
        ...

    @property
    def registrations(self) -> RegistrationRepository:
        """Where each registration id was provisioned."""
        ...

    @property
    def provisioning_operations(self) -> OperationRepository:
        """Registration operations, polled by devices."""
        ...

    @property
    def hub_audit(self) -> HubAuditTrail:
        """Audit entries of hub use cases (until the CA side's audit repository lands)."""
        ...

    def publish(self, notification: Notification) -> None:
        """Hand ``notification`` to the in-process event bus once this unit commits.

        A rollback drops it, so a refused change never reaches a listener.
        """
        ...

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after a successful commit (outside the transaction)."""
        ...

    def flush(self) -> None:
        """Send pending changes to the database now (to learn generated ids, or fail early)."""
        ...


class Store(Protocol):
    """The database as the services see it: a source of units of work."""

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        ...

    def transaction(self) -> AbstractContextManager[UnitOfWork]:
        """A unit of work: committed when the block ends, rolled back when it raises.

        It may write: on SQLite it holds the write lock from its start, so that a
        read-modify-write is never overtaken by another process's commit.
        """
        ...

    def reading(self) -> AbstractContextManager[UnitOfWork]:
        """A unit of work that only reads (one consistent snapshot) and may not write.

        For the hot read paths (OCSP, look-ups): on SQLite it takes no write lock and
        runs beside writers; a write in it raises.
        """
        ...

    def ping(self) -> None:
        """Reach the database once (a health check); raises when it cannot."""
        ...

    def commit_stamp(self) -> bytes | None:
        """A value that changes whenever any process commits, or ``None`` if unknown.

        Cheap (no query): in-memory caches compare it on every read to learn at once
        that another process wrote (SQLite's WAL index); ``None`` means the database
        cannot tell this way and such caches follow LISTEN/NOTIFY instead.
        """
        ...
