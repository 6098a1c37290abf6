"""Domains: register one, edit its owners and requesters, see its certificates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from fleetpki.api.deps import get_fleet
from fleetpki.portal.form import Form
from fleetpki.portal.pages import PAGE_SIZE, PortalRoute, page_of, redirect, render
from fleetpki.portal.visitor import Caller, checked_form, signed_in
from fleetpki.services.enrollment import MemberRef

__all__ = ["router"]

router = APIRouter(prefix="/portal/domains", route_class=PortalRoute, include_in_schema=False)
CallerDep = Annotated[Caller, Depends(signed_in)]
FormDep = Annotated[Form, Depends(checked_form)]


@router.get("")
def list_domains(
    request: Request, caller: CallerDep, page: Annotated[int, Query(ge=0, le=1_000_000)] = 0
) -> Response:
    """The domains the caller owns or requests for (every domain for admins), and the
    form to register one."""
    found = get_fleet(request).portal_pages.domains(caller.actor)
    start = page * PAGE_SIZE
    return render(
        request,
        "domains.html",
        page=page_of(request, found.domains[start : start + PAGE_SIZE + 1], page),
        total=len(found.domains),
        issuers=found.issuers,
    )


@router.post("")
def register_domain(request: Request, caller: CallerDep, form: FormDep) -> Response:
    """Register a domain; without owners the caller owns it and may request for it."""
    owners = [MemberRef(p) for p in form.lines("owners")]
    requesters = [MemberRef(p) for p in form.lines("requesters")]
    domain = get_fleet(request).enrollment.register_domain(
        caller.actor,
        ca_id=form.optional("ca_id", max_length=64),
        template_id=None,
        name=form.text("name", max_length=255),
        owners=owners,
        requesters=requesters,
    )
    return redirect(f"/portal/domains/{domain.id}", notice="domain-registered")


@router.get("/{domain_id}")
def domain_detail(
    domain_id: str,
    request: Request,
    caller: CallerDep,
    page: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    """One domain: its members (editable by its owners) and its certificates."""
    found = get_fleet(request).portal_pages.domain(
        caller.actor, domain_id, offset=page * PAGE_SIZE, limit=PAGE_SIZE + 1
    )
    return render(
        request, "domain.html", info=found.info, page=page_of(request, found.certificates, page)
    )


@router.post("/{domain_id}/members")
def set_members(domain_id: str, request: Request, caller: CallerDep, form: FormDep) -> Response:
    """Replace the domain's owners and requesters (its owners and admins, as the API)."""
    get_fleet(request).domains.set_members(
        caller.actor,
        domain_id,
        owners=form.lines("owners"),
        requesters=form.lines("requesters"),
    )
    return redirect(f"/portal/domains/{domain_id}", notice="members-saved")
