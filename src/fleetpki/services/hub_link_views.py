"""What the hub-link use cases take and return: commands and views (never ORM records).

Split from :mod:`fleetpki.services.hub_links` so the service module holds the use
cases only; the names are re-exported there.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from fleetpki.services.hub_link_settings import (
    DEFAULT_MANAGEMENT_URL,
    AzureTarget,
    CredentialKind,
    LinkKind,
    LinkSecret,
    certificate_name_for,
)
from fleetpki.services.link_delivery import LinkTarget
from fleetpki.services.ports.events import DeliveryBacklog, FailedDelivery

__all__ = [
    "CONSUMER_PREFIX",
    "HubLinkView",
    "LinkCAView",
    "LinkCommand",
    "LinkConnection",
    "LinkRetryView",
    "LinkRuntime",
    "LinkStatusView",
    "LinkTrustView",
    "certificate_name_for",
    "link_command",
]

#: A link's event consumer is ``link:<name>``.
CONSUMER_PREFIX = "link:"


@dataclass(frozen=True, slots=True)
class LinkCommand:
    """A link to add.

    Attributes:
        name: the link's name (1-64 letters, digits, ``.``, ``_``, ``-``).
        kind: builtin or azure.
        ca_ids: the CAs the link trusts (each must exist).
        disable_on_revoke: disable a device in the hub when its certificate is revoked.
        register_devices: register a device in the hub when its domain is registered.
        azure: where the hub is and how to authenticate (azure links only).
        secret: the credential's secret (client secret, connection string, or the
            client certificate's password); stored encrypted, never shown.
    """

    name: str
    kind: LinkKind
    ca_ids: Sequence[str] = ()
    disable_on_revoke: bool = True
    register_devices: bool = False
    azure: AzureTarget | None = None
    secret: LinkSecret | None = None


@dataclass(frozen=True, slots=True)
class LinkCAView:
    """A CA a link trusts, and what the hub said when it was last trusted there.

    Attributes:
        certificate_name / thumbprint: the hub's name for the certificate and its
            SHA-1 (upper hex), once trusted; ``None`` before.
        verified_at: when proof of possession last succeeded.
        last_error: the last trust attempt's error, until one succeeds.
    """

    ca_id: str
    ca_name: str
    added_at: dt.datetime
    certificate_name: str | None
    thumbprint: str | None
    verified_at: dt.datetime | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class HubLinkView:
    """A link as the CLI and the API present it (never its secret, only whether it has one).

    Attributes:
        consumer: the link's event consumer name, ``link:<name>``.
        azure: the Azure target, for azure links.
    """

    name: str
    kind: LinkKind
    consumer: str
    disable_on_revoke: bool
    register_devices: bool
    azure: AzureTarget | None
    has_secret: bool
    cas: tuple[LinkCAView, ...]
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class LinkConnection:
    """What a connector is built from: the link's target and its opened secret."""

    name: str
    kind: LinkKind
    azure: AzureTarget | None = None
    secret: LinkSecret | None = None


@dataclass(frozen=True, slots=True)
class LinkTrustView:
    """What one-click trust did: the hub holds the CA's certificate, verified."""

    link: str
    ca_id: str
    certificate_name: str
    thumbprint: str
    verified: bool


def link_command(
    name: str,
    kind: str,
    *,
    ca_ids: Sequence[str] = (),
    disable_on_revoke: bool = True,
    register_devices: bool = False,
    subscription_id: str | None = None,
    resource_group: str | None = None,
    hub_name: str | None = None,
    management_url: str | None = None,
    credential: str | None = None,
    tenant_id: str | None = None,
    client_id: str | None = None,
    authority_host: str | None = None,
    certificate_path: str | None = None,
    service_url: str | None = None,
    ca_bundle: str | None = None,
    secret: str | None = None,
) -> LinkCommand:
    """A :class:`LinkCommand` from the fields the CLI and the API take, as text.

    Any Azure field makes an Azure target (a builtin link then refuses it in
    :meth:`HubLinkService.add`); the checks themselves are the service's.

    Raises:
        ValidationError: ``link.bad_kind``, ``link.bad_credential``.
    """
    azure_fields = (
        subscription_id,
        resource_group,
        hub_name,
        management_url,
        credential,
        tenant_id,
        client_id,
        authority_host,
        certificate_path,
        service_url,
        ca_bundle,
    )
    target = None
    if any(value is not None for value in azure_fields):
        target = AzureTarget(
            subscription_id=subscription_id or "",
            resource_group=resource_group or "",
            hub_name=hub_name or "",
            management_url=management_url or DEFAULT_MANAGEMENT_URL,
            credential=CredentialKind.parse(credential or CredentialKind.DEFAULT.value),
            tenant_id=tenant_id,
            client_id=client_id,
            authority_host=authority_host,
            certificate_path=certificate_path,
            service_url=service_url,
            ca_bundle=ca_bundle,
        )
    return LinkCommand(
        name=name,
        kind=LinkKind.parse(kind),
        ca_ids=tuple(ca_ids),
        disable_on_revoke=disable_on_revoke,
        register_devices=register_devices,
        azure=target,
        secret=LinkSecret(secret) if secret else None,
    )


@dataclass(frozen=True, slots=True)
class LinkStatusView:
    """A link's delivery: what it still has to do and what it gave up on.

    Attributes:
        backlog: pending, failing and failed counts, the oldest pending event and the
            newest error.
        failed: the deliveries given up on (oldest first, up to the asked limit), each
            with its last error; ``fleetpki hub link retry`` requeues them.
    """

    link: str
    kind: LinkKind
    backlog: DeliveryBacklog
    failed: tuple[FailedDelivery, ...]


@dataclass(frozen=True, slots=True)
class LinkRetryView:
    """How many failed deliveries of a link were requeued."""

    link: str
    requeued: int


@dataclass(frozen=True, slots=True)
class LinkRuntime:
    """What a link's delivery worker runs from: the target it delivers for and the
    connection its connector is built from (with the opened secret: never present it).
    """

    target: LinkTarget
    connection: LinkConnection
