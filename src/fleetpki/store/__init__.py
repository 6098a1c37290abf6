"""Persistence: SQLAlchemy models, Alembic migrations and the database handle."""

from __future__ import annotations

from fleetpki.store.db import Database, sqlite_url
from fleetpki.store.hub_models import HubC2DMessage, HubCA, HubDevice, HubMessage, HubSasPolicy
from fleetpki.store.models import (
    ApiToken,
    AuditEntry,
    Base,
    CARecord,
    CertificateRecord,
    DomainMember,
    DomainRecord,
    OutboxEvent,
    Principal,
    TemplateRecord,
    UsedTokenId,
)

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Base",
    "CARecord",
    "CertificateRecord",
    "Database",
    "DomainMember",
    "DomainRecord",
    "HubC2DMessage",
    "HubCA",
    "HubDevice",
    "HubMessage",
    "HubSasPolicy",
    "OutboxEvent",
    "Principal",
    "TemplateRecord",
    "UsedTokenId",
    "sqlite_url",
]
