"""The CA side's repositories on SQL: certificate authorities and their templates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable

from sqlalchemy import case, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from fleetpki.store.models import CAGeneration, CARecord, CrlRecord, TemplateRecord
from fleetpki.store.prepared import prepared

__all__ = ["SqlCARepository", "SqlTemplateRepository"]

_SIGNING_STAMP = (
    select(
        CARecord.id,
        CARecord.status,
        CARecord.tier,
        CARecord.name,
        CARecord.parent_id,
        CARecord.generation,
        CARecord.key_ref,
        CAGeneration.id,
        CAGeneration.state,
    )
    .join(CAGeneration, CAGeneration.ca_id == CARecord.id)
    .order_by(CAGeneration.id)
)


class SqlCARepository:
    """:class:`fleetpki.services.ports.ca.CARepository` on one session."""

    def __init__(self, session: Session, dialect: str) -> None:
        self._session = session
        self._dialect = dialect
        # The session's identity map holds objects weakly: a CA that a use case let go
        # of would be loaded again (two statements, with its generations) by the next
        # get in the same unit of work, as an issuance's chain does. Held here for the
        # unit's life (the repository lives as long as its unit of work).
        self._held: dict[str, CARecord] = {}

    def get(self, ca_id: str) -> CARecord | None:
        """See :meth:`CARepository.get`."""
        # With its generations in the same statement (the mapping's default, selectin,
        # takes a second one); a CA already in the session is returned without either.
        found = self._session.get(CARecord, ca_id, options=[joinedload(CARecord.generations)])
        if found is not None:
            self._held[ca_id] = found
        return found

    def all(self) -> list[CARecord]:
        """See :meth:`CARepository.all`."""
        query = select(CARecord).order_by(CARecord.tier.desc(), CARecord.created_at)
        return list(self._session.scalars(query))

    def children_of(self, ca_id: str) -> list[CARecord]:
        """See :meth:`CARepository.children_of`."""
        return list(self._session.scalars(select(CARecord).where(CARecord.parent_id == ca_id)))

    def id_by_sha1(self, sha1_hex: str) -> str | None:
        """See :meth:`CARepository.id_by_sha1`."""
        # Any generation's certificate, not only the active one: a device may still hold
        # a certificate from a retiring generation.
        return self._session.scalar(
            select(CAGeneration.ca_id).where(CAGeneration.sha1_hex == sha1_hex).limit(1)
        )

    def signing_stamp(self) -> Hashable:
        """See :meth:`CARepository.signing_stamp`."""
        # On the driver's connection (store.prepared): a few small rows, no objects.
        return tuple(prepared(_SIGNING_STAMP, self._session).all(self._session, {}))

    def add(self, ca: CARecord) -> None:
        """See :meth:`CARepository.add`."""
        self._session.add(ca)
        self._session.flush()

    def lock_for_crl(self, ca_id: str) -> CARecord:
        """See :meth:`CARepository.lock_for_crl`.

        PostgreSQL locks the row with ``SELECT ... FOR UPDATE``. SQLite ignores FOR
        UPDATE; its one write lock is taken by the first write of a transaction, so a
        no-op UPDATE takes it (waiting out the busy timeout) before the row is re-read.
        ``populate_existing`` replaces what the session already holds: without it the
        identity map would keep the number read before the lock, and two rebuilders
        would both issue "number + 1" (RFC 5280 §5.2.3 wants it to increase).
        """
        if self._dialect == "sqlite":
            self._session.execute(
                update(CARecord).where(CARecord.id == ca_id).values(crl_number=CARecord.crl_number)
            )
        locked = self._session.scalar(
            select(CARecord)
            .where(CARecord.id == ca_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if locked is None:
            raise LookupError(f"CA {ca_id} vanished while locking it")
        return locked

    def lock_generation_for_crl(self, ca_id: str, number: int) -> CAGeneration:
        """See :meth:`CARepository.lock_generation_for_crl` (locked as :meth:`lock_for_crl`)."""
        where = (CAGeneration.ca_id == ca_id, CAGeneration.number == number)
        if self._dialect == "sqlite":
            self._session.execute(
                update(CAGeneration).where(*where).values(crl_number=CAGeneration.crl_number)
            )
        locked = self._session.scalar(
            select(CAGeneration)
            .where(*where)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if locked is None:
            raise LookupError(f"generation {number} of CA {ca_id} vanished while locking it")
        return locked

    def mark_crl_stale(self, ca_id: str, number: int) -> int:
        """See :meth:`CARepository.mark_crl_stale`."""
        revision = self._session.scalar(
            update(CAGeneration)
            .where(CAGeneration.ca_id == ca_id, CAGeneration.number == number)
            .values(crl_stale=True, crl_revision=CAGeneration.crl_revision + 1)
            .returning(CAGeneration.crl_revision)
            .execution_options(synchronize_session=False)
        )
        if revision is None:
            raise LookupError(f"CA {ca_id} has no generation {number}")
        return int(revision)

    def store_crl(
        self,
        ca_id: str,
        number: int,
        *,
        crl_number: int,
        der: bytes,
        next_update: dt.datetime,
        built_revision: int,
    ) -> bool:
        """See :meth:`CARepository.store_crl`.

        The DER first, the generation's row last: a revocation updates that row, and on
        PostgreSQL it would wait on this transaction's row lock while ~45 MB (a million
        entries) are written. A savepoint takes the DER back if another builder took the
        number meanwhile (its row seen by the update, or by the insert's unique key).
        """
        generation = (CAGeneration.ca_id == ca_id, CAGeneration.number == number)
        taken = self._session.scalar(select(CAGeneration.crl_number).where(*generation))
        if taken != crl_number - 1:
            return False
        try:
            with self._session.begin_nested():
                # Replaced, not merged: a merge would read the old CRL first.
                self._session.execute(
                    delete(CrlRecord).where(
                        CrlRecord.ca_id == ca_id, CrlRecord.generation == number
                    )
                )
                self._session.execute(
                    insert(CrlRecord).values(
                        ca_id=ca_id, generation=number, crl_number=crl_number, der=der
                    )
                )
                cas = self._session.execute(
                    update(CAGeneration)
                    .where(*generation, CAGeneration.crl_number == crl_number - 1)
                    .values(
                        crl_number=crl_number,
                        crl_next_update=next_update,
                        crl_built_revision=built_revision,
                        crl_stale=case(
                            (CAGeneration.crl_revision == built_revision, False), else_=True
                        ),
                    )
                    .execution_options(synchronize_session=False)
                )
                if not cas.rowcount:  # type: ignore[attr-defined]
                    raise _NumberTaken
        except (_NumberTaken, IntegrityError):
            # IntegrityError: on PostgreSQL a builder that read the same number before
            # the other committed finds the other's CRL row in place of the one it
            # deleted (the delete waited on it, then matched nothing): the number is taken.
            return False
        return True

    def crl_der(self, ca_id: str, number: int) -> tuple[int, bytes] | None:
        """See :meth:`CARepository.crl_der`."""
        row = self._session.execute(
            select(CrlRecord.crl_number, CrlRecord.der).where(
                CrlRecord.ca_id == ca_id, CrlRecord.generation == number
            )
        ).first()
        return None if row is None else (row[0], row[1])


class _NumberTaken(Exception):
    """Another builder stored the CRL number first (rolls the savepoint back)."""


class SqlTemplateRepository:
    """:class:`fleetpki.services.ports.ca.TemplateRepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, template_id: str) -> TemplateRecord | None:
        """See :meth:`TemplateRepository.get`."""
        return self._session.get(TemplateRecord, template_id)

    def all(self, ca_id: str | None = None) -> list[TemplateRecord]:
        """See :meth:`TemplateRepository.all`."""
        query = select(TemplateRecord).order_by(TemplateRecord.created_at, TemplateRecord.id)
        if ca_id is not None:
            query = query.where(TemplateRecord.ca_id == ca_id)
        return list(self._session.scalars(query))

    def add(self, template: TemplateRecord) -> None:
        """See :meth:`TemplateRepository.add`."""
        self._session.add(template)
        self._session.flush()
