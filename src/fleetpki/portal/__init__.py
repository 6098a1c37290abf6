"""The web portal: server-rendered pages over the same services, with the API's authorization.

``fleetpki serve`` serves it on its HTTPS port: the dashboard at ``/``, every other page
under ``/portal/``. Pages are Jinja2 templates; the only script is the portal's own
``portal.js`` and the vendored htmx (``static/vendor/README.md``), both from this
server, so the Content-Security-Policy allows no inline script or style. Sign-in is by
OIDC (authorization code with PKCE) or with an API token; see docs/portal.md.
"""

from __future__ import annotations

import importlib

from fastapi import APIRouter, FastAPI

from fleetpki.application import FleetPKI
from fleetpki.portal.oidc_client import OIDCClient, oidc_client_for
from fleetpki.portal.pages import Renderer

__all__ = ["PORTAL_ROUTERS", "include_portal"]

#: The portal's route modules, each with a ``router``.
PORTAL_ROUTERS: tuple[str, ...] = (
    "fleetpki.portal.static_files",
    "fleetpki.portal.signin",
    "fleetpki.portal.dashboard",
    "fleetpki.portal.cas",
    "fleetpki.portal.domains",
    "fleetpki.portal.certificates",
    "fleetpki.portal.hubs",
    "fleetpki.portal.devices",
    "fleetpki.portal.audit",
)


def include_portal(app: FastAPI, fleet: FleetPKI, *, oidc: OIDCClient | None = None) -> None:
    """Add the portal's routes to ``app`` with their renderer and OIDC client.

    Args:
        app: the HTTP application of ``fleet``.
        fleet: the instance the pages run against.
        oidc: the OIDC client; by default the one the settings describe (none when
            ``portal_oidc_client_id`` is empty).

    Raises:
        ValidationError: ``config.invalid`` for an incomplete OIDC client configuration.
    """
    app.state.portal_renderer = Renderer()
    app.state.portal_oidc = oidc if oidc is not None else oidc_client_for(fleet.settings)
    for module_name in PORTAL_ROUTERS:
        router = importlib.import_module(module_name).router
        assert isinstance(router, APIRouter)
        app.include_router(router)
