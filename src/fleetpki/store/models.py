"""SQLAlchemy 2 models: the schema that the Alembic migrations create.

Times are stored as naive UTC (SQLite has no time zones) and come back aware,
through :class:`UTCDateTime`.  Identifiers that EZCA clients see (CA, template,
domain, principal) are GUID strings; certificates are keyed by an integer and
found by serial or thumbprint through indexes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Base",
    "CAGeneration",
    "CARecord",
    "CertificateRecord",
    "CrlRecord",
    "DomainMember",
    "DomainRecord",
    "EventConsumer",
    "EventDeliveryRecord",
    "OutboxEvent",
    "PortalSession",
    "Principal",
    "TemplateRecord",
    "UTCDateTime",
    "UsedTokenId",
]

# Stable constraint names, so that migrations can refer to them on every backend.
_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored as naive UTC and returned as an aware UTC datetime."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        """Convert an aware datetime to naive UTC; refuse naive input."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware UTC datetime")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        """Attach UTC to the stored naive value."""
        return None if value is None else value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    """The declarative base of every fleetpki table."""

    metadata = MetaData(naming_convention=_NAMING)
    type_annotation_map: dict[Any, Any] = {dt.datetime: UTCDateTime, dict[str, Any]: JSON}


class CARecord(Base):
    """A certificate authority: root or issuing, with its key reference and CRL cache."""

    __tablename__ = "cas"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    tier: Mapped[str] = mapped_column(String(16))  # "root" or "issuing"
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("cas.id"))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active, retired
    # The active generation's key and certificate (``generation``), copied here when a
    # generation is activated (services.ca_lifecycle.activate_in, the one writer) so
    # that issuance reads one row; every generation is in ``generations``.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    key_ref: Mapped[str] = mapped_column(String(200))
    key_spec: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(Text)
    serial_hex: Mapped[str] = mapped_column(String(64))
    sha1_hex: Mapped[str] = mapped_column(String(40), index=True)
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    not_before: Mapped[dt.datetime]
    not_after: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime]
    # Unused since migration 0007 (each generation caches its own CRL); kept so that
    # a downgrade finds them.
    crl_number: Mapped[int] = mapped_column(Integer, default=0)
    crl_der: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    crl_next_update: Mapped[dt.datetime | None]
    crl_stale: Mapped[bool] = mapped_column(Boolean, default=True)

    templates: Mapped[list[TemplateRecord]] = relationship(back_populates="ca")
    generations: Mapped[list[CAGeneration]] = relationship(
        back_populates="ca",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="CAGeneration.number",
    )


class CAGeneration(Base):
    """One certificate of a CA: the first, or one made by a renewal (with or without a new key).

    A generation is *pending* until every hub link that trusts the CA holds it
    verified, then *active* (it issues), then *retiring* once a newer one is active
    (still trusted: certificates it issued are outstanding), and *retired* when none
    is left. Each generation has its own CRL: its number, when it lapses and whether it is
    stale are here (a revocation sets ``crl_stale`` and counts in ``crl_revision``), its
    DER in :class:`CrlRecord`.
    """

    __tablename__ = "ca_generations"
    __table_args__ = (UniqueConstraint("ca_id", "number", name="uq_ca_generations_ca_id_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ca_id: Mapped[str] = mapped_column(ForeignKey("cas.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # pending, active, retiring, retired
    key_ref: Mapped[str] = mapped_column(String(200))
    key_spec: Mapped[str] = mapped_column(String(16))
    key_created_at: Mapped[dt.datetime]
    subject: Mapped[str] = mapped_column(Text)
    serial_hex: Mapped[str] = mapped_column(String(64))
    sha1_hex: Mapped[str] = mapped_column(String(40), index=True)
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    not_before: Mapped[dt.datetime]
    not_after: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime]
    activated_at: Mapped[dt.datetime | None]
    retired_at: Mapped[dt.datetime | None]
    crl_number: Mapped[int] = mapped_column(Integer, default=0)
    # Unused since migration 0015 (the DER is in ``ca_crls``, CrlRecord); deferred so
    # that loading a generation never reads it.
    crl_der: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    crl_next_update: Mapped[dt.datetime | None]
    crl_stale: Mapped[bool] = mapped_column(Boolean, default=True)
    #: One more for each revocation of a certificate this generation issued.
    crl_revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The ``crl_revision`` that the cached CRL was built from (stale while they differ).
    crl_built_revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: For a CA with a parent: the parent's generation whose key signed this one.
    parent_generation: Mapped[int | None] = mapped_column(Integer)
    #: For a root generation with a new key: the new key certified by the previous
    #: generation's key (NewWithOld, RFC 4210 §4.4), and the previous key certified by
    #: the new one (OldWithNew), so holders of either root validate either chain.
    cross_der: Mapped[bytes | None] = mapped_column(LargeBinary)
    back_cross_der: Mapped[bytes | None] = mapped_column(LargeBinary)

    ca: Mapped[CARecord] = relationship(back_populates="generations")


class CrlRecord(Base):
    """The last CRL built for a CA generation, as DER.

    Apart from :class:`CAGeneration`'s row, which a revocation updates: SQLite rewrites
    a whole row on update, and a CRL of a million entries is ~45 MB.
    """

    __tablename__ = "ca_crls"

    ca_id: Mapped[str] = mapped_column(ForeignKey("cas.id"), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, primary_key=True)
    crl_number: Mapped[int] = mapped_column(Integer)
    der: Mapped[bytes] = mapped_column(LargeBinary)


class TemplateRecord(Base):
    """An issuance profile of a CA, stored as data."""

    __tablename__ = "templates"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    ca_id: Mapped[str] = mapped_column(ForeignKey("cas.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    template_type: Mapped[str] = mapped_column(String(64))
    max_validity_days: Mapped[int] = mapped_column(Integer)
    allowed_key_specs: Mapped[list[str]] = mapped_column(JSON)
    default_ekus: Mapped[list[str]] = mapped_column(JSON)
    allowed_ekus: Mapped[list[str]] = mapped_column(JSON)
    allowed_key_usages: Mapped[list[str]] = mapped_column(JSON)
    domain_restrictions: Mapped[list[str]] = mapped_column(JSON)
    auto_renew_percentage: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime]

    ca: Mapped[CARecord] = relationship(back_populates="templates")


class Principal(Base):
    """A user or service identity, with an id in the form of an Entra object id."""

    __tablename__ = "principals"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    friendly_name: Mapped[str] = mapped_column(String(200))
    principal_type: Mapped[str] = mapped_column(String(32), default="User")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime]


class ApiToken(Base):
    """A bearer token, stored only as its SHA-256 hash."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]


class PortalSession(Base):
    """A signed-in portal session, stored only as the SHA-256 hash of its secret.

    The secret is in the browser's cookie alone; a stolen database names sessions but
    cannot resume one.
    """

    __tablename__ = "portal_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    principal_id: Mapped[str] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), index=True
    )
    method: Mapped[str] = mapped_column(String(16))  # oidc, token
    created_at: Mapped[dt.datetime]
    last_seen_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class DomainRecord(Base):
    """A name (device id or DNS name) registered under a CA and template."""

    __tablename__ = "domains"
    __table_args__ = (UniqueConstraint("ca_id", "name", name="uq_domains_ca_id_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    ca_id: Mapped[str] = mapped_column(ForeignKey("cas.id"))
    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id"))
    name: Mapped[str] = mapped_column(String(255), index=True)
    created_at: Mapped[dt.datetime]
    created_by: Mapped[str] = mapped_column(String(64))

    members: Mapped[list[DomainMember]] = relationship(
        back_populates="domain", cascade="all, delete-orphan", lazy="selectin"
    )

    def principals_with(self, role: str) -> list[str]:
        """Principal ids holding ``role`` (``owner`` or ``requester``) on this domain."""
        return [m.principal_id for m in self.members if m.role == role]


class DomainMember(Base):
    """One principal's role on a domain: owner or requester."""

    __tablename__ = "domain_members"

    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id"), primary_key=True)
    principal_id: Mapped[str] = mapped_column(
        ForeignKey("principals.id"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16), primary_key=True)

    domain: Mapped[DomainRecord] = relationship(back_populates="members")


class CertificateRecord(Base):
    """An issued leaf certificate and its lifecycle."""

    __tablename__ = "certificates"
    __table_args__ = (
        UniqueConstraint("ca_id", "serial_hex", name="uq_certificates_ca_id_serial_hex"),
        Index("ix_certificates_status_not_after", "status", "not_after"),
        # The CRL's query: the revoked certificates of one CA generation.
        Index("ix_certificates_ca_id_status_generation", "ca_id", "status", "ca_generation"),
        # Partial: only renewals have a predecessor. With every first certificate in it
        # under NULL, SQLite's planner (its statistics say one value for all rows) scanned
        # the table for housekeeping's "renews_id IS NOT NULL" (1-3 s at a million, at the
        # server's start and every minute), and each issuance wrote the index.
        Index(
            "ix_certificates_renews_id",
            "renews_id",
            sqlite_where=text("renews_id IS NOT NULL"),
            postgresql_where=text("renews_id IS NOT NULL"),
        ),
        # The revocations since a CRL was built (its crl_built_revision), for the next
        # CRL: only revoked rows carry a revision, so issuance never writes this index.
        Index(
            "ix_certificates_revoked_revision",
            "ca_id",
            "ca_generation",
            "revoked_revision",
            sqlite_where=text("revoked_revision IS NOT NULL"),
            postgresql_where=text("revoked_revision IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ca_id: Mapped[str] = mapped_column(ForeignKey("cas.id"))
    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id"))
    domain_id: Mapped[str | None] = mapped_column(ForeignKey("domains.id"), index=True)
    serial_hex: Mapped[str] = mapped_column(String(64), index=True)
    subject_cn: Mapped[str | None] = mapped_column(String(255))
    sans: Mapped[list[str]] = mapped_column(JSON)
    key_spec: Mapped[str] = mapped_column(String(16))
    not_before: Mapped[dt.datetime]
    not_after: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    sha1_hex: Mapped[str] = mapped_column(String(40), unique=True)
    sha256_hex: Mapped[str] = mapped_column(String(64), unique=True)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default="valid")  # valid, revoked
    revoked_at: Mapped[dt.datetime | None]
    revocation_reason: Mapped[int | None] = mapped_column(Integer)
    #: The generation's ``crl_revision`` that this certificate's revocation counted as
    #: (None while valid, and for revocations made before migration 0017).
    revoked_revision: Mapped[int | None] = mapped_column(Integer)
    requested_by: Mapped[str] = mapped_column(String(64))
    # Indexed (ix_certificates_renews_id): a renewal looks up its predecessor's
    # successor, and housekeeping finds renewed certificates, without scanning every
    # certificate.
    renews_id: Mapped[int | None] = mapped_column(ForeignKey("certificates.id"))
    created_at: Mapped[dt.datetime]
    # The generation of the CA that signed it (CAGeneration.number).
    ca_generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class AuditEntry(Base):
    """Who did what to which object, when and from where."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_object", "object_type", "object_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    actor_id: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(128))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


class OutboxEvent(Base):
    """An event for other consumers, written in the same transaction as the change it reports.

    Its delivery state lives in :class:`EventDeliveryRecord`, one row per consumer, so that one
    consumer never takes an event from another.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class EventConsumer(Base):
    """A consumer of outbox events (a hub node, a hub link) and the event types it takes."""

    __tablename__ = "event_consumers"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    event_types: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime]


class EventDeliveryRecord(Base):
    """One event for one consumer: its own status, attempts, lease and last error."""

    __tablename__ = "event_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "consumer", name="uq_event_deliveries_event_id_consumer"),
        Index("ix_event_deliveries_due", "consumer", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("outbox.id", ondelete="CASCADE"), index=True)
    consumer: Mapped[str] = mapped_column(ForeignKey("event_consumers.name", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending, done
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime]
    claimed_until: Mapped[dt.datetime | None]
    delivered_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class UsedTokenId(Base):
    """A certificate-token ``jti`` already accepted, kept until the token expires."""

    __tablename__ = "used_token_ids"

    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
