"""``/v1/hub-links``: the hubs this CA drives, and one-click trust of a CA in one (admins)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from fleetpki.api.auth import Caller, require_admin
from fleetpki.api.deps import get_fleet
from fleetpki.api.presenters import iso
from fleetpki.services.hub_links import (
    HubLinkView,
    LinkRetryView,
    LinkStatusView,
    LinkTrustView,
    link_command,
)

__all__ = [
    "AzureTargetOut",
    "FailedDeliveryOut",
    "HubLinkIn",
    "HubLinkOut",
    "LinkCAOut",
    "LinkRetryOut",
    "LinkStatusOut",
    "LinkTrustIn",
    "LinkTrustOut",
    "hub_link_out",
    "link_retry_out",
    "link_status_out",
    "link_trust_out",
    "router",
]

router = APIRouter(prefix="/v1/hub-links", tags=["hub links"])
AdminDep = Annotated[Caller, Depends(require_admin)]

# Field names are camelCase, as Azure's own resources spell them (subscriptionId,
# resourceGroup), since an azure link names an Azure resource.


class HubLinkIn(BaseModel):
    """A link to add. ``secret`` is write-only: stored encrypted, never returned."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(max_length=64)
    kind: str = Field(description="builtin or azure")
    caIds: list[str] = Field(default_factory=list, max_length=100)  # noqa: N815
    disableOnRevoke: bool = True  # noqa: N815
    registerDevices: bool = False  # noqa: N815
    subscriptionId: str | None = Field(default=None, max_length=64)  # noqa: N815
    resourceGroup: str | None = Field(default=None, max_length=90)  # noqa: N815
    hubName: str | None = Field(default=None, max_length=50)  # noqa: N815
    managementUrl: str | None = Field(default=None, max_length=2048)  # noqa: N815
    credential: str | None = Field(
        default=None, description="default, client-secret, client-certificate, connection-string"
    )
    tenantId: str | None = Field(default=None, max_length=128)  # noqa: N815
    clientId: str | None = Field(default=None, max_length=64)  # noqa: N815
    authorityHost: str | None = Field(default=None, max_length=2048)  # noqa: N815
    certificatePath: str | None = Field(default=None, max_length=4096)  # noqa: N815
    serviceUrl: str | None = Field(default=None, max_length=2048)  # noqa: N815
    caBundle: str | None = Field(default=None, max_length=4096)  # noqa: N815
    secret: str | None = Field(default=None, max_length=8192)


class AzureTargetOut(BaseModel):
    """Where an azure link's hub is and how its connector authenticates (no secret)."""

    subscriptionId: str  # noqa: N815
    resourceGroup: str  # noqa: N815
    hubName: str  # noqa: N815
    managementUrl: str  # noqa: N815
    credential: str
    tenantId: str | None  # noqa: N815
    clientId: str | None  # noqa: N815
    authorityHost: str | None  # noqa: N815
    certificatePath: str | None  # noqa: N815
    serviceUrl: str | None  # noqa: N815
    caBundle: str | None  # noqa: N815


class LinkCAOut(BaseModel):
    """A CA the link trusts, and what the hub said when it was last trusted there."""

    caId: str  # noqa: N815
    caName: str  # noqa: N815
    addedAt: str  # noqa: N815
    certificateName: str | None  # noqa: N815
    thumbprint: str | None
    verifiedAt: str | None  # noqa: N815
    lastError: str | None  # noqa: N815


class HubLinkOut(BaseModel):
    """A hub link. ``consumer`` is its event consumer name, ``link:<name>``."""

    name: str
    kind: str
    consumer: str
    disableOnRevoke: bool  # noqa: N815
    registerDevices: bool  # noqa: N815
    azure: AzureTargetOut | None
    hasSecret: bool  # noqa: N815
    cas: list[LinkCAOut]
    createdAt: str  # noqa: N815
    updatedAt: str  # noqa: N815


class LinkTrustIn(BaseModel):
    """The CA to trust in the link's hub."""

    model_config = ConfigDict(extra="forbid", strict=True)

    caId: str = Field(max_length=64)  # noqa: N815


class LinkTrustOut(BaseModel):
    """The hub holds the CA's certificate under ``certificateName``, verified."""

    link: str
    caId: str  # noqa: N815
    certificateName: str  # noqa: N815
    thumbprint: str
    verified: bool


class FailedDeliveryOut(BaseModel):
    """A delivery the link gave up on, with its last error."""

    id: int
    eventId: int  # noqa: N815
    eventType: str  # noqa: N815
    subject: str
    attempts: int
    lastError: str | None  # noqa: N815
    createdAt: str  # noqa: N815


class LinkStatusOut(BaseModel):
    """A link's delivery: pending (of which failing, retried with backoff) and failed."""

    link: str
    kind: str
    pending: int
    failing: int
    failed: int
    oldestPendingAt: str | None  # noqa: N815
    lastError: str | None  # noqa: N815
    failedDeliveries: list[FailedDeliveryOut]  # noqa: N815


class LinkRetryOut(BaseModel):
    """How many failed deliveries of the link were requeued."""

    link: str
    requeued: int


def link_status_out(view: LinkStatusView) -> LinkStatusOut:
    """The JSON form of a link's delivery status."""
    backlog = view.backlog
    return LinkStatusOut(
        link=view.link,
        kind=view.kind.value,
        pending=backlog.pending,
        failing=backlog.failing,
        failed=backlog.failed,
        oldestPendingAt=iso(backlog.oldest_pending_at) if backlog.oldest_pending_at else None,
        lastError=backlog.last_error,
        failedDeliveries=[
            FailedDeliveryOut(
                id=f.id,
                eventId=f.event_id,
                eventType=f.event_type,
                subject=f.subject_id,
                attempts=f.attempts,
                lastError=f.last_error,
                createdAt=iso(f.created_at),
            )
            for f in view.failed
        ],
    )


def link_retry_out(view: LinkRetryView) -> LinkRetryOut:
    """The JSON form of a retry."""
    return LinkRetryOut(link=view.link, requeued=view.requeued)


def hub_link_out(view: HubLinkView) -> HubLinkOut:
    """The JSON form of a link (the CLI's ``-o json`` prints the same)."""
    azure = view.azure
    return HubLinkOut(
        name=view.name,
        kind=view.kind.value,
        consumer=view.consumer,
        disableOnRevoke=view.disable_on_revoke,
        registerDevices=view.register_devices,
        azure=(
            AzureTargetOut(
                subscriptionId=azure.subscription_id,
                resourceGroup=azure.resource_group,
                hubName=azure.hub_name,
                managementUrl=azure.management_url,
                credential=azure.credential.value,
                tenantId=azure.tenant_id,
                clientId=azure.client_id,
                authorityHost=azure.authority_host,
                certificatePath=azure.certificate_path,
                serviceUrl=azure.service_url,
                caBundle=azure.ca_bundle,
            )
            if azure is not None
            else None
        ),
        hasSecret=view.has_secret,
        cas=[
            LinkCAOut(
                caId=c.ca_id,
                caName=c.ca_name,
                addedAt=iso(c.added_at),
                certificateName=c.certificate_name,
                thumbprint=c.thumbprint,
                verifiedAt=iso(c.verified_at) if c.verified_at else None,
                lastError=c.last_error,
            )
            for c in view.cas
        ],
        createdAt=iso(view.created_at),
        updatedAt=iso(view.updated_at),
    )


def link_trust_out(view: LinkTrustView) -> LinkTrustOut:
    """The JSON form of a trust result."""
    return LinkTrustOut(
        link=view.link,
        caId=view.ca_id,
        certificateName=view.certificate_name,
        thumbprint=view.thumbprint,
        verified=view.verified,
    )


@router.get("", response_model=list[HubLinkOut])
def list_links(request: Request, caller: AdminDep) -> list[HubLinkOut]:
    """Every hub link, by name."""
    return [hub_link_out(v) for v in get_fleet(request).hub_links.list(caller.actor)]


@router.post("", response_model=HubLinkOut, status_code=201)
def add_link(body: HubLinkIn, request: Request, caller: AdminDep) -> HubLinkOut:
    """Add a hub link; a refused one changes nothing."""
    command = link_command(
        body.name,
        body.kind,
        ca_ids=body.caIds,
        disable_on_revoke=body.disableOnRevoke,
        register_devices=body.registerDevices,
        subscription_id=body.subscriptionId,
        resource_group=body.resourceGroup,
        hub_name=body.hubName,
        management_url=body.managementUrl,
        credential=body.credential,
        tenant_id=body.tenantId,
        client_id=body.clientId,
        authority_host=body.authorityHost,
        certificate_path=body.certificatePath,
        service_url=body.serviceUrl,
        ca_bundle=body.caBundle,
        secret=body.secret,
    )
    return hub_link_out(get_fleet(request).hub_links.add(caller.actor, command))


@router.get("/{name}", response_model=HubLinkOut)
def get_link(name: str, request: Request, caller: AdminDep) -> HubLinkOut:
    """One hub link."""
    return hub_link_out(get_fleet(request).hub_links.get(caller.actor, name))


@router.delete("/{name}", status_code=204, response_class=Response)
def remove_link(name: str, request: Request, caller: AdminDep) -> Response:
    """Remove a hub link (the hub keeps what it was given)."""
    get_fleet(request).hub_links.remove(caller.actor, name)
    return Response(status_code=204)


@router.post("/{name}/trust", response_model=LinkTrustOut)
def trust_ca(name: str, body: LinkTrustIn, request: Request, caller: AdminDep) -> LinkTrustOut:
    """One-click trust: upload the CA certificate to the link's hub and prove possession."""
    return link_trust_out(get_fleet(request).hub_links.trust(caller.actor, name, body.caId))


@router.get("/{name}/status", response_model=LinkStatusOut)
def link_status(
    name: str,
    request: Request,
    caller: AdminDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> LinkStatusOut:
    """The link's delivery: pending and failing counts, and the failed rows (up to ``limit``)."""
    [view] = get_fleet(request).hub_links.status(caller.actor, name, limit=limit)
    return link_status_out(view)


@router.post("/{name}/retry", response_model=LinkRetryOut)
def retry_link(name: str, request: Request, caller: AdminDep) -> LinkRetryOut:
    """Requeue the link's failed deliveries (due now, attempts counted from zero)."""
    [view] = get_fleet(request).hub_links.retry(caller.actor, name)
    return link_retry_out(view)
