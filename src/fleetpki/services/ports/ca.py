"""The CA side's repositories: what the CA services ask of the database, as Protocols.

One Protocol per aggregate (CAs, templates, certificates, domains with their members,
principals, API tokens, used certificate-token ids, the audit log), modelled on
smallstep's ``db`` interfaces. Methods are named for what the services ask; they take
and return the entities of :mod:`fleetpki.store.models`, which the services read and
change inside the unit of work that handed them the repository.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from fleetpki.pki.crl import StoredRevocation
from fleetpki.store.models import (
    ApiToken,
    AuditEntry,
    CAGeneration,
    CARecord,
    CertificateRecord,
    DomainRecord,
    PortalSession,
    Principal,
    TemplateRecord,
)

__all__ = [
    "AuditQuery",
    "AuditRepository",
    "CARepository",
    "CertificateRepository",
    "CertificateSearch",
    "DomainRepository",
    "PortalSessionRepository",
    "PrincipalRepository",
    "TemplateRepository",
    "TokenHolder",
    "TokenRepository",
    "UsedTokenRepository",
]


class CARepository(Protocol):
    """Certificate authorities and their CRL cache."""

    def get(self, ca_id: str) -> CARecord | None:
        """The CA with this (canonical GUID) id."""
        ...

    def all(self) -> list[CARecord]:
        """Every CA, roots first, then by creation time."""
        ...

    def children_of(self, ca_id: str) -> list[CARecord]:
        """The CAs that ``ca_id`` certified."""
        ...

    def id_by_sha1(self, sha1_hex: str) -> str | None:
        """The id of the CA whose certificate has this SHA-1 thumbprint (upper-case hex)."""
        ...

    def signing_stamp(self) -> Hashable:
        """What every CA's signing context depends on, in one cheap read: each CA's
        status, tier, name, parent, active generation and key, and each generation's
        state (:mod:`fleetpki.services.signing_contexts`). Equal stamps, equal contexts.
        """
        ...

    def add(self, ca: CARecord) -> None:
        """Store a new CA (written at once, so that children may refer to it)."""
        ...

    def lock_generation_for_crl(self, ca_id: str, number: int) -> CAGeneration:
        """Generation ``number`` of the CA re-read under a lock that serialises its CRL
        rebuilds (as :meth:`lock_for_crl`).
        """
        ...

    def mark_crl_stale(self, ca_id: str, number: int) -> int:
        """Mark generation ``number``'s CRL stale and count one more revocation against it
        (``crl_revision``), in one statement that concurrent revocations cannot lose;
        return the new revision (the revoked certificate's ``revoked_revision``).
        """
        ...

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
        """Cache a CRL built from ``built_revision`` if no other CRL took ``crl_number``.

        Compare and set: stored only while the generation's ``crl_number`` is still
        ``crl_number - 1``; the CRL stays stale when revocations came after
        ``built_revision``. Returns whether it was stored.
        """
        ...

    def crl_der(self, ca_id: str, number: int) -> tuple[int, bytes] | None:
        """The number and DER of the last CRL stored for generation ``number``, if any."""
        ...

    def lock_for_crl(self, ca_id: str) -> CARecord:
        """The CA re-read under a lock that serialises CRL rebuilds of this CA.

        The lock lasts until the unit of work ends; the row returned reflects what was
        committed before the lock was granted.
        """
        ...


class TemplateRepository(Protocol):
    """Issuance templates of CAs."""

    def get(self, template_id: str) -> TemplateRecord | None:
        """The template with this (canonical GUID) id."""
        ...

    def all(self, ca_id: str | None = None) -> list[TemplateRecord]:
        """Templates by creation time, optionally of one CA."""
        ...

    def add(self, template: TemplateRecord) -> None:
        """Store a new template."""
        ...


@dataclass(frozen=True, slots=True)
class CertificateSearch:
    """What a certificate search filters on; ``None`` filters nothing.

    Attributes:
        status: ``valid`` (unrevoked, unexpired at ``now``), ``revoked`` or ``expired``.
        expiring_before: unrevoked certificates valid at ``now`` that end by then.
        visible_to: only certificates this principal requested or whose domain it
            belongs to.
    """

    now: dt.datetime
    subject_cn: str | None = None
    status: str | None = None
    expiring_before: dt.datetime | None = None
    ca_id: str | None = None
    visible_to: str | None = None
    offset: int = 0
    limit: int = 100
    #: Certificates whose subject CN contains this text (case-insensitive).
    subject_contains: str | None = None


class CertificateRepository(Protocol):
    """Issued leaf certificates."""

    def get(self, certificate_id: int) -> CertificateRecord | None:
        """The certificate with this row id."""
        ...

    def find_by_serial(self, serial_hex: str) -> CertificateRecord | None:
        """The certificate with this canonical serial (upper-case hex, no leading zeros)."""
        ...

    def revocation_by_ca_serial(
        self, ca_id: str, serial_hex: str
    ) -> tuple[str, dt.datetime | None, int | None, dt.datetime] | None:
        """What an OCSP answer needs of the certificate of ``ca_id`` with this serial, in
        one statement, columns only: its status, revocation time, revocation reason code
        and when it was recorded; ``None`` when it is not on record."""
        ...

    def status_by_issuer(
        self, issuer_sha1_hex: str, serial_hex: str
    ) -> tuple[str, str | None] | None:
        """One look-up for a leaf's revocation check: the fleetpki CA one of whose
        generations has the certificate ``issuer_sha1_hex``, with the status of that
        CA's certificate of this serial (``None`` when not on record); ``None`` when no
        fleetpki CA has that certificate."""
        ...

    def find_by_sha1(self, sha1_hex: str) -> CertificateRecord | None:
        """The certificate with this upper-case SHA-1 thumbprint."""
        ...

    def find_by_sha256(self, sha256_hex: str) -> CertificateRecord | None:
        """The certificate with this upper-case SHA-256 thumbprint."""
        ...

    def search(self, search: CertificateSearch) -> list[CertificateRecord]:
        """Certificates matching ``search``, newest first."""
        ...

    def revoked_of(self, ca_id: str) -> list[CertificateRecord]:
        """The revoked certificates of a CA (what its CRL lists)."""
        ...

    def revocations_of(
        self, ca_id: str, generation: int, *, since_revision: int | None = None
    ) -> list[StoredRevocation]:
        """The revoked certificates of one CA generation as plain rows, in serial order:
        what its CRL lists (a CRL may list millions), or with ``since_revision`` only
        those whose revocation counted a later ``crl_revision`` (what the CRL built
        from that revision lacks).
        """
        ...

    def outstanding_of(self, ca_id: str, generation: int, now: dt.datetime) -> int:
        """How many certificates of this CA generation are still usable: valid, not
        expired, and not renewed away (no certificate renews them).
        """
        ...

    def nearest_expiry(self, now: dt.datetime) -> dt.datetime | None:
        """The earliest ``not_after`` among unrevoked certificates still valid at ``now``."""
        ...

    def activity_since(
        self, since: dt.datetime, *, visible_to: str | None
    ) -> Sequence[tuple[dt.datetime, dt.datetime | None]]:
        """``(created_at, revoked_at)`` of certificates issued or revoked since ``since``
        (only those ``visible_to`` may see, as in :class:`CertificateSearch`).
        """
        ...

    def lock(self, certificate_id: int) -> CertificateRecord:
        """The certificate, re-read and locked against concurrent renewals until the unit
        ends (``SELECT ... FOR UPDATE``; SQLite's one write lock).
        """
        ...

    def successor_of(self, certificate_id: int) -> CertificateRecord | None:
        """The certificate that renews this one (the first, should several exist)."""
        ...

    def superseded(
        self, *, renewed_before: dt.datetime, now: dt.datetime, limit: int
    ) -> list[CertificateRecord]:
        """Valid, unexpired certificates whose successor was issued before ``renewed_before``."""
        ...

    def add(self, certificate: CertificateRecord) -> None:
        """Store a new certificate (written at once: serial and thumbprints are unique)."""
        ...


class DomainRepository(Protocol):
    """Domains (device ids or DNS names) under a CA, with their members."""

    def get(self, domain_id: str) -> DomainRecord | None:
        """The domain with this id, members loaded."""
        ...

    def find(self, ca_id: str, name: str) -> DomainRecord | None:
        """The domain registered under ``ca_id`` with exactly this name."""
        ...

    def id_for(self, ca_id: str, name: str) -> str | None:
        """The id of the domain ``name`` under ``ca_id`` (no object loaded)."""
        ...

    def search(self, *, name: str | None = None, member: str | None = None) -> list[DomainRecord]:
        """Domains by name, optionally only one name, or only those ``member`` belongs to."""
        ...

    def request_access(
        self, ca_id: str, name: str, requester: str | None
    ) -> tuple[str | None, bool]:
        """The id of the domain ``name`` of ``ca_id`` (``None`` if there is none) and
        whether ``requester`` is one of its requesters (``None``: whether it exists).

        One indexed read: an issuance asks it once for each name it certifies.
        """
        ...

    def has_member(self, domain_id: str, principal_id: str, role: str | None = None) -> bool:
        """Whether ``principal_id`` holds ``role`` (any role for ``None``) on the domain."""
        ...

    def add(self, domain: DomainRecord) -> None:
        """Store a new domain with its members (written at once)."""
        ...


class PrincipalRepository(Protocol):
    """Users and service identities."""

    def get(self, principal_id: str) -> Principal | None:
        """The principal with this (canonical GUID) id."""
        ...

    def all(self) -> list[Principal]:
        """Every principal, by friendly name."""
        ...

    def names(self, principal_ids: Collection[str]) -> Mapping[str, str]:
        """Friendly names by id of those ids that are principals."""
        ...

    def add(self, principal: Principal) -> None:
        """Store a new principal (written at once)."""
        ...


@dataclass(frozen=True, slots=True)
class TokenHolder:
    """An API token as its check reads it, with its principal (one row, no objects).

    Attributes:
        principal_exists: ``False`` when the token's principal is gone.
    """

    token_id: str
    token_hash: str
    principal_id: str
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    principal_exists: bool
    is_admin: bool
    friendly_name: str
    principal_type: str
    principal_created_at: dt.datetime | None


class TokenRepository(Protocol):
    """API tokens, found by their hash."""

    def find_by_hash(self, token_hash: str) -> ApiToken | None:
        """The token whose SHA-256 hash is ``token_hash``."""
        ...

    def holder(self, token_hash: str) -> TokenHolder | None:
        """The token whose SHA-256 hash is ``token_hash`` with its principal, read in one
        statement without loading objects (the check of every API request)."""
        ...

    def mark_used(self, token_id: str, at: dt.datetime) -> None:
        """Record the token's last use."""
        ...

    def get(self, token_id: str) -> ApiToken | None:
        """The token with this id."""
        ...

    def of_principal(self, principal_id: str | None) -> list[ApiToken]:
        """The tokens of a principal (``None``: every principal's), oldest first."""
        ...

    def add(self, token: ApiToken) -> None:
        """Store a new token."""
        ...


class UsedTokenRepository(Protocol):
    """Certificate-token ids already accepted (replay protection)."""

    def consume(self, jti: str, expires_at: dt.datetime, *, now: dt.datetime) -> bool:
        """Record ``jti`` as used; ``False`` when it already was (the unit stays usable).

        Ids of tokens that expired well before ``now`` are forgotten on the way.
        """
        ...


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """What an audit search filters on; ``None`` filters nothing.

    Attributes:
        action: entries whose action is this one or starts with it and a dot
            (``certificate`` finds ``certificate.issue`` and ``certificate.revoke``).
        since / until: the time window, both ends included.
    """

    action: str | None = None
    actor_id: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    offset: int = 0
    limit: int = 100


class AuditRepository(Protocol):
    """The audit log."""

    def add(self, entry: AuditEntry) -> None:
        """Append an entry."""
        ...

    def latest(
        self,
        *,
        object_type: str | None = None,
        object_id: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """The newest entries first, optionally of one object."""
        ...

    def certificate_entries(self) -> Sequence[tuple[AuditEntry, CertificateRecord]]:
        """Every entry about a certificate with that certificate, newest first."""
        ...

    def search(self, query: AuditQuery) -> list[AuditEntry]:
        """Entries matching ``query``, newest first."""
        ...


class PortalSessionRepository(Protocol):
    """Signed-in portal sessions, found by the hash of their secret."""

    def get(self, id_hash: str) -> PortalSession | None:
        """The session whose secret hashes to ``id_hash``."""
        ...

    def add(self, session: PortalSession) -> None:
        """Store a new session."""
        ...

    def delete(self, session: PortalSession) -> None:
        """End a session."""
        ...

    def delete_started_with_token(self, principal_id: str) -> int:
        """End the principal's sessions signed in with an API token; how many."""
        ...

    def delete_expired(self, now: dt.datetime) -> int:
        """Remove the sessions that expired by ``now``; how many went."""
        ...
