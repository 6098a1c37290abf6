"""The repositories the provisioning service declares: enrollments, registrations, operations.

Implemented on SQL by :mod:`fleetpki.store.repositories.provisioning` and reached through
the unit of work (``tx.enrollments``, ``tx.registrations``, ``tx.provisioning_operations``);
the entities are the records of :mod:`fleetpki.store.hub_models`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from fleetpki.store.hub_models import (
    ProvisioningEnrollment,
    ProvisioningOperation,
    ProvisioningRegistration,
)

__all__ = ["EnrollmentRepository", "OperationRepository", "RegistrationRepository"]


class EnrollmentRepository(Protocol):
    """Enrollment groups and individual enrollments, by kind and name."""

    def get(self, kind: str, name: str) -> ProvisioningEnrollment | None:
        """The enrollment of ``kind`` (``group``, ``individual``) called ``name``."""
        ...

    def list(self, kind: str) -> Sequence[ProvisioningEnrollment]:
        """Every enrollment of ``kind``, by name."""
        ...

    def add(self, enrollment: ProvisioningEnrollment) -> None:
        """Store a new enrollment (written at once, so a duplicate fails here)."""
        ...

    def delete(self, enrollment: ProvisioningEnrollment) -> None:
        """Remove an enrollment."""
        ...


class RegistrationRepository(Protocol):
    """Device registration states, one per registration id."""

    def get(self, registration_id: str) -> ProvisioningRegistration | None:
        """The registration of ``registration_id``, or ``None``."""
        ...

    def add(self, registration: ProvisioningRegistration) -> None:
        """Store a new registration."""
        ...

    def delete(self, registration: ProvisioningRegistration) -> None:
        """Remove a registration state."""
        ...

    def count_for(self, kind: str, name: str) -> int:
        """How many registrations the enrollment ``kind``/``name`` attested."""
        ...


class OperationRepository(Protocol):
    """Registration operations, which devices poll by id."""

    def get(self, operation_id: str) -> ProvisioningOperation | None:
        """The operation ``operation_id``, or ``None``."""
        ...

    def replace_for(self, operation: ProvisioningOperation) -> None:
        """Store ``operation`` as its registration id's only one (older ones are deleted)."""
        ...
