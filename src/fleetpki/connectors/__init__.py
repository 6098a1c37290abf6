"""What a CA does to a hub: one small interface (`HubConnector`) and its implementations.

A hub link (a linked Azure IoT Hub, or a fleetpki hub) is driven through a connector:
trust a CA certificate with proof of possession, replace or remove it, register a
device for certificate-authority authentication, disable or enable it, pin it to a
thumbprint, and check the hub's health. Connectors do network I/O only; the services
call them outside any database transaction.
"""

from __future__ import annotations

from fleetpki.connectors.connector import (
    ConnectorError,
    DeviceAuthentication,
    HubConnector,
    HubHealth,
    ProofSigner,
    TrustedCA,
)

__all__ = [
    "ConnectorError",
    "DeviceAuthentication",
    "HubConnector",
    "HubHealth",
    "ProofSigner",
    "TrustedCA",
]
