"""CAs: the hierarchy as a tree, each CA's generations, downloads, renewal and activation."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from fleetpki.api.deps import get_fleet
from fleetpki.api.presenters import pem_of
from fleetpki.errors import ValidationError
from fleetpki.portal.form import Form
from fleetpki.portal.pages import PortalRoute, redirect, render
from fleetpki.portal.visitor import Caller, checked_form, signed_in
from fleetpki.services.ca_lifecycle import RenewCommand
from fleetpki.services.ca_views import CAView

__all__ = ["CANode", "ca_tree", "router"]

router = APIRouter(prefix="/portal/cas", route_class=PortalRoute, include_in_schema=False)
CallerDep = Annotated[Caller, Depends(signed_in)]
FormDep = Annotated[Form, Depends(checked_form)]
PEM_CHAIN = "application/pem-certificate-chain"


class CANode:
    """A CA in the tree, with the CAs it certified."""

    def __init__(self, ca: CAView) -> None:
        self.ca = ca
        self.children: list[CANode] = []


def ca_tree(cas: list[CAView]) -> list[CANode]:
    """The roots, each with its descendants (a CA whose parent is missing is a root here)."""
    nodes = {ca.id: CANode(ca) for ca in cas}
    roots: list[CANode] = []
    for ca in cas:
        parent = nodes.get(ca.parent_id) if ca.parent_id else None
        (parent.children if parent is not None else roots).append(nodes[ca.id])
    return roots


def _path(url: str) -> str:
    """A published URL as a path on this server (the portal may be reached by another name)."""
    return urlsplit(url).path


@router.get("")
def list_cas(request: Request, caller: CallerDep) -> Response:
    """The CA hierarchy as a tree."""
    cas = get_fleet(request).portal_pages.cas()
    return render(request, "cas.html", tree=ca_tree(cas), count=len(cas))


@router.get("/{ca_id}")
def ca_detail(ca_id: str, request: Request, caller: CallerDep) -> Response:
    """One CA: its certificate, its generations (with their CRLs), renew and activate."""
    page = get_fleet(request).portal_pages.ca(ca_id)
    return render(
        request,
        "ca.html",
        ca=page.ca,
        parent=page.parent,
        generations=page.generations,
        crls={n: _path(url) for n, url in page.crl_urls.items()},
        certs={n: _path(url) for n, url in page.certificate_urls.items()},
        pending=page.pending,
    )


@router.get("/{ca_id}/certificate.pem")
def download_ca(ca_id: str, request: Request, caller: CallerDep) -> Response:
    """The CA's current certificate as PEM."""
    ca = get_fleet(request).cas.get(ca_id)
    return _download(pem_of(ca.certificate), f"{ca.name}.pem")


@router.get("/{ca_id}/chain.pem")
def download_chain(ca_id: str, request: Request, caller: CallerDep) -> Response:
    """The CA's certificate and its parents up to the root, as PEM."""
    ca, chain = get_fleet(request).portal_pages.ca_chain(ca_id)
    text = "".join(pem_of(c) for c in chain)
    return _download(text, f"{ca.name}-chain.pem")


def _download(text: str, filename: str) -> Response:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in filename)
    return Response(
        text,
        media_type=PEM_CHAIN,
        headers={"Content-Disposition": f'attachment; filename="{safe}"'},
    )


@router.post("/{ca_id}/renew")
def renew_ca(ca_id: str, request: Request, caller: CallerDep, form: FormDep) -> Response:
    """Renew the CA (admins): a new generation, active once every hub link holds it."""
    days_text = form.text("days", max_length=6)
    if days_text and not days_text.isdigit():
        raise ValidationError("ca.bad_days", "the lifetime must be a whole number of days")
    rekey = {"auto": None, "yes": True, "no": False}.get(form.text("rekey", default="auto"))
    command = RenewCommand(rekey=rekey, days=int(days_text) if days_text else None)
    get_fleet(request).ca_lifecycle.renew(caller.actor, ca_id, command)
    return redirect(f"/portal/cas/{ca_id}", notice="renewed")


@router.post("/{ca_id}/activate")
def activate_ca(ca_id: str, request: Request, caller: CallerDep, form: FormDep) -> Response:
    """Activate the pending generation (admins), ``force`` while hub links still lack it."""
    get_fleet(request).ca_lifecycle.activate(caller.actor, ca_id, force=form.checked("force"))
    return redirect(f"/portal/cas/{ca_id}", notice="activated")
