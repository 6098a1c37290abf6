"""Devices of the built-in hub: status, authentication, twin, live telemetry, C2D (admins)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fleetpki.api.deps import get_fleet
from fleetpki.api.hub_v1 import message_out, telemetry_stream
from fleetpki.errors import ValidationError
from fleetpki.portal.form import Form
from fleetpki.portal.hubs import admin
from fleetpki.portal.pages import PAGE_SIZE, PortalRoute, page_of, redirect, render
from fleetpki.portal.visitor import Caller, checked_form
from fleetpki.services.hub_messages import HubMessageView

__all__ = ["RECENT_MESSAGES", "router"]

router = APIRouter(prefix="/portal/devices", route_class=PortalRoute, include_in_schema=False)
AdminDep = Annotated[Caller, Depends(admin)]
FormDep = Annotated[Form, Depends(checked_form)]

#: Telemetry rows shown when the page opens; newer ones arrive over the event stream.
RECENT_MESSAGES = 50


def _message_row(message: HubMessageView) -> dict[str, Any]:
    out = message_out(message)
    return {
        "id": out.id,
        "at": message.enqueued_at,
        "body": out.body,
        "json": out.model_dump_json(),
    }


@router.get("")
def list_devices(
    request: Request, caller: AdminDep, page: Annotated[int, Query(ge=0, le=1_000_000)] = 0
) -> Response:
    """The built-in hub's devices, 50 a page."""
    found = get_fleet(request).portal_pages.devices(
        caller.actor, offset=page * PAGE_SIZE, limit=PAGE_SIZE + 1
    )
    return render(
        request,
        "devices.html",
        page=page_of(request, found.devices, page),
        registry=found.registry,
        online=found.online,
    )


@router.get("/{device_id}")
def device_detail(device_id: str, request: Request, caller: AdminDep) -> Response:
    """One device: registry entry, twin, recent telemetry with the live view, C2D form."""
    found = get_fleet(request).portal_pages.device(
        caller.actor, device_id, telemetry_rows=RECENT_MESSAGES
    )
    twin = found.twin
    return render(
        request,
        "device.html",
        device=found.device,
        twin=twin,
        twin_json=json.dumps(
            {"tags": twin.tags, "desired": twin.desired, "reported": twin.reported}, indent=2
        ),
        messages=[_message_row(m) for m in found.telemetry],
        last_id=found.last_message_id,
        pending=found.pending,
        connected=found.connected,
    )


@router.get("/{device_id}/telemetry")
async def telemetry(
    device_id: str,
    request: Request,
    caller: AdminDep,
    after: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
) -> Response:
    """The device's new telemetry as server-sent events (as ``/v1/hub/messages/stream``)."""
    fleet = get_fleet(request)
    await run_in_threadpool(fleet.portal_pages.device_exists, caller.actor, device_id)
    return await telemetry_stream(fleet, request, device_id, after)


@router.post("/{device_id}/messages")
def send_message(device_id: str, request: Request, caller: AdminDep, form: FormDep) -> Response:
    """Queue a cloud-to-device message; a connected device gets it at once."""
    properties: dict[str, str] = {}
    for line in form.text("properties", max_length=8000).splitlines():
        key, sep, value = line.partition("=")
        if line.strip():
            if not sep or not key.strip():
                raise ValidationError(
                    "portal.bad_properties", "write each property as name=value on its own line"
                )
            properties[key.strip()] = value.strip()
    get_fleet(request).hub_messages.send_c2d(
        caller.actor,
        device_id,
        form.text("body", max_length=64 * 1024).encode(),
        properties=properties,
        message_id=form.optional("message_id", max_length=128),
    )
    return redirect(f"/portal/devices/{device_id}", notice="sent")
