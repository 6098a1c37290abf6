"""The unit of work on SQLAlchemy: one session, its repositories, notifications after commit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.orm import Session

from fleetpki.services.notifications import EventsWritten, Notification
from fleetpki.store.db import Database
from fleetpki.store.repositories.ca import SqlCARepository, SqlTemplateRepository
from fleetpki.store.repositories.ca_certificates import (
    SqlCertificateRepository,
    SqlUsedTokenRepository,
)
from fleetpki.store.repositories.ca_identities import (
    SqlAuditRepository,
    SqlDomainRepository,
    SqlPortalSessionRepository,
    SqlPrincipalRepository,
    SqlTokenRepository,
)
from fleetpki.store.repositories.events import SqlEventLog

# -- hub side repositories --
from fleetpki.store.repositories.hub import (
    SqlHubAuditTrail,
    SqlHubC2DRepository,
    SqlHubCARepository,
    SqlHubDeviceRepository,
    SqlHubLinkPinRepository,
    SqlHubSasPolicyRepository,
    SqlHubTelemetryRepository,
)
from fleetpki.store.repositories.hub_links import SqlHubLinkRepository
from fleetpki.store.repositories.hub_nodes import SqlHubMethodCallRepository, SqlHubNodeRepository
from fleetpki.store.repositories.provisioning import (
    SqlEnrollmentRepository,
    SqlOperationRepository,
    SqlRegistrationRepository,
)

if TYPE_CHECKING:
    from fleetpki.services.events import EventBus

__all__ = ["SqlStore", "SqlUnitOfWork"]


class SqlUnitOfWork:
    """:class:`fleetpki.services.ports.UnitOfWork` on one SQLAlchemy session."""

    def __init__(self, session: Session, dialect: str) -> None:
        self.session = session
        self.dialect = dialect
        self.notifications: list[Notification] = []
        self.callbacks: list[Callable[[], None]] = []
        self.written_types: set[str] = set()

    @cached_property
    def events(self) -> SqlEventLog:
        """The outbox."""
        return SqlEventLog(self.session, self.dialect, self.written_types.add)

    # -- repositories of the CA side ------------------------------------------------------

    @cached_property
    def cas(self) -> SqlCARepository:
        """Certificate authorities."""
        return SqlCARepository(self.session, self.dialect)

    @cached_property
    def templates(self) -> SqlTemplateRepository:
        """Issuance templates."""
        return SqlTemplateRepository(self.session)

    @cached_property
    def certificates(self) -> SqlCertificateRepository:
        """Issued leaf certificates."""
        return SqlCertificateRepository(self.session, self.dialect)

    @cached_property
    def domains(self) -> SqlDomainRepository:
        """Domains with their members."""
        return SqlDomainRepository(self.session)

    @cached_property
    def principals(self) -> SqlPrincipalRepository:
        """Principals."""
        return SqlPrincipalRepository(self.session)

    @cached_property
    def tokens(self) -> SqlTokenRepository:
        """API tokens."""
        return SqlTokenRepository(self.session)

    @cached_property
    def used_tokens(self) -> SqlUsedTokenRepository:
        """Certificate-token ids already accepted."""
        return SqlUsedTokenRepository(self.session)

    @cached_property
    def audit(self) -> SqlAuditRepository:
        """The audit log."""
        return SqlAuditRepository(self.session)

    @cached_property
    def portal_sessions(self) -> SqlPortalSessionRepository:
        """Signed-in portal sessions."""
        return SqlPortalSessionRepository(self.session)

    # -- repositories of the hub side -----------------------------------------------------

    @cached_property
    def hub_devices(self) -> SqlHubDeviceRepository:
        """The hub's device registry."""
        return SqlHubDeviceRepository(self.session, self.dialect)

    @cached_property
    def hub_cas(self) -> SqlHubCARepository:
        """CA certificates uploaded to the hub."""
        return SqlHubCARepository(self.session)

    @cached_property
    def link_pins(self) -> SqlHubLinkPinRepository:
        """Devices that hub links pinned to a thumbprint after a revocation."""
        return SqlHubLinkPinRepository(self.session)

    @cached_property
    def hub_telemetry(self) -> SqlHubTelemetryRepository:
        """Stored device-to-cloud messages."""
        return SqlHubTelemetryRepository(self.session, self.dialect)

    @cached_property
    def hub_c2d(self) -> SqlHubC2DRepository:
        """The cloud-to-device queue."""
        return SqlHubC2DRepository(self.session)

    @cached_property
    def hub_sas_policies(self) -> SqlHubSasPolicyRepository:
        """Shared-access policies of the hub's service API."""
        return SqlHubSasPolicyRepository(self.session)

    @cached_property
    def hub_links(self) -> SqlHubLinkRepository:
        """Hub links and the CAs each one trusts."""
        return SqlHubLinkRepository(self.session)

    @cached_property
    def hub_nodes(self) -> SqlHubNodeRepository:
        """The hub nodes on this database and their heartbeats."""
        return SqlHubNodeRepository(self.session, self.dialect)

    @cached_property
    def hub_method_calls(self) -> SqlHubMethodCallRepository:
        """Direct methods relayed to the node holding the device."""
        return SqlHubMethodCallRepository(self.session, self.dialect)

    @cached_property
    def enrollments(self) -> SqlEnrollmentRepository:
        """The provisioning service's enrollments."""
        return SqlEnrollmentRepository(self.session)

    @cached_property
    def registrations(self) -> SqlRegistrationRepository:
        """Device registration states."""
        return SqlRegistrationRepository(self.session)

    @cached_property
    def provisioning_operations(self) -> SqlOperationRepository:
        """Registration operations."""
        return SqlOperationRepository(self.session)

    @cached_property
    def hub_audit(self) -> SqlHubAuditTrail:
        """Audit entries of hub use cases."""
        return SqlHubAuditTrail(self.session)

    def publish(self, notification: Notification) -> None:
        """See :meth:`UnitOfWork.publish`."""
        self.notifications.append(notification)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """See :meth:`UnitOfWork.after_commit`."""
        self.callbacks.append(callback)

    def flush(self) -> None:
        """See :meth:`UnitOfWork.flush`."""
        self.session.flush()


class SqlStore:
    """:class:`fleetpki.services.ports.Store` on a :class:`~fleetpki.store.db.Database`.

    Args:
        database: the migrated database.
        bus: the application's event bus; a unit's notifications reach it after commit.
    """

    def __init__(self, database: Database, bus: EventBus) -> None:
        self.database = database
        self._bus = bus

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.database.dialect

    def commit_stamp(self) -> bytes | None:
        """See :meth:`Store.commit_stamp`."""
        return self.database.commit_stamp()

    def ping(self) -> None:
        """See :meth:`Store.ping`."""
        with self.database.session(reading=True) as session:
            session.execute(text("SELECT 1"))

    @contextmanager
    def transaction(self) -> Iterator[SqlUnitOfWork]:
        """See :meth:`Store.transaction`: commit at the end of the block, roll back on error."""
        with self.database.session() as session:
            unit = SqlUnitOfWork(session, self.database.dialect)
            yield unit
        # Committed: tell this process now (a rollback raised above and dropped all this).
        notifications = list(unit.notifications)
        if unit.written_types:
            notifications.append(EventsWritten(frozenset(unit.written_types)))
        self._bus.publish_all(notifications)
        for callback in unit.callbacks:
            callback()

    @contextmanager
    def reading(self) -> Iterator[SqlUnitOfWork]:
        """See :meth:`Store.reading`: one consistent read, no write lock."""
        with self.database.session(reading=True) as session:
            yield SqlUnitOfWork(session, self.database.dialect)
