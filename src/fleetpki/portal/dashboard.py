"""The dashboard at ``/``: CAs and their expiry, certificates expiring soon, hub links and
their backlog, devices online now, and issuances and revocations per day."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from fleetpki.api.deps import get_fleet
from fleetpki.portal.pages import PAGE_SIZE, PortalRoute, render
from fleetpki.portal.visitor import Caller, signed_in
from fleetpki.services.certificates import DailyActivity

__all__ = ["ActivityChart", "router"]

router = APIRouter(route_class=PortalRoute, include_in_schema=False)
CallerDep = Annotated[Caller, Depends(signed_in)]


class ActivityChart:
    """The bars of the issuances/revocations chart, in SVG user units (no inline style)."""

    width = 600
    height = 160
    bottom = 140

    def __init__(self, days: list[DailyActivity]) -> None:
        self.days = days
        self.peak = max([1, *(d.issued for d in days), *(d.revoked for d in days)])
        self.step = self.width / max(len(days), 1)

    def bar_height(self, count: int) -> float:
        """The height of a bar for ``count``."""
        return round((self.bottom - 10) * count / self.peak, 1)

    @property
    def total_issued(self) -> int:
        """Issuances over the window."""
        return sum(d.issued for d in self.days)

    @property
    def total_revoked(self) -> int:
        """Revocations over the window."""
        return sum(d.revoked for d in self.days)


@router.get("/")
def dashboard(request: Request, caller: CallerDep) -> Response:
    """The dashboard."""
    page = get_fleet(request).portal_pages.dashboard(caller.actor, limit=PAGE_SIZE + 1)
    hubs = page.hubs
    return render(
        request,
        "dashboard.html",
        cas=page.cas,
        expiring=page.expiring[:PAGE_SIZE],
        more_expiring=len(page.expiring) > PAGE_SIZE,
        window=page.window_days,
        activity=ActivityChart(page.activity),
        links=hubs.links if hubs else None,
        statuses=hubs.statuses if hubs else None,
        online=hubs.online if hubs else None,
        registry=hubs.registry if hubs else None,
    )
