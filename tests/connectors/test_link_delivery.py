"""Delivery to a hub link, on the built-in hub reached through the ``azure`` connector.

A link is an event consumer of its own: revocations, renewals and registrations are
written with the change and carried to the hub by the link's worker. The hub here is a
real ``fleetpki serve`` driven through the unmodified azure-mgmt-iothub and the service
REST API; who may connect afterwards is decided by the hub's own device authenticator.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.errors import AuthenticationError
from fleetpki.hub.policy import AuthType, DeviceStatus
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.delivery import Backoff
from fleetpki.services.link_delivery import (
    LINK_EVENT_TYPES,
    LinkDelivery,
    LinkTarget,
    link_consumer,
)
from support.azure_hub import Hub, hub_fixture  # noqa: F401
from support.hub_control import authenticator, issue_device_certificate, issuing_ca

pytestmark = pytest.mark.slow


def _link(hub: Hub, name: str = "azure-1", **options: bool) -> LinkDelivery:
    fleet = hub.server.fleet
    issuing = issuing_ca(fleet)
    connector = hub.connector()
    connector.trust_ca("fleet-issuing", hub.pem("issuing"), hub.prover("issuing"))
    target = LinkTarget(name=name, ca_ids=frozenset({issuing.id}), **options)
    return LinkDelivery(fleet.store, fleet.now, target, connector, keystore=fleet.keystore)


def _drain(hub: Hub, link: LinkDelivery) -> Callable[[], None]:
    """Start the link's worker, retrying within a fifth of a second; return a stopper."""
    fleet = hub.server.fleet
    worker = fleet.start_consumer(
        link_consumer(link.target.name),
        LINK_EVENT_TYPES,
        link,
        poll=0.05,
        backoff=Backoff(base=0.05, cap=0.2),
    )
    return lambda: fleet.stop_consumer(worker)


def _wait_delivered(hub: Hub, link: LinkDelivery) -> None:
    consumer = link_consumer(link.target.name)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        backlog = hub.server.fleet.delivery.backlog(consumer)
        if backlog.pending == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"{consumer} still has {backlog}")


def _connects(
    hub: Hub, device_id: str, leaf: x509.Certificate, chain: list[x509.Certificate]
) -> str:
    try:
        authenticator(hub.server.fleet).authenticate(leaf, chain, device_id, hub.server.fleet.now())
    except AuthenticationError as exc:
        return exc.code
    return "ok"


def _revoke(hub: Hub, serial: str) -> None:
    hub.server.fleet.certificates.revoke(
        Actor.local_admin(), serial, RevocationReason.KEY_COMPROMISE
    )


def test_a_revoked_only_certificate_disables_the_device_in_the_hub(hub: Hub) -> None:
    fleet = hub.server.fleet
    link = _link(hub)
    link.connector.register_device("dev-only")
    leaf, chain, stored = issue_device_certificate(fleet, "dev-only")
    assert _connects(hub, "dev-only", leaf, chain) == "ok"
    stop = _drain(hub, link)
    try:
        _revoke(hub, stored.serial_hex)
        _wait_delivered(hub, link)
    finally:
        stop()
    device = fleet.hub_devices.get("dev-only")
    assert device.status == DeviceStatus.DISABLED.value
    assert _connects(hub, "dev-only", leaf, chain) == "hub.device_disabled"


def test_a_renewed_device_is_pinned_to_its_current_certificate_until_the_old_expires(
    hub: Hub,
) -> None:
    fleet = hub.server.fleet
    link = _link(hub)
    link.connector.register_device("dev-renewed")
    old_leaf, chain, old = issue_device_certificate(fleet, "dev-renewed")
    new_leaf, _, new = issue_device_certificate(fleet, "dev-renewed")
    stop = _drain(hub, link)
    try:
        _revoke(hub, old.serial_hex)
        _wait_delivered(hub, link)
    finally:
        stop()

    device = fleet.hub_devices.get("dev-renewed")
    assert device.status == DeviceStatus.ENABLED.value  # the legitimate device is not cut off
    assert device.auth_type == AuthType.SELF_SIGNED.value
    assert (device.primary_thumbprint or "").upper() == new.sha1_hex.upper()
    assert _connects(hub, "dev-renewed", new_leaf, chain) == "ok"
    assert _connects(hub, "dev-renewed", old_leaf, chain) != "ok"

    # Before the revoked certificate expires the pin stays; after, the device goes back.
    assert link.release_expired_pins() == 0
    later = old.not_after + dt.timedelta(seconds=1)
    expired = LinkDelivery(
        fleet.store, lambda: later, link.target, link.connector, keystore=fleet.keystore
    )
    assert expired.release_expired_pins() == 1
    device = fleet.hub_devices.get("dev-renewed")
    assert device.auth_type == AuthType.CERTIFICATE_AUTHORITY.value
    assert _connects(hub, "dev-renewed", new_leaf, chain) == "ok"
    assert expired.release_expired_pins() == 0  # released once


def test_revoking_the_newest_certificate_disables_the_device_despite_older_ones(
    hub: Hub,
) -> None:
    """An older valid certificate is no proof of a renewal: the current key was revoked."""
    fleet = hub.server.fleet
    link = _link(hub)
    link.connector.register_device("dev-newest")
    old_leaf, chain, _ = issue_device_certificate(fleet, "dev-newest")
    _, _, newest = issue_device_certificate(fleet, "dev-newest")
    stop = _drain(hub, link)
    try:
        _revoke(hub, newest.serial_hex)
        _wait_delivered(hub, link)
    finally:
        stop()
    device = fleet.hub_devices.get("dev-newest")
    assert device.status == DeviceStatus.DISABLED.value
    assert device.auth_type == AuthType.CERTIFICATE_AUTHORITY.value  # not pinned
    assert _connects(hub, "dev-newest", old_leaf, chain) == "hub.device_disabled"


def test_a_renewal_after_the_pin_moves_the_pin(hub: Hub) -> None:
    from conftest import make_csr

    fleet = hub.server.fleet
    link = _link(hub)
    link.connector.register_device("dev-moving")
    _, _, old = issue_device_certificate(fleet, "dev-moving")
    current_leaf, chain, current = issue_device_certificate(fleet, "dev-moving")
    stop = _drain(hub, link)
    try:
        _revoke(hub, old.serial_hex)
        _wait_delivered(hub, link)
        _, csr = make_csr("dev-moving")
        renewed = fleet.renewal.renew_with_client_certificate(
            certificate_der=current_leaf.public_bytes(serialization.Encoding.DER),
            csr=csr,
            source="test",
        )
        _wait_delivered(hub, link)
    finally:
        stop()
    device = fleet.hub_devices.get("dev-moving")
    assert device.auth_type == AuthType.SELF_SIGNED.value
    assert (device.primary_thumbprint or "").upper() == renewed.certificate.sha1_hex.upper()
    assert _connects(hub, "dev-moving", renewed.issued.certificate, chain) == "ok"
    assert _connects(hub, "dev-moving", current_leaf, chain) != "ok"
    assert current.sha1_hex != renewed.certificate.sha1_hex


def test_events_of_a_ca_the_link_does_not_trust_are_skipped(hub: Hub) -> None:
    fleet = hub.server.fleet
    link = _link(hub)
    link.connector.register_device("dev-elsewhere")
    _, _, stored = issue_device_certificate(fleet, "dev-elsewhere")
    other = LinkDelivery(
        fleet.store,
        fleet.now,
        LinkTarget(name="other", ca_ids=frozenset({"not-this-ca"})),
        link.connector,
        keystore=fleet.keystore,
    )
    stop = _drain(hub, other)
    try:
        _revoke(hub, stored.serial_hex)
        _wait_delivered(hub, other)
    finally:
        stop()
    assert fleet.hub_devices.get("dev-elsewhere").status == DeviceStatus.ENABLED.value


def test_a_link_without_disable_on_revoke_leaves_the_device(hub: Hub) -> None:
    fleet = hub.server.fleet
    link = _link(hub, disable_on_revoke=False)
    link.connector.register_device("dev-kept")
    _, _, stored = issue_device_certificate(fleet, "dev-kept")
    stop = _drain(hub, link)
    try:
        _revoke(hub, stored.serial_hex)
        _wait_delivered(hub, link)
    finally:
        stop()
    assert fleet.hub_devices.get("dev-kept").status == DeviceStatus.ENABLED.value


def test_register_devices_creates_the_device_when_its_domain_is_registered(hub: Hub) -> None:
    fleet = hub.server.fleet
    link = _link(hub, register_devices=True)
    stop = _drain(hub, link)
    try:
        leaf, chain, _ = issue_device_certificate(fleet, "dev-new")
        _wait_delivered(hub, link)
    finally:
        stop()
    device = fleet.hub_devices.get("dev-new")
    assert device.auth_type == AuthType.CERTIFICATE_AUTHORITY.value
    assert _connects(hub, "dev-new", leaf, chain) == "ok"


def test_a_hub_that_is_down_gets_every_revocation_once_it_is_back(hub: Hub) -> None:
    """Nothing is lost: deliveries wait, with backoff, until the hub answers again."""
    fleet = hub.server.fleet
    link = _link(hub)
    devices = [f"dev-down-{n}" for n in range(20)]
    serials = []
    for device_id in devices:
        link.connector.register_device(device_id)
        serials.append(issue_device_certificate(fleet, device_id)[2].serial_hex)
    down = LinkDelivery(
        fleet.store,
        fleet.now,
        link.target,
        hub.connector(management_url=_closed(), service_url=_closed()),
        keystore=fleet.keystore,
    )
    consumer = link_consumer(link.target.name)
    fleet.delivery.register(consumer, LINK_EVENT_TYPES)
    for serial in serials:
        _revoke(hub, serial)
    stop = _drain(hub, down)
    try:
        deadline = time.monotonic() + 20
        while fleet.delivery.backlog(consumer).failing < len(devices):
            assert time.monotonic() < deadline, fleet.delivery.backlog(consumer)
            time.sleep(0.05)
    finally:
        stop()
    assert all(fleet.hub_devices.get(d).status == DeviceStatus.ENABLED.value for d in devices)
    backlog = fleet.delivery.backlog(consumer)
    assert backlog.pending == len(devices) and "link.unreachable" in (backlog.last_error or "")

    # The hub is back: the retries deliver every revocation.
    stop = _drain(hub, link)
    try:
        _wait_delivered(hub, link)
    finally:
        stop()
    assert all(fleet.hub_devices.get(d).status == DeviceStatus.DISABLED.value for d in devices)


def _closed() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}"
