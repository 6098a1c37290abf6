"""The device SDK: keys and CSRs, enrollment and renewal, the hub connection, auto-renewal."""

from __future__ import annotations

from fleetpki.device.certificate_request import (
    DEFAULT_DEVICE_KEY_SPEC,
    DEVICE_KEY_SPECS,
    check_device_id,
    generate_device_key,
    make_csr,
    make_csr_pem,
)
from fleetpki.device.connection import MAX_MESSAGE_SIZE, DeviceClient
from fleetpki.device.enroller import (
    EnrolledCertificate,
    Enroller,
    enroll_device,
    renew_identity,
)
from fleetpki.device.est_enroller import EstEnroller
from fleetpki.device.ezca_enroller import EzcaEnroller, OfferedCA
from fleetpki.device.identity import (
    DeviceDirectory,
    DeviceIdentity,
    DeviceMetadata,
    client_ssl_context,
)
from fleetpki.device.messages import CloudMessage, MethodReply, MethodRequest, TwinResponse
from fleetpki.device.mqtt_transport import API_VERSION, DEFAULT_MQTT_PORT, mqtt_username
from fleetpki.device.registry import (
    HubConnectionString,
    HubRegistry,
    ServiceApiRegistry,
    sas_token,
)
from fleetpki.device.renewal import (
    DEFAULT_JITTER,
    DEFAULT_RENEW_FRACTION,
    RenewalPolicy,
    Renewer,
    start_auto_renewal,
)
from fleetpki.device.simulator import (
    SimulationResult,
    SimulatorSettings,
    simulate_device,
    telemetry_message,
)
from fleetpki.device.v1_enroller import V1Enroller

__all__ = [
    "API_VERSION",
    "DEFAULT_DEVICE_KEY_SPEC",
    "DEFAULT_JITTER",
    "DEFAULT_MQTT_PORT",
    "DEFAULT_RENEW_FRACTION",
    "DEVICE_KEY_SPECS",
    "MAX_MESSAGE_SIZE",
    "CloudMessage",
    "DeviceClient",
    "DeviceDirectory",
    "DeviceIdentity",
    "DeviceMetadata",
    "EnrolledCertificate",
    "Enroller",
    "EstEnroller",
    "EzcaEnroller",
    "HubConnectionString",
    "HubRegistry",
    "MethodReply",
    "MethodRequest",
    "OfferedCA",
    "RenewalPolicy",
    "Renewer",
    "ServiceApiRegistry",
    "SimulationResult",
    "SimulatorSettings",
    "TwinResponse",
    "V1Enroller",
    "check_device_id",
    "client_ssl_context",
    "enroll_device",
    "generate_device_key",
    "make_csr",
    "make_csr_pem",
    "mqtt_username",
    "renew_identity",
    "sas_token",
    "simulate_device",
    "start_auto_renewal",
    "telemetry_message",
]
