"""Domains: device ids (or DNS names) registered under a CA, with owners and requesters."""

from __future__ import annotations

import builtins
import datetime as dt
import uuid
from collections.abc import Sequence

from fleetpki.errors import ConflictError, NotFoundError, PermissionDenied, ValidationError
from fleetpki.pki.names import validate_domain_name
from fleetpki.services.audit import write_audit
from fleetpki.services.authority import ca_record, template_for, template_from_record
from fleetpki.services.ca_views import OWNER, REQUESTER, DomainView, domain_view
from fleetpki.services.context import Actor, Clock
from fleetpki.services.outbox import DOMAIN_REGISTERED
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.services.principals import principal_record
from fleetpki.store.models import DomainMember, DomainRecord

__all__ = [
    "OWNER",
    "REQUESTER",
    "DomainAccess",
    "DomainService",
    "domain_for_request",
    "register_domain_in",
    "visible_domain_record",
]


# -- code shared by use cases: runs inside the caller's unit of work ---------------------


def _check_members(
    tx: UnitOfWork, owners: Sequence[str], requesters: Sequence[str]
) -> tuple[list[str], list[str]]:
    if not owners:
        raise ValidationError("domain.no_owner", "a domain needs at least one owner")
    owner_ids = list(dict.fromkeys(principal_record(tx, o).id for o in owners))
    requester_ids = list(dict.fromkeys(principal_record(tx, r).id for r in requesters))
    return owner_ids, requester_ids


def _members(owner_ids: Sequence[str], requester_ids: Sequence[str]) -> list[DomainMember]:
    return [DomainMember(principal_id=p, role=OWNER) for p in owner_ids] + [
        DomainMember(principal_id=p, role=REQUESTER) for p in requester_ids
    ]


def register_domain_in(
    tx: UnitOfWork,
    actor: Actor,
    *,
    ca_id: str,
    template_id: str | None,
    name: str,
    owners: Sequence[str],
    requesters: Sequence[str],
    now: dt.datetime,
) -> DomainRecord:
    """Register ``name`` under a CA with its owners and requesters (caller's unit of work).

    Any known principal may register a free name; non-admins must be among its owners,
    so nobody registers a name for others to hold.

    Raises:
        ValidationError: ``domain.invalid_name``, ``domain.no_owner``,
        ``template.domain_restricted``.
        NotFoundError: ``ca.not_found``, ``template.not_found``, ``principal.not_found``.
        ConflictError: ``domain.exists``.
        PermissionDenied: ``domain.must_own``.
    """
    validate_domain_name(name)
    ca = ca_record(tx, ca_id)
    template = template_for(tx, ca, template_id)
    if not template_from_record(template).allows_name(name):
        raise ValidationError(
            "template.domain_restricted",
            f"{name!r} is outside the domain restrictions of template {template.name!r}",
        )
    owner_ids, requester_ids = _check_members(tx, owners, requesters)
    if not actor.is_admin and actor.principal_id not in owner_ids:
        raise PermissionDenied("domain.must_own", "you must be an owner of a domain you register")
    if tx.domains.find(ca.id, name) is not None:
        raise ConflictError("domain.exists", f"domain {name!r} is already registered with this CA")
    domain = DomainRecord(
        id=str(uuid.uuid4()),
        ca_id=ca.id,
        template_id=template.id,
        name=name,
        created_at=now,
        created_by=actor.principal_id,
    )
    domain.members = _members(owner_ids, requester_ids)
    tx.domains.add(domain)
    write_audit(
        tx,
        actor,
        "domain.register",
        "domain",
        domain.id,
        at=now,
        details={"name": name, "ca_id": ca.id, "owners": owner_ids, "requesters": requester_ids},
    )
    tx.events.append(DOMAIN_REGISTERED, domain.id, {"name": name, "ca_id": ca.id}, at=now)
    return domain


def _set_members(
    tx: UnitOfWork,
    actor: Actor,
    domain_id: str,
    *,
    owners: Sequence[str],
    requesters: Sequence[str],
    now: dt.datetime,
) -> DomainRecord:
    domain = _domain(tx, domain_id)
    if not actor.is_admin and actor.principal_id not in domain.principals_with(OWNER):
        raise PermissionDenied("domain.not_owner", "only the domain's owners may change it")
    owner_ids, requester_ids = _check_members(tx, owners, requesters)
    domain.members = _members(owner_ids, requester_ids)
    write_audit(
        tx,
        actor,
        "domain.update",
        "domain",
        domain.id,
        at=now,
        details={"owners": owner_ids, "requesters": requester_ids},
    )
    return domain


def _domain(tx: UnitOfWork, domain_id: str) -> DomainRecord:
    domain = tx.domains.get(domain_id)
    if domain is None:
        raise NotFoundError("domain.not_found", f"no domain {domain_id}")
    return domain


def visible_domain_record(tx: UnitOfWork, actor: Actor, domain_id: str) -> DomainRecord:
    """A domain the actor owns or requests for, any for admins (caller's unit of work).

    Raises:
        NotFoundError: ``domain.not_found``, also for domains the actor cannot see.
    """
    domain = tx.domains.get(domain_id)
    if domain is None or not (
        actor.is_admin or actor.principal_id in {m.principal_id for m in domain.members}
    ):
        raise NotFoundError("domain.not_found", f"no domain {domain_id}")
    return domain


def visible_domains(tx: UnitOfWork, actor: Actor, *, name: str | None = None) -> list[DomainRecord]:
    """Domains the actor owns or may request from, every domain for admins (caller's unit)."""
    return tx.domains.search(name=name, member=None if actor.is_admin else actor.principal_id)


def may_request_in(tx: UnitOfWork, actor: Actor, ca_id: str, name: str) -> bool:
    """Whether ``actor`` may request a certificate naming ``name`` from ``ca_id`` (caller's unit).

    The name must be a registered domain of that CA, and the actor one of its
    requesters or an admin.
    """
    return DomainAccess(tx, actor, ca_id).may_request(name)


class DomainAccess:
    """The names one request may certify under one CA, each looked up once (caller's unit).

    The rule of :func:`may_request_in`, remembered per name for the life of one
    issuance, with the id of the domain the certificate is recorded under.
    """

    def __init__(self, tx: UnitOfWork, actor: Actor, ca_id: str) -> None:
        self._tx = tx
        self._requester = None if actor.is_admin else actor.principal_id
        self._ca_id = ca_id
        self._seen: dict[str, tuple[str | None, bool]] = {}

    def _lookup(self, name: str) -> tuple[str | None, bool]:
        found = self._seen.get(name)
        if found is None:
            found = self._tx.domains.request_access(self._ca_id, name, self._requester)
            self._seen[name] = found
        return found

    def may_request(self, name: str) -> bool:
        """Whether the name is a domain of the CA that the actor may request for."""
        return self._lookup(name)[1]

    def domain_id(self, name: str) -> str | None:
        """The id of the domain ``name`` of the CA, if it is one."""
        return self._lookup(name)[0]


def domain_for_request(
    tx: UnitOfWork, actor: Actor, name: str, ca_id: str | None = None
) -> DomainRecord:
    """The one registered domain called ``name`` that the actor can see (caller's unit).

    Raises:
        NotFoundError: ``domain.not_found``.
        ValidationError: ``domain.ambiguous`` when it exists under several CAs and
        no ``ca_id`` chooses one.
    """
    found = [d for d in visible_domains(tx, actor, name=name) if ca_id is None or d.ca_id == ca_id]
    if not found:
        raise NotFoundError("domain.not_found", f"no registered domain {name!r} that you can see")
    if len(found) > 1:
        raise ValidationError(
            "domain.ambiguous", f"{name!r} is registered under several CAs: name the CA"
        )
    return found[0]


# -- the use cases -----------------------------------------------------------------------


class DomainService:
    """Domains and their members.

    Args:
        store: the database.
        clock: the source of "now".
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def register(
        self,
        actor: Actor,
        *,
        ca_id: str,
        template_id: str | None,
        name: str,
        owners: Sequence[str],
        requesters: Sequence[str],
    ) -> DomainView:
        """Register ``name`` under a CA with its owners and requesters (known principals).

        Raises:
            See :func:`register_domain_in`.
        """
        with self._store.transaction() as tx:
            domain = register_domain_in(
                tx,
                actor,
                ca_id=ca_id,
                template_id=template_id,
                name=name,
                owners=owners,
                requesters=requesters,
                now=self._clock(),
            )
            return domain_view(domain)

    def set_members(
        self, actor: Actor, domain_id: str, *, owners: Sequence[str], requesters: Sequence[str]
    ) -> DomainView:
        """Replace a domain's owners and requesters (owners and admins only).

        Raises:
            NotFoundError: ``domain.not_found``, ``principal.not_found``.
            PermissionDenied: ``domain.not_owner``.
            ValidationError: ``domain.no_owner``.
        """
        with self._store.transaction() as tx:
            domain = _set_members(
                tx, actor, domain_id, owners=owners, requesters=requesters, now=self._clock()
            )
            return domain_view(domain)

    def get(self, actor: Actor, domain_id: str) -> DomainView:
        """A domain the actor owns or requests for (any domain for admins).

        Raises:
            NotFoundError: ``domain.not_found``, also for domains the actor cannot see.
        """
        with self._store.reading() as tx:
            return domain_view(visible_domain_record(tx, actor, domain_id))

    def list(self, actor: Actor, *, name: str | None = None) -> builtins.list[DomainView]:
        """Domains the actor owns or may request from (every domain for admins), by name."""
        with self._store.reading() as tx:
            return [domain_view(d) for d in visible_domains(tx, actor, name=name)]

    def for_request(self, actor: Actor, name: str, ca_id: str | None = None) -> DomainView:
        """The one domain called ``name`` the actor can see (see :func:`domain_for_request`)."""
        with self._store.transaction() as tx:
            return domain_view(domain_for_request(tx, actor, name, ca_id))

    def find(self, ca_id: str, name: str) -> DomainView | None:
        """The domain registered under ``ca_id`` with exactly this name, if any."""
        with self._store.reading() as tx:
            domain = tx.domains.find(ca_id, name)
            return domain_view(domain) if domain is not None else None
