"""What revoking a certificate does to the hubs: the devices disabled (or pinned), in which hub.

Asked before a revocation, it says what will happen; after, it also says how far each
hub got (its delivery of the ``certificate.revoked`` event). The decision per link is
the one the link's delivery takes (:func:`fleetpki.services.link_delivery.revocation_plan_in`),
so what is shown is what is done.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from fleetpki.services.ca_views import CertificateView, certificate_view
from fleetpki.services.certificate_access import (
    certificate_by_serial,
    may_revoke,
    visible_certificate,
)
from fleetpki.services.context import Actor, Clock
from fleetpki.services.hub_devices import HubDeviceView, device_view
from fleetpki.services.link_delivery import revocation_plan_in
from fleetpki.services.outbox import CERTIFICATE_REVOKED
from fleetpki.services.ports import Store
from fleetpki.services.ports.events import DeliveryState

__all__ = ["LinkAction", "LinkEffectView", "RevocationEffectService", "RevocationEffectView"]


class LinkAction(enum.Enum):
    """What a hub link does to the device when the certificate is revoked."""

    #: The device is disabled in the linked hub.
    DISABLE = "disable"
    #: The device renewed: it is pinned to its newest certificate until the revoked one expires.
    PIN = "pin"
    #: The link does not trust the certificate's CA.
    NOT_TRUSTED = "not-trusted"
    #: The link's "disable the device when its certificate is revoked" option is off.
    OPTION_OFF = "option-off"
    #: Nothing is left to protect against (the certificate expired or names no device).
    NOTHING = "nothing"


@dataclass(frozen=True, slots=True)
class LinkEffectView:
    """One hub link's part in a revocation.

    Attributes:
        pin_thumbprint: for :attr:`LinkAction.PIN`, the SHA-1 the device is pinned to.
        delivery: how far the link got with the revocation, once it was made.
    """

    link: str
    kind: str
    action: LinkAction
    pin_thumbprint: str | None
    delivery: DeliveryState | None


@dataclass(frozen=True, slots=True)
class RevocationEffectView:
    """The effect of revoking one certificate.

    Attributes:
        device_id: the certificate's CN, the device id in every hub.
        builtin_device: the device in the built-in hub, if registered there: the hub
            refuses the certificate from the revocation on and closes its live session.
        links: each hub link's action and delivery.
        hub_deliveries: the built-in hub nodes' deliveries of the revocation.
        may_revoke: whether the actor may revoke the certificate.
    """

    certificate: CertificateView
    device_id: str | None
    builtin_device: HubDeviceView | None
    links: tuple[LinkEffectView, ...]
    hub_deliveries: tuple[DeliveryState, ...]
    may_revoke: bool


class RevocationEffectService:
    """The effect of a revocation on the hubs.

    Args:
        store: the database.
        clock: the source of "now".
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def effect(self, actor: Actor, serial: str) -> RevocationEffectView:
        """What revoking the certificate does (or did) in each hub, for one the actor can see.

        Raises:
            NotFoundError: ``certificate.not_found``, also when the actor cannot see it.
        """
        now: dt.datetime = self._clock()
        with self._store.transaction() as tx:
            record = certificate_by_serial(tx, serial)
            visible_certificate(tx, actor, record)
            revoked = record.status == "revoked"
            states = (
                tx.events.deliveries_of(CERTIFICATE_REVOKED, record.serial_hex) if revoked else []
            )
            deliveries = {d.consumer: d for d in states}
            # A revoked certificate is judged as of its revocation, so the view after it
            # says what the link did.
            as_of = min(now, record.revoked_at) if record.revoked_at is not None else now
            links = []
            for link in tx.hub_links.list():
                if record.ca_id not in {entry.ca_id for entry in link.cas}:
                    action, pin = LinkAction.NOT_TRUSTED, None
                elif not link.disable_on_revoke:
                    action, pin = LinkAction.OPTION_OFF, None
                else:
                    ca_ids = {entry.ca_id for entry in link.cas}
                    plan = revocation_plan_in(tx, ca_ids, record, now=as_of)
                    if plan is None:
                        action, pin = LinkAction.NOTHING, None
                    elif plan.pin is None:
                        action, pin = LinkAction.DISABLE, None
                    else:
                        action, pin = LinkAction.PIN, plan.pin.sha1
                links.append(
                    LinkEffectView(link.name, link.kind, action, pin, deliveries.get(link.consumer))
                )
            device = tx.hub_devices.get(record.subject_cn) if record.subject_cn else None
            return RevocationEffectView(
                certificate=certificate_view(record),
                device_id=record.subject_cn,
                builtin_device=device_view(device) if device is not None else None,
                links=tuple(links),
                hub_deliveries=tuple(d for c, d in deliveries.items() if c.startswith("hub:")),
                may_revoke=not revoked and may_revoke(tx, actor, record),
            )
