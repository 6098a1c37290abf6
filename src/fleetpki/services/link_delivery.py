"""Delivery to one hub link: revocations, renewals and registrations carried to the hub.

Each link is an event consumer of its own (``link:<name>``, see
:mod:`fleetpki.services.delivery`), so a link that is down only delays itself: its
deliveries wait, with backoff and the hub's ``Retry-After``, and nothing is lost on a
crash because the events were written with the changes. The handler here reads what
it needs in one short unit of work, calls the hub through its connector with no
transaction open, and records the result in another.

Revocation, for a device that authenticates by its CA (which a hub cannot tell apart
by certificate):

- the device has no valid certificate issued after the revoked one (it was the only
  one, or the newest): the device is disabled;
- the device has a newer valid certificate (it renewed): disabling it would cut off
  the legitimate device, so the link pins it to thumbprint authentication on its
  newest certificate until the revoked one expires (:class:`HubLinkPin`); each later
  renewal moves the pin, and :meth:`LinkDelivery.release_expired_pins` puts the device
  back on CA authentication once the revoked certificate can no longer be used.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.connectors.connector import (
    ConnectorError,
    DeviceAuthentication,
    HubConnector,
    TrustedCA,
)
from fleetpki.keystore import KeyStore
from fleetpki.services.ca_generations import activate_if_ready_in, generation_of
from fleetpki.services.context import LOCAL_ADMIN_ID, Actor, Clock
from fleetpki.services.delivery import DeliveryFailed
from fleetpki.services.hub_link_settings import certificate_name_for
from fleetpki.services.hub_trust import proof_signer
from fleetpki.services.outbox import (
    CA_GENERATION_CREATED,
    CA_GENERATION_RETIRED,
    CERTIFICATE_RENEWED,
    CERTIFICATE_REVOKED,
    DOMAIN_REGISTERED,
)
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.services.ports.ca import CertificateSearch
from fleetpki.services.ports.events import Delivery
from fleetpki.store.hub_models import HubLink, HubLinkGeneration, HubLinkPin
from fleetpki.store.models import CertificateRecord

__all__ = [
    "LINK_EVENT_TYPES",
    "LinkDelivery",
    "LinkTarget",
    "RevocationPlan",
    "link_consumer",
    "plan_revocation",
    "record_generation_in",
    "revocation_plan_in",
]

_log = logging.getLogger(__name__)

#: The events a hub link consumes.
LINK_EVENT_TYPES = frozenset(
    {
        CERTIFICATE_REVOKED,
        CERTIFICATE_RENEWED,
        DOMAIN_REGISTERED,
        CA_GENERATION_CREATED,
        CA_GENERATION_RETIRED,
    }
)


def record_generation_in(
    link: HubLink,
    ca_id: str,
    number: int,
    trusted: TrustedCA | None,
    error: str | None,
    *,
    now: dt.datetime,
) -> None:
    """Record on ``link`` what its hub said of a CA generation (caller's unit of work)."""
    entry = next((g for g in link.generations if g.ca_id == ca_id and g.generation == number), None)
    if entry is None:
        entry = HubLinkGeneration(
            link_name=link.name, ca_id=ca_id, generation=number, updated_at=now
        )
        link.generations.append(entry)
    if trusted is not None:
        entry.certificate_name, entry.thumbprint = trusted.name, trusted.thumbprint
        entry.verified_at = now if trusted.verified else entry.verified_at
        entry.last_error = None
    else:
        entry.last_error = error
    entry.updated_at = now


def link_consumer(link_name: str) -> str:
    """The event consumer name of a hub link."""
    return f"link:{link_name}"


@dataclass(frozen=True, slots=True)
class LinkTarget:
    """What delivery needs to know of a link.

    Attributes:
        name: the link's name.
        ca_ids: the fleetpki CAs the link trusts; events about other CAs are skipped.
        disable_on_revoke: disable (or pin) a device when its certificate is revoked.
        register_devices: create the device in the hub when its domain is registered.
    """

    name: str
    ca_ids: frozenset[str]
    disable_on_revoke: bool = True
    register_devices: bool = False


@dataclass(frozen=True, slots=True)
class ValidCertificate:
    """A device's certificate that is still valid: its serial, SHA-1 and validity, and
    ``order``, which grows with each issuance (the store's row id), so that two
    certificates issued in the same second still compare.
    """

    serial: str
    sha1: str
    not_before: dt.datetime
    not_after: dt.datetime
    order: int = 0


@dataclass(frozen=True, slots=True)
class RevocationPlan:
    """What a link does for one revocation.

    ``pin`` ``None`` means disable the device; otherwise pin it to that certificate
    until ``until`` (the revoked certificate's expiry).
    """

    device_id: str
    pin: ValidCertificate | None
    until: dt.datetime


def plan_revocation(
    device_id: str, revoked: ValidCertificate, others: list[ValidCertificate]
) -> RevocationPlan:
    """Pin the device to its newest certificate issued after the revoked one, if any;
    else disable it.

    Only a *newer* certificate means the device renewed and is the legitimate holder:
    a revoked certificate that is itself the newest (a compromised current key) leaves
    nothing to trust, so older ones do not keep the device in.
    """
    newer = [c for c in others if c.order > revoked.order]
    newest = max(newer, key=lambda c: c.order, default=None)
    return RevocationPlan(device_id=device_id, pin=newest, until=revoked.not_after)


def revocation_plan_in(
    tx: UnitOfWork, ca_ids: Collection[str], revoked: CertificateRecord, *, now: dt.datetime
) -> RevocationPlan | None:
    """What a link trusting ``ca_ids`` does when ``revoked`` is revoked (caller's unit).

    ``None`` when there is nothing left to protect against (the certificate expired, or
    it names no device); otherwise :func:`plan_revocation` over the device's other
    valid certificates from those CAs.
    """
    device_id = revoked.subject_cn
    if device_id is None or revoked.not_after <= now:
        return None
    others = [
        ValidCertificate(c.serial_hex, c.sha1_hex, c.not_before, c.not_after, c.id)
        for c in tx.certificates.search(
            CertificateSearch(now=now, subject_cn=device_id, status="valid", limit=1000)
        )
        if c.ca_id in ca_ids and c.serial_hex != revoked.serial_hex
    ]
    return plan_revocation(
        device_id,
        ValidCertificate(
            revoked.serial_hex, revoked.sha1_hex, revoked.not_before, revoked.not_after, revoked.id
        ),
        others,
    )


def _failed(exc: ConnectorError) -> DeliveryFailed:
    return DeliveryFailed(
        f"{exc.code}: {exc.message}", retry_after=exc.retry_after, permanent=not exc.transient
    )


class LinkDelivery:
    """The delivery handler of one hub link (a :data:`~fleetpki.services.delivery.Handler`).

    Args:
        store: the database.
        clock: the source of "now".
        target: the link.
        connector: how to reach its hub.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        target: LinkTarget,
        connector: HubConnector,
        *,
        keystore: KeyStore,
    ) -> None:
        self._store = store
        self._clock = clock
        self.target = target
        self.connector = connector
        self._keystore = keystore

    def __call__(self, delivery: Delivery) -> None:
        """Deliver one event to the hub (idempotent: delivering twice does no harm).

        Raises:
            DeliveryFailed: the hub refused or could not be reached (``permanent`` when
                retrying cannot help).
        """
        payload = delivery.payload
        if str(payload.get("ca_id")) not in self.target.ca_ids:
            return
        try:
            if delivery.event_type == CERTIFICATE_REVOKED and self.target.disable_on_revoke:
                self._revoked(str(payload["device_id"]), str(payload["serial"]))
            elif delivery.event_type == CERTIFICATE_RENEWED:
                self._renewed(str(payload["device_id"]), str(payload["sha1"]))
            elif delivery.event_type == DOMAIN_REGISTERED and self.target.register_devices:
                self.connector.register_device(str(payload["name"]))
            elif delivery.event_type == CA_GENERATION_CREATED:
                self._generation_created(str(payload["ca_id"]), int(payload["generation"]))
            elif delivery.event_type == CA_GENERATION_RETIRED:
                self._generation_retired(str(payload["ca_id"]), int(payload["generation"]))
        except ConnectorError as exc:
            raise _failed(exc) from exc

    # -- revocation -------------------------------------------------------------------------

    def _revoked(self, device_id: str, serial: str) -> None:
        now = self._clock()
        with self._store.transaction() as tx:
            revoked = tx.certificates.find_by_serial(serial)
            plan = (
                revocation_plan_in(tx, self.target.ca_ids, revoked, now=now)
                if revoked is not None and revoked.subject_cn == device_id
                else None
            )
            if plan is None:
                return  # nothing left to protect against
        if plan.pin is None:
            found = self.connector.set_device_enabled(
                device_id, False, reason="its certificate was revoked"
            )
            _log.info("link %s: device %s disabled (found: %s)", self.target.name, device_id, found)
            return
        found = self.connector.set_device_authentication(
            device_id, DeviceAuthentication(thumbprint=plan.pin.sha1)
        )
        if not found:
            return
        with self._store.transaction() as tx:
            pin = tx.link_pins.get(self.target.name, device_id)
            if pin is None:
                tx.link_pins.add(
                    HubLinkPin(
                        link_name=self.target.name,
                        device_id=device_id,
                        thumbprint=plan.pin.sha1,
                        revoked_serial=serial,
                        until=plan.until,
                        created_at=now,
                        updated_at=now,
                    )
                )
            else:
                pin.thumbprint = plan.pin.sha1
                pin.revoked_serial = serial
                pin.until = max(pin.until, plan.until)
                pin.updated_at = now
        _log.info(
            "link %s: device %s pinned to %s until %s",
            self.target.name,
            device_id,
            plan.pin.sha1,
            plan.until.isoformat(),
        )

    def _renewed(self, device_id: str, sha1: str) -> None:
        with self._store.transaction() as tx:
            pin = tx.link_pins.get(self.target.name, device_id)
            if pin is None or pin.thumbprint == sha1:
                return
        self.connector.set_device_authentication(device_id, DeviceAuthentication(thumbprint=sha1))
        with self._store.transaction() as tx:
            pin = tx.link_pins.get(self.target.name, device_id)
            if pin is not None:
                pin.thumbprint = sha1
                pin.updated_at = self._clock()

    # -- CA renewal: hubs first ------------------------------------------------------------

    def _generation_created(self, ca_id: str, number: int) -> None:
        """Upload and prove a CA's new generation; activate it if this was the last link."""
        with self._store.transaction() as tx:
            ca = tx.cas.get(ca_id)
            generation = generation_of(ca, number) if ca is not None else None
            if ca is None or generation is None or generation.state == "retired":
                return
            name = certificate_name_for(ca.name, ca.id, number)
            certificate = x509.load_der_x509_certificate(generation.certificate_der)
            key_ref = generation.key_ref

        prove = proof_signer(self._keystore, key_ref, certificate, self._clock)
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        try:
            trusted = self.connector.trust_ca(name, pem, prove)
        except ConnectorError as exc:
            self._record_generation(ca_id, number, None, f"{exc.message} ({exc.code})")
            raise
        self._record_generation(ca_id, number, trusted, None)

    def _generation_retired(self, ca_id: str, number: int) -> None:
        """Remove a retired generation's certificate from the hub (idempotent)."""
        with self._store.transaction() as tx:
            ca = tx.cas.get(ca_id)
            if ca is None:
                return
            name = certificate_name_for(ca.name, ca.id, number)
        self.connector.remove_ca(name)
        now = self._clock()
        with self._store.transaction() as tx:
            link = tx.hub_links.get(self.target.name)
            entry = next(
                (
                    g
                    for g in (link.generations if link is not None else [])
                    if g.ca_id == ca_id and g.generation == number
                ),
                None,
            )
            if entry is not None:
                entry.removed_at, entry.updated_at = now, now
        _log.info(
            "link %s: CA %s generation %d removed from the hub", self.target.name, ca_id, number
        )

    def _record_generation(
        self, ca_id: str, number: int, trusted: TrustedCA | None, error: str | None
    ) -> None:
        now = self._clock()
        with self._store.transaction() as tx:
            link = tx.hub_links.get(self.target.name)
            if link is None:
                return  # removed meanwhile
            record_generation_in(link, ca_id, number, trusted, error, now=now)
            if trusted is not None and trusted.verified:
                actor = Actor(LOCAL_ADMIN_ID, is_admin=True, source="hub link delivery")
                activated = activate_if_ready_in(tx, actor, ca_id, number, now=now)
                if activated:
                    _log.info("CA %s: generation %d active (every link holds it)", ca_id, number)

    # -- pins whose revoked certificate expired ---------------------------------------------

    def release_expired_pins(self) -> int:
        """Put pinned devices back on CA authentication once the revoked certificate expired.

        Returns how many devices went back. A hub that cannot be reached keeps the pins
        for the next call.

        Raises:
            ConnectorError: a permanent refusal by the hub.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            due = [(p.device_id, p.until) for p in tx.link_pins.due(self.target.name, now)]
        released = 0
        for device_id, until in due:
            try:
                self.connector.set_device_authentication(device_id, DeviceAuthentication())
            except ConnectorError as exc:
                if exc.transient:
                    _log.warning("link %s: pin of %s kept: %s", self.target.name, device_id, exc)
                    continue
                raise
            with self._store.transaction() as tx:
                pin = tx.link_pins.get(self.target.name, device_id)
                if pin is not None and pin.until == until:
                    tx.link_pins.delete(pin)
                    released += 1
        return released
