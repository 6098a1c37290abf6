"""What an ``azure`` hub link needs: where the hub is, and the credential it calls with.

A link names its hub the way Azure does (subscription, resource group, hub name), the
management endpoint it reaches (Azure's public cloud by default, a sovereign cloud, or
fleetpki's own Azure-compatible endpoints) and a credential: one of azure-identity's
``DefaultAzureCredential``, ``ClientSecretCredential`` or ``CertificateCredential``,
with a configurable authority host. The device registry may instead use an IoT Hub
connection string (a shared access policy's key), which serves the registry only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential
from azure.identity import (
    AzureAuthorityHosts,
    CertificateCredential,
    ClientSecretCredential,
    DefaultAzureCredential,
)

from fleetpki.connectors.connector import ConnectorError

__all__ = [
    "IOTHUB_SCOPE",
    "PUBLIC_CLOUD_MANAGEMENT_URL",
    "AzureCredentialConfig",
    "AzureHubConfig",
    "ConnectionString",
    "CredentialKind",
    "build_credential",
    "management_scope",
]

#: Azure Resource Manager in Azure's public cloud.
PUBLIC_CLOUD_MANAGEMENT_URL = "https://management.azure.com"
#: The Entra resource of IoT Hub's service APIs (learn.microsoft.com, iot-hub
#: "Control access to IoT Hub by using Microsoft Entra ID"); Azure China uses
#: ``https://iothubs.chinacloudapi.cn`` (set ``registry_scope``).
IOTHUB_SCOPE = "https://iothubs.azure.net/.default"
_PUBLIC_CLOUD_SCOPE = "https://management.azure.com/.default"
# ARM endpoints of Azure's clouds: for these the token's audience is the endpoint itself.
_AZURE_MANAGEMENT_HOSTS = frozenset(
    {"management.azure.com", "management.chinacloudapi.cn", "management.usgovcloudapi.net"}
)
# Authority hosts that MSAL's instance discovery knows; any other host (fleetpki's own
# token endpoint, a private STS) must be used with instance discovery off, or MSAL asks
# login.microsoftonline.com about it and fails (notes/azure-arm.md §5).
_MICROSOFT_AUTHORITIES = frozenset(
    {
        AzureAuthorityHosts.AZURE_PUBLIC_CLOUD,
        AzureAuthorityHosts.AZURE_CHINA,
        AzureAuthorityHosts.AZURE_GOVERNMENT,
    }
)


class CredentialKind(enum.Enum):
    """Which azure-identity credential a link builds."""

    DEFAULT = "default"
    CLIENT_SECRET = "client-secret"  # noqa: S105 (a name, not a secret)
    CERTIFICATE = "certificate"

    @classmethod
    def parse(cls, text: str) -> CredentialKind:
        """The kind named ``text``.

        Raises:
            ConnectorError: ``link.bad_credential`` for another name.
        """
        try:
            return cls(text)
        except ValueError:
            names = ", ".join(k.value for k in cls)
            raise ConnectorError(
                "link.bad_credential", f"unknown credential kind {text!r}; use one of {names}"
            ) from None


@dataclass(frozen=True, slots=True)
class AzureCredentialConfig:
    """The Azure credential of a link (secrets are kept out of ``repr``).

    Attributes:
        kind: ``default`` (environment, managed identity, Azure CLI, ...),
            ``client-secret`` or ``certificate`` (a service principal).
        tenant_id / client_id: the service principal's tenant and application id.
        client_secret: its secret (``client-secret``).
        certificate_path: a PEM or PKCS#12 file with its certificate and key
            (``certificate``), and the file's password if any.
        authority_host: the token issuer's base URL, e.g. ``https://login.microsoftonline.us``
            for a sovereign cloud or fleetpki's own URL; Azure's public cloud when unset.
    """

    kind: CredentialKind = CredentialKind.DEFAULT
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    certificate_path: str | None = None
    certificate_password: str | None = field(default=None, repr=False)
    authority_host: str | None = None


@dataclass(frozen=True, slots=True)
class AzureHubConfig:
    """Where an Azure IoT Hub is, and how to reach its two planes.

    Attributes:
        subscription_id / resource_group / hub_name: the hub's place in Azure.
        credential: the Azure credential for the management plane (certificates, the
            hub resource) and, without a connection string, for the registry;
            ``None`` when only a connection string is given (registry only).
        management_url: Azure Resource Manager's endpoint.
        management_scope: the token scope for it; by default the endpoint's own for
            Azure's clouds and the public cloud's (``https://management.azure.com/.default``)
            for any other endpoint, which is what fleetpki's look-alike accepts.
        connection_string: an IoT Hub connection string
            (``HostName=..;SharedAccessKeyName=..;SharedAccessKey=..``) for the registry.
        service_url: the hub's service API; by default ``https://`` and the connection
            string's ``HostName``, or the host name the hub resource reports.
        registry_scope: the token scope for the service API.
        ca_bundle: a CA bundle (PEM file) that TLS connections trust instead of the
            system's (azure-core's ``connection_verify``).
        timeout: seconds to connect or wait for an answer.
    """

    subscription_id: str
    resource_group: str
    hub_name: str
    credential: AzureCredentialConfig | None = field(default_factory=AzureCredentialConfig)
    management_url: str = PUBLIC_CLOUD_MANAGEMENT_URL
    management_scope: str | None = None
    connection_string: str | None = field(default=None, repr=False)
    service_url: str | None = None
    registry_scope: str = IOTHUB_SCOPE
    ca_bundle: str | None = None
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class ConnectionString:
    """An IoT Hub connection string, split as the Azure SDK splits it (ref §3.1)."""

    host_name: str
    key_name: str
    key: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> ConnectionString:
        """Split on ``;`` and then on the first ``=``.

        Raises:
            ConnectorError: ``link.bad_connection_string`` naming the missing part
                (never the key).
        """
        parts: dict[str, str] = {}
        for item in text.strip().split(";"):
            name, sep, value = item.partition("=")
            if sep:
                parts[name.strip()] = value.strip()
        missing = [
            n for n in ("HostName", "SharedAccessKeyName", "SharedAccessKey") if not parts.get(n)
        ]
        if missing:
            raise ConnectorError(
                "link.bad_connection_string",
                f"the IoT Hub connection string has no {', '.join(missing)}",
            )
        return cls(parts["HostName"], parts["SharedAccessKeyName"], parts["SharedAccessKey"])


def management_scope(config: AzureHubConfig) -> str:
    """The token scope for the management endpoint (see :class:`AzureHubConfig`)."""
    if config.management_scope:
        return config.management_scope
    base = config.management_url.rstrip("/")
    if (urlsplit(base).hostname or "") in _AZURE_MANAGEMENT_HOSTS:
        return f"{base}/.default"
    return _PUBLIC_CLOUD_SCOPE


def _authority_kwargs(config: AzureCredentialConfig) -> dict[str, Any]:
    if not config.authority_host:
        return {}
    authority = config.authority_host.rstrip("/")
    host = urlsplit(authority if "://" in authority else f"https://{authority}").hostname
    return {
        "authority": authority,
        "disable_instance_discovery": host not in _MICROSOFT_AUTHORITIES,
    }


def _require(config: AzureCredentialConfig, *names: str) -> list[str]:
    values = [getattr(config, n) for n in names]
    missing = [n for n, v in zip(names, values, strict=True) if not v]
    if missing:
        raise ConnectorError(
            "link.credential_incomplete",
            f"a {config.kind.value} credential needs {', '.join(missing)}",
        )
    return [str(v) for v in values]


def build_credential(config: AzureCredentialConfig, *, ca_bundle: str | None) -> TokenCredential:
    """The azure-identity credential ``config`` describes.

    Token requests are not retried here: a hub link's dispatcher retries a failed
    delivery with its own backoff.

    Raises:
        ConnectorError: ``link.credential_incomplete`` naming the missing fields,
            ``link.bad_credential`` for a certificate file that cannot be used.
    """
    common: dict[str, Any] = {"retry_total": 0, **_authority_kwargs(config)}
    if ca_bundle:
        common["connection_verify"] = ca_bundle
    if config.kind is CredentialKind.CLIENT_SECRET:
        tenant, client, secret = _require(config, "tenant_id", "client_id", "client_secret")
        return ClientSecretCredential(tenant, client, secret, **common)
    if config.kind is CredentialKind.CERTIFICATE:
        tenant, client, path = _require(config, "tenant_id", "client_id", "certificate_path")
        password = config.certificate_password.encode() if config.certificate_password else None
        try:
            return CertificateCredential(tenant, client, path, password=password, **common)
        except OSError as exc:
            raise ConnectorError(
                "link.bad_credential", f"the certificate file {path} cannot be read: {exc.strerror}"
            ) from exc
        except ValueError as exc:
            # azure-identity's own words: an unreadable file, a wrong password, a key
            # that is not RSA (it signs its assertion with RS256).
            raise ConnectorError(
                "link.bad_credential", f"the certificate file {path} cannot be used: {exc}"
            ) from exc
    common.pop("disable_instance_discovery", None)
    return DefaultAzureCredential(**common)
