"""The provisioning service's repositories on SQL: enrollments, registrations, operations."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fleetpki.store.hub_models import (
    ProvisioningEnrollment,
    ProvisioningOperation,
    ProvisioningRegistration,
)

__all__ = [
    "SqlEnrollmentRepository",
    "SqlOperationRepository",
    "SqlRegistrationRepository",
]


class SqlEnrollmentRepository:
    """:class:`fleetpki.services.ports.provisioning.EnrollmentRepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, kind: str, name: str) -> ProvisioningEnrollment | None:
        """See :meth:`EnrollmentRepository.get`."""
        return self._session.scalars(
            select(ProvisioningEnrollment).where(
                ProvisioningEnrollment.kind == kind, ProvisioningEnrollment.name == name
            )
        ).first()

    def list(self, kind: str) -> Sequence[ProvisioningEnrollment]:
        """See :meth:`EnrollmentRepository.list`."""
        return list(
            self._session.scalars(
                select(ProvisioningEnrollment)
                .where(ProvisioningEnrollment.kind == kind)
                .order_by(ProvisioningEnrollment.name)
            )
        )

    def add(self, enrollment: ProvisioningEnrollment) -> None:
        """See :meth:`EnrollmentRepository.add`."""
        self._session.add(enrollment)
        self._session.flush()

    def delete(self, enrollment: ProvisioningEnrollment) -> None:
        """See :meth:`EnrollmentRepository.delete`."""
        self._session.delete(enrollment)
        self._session.flush()


class SqlRegistrationRepository:
    """:class:`fleetpki.services.ports.provisioning.RegistrationRepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, registration_id: str) -> ProvisioningRegistration | None:
        """See :meth:`RegistrationRepository.get`."""
        return self._session.get(ProvisioningRegistration, registration_id)

    def add(self, registration: ProvisioningRegistration) -> None:
        """See :meth:`RegistrationRepository.add`."""
        self._session.add(registration)
        self._session.flush()

    def delete(self, registration: ProvisioningRegistration) -> None:
        """See :meth:`RegistrationRepository.delete`."""
        self._session.delete(registration)
        self._session.flush()

    def count_for(self, kind: str, name: str) -> int:
        """See :meth:`RegistrationRepository.count_for`."""
        count = self._session.scalar(
            select(func.count())
            .select_from(ProvisioningRegistration)
            .where(
                ProvisioningRegistration.enrollment_kind == kind,
                ProvisioningRegistration.enrollment_name == name,
            )
        )
        return int(count or 0)


class SqlOperationRepository:
    """:class:`fleetpki.services.ports.provisioning.OperationRepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, operation_id: str) -> ProvisioningOperation | None:
        """See :meth:`OperationRepository.get`."""
        return self._session.get(ProvisioningOperation, operation_id)

    def replace_for(self, operation: ProvisioningOperation) -> None:
        """See :meth:`OperationRepository.replace_for`."""
        self._session.execute(
            delete(ProvisioningOperation).where(
                ProvisioningOperation.registration_id == operation.registration_id
            )
        )
        self._session.add(operation)
        self._session.flush()
