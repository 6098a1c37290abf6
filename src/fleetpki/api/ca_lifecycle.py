"""``/v1/cas/{id}/renew``, ``/generations`` and ``/activate``: CA renewal, hubs first."""

from __future__ import annotations

from typing import Annotated

from cryptography import x509
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from fleetpki.api.auth import Caller, require_admin, require_caller
from fleetpki.api.deps import get_fleet
from fleetpki.api.presenters import iso, pem_of
from fleetpki.services.authority import CAUrlsConfig
from fleetpki.services.ca_generations import GenerationView
from fleetpki.services.ca_lifecycle import RenewCommand

__all__ = ["ActivateIn", "GenerationOut", "RenewIn", "generation_out", "router"]

router = APIRouter(prefix="/v1/cas", tags=["CAs"])
CallerDep = Annotated[Caller, Depends(require_caller)]
AdminDep = Annotated[Caller, Depends(require_admin)]


class RenewIn(BaseModel):
    """A renewal: ``rekey`` omitted lets the key's age decide, ``days`` the current lifetime."""

    model_config = ConfigDict(extra="forbid", strict=True)

    rekey: bool | None = None
    days: int | None = Field(default=None, ge=1, le=36500)


class ActivateIn(BaseModel):
    """Activate the pending generation; ``force`` while links are still pending."""

    model_config = ConfigDict(extra="forbid", strict=True)

    force: bool = False


class GenerationOut(BaseModel):
    """A generation of a CA: its certificate, its state, and what a pending one waits for.

    ``cross_certificates_pem``, for a root generation with a new key: the rollover's
    link certificates (the new key certified by the old one, the old by the new).
    """

    ca_id: str
    number: int
    state: str
    key_spec: str
    rekeyed: bool
    subject: str
    serial: str
    sha1: str
    not_before: str
    not_after: str
    created_at: str
    activated_at: str | None
    retired_at: str | None
    pending_links: list[str]
    waits_for_parent: bool
    overdue: bool
    parent_generation: int | None
    certificate_pem: str
    cross_certificates_pem: list[str]
    crl_url: str


def generation_out(urls: CAUrlsConfig, view: GenerationView) -> GenerationOut:
    """The JSON form of a generation (``fleetpki ca show -o json`` prints the same)."""
    return GenerationOut(
        ca_id=view.ca_id,
        number=view.number,
        state=view.state,
        key_spec=view.key_spec,
        rekeyed=view.rekeyed,
        subject=view.subject,
        serial=view.serial_hex,
        sha1=view.sha1_hex,
        not_before=iso(view.not_before),
        not_after=iso(view.not_after),
        created_at=iso(view.created_at),
        activated_at=iso(view.activated_at) if view.activated_at else None,
        retired_at=iso(view.retired_at) if view.retired_at else None,
        pending_links=list(view.pending_links),
        waits_for_parent=view.waits_for_parent,
        overdue=view.overdue,
        parent_generation=view.parent_generation,
        certificate_pem=pem_of(view.certificate),
        cross_certificates_pem=[
            pem_of(x509.load_der_x509_certificate(der)) for der in view.cross_certificates_der
        ],
        crl_url=urls.crl_url(view.ca_id, view.number),
    )


@router.get("/{ca_id}/generations", response_model=list[GenerationOut])
def list_generations(ca_id: str, request: Request, caller: CallerDep) -> list[GenerationOut]:
    """Every generation of the CA, oldest first."""
    fleet = get_fleet(request)
    return [generation_out(fleet.urls, g) for g in fleet.ca_lifecycle.generations(ca_id)]


@router.post("/{ca_id}/renew", response_model=GenerationOut, status_code=201)
def renew_ca(ca_id: str, body: RenewIn, request: Request, caller: AdminDep) -> GenerationOut:
    """Renew the CA: a new generation, active once every hub link holds it."""
    fleet = get_fleet(request)
    command = RenewCommand(rekey=body.rekey, days=body.days)
    return generation_out(fleet.urls, fleet.ca_lifecycle.renew(caller.actor, ca_id, command))


@router.post("/{ca_id}/activate", response_model=GenerationOut)
def activate_ca(ca_id: str, body: ActivateIn, request: Request, caller: AdminDep) -> GenerationOut:
    """Activate the CA's pending generation (``force`` while links are still pending)."""
    fleet = get_fleet(request)
    view = fleet.ca_lifecycle.activate(caller.actor, ca_id, force=body.force)
    return generation_out(fleet.urls, view)
