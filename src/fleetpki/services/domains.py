"""Domains: device ids (or DNS names) registered under a CA, with owners and requesters."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetpki.errors import ConflictError, NotFoundError, PermissionDenied, ValidationError
from fleetpki.pki.names import validate_domain_name
from fleetpki.services.audit import record_audit
from fleetpki.services.authority import get_ca, get_template, template_from_record
from fleetpki.services.context import Actor
from fleetpki.services.principals import get_principal
from fleetpki.store.models import DomainMember, DomainRecord

__all__ = [
    "OWNER",
    "REQUESTER",
    "domain_id_for",
    "find_domain",
    "get_domain",
    "list_domains",
    "may_request",
    "register_domain",
    "set_domain_members",
]

OWNER = "owner"
REQUESTER = "requester"


def _check_members(
    session: Session, owners: Sequence[str], requesters: Sequence[str]
) -> tuple[list[str], list[str]]:
    if not owners:
        raise ValidationError("domain.no_owner", "a domain needs at least one owner")
    owner_ids = list(dict.fromkeys(get_principal(session, o).id for o in owners))
    requester_ids = list(dict.fromkeys(get_principal(session, r).id for r in requesters))
    return owner_ids, requester_ids


def register_domain(
    session: Session,
    actor: Actor,
    *,
    ca_id: str,
    template_id: str | None,
    name: str,
    owners: Sequence[str],
    requesters: Sequence[str],
    now: dt.datetime,
) -> DomainRecord:
    """Register ``name`` under a CA with its owners and requesters.

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
    ca = get_ca(session, ca_id)
    if template_id is None:
        templates = ca.templates
        if not templates:
            raise NotFoundError("template.not_found", f"CA {ca.name!r} has no template")
        template = templates[0]
    else:
        template = get_template(session, template_id, ca.id)
    if not template_from_record(template).allows_name(name):
        raise ValidationError(
            "template.domain_restricted",
            f"{name!r} is outside the domain restrictions of template {template.name!r}",
        )
    owner_ids, requester_ids = _check_members(session, owners, requesters)
    if not actor.is_admin and actor.principal_id not in owner_ids:
        raise PermissionDenied("domain.must_own", "you must be an owner of a domain you register")
    existing = session.scalar(
        select(DomainRecord).where(DomainRecord.ca_id == ca.id, DomainRecord.name == name)
    )
    if existing is not None:
        raise ConflictError("domain.exists", f"domain {name!r} is already registered with this CA")
    domain = DomainRecord(
        id=str(uuid.uuid4()),
        ca_id=ca.id,
        template_id=template.id,
        name=name,
        created_at=now,
        created_by=actor.principal_id,
    )
    domain.members = [DomainMember(principal_id=p, role=OWNER) for p in owner_ids] + [
        DomainMember(principal_id=p, role=REQUESTER) for p in requester_ids
    ]
    session.add(domain)
    session.flush()
    record_audit(
        session,
        actor,
        "domain.register",
        "domain",
        domain.id,
        at=now,
        details={"name": name, "ca_id": ca.id, "owners": owner_ids, "requesters": requester_ids},
    )
    return domain


def set_domain_members(
    session: Session,
    actor: Actor,
    domain_id: str,
    *,
    owners: Sequence[str],
    requesters: Sequence[str],
    now: dt.datetime,
) -> DomainRecord:
    """Replace a domain's owners and requesters (owners and admins only).

    Raises:
        PermissionDenied: ``domain.not_owner``.
    """
    domain = get_domain(session, domain_id)
    if not actor.is_admin and actor.principal_id not in domain.principals_with(OWNER):
        raise PermissionDenied("domain.not_owner", "only the domain's owners may change it")
    owner_ids, requester_ids = _check_members(session, owners, requesters)
    domain.members = [DomainMember(principal_id=p, role=OWNER) for p in owner_ids] + [
        DomainMember(principal_id=p, role=REQUESTER) for p in requester_ids
    ]
    record_audit(
        session,
        actor,
        "domain.update",
        "domain",
        domain.id,
        at=now,
        details={"owners": owner_ids, "requesters": requester_ids},
    )
    return domain


def get_domain(session: Session, domain_id: str) -> DomainRecord:
    """Look up a domain by id.

    Raises:
        NotFoundError: ``domain.not_found``.
    """
    domain = session.get(DomainRecord, domain_id)
    if domain is None:
        raise NotFoundError("domain.not_found", f"no domain {domain_id}")
    return domain


def find_domain(session: Session, ca_id: str, name: str) -> DomainRecord | None:
    """The domain registered under ``ca_id`` with exactly this name, if any."""
    return session.scalar(
        select(DomainRecord).where(DomainRecord.ca_id == ca_id, DomainRecord.name == name)
    )


def list_domains(session: Session, actor: Actor, *, name: str | None = None) -> list[DomainRecord]:
    """Domains the actor owns or may request from (every domain for admins)."""
    query = select(DomainRecord).order_by(DomainRecord.name)
    if name is not None:
        query = query.where(DomainRecord.name == name)
    if not actor.is_admin:
        query = query.where(
            DomainRecord.id.in_(
                select(DomainMember.domain_id).where(
                    DomainMember.principal_id == actor.principal_id
                )
            )
        )
    return list(session.scalars(query))


def may_request(session: Session, actor: Actor, ca_id: str, name: str) -> bool:
    """Whether ``actor`` may request a certificate naming ``name`` from ``ca_id``.

    The name must be a registered domain of that CA, and the actor one of its
    requesters or an admin.  One indexed query, no objects loaded: this runs for
    every name of every issuance.
    """
    query = select(DomainRecord.id).where(DomainRecord.ca_id == ca_id, DomainRecord.name == name)
    if not actor.is_admin:
        query = query.join(DomainMember, DomainMember.domain_id == DomainRecord.id).where(
            DomainMember.principal_id == actor.principal_id, DomainMember.role == REQUESTER
        )
    return session.scalar(query.limit(1)) is not None


def domain_id_for(session: Session, ca_id: str, name: str) -> str | None:
    """The id of the domain ``name`` under ``ca_id``, if registered."""
    return session.scalar(
        select(DomainRecord.id).where(DomainRecord.ca_id == ca_id, DomainRecord.name == name)
    )
