"""The tutorial's device simulator: enroll a new device through the EZCA API and send telemetry.

Step for step what ``shared/reference/ezca-api.md`` ("What the IoT tutorial does")
describes: pick a CA from ``GetAvailableSSLCAs``; make a random GUID the device id;
register it in the hub with certificate-authority authentication; register the id as a
domain with the caller as owner and requester; make a 4096-bit RSA key and a SHA-256
CSR; request a 10-day certificate with the id as its only SAN; connect over MQTT and
send five JSON messages ``{"deviceId","messageId","temperature","humidity"}`` with the
application property ``temperatureAlert``. Each step is reported to a callback, which
the CLI turns into Rich progress.

With an ID scope (``--provision``) it is the tutorial's provisioning sibling: nothing
registers the device in the hub; once it holds its certificate it asks the provisioning
service (Azure DPS's protocol, `fleetpki.device.provisioning`) where to go, and
connects to the hub it is given.
"""

from __future__ import annotations

import random
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetpki.device.connection import DeviceClient
from fleetpki.device.enroller import enroll_device
from fleetpki.device.ezca_enroller import EzcaEnroller
from fleetpki.device.identity import DeviceDirectory, DeviceIdentity
from fleetpki.device.mqtt_transport import DEFAULT_MQTT_PORT
from fleetpki.device.provisioning import Assignment, ProvisioningClient
from fleetpki.device.registry import HubRegistry
from fleetpki.pki.keys import KeySpec

__all__ = [
    "DEFAULT_MESSAGES",
    "DEFAULT_VALIDITY_DAYS",
    "HUMIDITY_RANGE",
    "TEMPERATURE_ALERT_ABOVE",
    "TEMPERATURE_RANGE",
    "SimulationResult",
    "SimulatorSettings",
    "StepReport",
    "simulate_device",
    "telemetry_message",
]

#: Messages per device, as in the tutorial.
DEFAULT_MESSAGES = 5
#: The tutorial's certificate lifetime.
DEFAULT_VALIDITY_DAYS = 10
#: Inclusive ranges of the simulated readings (the tutorial's ``Next(20, 35)``, ``Next(60, 80)``).
TEMPERATURE_RANGE = (20, 34)
HUMIDITY_RANGE = (60, 79)
#: ``temperatureAlert`` is "true" above this temperature.
TEMPERATURE_ALERT_ABOVE = 30

#: Called with a step's name and a one-line detail as each step ends.
StepReport = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    """Where and how to simulate.

    Attributes:
        server_url: the CA server (EZCA routes).
        token: the caller's bearer token.
        hub_host: the hub's host name (MQTT username, TLS name).
        verify: a CA bundle for the CA server, or ``True`` for the system's roots.
        hub_ca_bundle: a CA bundle for the hub; by default the CA's root from enrollment.
        mqtt_port: the hub's MQTT-over-TLS port.
        connect_host: where to open the MQTT connection when not ``hub_host``.
        messages: telemetry messages per device.
        key_spec: the device key (RSA 4096 in the tutorial).
        validity_days: the certificate's lifetime.
        directory: keep each device's identity in ``directory/<device id>``.
        passphrase: encrypts the kept keys.
        id_scope: provision through DPS with this ID scope (at ``hub_host`` and
            ``mqtt_port``, the hub's port) instead of a hub registration.
    """

    server_url: str
    token: str
    hub_host: str
    verify: Path | str | ssl.SSLContext | bool = True
    hub_ca_bundle: Path | None = None
    mqtt_port: int = DEFAULT_MQTT_PORT
    connect_host: str | None = None
    messages: int = DEFAULT_MESSAGES
    key_spec: KeySpec = KeySpec.RSA_4096
    validity_days: int = DEFAULT_VALIDITY_DAYS
    directory: Path | None = None
    passphrase: bytes | None = field(default=None, repr=False)
    id_scope: str | None = None


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """One simulated device: its identity, the messages it sent, where it was provisioned."""

    identity: DeviceIdentity
    registered_in_hub: bool | None
    sent: tuple[dict[str, Any], ...]
    assignment: Assignment | None = None


def telemetry_message(
    device_id: str, message_id: int, rng: random.Random
) -> tuple[dict[str, Any], dict[str, str]]:
    """One tutorial message and its application properties."""
    temperature = rng.randint(*TEMPERATURE_RANGE)
    humidity = rng.randint(*HUMIDITY_RANGE)
    body = {
        "deviceId": device_id,
        "messageId": message_id,
        "temperature": temperature,
        "humidity": humidity,
    }
    alert = "true" if temperature > TEMPERATURE_ALERT_ABOVE else "false"
    return body, {"temperatureAlert": alert}


def _ignore(_step: str, _detail: str) -> None:
    return None


def simulate_device(
    settings: SimulatorSettings,
    *,
    registry: HubRegistry | None,
    report: StepReport = _ignore,
    rng: random.Random | None = None,
    device_id: str | None = None,
) -> SimulationResult:
    """Run the tutorial for one new device.

    Args:
        settings: servers, ports and choices.
        registry: registers the device in the hub; ``None`` skips that step (the device
            must then be registered some other way, or the hub refuses it).
        report: told about each finished step.
        rng: the readings' randomness.
        device_id: a fixed id instead of a random GUID.

    Raises:
        FleetPKIError: the first step that fails, with its stable code.
    """
    rng = rng or random.Random()
    device_id = device_id or str(uuid.uuid4())
    with EzcaEnroller(
        settings.server_url, settings.token, verify=settings.verify, register_domain=False
    ) as enroller:
        ca_id, template_id = enroller.choose_ca()
        report("choose CA", f"CA {ca_id}, template {template_id}")
        report("device id", device_id)
        registered: bool | None = None
        if settings.id_scope is not None:
            report("register in hub", "none: the device provisions itself through DPS")
        elif registry is not None:
            registered = registry.register_device(device_id)
            report(
                "register in hub",
                "certificate authority" if registered else "already registered",
            )
        else:
            report("register in hub", "skipped: no hub registry given")
        created = enroller.register_domain(device_id)
        report("register domain", "owner and requester: the caller" if created else "exists")
        directory = (
            DeviceDirectory(settings.directory / device_id, settings.passphrase)
            if settings.directory is not None
            else None
        )
        identity = enroll_device(
            enroller,
            device_id,
            key_spec=settings.key_spec,
            validity_days=settings.validity_days,
            directory=directory,
        )
    report(
        "certificate",
        f"{settings.key_spec.value}, serial {identity.serial_hex}, "
        f"until {identity.not_after:%Y-%m-%d %H:%M}Z",
    )
    hub_host, port, connect_host = settings.hub_host, settings.mqtt_port, settings.connect_host
    assignment: Assignment | None = None
    if settings.id_scope is not None:
        assignment = ProvisioningClient(
            identity,
            settings.hub_host,
            settings.id_scope,
            port=settings.mqtt_port,
            connect_host=settings.connect_host,
            ca_bundle=settings.hub_ca_bundle,
        ).register()
        report(
            "provision",
            f"ID scope {settings.id_scope}: assigned to {assignment.assigned_hub} as "
            f"{assignment.device_id} ({assignment.substatus})",
        )
        if assignment.assigned_hub.lower() != settings.hub_host.lower():
            # Another hub (a linked Azure IoT Hub): its own name and Azure's port.
            hub_host, port, connect_host = assignment.assigned_hub, DEFAULT_MQTT_PORT, None
    sent: list[dict[str, Any]] = []
    with DeviceClient(
        identity,
        hub_host,
        port=port,
        connect_host=connect_host,
        ca_bundle=settings.hub_ca_bundle,
    ) as client:
        client.connect()
        report("connect", f"mqtts://{hub_host}:{port}")
        for number in range(1, settings.messages + 1):
            body, properties = telemetry_message(device_id, number, rng)
            client.send_telemetry(body, properties=properties)
            sent.append(body)
            report(
                "telemetry",
                f"#{number} temperature {body['temperature']} humidity {body['humidity']} "
                f"alert {properties['temperatureAlert']}",
            )
    return SimulationResult(identity, registered, tuple(sent), assignment)
