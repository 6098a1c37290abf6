"""What the provisioning service is asked and what it shows: a device's registration and
poll as a device protocol received them (MQTT in `fleetpki.hub.provisioning`, HTTPS in
`fleetpki.api.dps`), and the installation's provisioning view.

The decisions are `fleetpki.services.provisioning`'s.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from fleetpki.services.provisioning_enrollments import AllocatableHub

__all__ = [
    "DeviceCredentials",
    "ProvisioningView",
    "RegistrationRequest",
    "StatusRequest",
    "id_scope_for",
]


def id_scope_for(seed: str) -> str:
    """An ID scope in Azure's form (``0ne`` and eight hex digits), fixed for ``seed``."""
    return "0ne" + hashlib.sha256(seed.encode()).hexdigest()[:8].upper()


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """What the device presented in TLS: its certificate and the others it sent (DER)."""

    leaf_der: bytes | None
    chain_der: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    """A registration, as a device protocol received it.

    Attributes:
        id_scope / registration_id: from the username (MQTT) or the path (HTTPS).
        credentials: the TLS client certificate and chain.
        body_registration_id: the body's ``registrationId`` (must equal the other).
        payload: the body's ``payload`` (custom data: checked to be small JSON, then
            unused, since custom allocation is not served).
        source: where it came from, for the audit log (``mqtt``, a client address).
    """

    id_scope: str
    registration_id: str
    credentials: DeviceCredentials
    body_registration_id: str | None = None
    payload: Any = None
    source: str = "mqtt"


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """A device polling its registration operation."""

    id_scope: str
    registration_id: str
    operation_id: str
    credentials: DeviceCredentials


@dataclass(frozen=True, slots=True)
class ProvisioningView:
    """The provisioning service of this installation (``fleetpki hub provisioning show``).

    Attributes:
        id_scope: what devices send with every registration.
        endpoint: the host name devices provision at (the built-in hub's).
        mqtt_port / api_port: MQTT on the hub's port, HTTPS (and MQTT over WebSockets)
            on the API port.
        hubs: where enrollments may send devices.
        groups / individual_enrollments: how many enrollments there are.
    """

    id_scope: str
    endpoint: str
    mqtt_port: int
    api_port: int
    hubs: tuple[AllocatableHub, ...]
    groups: int
    individual_enrollments: int
