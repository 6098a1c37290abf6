"""The CA side's repositories on SQL: issued certificates and used certificate-token ids."""

from __future__ import annotations

import datetime as dt
from typing import cast

from sqlalchemy import (
    ColumnElement,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from fleetpki.pki.crl import StoredRevocation
from fleetpki.services.ports.ca import CertificateSearch
from fleetpki.store.models import (
    CAGeneration,
    CertificateRecord,
    DomainMember,
    UsedTokenId,
)
from fleetpki.store.rows import insert_row

__all__ = ["SqlCertificateRepository", "SqlUsedTokenRepository"]

#: Used token ids are kept this long past their token's expiry (clock skew).
_JTI_GRACE = dt.timedelta(hours=2)

# A hub connect's revocation check (CertificateRepository.status_by_issuer), built once.
_STATUS_BY_ISSUER = (
    select(CAGeneration.ca_id, CertificateRecord.status)
    .outerjoin(
        CertificateRecord,
        (CertificateRecord.ca_id == CAGeneration.ca_id)
        & (CertificateRecord.serial_hex == bindparam("serial")),
    )
    .where(CAGeneration.sha1_hex == bindparam("sha1"))
    .limit(1)
)

# An OCSP answer's look-up (CertificateRepository.revocation_by_ca_serial), built once:
# building the ORM query and its objects cost more than the indexed read itself.
_REVOCATION_BY_CA_SERIAL = select(
    CertificateRecord.status,
    CertificateRecord.revoked_at,
    CertificateRecord.revocation_reason,
    CertificateRecord.created_at,
).where(
    CertificateRecord.ca_id == bindparam("ca_id"),
    CertificateRecord.serial_hex == bindparam("serial"),
)


def _visible_to(principal_id: str) -> ColumnElement[bool]:
    """Certificates the principal requested or whose domain it belongs to."""
    member_domains = select(DomainMember.domain_id).where(DomainMember.principal_id == principal_id)
    return or_(
        CertificateRecord.requested_by == principal_id,
        CertificateRecord.domain_id.in_(member_domains),
    )


class SqlCertificateRepository:
    """:class:`fleetpki.services.ports.ca.CertificateRepository` on one session."""

    def __init__(self, session: Session, dialect: str = "sqlite") -> None:
        self._session = session
        self._dialect = dialect

    def get(self, certificate_id: int) -> CertificateRecord | None:
        """See :meth:`CertificateRepository.get`."""
        return self._session.get(CertificateRecord, certificate_id)

    def _one(self, *conditions: ColumnElement[bool]) -> CertificateRecord | None:
        return self._session.scalar(select(CertificateRecord).where(*conditions))

    def find_by_serial(self, serial_hex: str) -> CertificateRecord | None:
        """See :meth:`CertificateRepository.find_by_serial`."""
        # Serials are random per CA; the first match is the one (a clash across CAs
        # would take 2^-64 luck and is refused by nothing else either). The first is
        # chosen here, not by ORDER BY id LIMIT 1: PostgreSQL, short of statistics,
        # then walks the primary key from the oldest row instead of the serial index,
        # ~1 s per lookup at a million certificates.
        matches = self._session.scalars(
            select(CertificateRecord).where(CertificateRecord.serial_hex == serial_hex)
        )
        return min(matches, key=lambda record: record.id, default=None)

    def revocation_by_ca_serial(
        self, ca_id: str, serial_hex: str
    ) -> tuple[str, dt.datetime | None, int | None, dt.datetime] | None:
        """See :meth:`CertificateRepository.revocation_by_ca_serial`."""
        parameters = {"ca_id": ca_id, "serial": serial_hex}
        row = self._session.connection().execute(_REVOCATION_BY_CA_SERIAL, parameters).first()
        return None if row is None else (row[0], row[1], row[2], row[3])

    def status_by_issuer(
        self, issuer_sha1_hex: str, serial_hex: str
    ) -> tuple[str, str | None] | None:
        """See :meth:`CertificateRepository.status_by_issuer`.

        One statement (a hub connect's), columns only: any generation of the CA, not
        only the active one, since a device may hold a retiring generation's certificate.
        """
        parameters = {"sha1": issuer_sha1_hex, "serial": serial_hex}
        row = self._session.connection().execute(_STATUS_BY_ISSUER, parameters).first()
        return None if row is None else (row[0], row[1])

    def find_by_sha1(self, sha1_hex: str) -> CertificateRecord | None:
        """See :meth:`CertificateRepository.find_by_sha1`."""
        return self._one(CertificateRecord.sha1_hex == sha1_hex)

    def find_by_sha256(self, sha256_hex: str) -> CertificateRecord | None:
        """See :meth:`CertificateRepository.find_by_sha256`."""
        return self._one(CertificateRecord.sha256_hex == sha256_hex)

    def search(self, search: CertificateSearch) -> list[CertificateRecord]:
        """See :meth:`CertificateRepository.search`."""
        now = search.now
        stmt = select(CertificateRecord).order_by(CertificateRecord.id.desc())
        if search.status == "revoked":
            stmt = stmt.where(CertificateRecord.status == "revoked")
        elif search.status == "expired":
            stmt = stmt.where(
                CertificateRecord.status == "valid", CertificateRecord.not_after <= now
            )
        elif search.status == "valid":
            stmt = stmt.where(
                CertificateRecord.status == "valid", CertificateRecord.not_after > now
            )
        if search.expiring_before is not None:
            stmt = stmt.where(
                CertificateRecord.status == "valid",
                CertificateRecord.not_after > now,
                CertificateRecord.not_after <= search.expiring_before,
            )
        if search.ca_id is not None:
            stmt = stmt.where(CertificateRecord.ca_id == search.ca_id)
        if search.subject_cn is not None:
            stmt = stmt.where(CertificateRecord.subject_cn == search.subject_cn)
        if search.subject_contains:
            stmt = stmt.where(
                CertificateRecord.subject_cn.icontains(search.subject_contains, autoescape=True)
            )
        if search.visible_to is not None:
            stmt = stmt.where(_visible_to(search.visible_to))
        stmt = stmt.offset(max(search.offset, 0)).limit(min(max(search.limit, 1), 1000))
        return list(self._session.scalars(stmt))

    def revoked_of(self, ca_id: str) -> list[CertificateRecord]:
        """See :meth:`CertificateRepository.revoked_of`."""
        return list(
            self._session.scalars(
                select(CertificateRecord).where(
                    CertificateRecord.ca_id == ca_id, CertificateRecord.status == "revoked"
                )
            )
        )

    def revocations_of(
        self, ca_id: str, generation: int, *, since_revision: int | None = None
    ) -> list[StoredRevocation]:
        """See :meth:`CertificateRepository.revocations_of`."""
        # Through the driver: a million rows through SQLAlchemy's result and type
        # processing cost several seconds. The time as the text the CRL encoder takes
        # (SQLite holds the naive UTC DateTime as text, "YYYY-MM-DD HH:MM:SS.ffffff").
        postgresql = self._dialect == "postgresql"
        if postgresql:
            when = "to_char(coalesce(revoked_at, created_at), 'YYYY-MM-DD HH24:MI:SS')"
            serial_order = 'serial_hex COLLATE "C"'
            mark = "%s"
        else:
            when = "substr(coalesce(revoked_at, created_at), 1, 19)"
            serial_order = "serial_hex"
            mark = "?"
        # Only constant fragments are formatted in; the values are bound.
        sql = (
            f"SELECT serial_hex, {when}, coalesce(revocation_reason, 0) FROM certificates "  # noqa: S608
            f"WHERE ca_id = {mark} AND ca_generation = {mark} AND "
        )
        params: tuple[object, ...] = (ca_id, generation)
        if since_revision is None:
            # ix_certificates_ca_id_status_generation
            sql += "status = 'revoked'"
        else:
            # ix_certificates_revoked_revision (partial: revoked rows only)
            sql += f"revoked_revision > {mark}"
            params += (since_revision,)
        # In serial order, sorted by the database: canonical hex (no leading zeros)
        # sorts as its number does when shorter strings come first.
        sql += f" ORDER BY length(serial_hex), {serial_order}"
        cursor = self._session.connection().connection.cursor()
        try:
            cursor.execute(sql, params)
            # The driver's rows are tuples of these three columns' values.
            return cast("list[StoredRevocation]", cursor.fetchall())
        finally:
            cursor.close()

    def outstanding_of(self, ca_id: str, generation: int, now: dt.datetime) -> int:
        """See :meth:`CertificateRepository.outstanding_of`."""
        renewal = aliased(CertificateRecord)
        renewed = select(renewal.id).where(renewal.renews_id == CertificateRecord.id).exists()
        query = select(func.count(CertificateRecord.id)).where(
            CertificateRecord.ca_id == ca_id,
            CertificateRecord.ca_generation == generation,
            CertificateRecord.status == "valid",
            CertificateRecord.not_after > now,
            ~renewed,
        )
        return int(self._session.scalar(query) or 0)

    def activity_since(
        self, since: dt.datetime, *, visible_to: str | None
    ) -> list[tuple[dt.datetime, dt.datetime | None]]:
        """See :meth:`CertificateRepository.activity_since`."""
        stmt = select(CertificateRecord.created_at, CertificateRecord.revoked_at).where(
            or_(CertificateRecord.created_at >= since, CertificateRecord.revoked_at >= since)
        )
        if visible_to is not None:
            stmt = stmt.where(_visible_to(visible_to))
        return [(row[0], row[1]) for row in self._session.execute(stmt)]

    def nearest_expiry(self, now: dt.datetime) -> dt.datetime | None:
        """See :meth:`CertificateRepository.nearest_expiry`."""
        return self._session.scalar(
            select(func.min(CertificateRecord.not_after)).where(
                CertificateRecord.status == "valid", CertificateRecord.not_after > now
            )
        )

    def lock(self, certificate_id: int) -> CertificateRecord:
        """See :meth:`CertificateRepository.lock`.

        As :meth:`SqlCARepository.lock_for_crl`: SQLite ignores ``FOR UPDATE``, so a
        no-op UPDATE takes its one write lock first; ``populate_existing`` re-reads the
        row the session already holds.
        """
        if self._dialect == "sqlite":
            self._session.execute(
                update(CertificateRecord)
                .where(CertificateRecord.id == certificate_id)
                .values(status=CertificateRecord.status)
            )
        locked = self._session.scalar(
            select(CertificateRecord)
            .where(CertificateRecord.id == certificate_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if locked is None:
            raise LookupError(f"certificate {certificate_id} vanished while locking it")
        return locked

    def successor_of(self, certificate_id: int) -> CertificateRecord | None:
        """See :meth:`CertificateRepository.successor_of`."""
        return self._session.scalars(
            select(CertificateRecord)
            .where(CertificateRecord.renews_id == certificate_id)
            .order_by(CertificateRecord.id)
            .limit(1)
        ).first()

    def superseded(
        self, *, renewed_before: dt.datetime, now: dt.datetime, limit: int
    ) -> list[CertificateRecord]:
        """See :meth:`CertificateRepository.superseded`.

        Driven from the successors (``id IN (their renews_id)``), each predecessor found
        by primary key, so the query needs no index on ``renews_id``.
        """
        successor = aliased(CertificateRecord)
        renewed = select(successor.renews_id).where(
            successor.renews_id.is_not(None), successor.created_at <= renewed_before
        )
        return list(
            self._session.scalars(
                select(CertificateRecord)
                .where(
                    CertificateRecord.id.in_(renewed),
                    CertificateRecord.status == "valid",
                    CertificateRecord.not_after > now,
                )
                .order_by(CertificateRecord.id)
                .limit(limit)
            )
        )

    def add(self, certificate: CertificateRecord) -> None:
        """See :meth:`CertificateRepository.add`."""
        insert_row(self._session, certificate)


class SqlUsedTokenRepository:
    """:class:`fleetpki.services.ports.ca.UsedTokenRepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def consume(self, jti: str, expires_at: dt.datetime, *, now: dt.datetime) -> bool:
        """See :meth:`UsedTokenRepository.consume`.

        The insert runs in a savepoint so that a duplicate only fails this check, not
        the unit of work.
        """
        self._session.execute(delete(UsedTokenId).where(UsedTokenId.expires_at < now - _JTI_GRACE))
        try:
            with self._session.begin_nested():
                self._session.add(UsedTokenId(jti=jti, expires_at=expires_at))
        except IntegrityError:
            return False
        return True
