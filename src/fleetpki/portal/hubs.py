"""Hubs: the built-in hub, the hub links, one-click trust, options, delivery and retry (admins)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from fleetpki.api.deps import get_fleet
from fleetpki.portal.form import Form
from fleetpki.portal.pages import PortalRoute, redirect, render
from fleetpki.portal.visitor import Caller, checked_form, require_admin, signed_in
from fleetpki.services.hub_links import link_command

__all__ = ["AZURE_FIELDS", "router"]

router = APIRouter(prefix="/portal/hubs", route_class=PortalRoute, include_in_schema=False)
FormDep = Annotated[Form, Depends(checked_form)]


def admin(request: Request) -> Caller:
    """A signed-in administrator (a FastAPI dependency), as ``/v1/hub-links`` requires.

    Raises:
        SignInRequired, PermissionDenied: ``auth.admin_required``.
    """
    caller = signed_in(request)
    require_admin(caller)
    return caller


AdminDep = Annotated[Caller, Depends(admin)]

#: The form's fields of an azure link, in the order shown, with their labels.
AZURE_FIELDS = (
    ("subscription_id", "Subscription id"),
    ("resource_group", "Resource group"),
    ("hub_name", "IoT hub name"),
    ("management_url", "Management URL (empty: Azure's)"),
    ("tenant_id", "Tenant id"),
    ("client_id", "Client id"),
    ("authority_host", "Authority host"),
    ("certificate_path", "Client certificate path"),
    ("service_url", "Service API URL"),
    ("ca_bundle", "CA bundle path"),
)


@router.get("")
def hubs(request: Request, caller: AdminDep) -> Response:
    """The built-in hub and every link, with its CAs, options and delivery."""
    page = get_fleet(request).portal_pages.hubs(caller.actor)
    return render(
        request,
        "hubs.html",
        identity=page.identity,
        hub_cas=page.hub_cas,
        registry=page.overview.registry,
        online=page.overview.online,
        links=page.overview.links,
        statuses=page.overview.statuses,
        cas=page.cas,
        azure_fields=AZURE_FIELDS,
    )


@router.post("/links")
def add_link(request: Request, caller: AdminDep, form: FormDep) -> Response:
    """Add a link (a refused one changes nothing)."""
    values = {name: form.optional(name, max_length=4096) for name, _ in AZURE_FIELDS}
    command = link_command(
        form.text("name", max_length=64),
        form.text("kind", default="builtin", max_length=16),
        ca_ids=form.values("ca_ids"),
        disable_on_revoke=form.checked("disable_on_revoke"),
        register_devices=form.checked("register_devices"),
        credential=form.optional("credential", max_length=32),
        secret=form.optional("secret", max_length=8192),
        **values,
    )
    link = get_fleet(request).hub_links.add(caller.actor, command)
    return redirect("/portal/hubs", notice="link-added", _anchor=f"link-{link.name}")


@router.post("/links/{name}/trust")
def trust(name: str, request: Request, caller: AdminDep, form: FormDep) -> Response:
    """One-click trust: upload the CA to the link's hub and prove possession of its key."""
    get_fleet(request).hub_links.trust(caller.actor, name, form.text("ca_id", max_length=64))
    return redirect("/portal/hubs", notice="trusted", _anchor=f"link-{name}")


@router.post("/links/{name}/options")
def set_options(name: str, request: Request, caller: AdminDep, form: FormDep) -> Response:
    """The link's "disable the device when its certificate is revoked" and "register
    devices" options."""
    get_fleet(request).hub_links.set_options(
        caller.actor,
        name,
        disable_on_revoke=form.checked("disable_on_revoke"),
        register_devices=form.checked("register_devices"),
    )
    return redirect("/portal/hubs", notice="options-saved", _anchor=f"link-{name}")


@router.post("/links/{name}/retry")
def retry(name: str, request: Request, caller: AdminDep, form: FormDep) -> Response:
    """Requeue the link's failed deliveries."""
    get_fleet(request).hub_links.retry(caller.actor, name)
    return redirect("/portal/hubs", notice="retried", _anchor=f"link-{name}")


@router.post("/links/{name}/remove")
def remove(name: str, request: Request, caller: AdminDep, form: FormDep) -> Response:
    """Remove the link (the hub keeps what it was given)."""
    get_fleet(request).hub_links.remove(caller.actor, name)
    return redirect("/portal/hubs", notice="link-removed")
