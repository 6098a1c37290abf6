"""The dashboard at ``/``: CAs and their expiry, certificates expiring soon, hub links and
their backlog, devices online now, and issuances and revocations per day."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from fleetpki.api.deps import get_fleet
from fleetpki.portal.pages import PAGE_SIZE, PortalRoute, render
from fleetpki.portal.visitor import Caller, signed_in
from fleetpki.services.certificates import CertificateQuery, DailyActivity

__all__ = ["ACTIVITY_DAYS", "EXPIRY_WINDOW_DAYS", "ActivityChart", "router"]

router = APIRouter(route_class=PortalRoute, include_in_schema=False)
CallerDep = Annotated[Caller, Depends(signed_in)]

#: Certificates ending within this many days are listed.
EXPIRY_WINDOW_DAYS = 30
#: Days shown in the activity chart.
ACTIVITY_DAYS = 30


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
    fleet = get_fleet(request)
    actor = caller.actor
    expiring = fleet.certificates.search(
        actor,
        CertificateQuery(
            status="valid",
            expiring_within=dt.timedelta(days=EXPIRY_WINDOW_DAYS),
            limit=PAGE_SIZE + 1,
        ),
    )
    activity = ActivityChart(fleet.certificates.daily_activity(actor, days=ACTIVITY_DAYS))
    links = statuses = None
    online = registry = None
    if caller.is_admin:
        # Hub links and the built-in hub's registry are admins' (as in the API).
        links = fleet.hub_links.list(actor)
        statuses = {s.link: s for s in fleet.hub_links.status(actor, limit=1)}
        online = fleet.hub_statistics.connected_devices()
        registry = fleet.hub_statistics.devices()
    return render(
        request,
        "dashboard.html",
        cas=fleet.cas.list(),
        expiring=expiring[:PAGE_SIZE],
        more_expiring=len(expiring) > PAGE_SIZE,
        window=EXPIRY_WINDOW_DAYS,
        activity=activity,
        links=links,
        statuses=statuses,
        online=online,
        registry=registry,
    )
