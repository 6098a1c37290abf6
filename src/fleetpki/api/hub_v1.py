"""``/v1/hub``: stored telemetry (a page, or a live server-sent-events stream) and C2D sends."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from fleetpki.api.auth import Caller, require_admin
from fleetpki.api.deps import get_fleet
from fleetpki.api.params import INT64_MAX, parse_counter
from fleetpki.api.presenters import iso
from fleetpki.application import FleetPKI
from fleetpki.services.hub_messages import HubMessageView

__all__ = ["C2DIn", "C2DOut", "MessageOut", "message_out", "router", "telemetry_stream"]

router = APIRouter(prefix="/v1/hub", tags=["hub"])
AdminDep = Annotated[Caller, Depends(require_admin)]

#: How often the event stream looks for new rows while idle.
STREAM_POLL_SECONDS = 0.25
#: A comment line every this many seconds keeps proxies from closing an idle stream.
STREAM_HEARTBEAT_SECONDS = 15.0


class MessageOut(BaseModel):
    """One stored device-to-cloud message, as ``az iot hub monitor-events`` shows it."""

    id: int
    deviceId: str  # noqa: N815 - Azure's field names
    moduleId: str | None = None  # noqa: N815
    enqueuedTime: str  # noqa: N815
    body: str
    bodyEncoding: str = Field(description="utf-8, or base64 for a body that is not UTF-8")  # noqa: N815
    systemProperties: dict[str, Any]  # noqa: N815
    properties: dict[str, Any]


class C2DIn(BaseModel):
    """A cloud-to-device message to queue."""

    model_config = ConfigDict(strict=True)

    body: str = Field(max_length=64 * 1024)
    properties: dict[str, str] = Field(default_factory=dict)
    messageId: str | None = Field(default=None, max_length=128)  # noqa: N815


class C2DOut(BaseModel):
    """The queued message."""

    messageId: str  # noqa: N815
    deviceId: str  # noqa: N815
    status: str


def message_out(row: HubMessageView) -> MessageOut:
    """The JSON form of a stored message."""
    try:
        body, encoding = row.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(row.body).decode(), "base64"
    return MessageOut(
        id=row.id,
        deviceId=row.device_id,
        moduleId=row.module_id,
        enqueuedTime=iso(row.enqueued_at),
        body=body,
        bodyEncoding=encoding,
        systemProperties=dict(row.system_properties),
        properties=dict(row.properties),
    )


def _page(fleet: FleetPKI, device: str | None, after: int | None, limit: int) -> list[MessageOut]:
    rows = fleet.hub_messages.list_telemetry(device_id=device, after_id=after, limit=limit)
    return [message_out(r) for r in rows]


@router.get("/messages", response_model=list[MessageOut])
def get_messages(
    request: Request,
    caller: AdminDep,
    device: Annotated[str | None, Query(description="Only this device.")] = None,
    after: Annotated[
        int | None, Query(ge=0, le=INT64_MAX, description="Only messages after this id.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[MessageOut]:
    """Stored telemetry in arrival order (admins)."""
    return _page(get_fleet(request), device, after, limit)


@router.get("/messages/stream")
async def stream_messages(
    request: Request,
    caller: AdminDep,
    device: Annotated[str | None, Query(description="Only this device.")] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=INT64_MAX, description="Start after this id (default: now)."),
    ] = None,
) -> StreamingResponse:
    """New telemetry as server-sent events (``text/event-stream``), one event per message.

    Each event's ``id`` is the message id, so a client that reconnects with
    ``Last-Event-ID`` resumes where it stopped (WHATWG HTML §9.2).
    """
    return await telemetry_stream(get_fleet(request), request, device, after)


async def _telemetry_events(
    fleet: FleetPKI, request: Request, device: str | None, after: int
) -> AsyncIterator[bytes]:
    last = after
    idle = 0.0
    yield b": fleetpki telemetry stream\n\n"
    while not await request.is_disconnected():
        rows = await run_in_threadpool(_page, fleet, device, last, 500)
        for row in rows:
            last = row.id
            yield f"id: {row.id}\nevent: message\ndata: {row.model_dump_json()}\n\n".encode()
        if rows:
            idle = 0.0
            continue
        await asyncio.sleep(STREAM_POLL_SECONDS)
        idle += STREAM_POLL_SECONDS
        if idle >= STREAM_HEARTBEAT_SECONDS:
            idle = 0.0
            yield b": keepalive\n\n"


async def telemetry_stream(
    fleet: FleetPKI, request: Request, device: str | None, after: int | None
) -> StreamingResponse:
    """New telemetry as server-sent events, for ``/v1/hub/messages/stream`` and the portal.

    Each event's ``id`` is the message id, and ``Last-Event-ID`` resumes after it; without
    either, the stream starts after the newest stored message.
    """
    resume = parse_counter(request.headers.get("last-event-id"))
    if resume is not None:
        after = resume
    if after is None:
        after = await run_in_threadpool(fleet.hub_messages.latest_id, device)
    return StreamingResponse(
        _telemetry_events(fleet, request, device, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/devices/{device_id}/messages", response_model=C2DOut, status_code=201)
def send_c2d(device_id: str, body: C2DIn, request: Request, caller: AdminDep) -> C2DOut:
    """Queue a cloud-to-device message; a connected device gets it at once, others on reconnect.

    Raises:
        NotFoundError: ``hub.device_not_found`` (404).
    """
    message = get_fleet(request).hub_messages.send_c2d(
        caller.actor,
        device_id,
        body.body.encode(),
        properties=body.properties,
        message_id=body.messageId,
    )
    return C2DOut(messageId=message.message_id, deviceId=device_id, status=message.status)
