"""The portal's own static files (its script, its style sheet, htmx), from the package."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from fleetpki.errors import NotFoundError
from fleetpki.portal.pages import PortalRoute

__all__ = ["STATIC_FILES", "router"]

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

_ROOT = Path(__file__).parent / "static"
#: The files served, by name, with their media types: nothing else under the folder is.
STATIC_FILES = {
    "portal.css": ("portal.css", "text/css"),
    "portal.js": ("portal.js", "text/javascript"),
    "htmx.min.js": ("vendor/htmx-2.0.11.min.js", "text/javascript"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}


@router.get("/favicon.ico")
def favicon() -> Response:
    """The icon browsers ask for on their own (an SVG: every current browser shows it)."""
    return static_file("favicon.svg")


@router.get("/portal/static/{name}")
def static_file(name: str) -> Response:
    """One of :data:`STATIC_FILES`.

    Raises:
        NotFoundError: ``request.not_found`` for any other name.
    """
    entry = STATIC_FILES.get(name)
    if entry is None:
        raise NotFoundError("request.not_found", f"no portal file {name!r}")
    path, media_type = entry
    return FileResponse(
        _ROOT / path, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"}
    )
