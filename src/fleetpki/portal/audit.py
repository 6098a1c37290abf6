"""The audit log with filters: action, actor, object and time window (admins)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from fleetpki.api.deps import get_fleet
from fleetpki.errors import ValidationError
from fleetpki.portal.hubs import admin
from fleetpki.portal.pages import PAGE_SIZE, PortalRoute, page_of, render
from fleetpki.portal.visitor import Caller
from fleetpki.services.audit import AuditQuery

__all__ = ["router"]

router = APIRouter(prefix="/portal/audit", route_class=PortalRoute, include_in_schema=False)
AdminDep = Annotated[Caller, Depends(admin)]


def _moment(value: str, field: str, *, end: bool) -> dt.datetime | None:
    """A date (``2026-12-01``) or date and time, in UTC; a bare date ends at its last second."""
    if not value.strip():
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(
            "audit.bad_time", f"{field} must be a date (2026-12-01) or a date and time"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    if end and len(value.strip()) == 10:
        parsed += dt.timedelta(days=1, seconds=-1)
    return parsed


@router.get("")
def audit_log(
    request: Request,
    caller: AdminDep,
    action: Annotated[str, Query(max_length=64)] = "",
    actor: Annotated[str, Query(max_length=64)] = "",
    object_type: Annotated[str, Query(max_length=32)] = "",
    object_id: Annotated[str, Query(max_length=128)] = "",
    since: Annotated[str, Query(max_length=32)] = "",
    until: Annotated[str, Query(max_length=32)] = "",
    page: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    """The newest entries first, 50 a page."""
    query = AuditQuery(
        action=action.strip() or None,
        actor_id=actor.strip() or None,
        object_type=object_type.strip() or None,
        object_id=object_id.strip() or None,
        since=_moment(since, "from", end=False),
        until=_moment(until, "until", end=True),
        offset=page * PAGE_SIZE,
        limit=PAGE_SIZE + 1,
    )
    entries = get_fleet(request).audit.search(caller.actor, query)
    return render(
        request,
        "audit.html",
        page=page_of(request, entries, page),
        filters={
            "action": action,
            "actor": actor,
            "object_type": object_type,
            "object_id": object_id,
            "since": since,
            "until": until,
        },
    )
