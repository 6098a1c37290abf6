"""The ``azure`` connector: an Azure IoT Hub (or fleetpki's look-alike) through Azure's own APIs.

Certificates and the hub resource go through ``azure-mgmt-iothub``'s ``IotHubClient``
(Azure Resource Manager, ref §4.1): upload a CA certificate, ask for a verification
code, present a certificate with ``CN=<code>`` signed by the CA's key, and the hub marks
the CA verified. Every change carries the etag just read, and a 412 (another writer
came first) re-reads and tries once more. Devices go through the hub's service REST
API (:mod:`fleetpki.connectors.azure_registry`).

Pointed at ``https://management.azure.com`` and Entra ID it drives a real Azure IoT
Hub; pointed at ``fleetpki serve`` (``management_url`` and ``authority_host`` set to
fleetpki's URL, with its token endpoint on) it drives the built-in hub with the same
code. Network I/O only; the SDK does not retry (``retry_total=0``): a link's
dispatcher retries transient failures with its own backoff.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.mgmt.iothub import IotHubClient
from azure.mgmt.iothub.models import (
    CertificateDescription,
    CertificateProperties,
    CertificateVerificationDescription,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.connectors.azure_config import (
    AzureCredentialConfig,
    AzureHubConfig,
    ConnectionString,
    CredentialKind,
    build_credential,
    management_scope,
)
from fleetpki.connectors.azure_registry import RegistryClient, retry_after
from fleetpki.connectors.connector import (
    ConnectorError,
    DeviceAuthentication,
    HubHealth,
    ProofSigner,
    TrustedCA,
    check_replaceable,
)
from fleetpki.pki.names import dotnet_subject
from fleetpki.services.hub_links import LinkConnection

__all__ = ["CERTIFICATES_ROLE", "AzureHubConnector", "connector_for_link"]

#: What the credential needs for certificates: a role with the actions
#: ``Microsoft.Devices/IotHubs/certificates/*`` on the hub (learn.microsoft.com,
#: role-based-access-control/permissions/internet-of-things), such as Contributor.
CERTIFICATES_ROLE = "a role with Microsoft.Devices/IotHubs/certificates/* such as 'Contributor'"
# ARM's codes for a missing subscription, group or hub (notes/azure-arm.md §4).
_HUB_MISSING = frozenset(
    {"SubscriptionNotFound", "ResourceGroupNotFound", "ResourceNotFound", "ParentResourceNotFound"}
)
_log = logging.getLogger(__name__)


class _EtagConflict(Exception):
    """A 412: the etag we sent is no longer the resource's (someone else wrote)."""


def _arm_code(exc: HttpResponseError) -> str:
    error = exc.error
    code = getattr(error, "code", None) if error is not None else None
    return str(code) if code is not None else ""


def _arm_message(exc: HttpResponseError) -> str:
    error = exc.error
    message = getattr(error, "message", None) if error is not None else None
    text = str(message) if message else str(exc.reason or "")
    return text.splitlines()[0][:300] if text else ""


def _sha1(certificate_pem: bytes) -> tuple[str, str]:
    """The certificate's upper-case SHA-1 (Azure's thumbprint) and its PEM text."""
    if b"-----BEGIN" in certificate_pem:
        cert = x509.load_pem_x509_certificate(certificate_pem)
    else:
        cert = x509.load_der_x509_certificate(certificate_pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper(), pem


def _thumbprint(value: str | None) -> str | None:
    return value.replace(":", "").strip().upper() if value else None


class AzureHubConnector:
    """A :class:`~fleetpki.connectors.HubConnector` for an Azure IoT Hub.

    Args:
        config: the hub and how to reach it.
        credential: an azure-identity credential to use instead of the one ``config``
            describes (for example one the caller already holds).

    Raises:
        ConnectorError: ``link.credential_incomplete``, ``link.bad_connection_string``,
            ``link.credential_missing`` for a configuration that cannot work.
    """

    def __init__(
        self, config: AzureHubConfig, *, credential: TokenCredential | None = None
    ) -> None:
        self.config = config
        self._owns_credential = credential is None and config.credential is not None
        if credential is None and config.credential is not None:
            credential = build_credential(config.credential, ca_bundle=config.ca_bundle)
        self._credential = credential
        self._connection = (
            ConnectionString.parse(config.connection_string) if config.connection_string else None
        )
        self._client: IotHubClient | None = None
        if credential is not None:
            options: dict[str, Any] = {
                "base_url": config.management_url.rstrip("/"),
                "credential_scopes": [management_scope(config)],
                "retry_total": 0,
                "connection_timeout": config.timeout,
                "read_timeout": config.timeout,
            }
            if config.ca_bundle:
                options["connection_verify"] = config.ca_bundle
            self._client = IotHubClient(credential, config.subscription_id, **options)
        self._service_base: str | None = config.service_url
        self._registry = RegistryClient(
            self._service_url,
            connection=self._connection,
            credential=credential,
            scope=config.registry_scope,
            hub_name=config.hub_name,
            ca_bundle=config.ca_bundle,
            timeout=config.timeout,
        )

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the SDK client, the registry's connections and a credential built here."""
        self._registry.close()
        if self._client is not None:
            self._client.close()  # type: ignore[no-untyped-call]  # azure-mgmt-iothub's own
        close: Callable[[], object] | None = getattr(self._credential, "close", None)
        if self._owns_credential and close is not None:
            close()

    def __enter__(self) -> AzureHubConnector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- errors -----------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        c = self.config
        return (
            f"IoT hub {c.hub_name!r} (resource group {c.resource_group!r}, "
            f"subscription {c.subscription_id!r})"
        )

    def _not_found(self, exc: ResourceNotFoundError) -> NoReturn:
        c, code = self.config, _arm_code(exc)
        if code == "SubscriptionNotFound":
            message = (
                f"Azure has no subscription {c.subscription_id!r}, or the credential cannot see it"
            )
        elif code == "ResourceGroupNotFound":
            message = (
                f"subscription {c.subscription_id!r} has no resource group {c.resource_group!r}"
            )
        else:
            message = f"resource group {c.resource_group!r} has no IoT hub {c.hub_name!r}"
        raise ConnectorError("link.not_found", f"{message} ({code})") from exc

    @contextmanager
    def _management(self, action: str) -> Iterator[None]:
        """Turn the SDK's errors into :class:`ConnectorError` naming what is missing.

        ``action`` says what was being done (``"read the hub"``, ``"upload certificate x"``).
        """
        c = self.config
        try:
            yield
        except ResourceNotFoundError as exc:
            if _arm_code(exc) in _HUB_MISSING:
                self._not_found(exc)
            raise
        except ClientAuthenticationError as exc:
            if exc.response is None:
                # No answer from ARM: the credential itself could not get a token.
                raise ConnectorError(
                    "link.credential",
                    f"the Azure credential could not get a token for {c.management_url}: "
                    f"{str(exc.message).splitlines()[0][:300]}",
                ) from exc
            raise ConnectorError(
                "link.unauthorized",
                f"Azure Resource Manager at {c.management_url} refused the credential's token "
                f"({_arm_code(exc)}: {_arm_message(exc)})",
            ) from exc
        except HttpResponseError as exc:
            status, code = exc.status_code or 0, _arm_code(exc)
            if status == 412:
                raise _EtagConflict(action) from exc
            if status == 403:
                raise ConnectorError(
                    "link.forbidden",
                    f"the credential may not {action} on {self._where}: it needs "
                    f"{CERTIFICATES_ROLE} on the hub ({code})",
                ) from exc
            if status == 400 and code == "InvalidSubscriptionId":
                raise ConnectorError(
                    "link.bad_subscription",
                    f"the subscription id {c.subscription_id!r} is malformed (not a GUID)",
                ) from exc
            headers = getattr(exc.response, "headers", None)
            if status == 429:
                raise ConnectorError(
                    "link.throttled",
                    f"Azure is throttling calls to {self._where} ({code})",
                    transient=True,
                    retry_after=retry_after(headers),
                ) from exc
            if status >= 500:
                raise ConnectorError(
                    "link.hub_error",
                    f"{self._where} failed to {action} ({status} {code})",
                    transient=True,
                    retry_after=retry_after(headers),
                ) from exc
            raise ConnectorError(
                "link.refused",
                f"{self._where} refused to {action} ({status} {code}: {_arm_message(exc)})",
            ) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise ConnectorError(
                "link.unreachable",
                f"Azure Resource Manager at {c.management_url} cannot be reached: "
                f"{type(exc).__name__}",
                transient=True,
            ) from exc
        except AzureError as exc:
            raise ConnectorError(
                "link.unreachable",
                f"the call to {self._where} failed: {type(exc).__name__}",
                transient=True,
            ) from exc

    def _mgmt(self) -> IotHubClient:
        if self._client is None:
            raise ConnectorError(
                "link.credential_missing",
                f"certificates of {self._where} need an Azure credential; an IoT Hub "
                "connection string serves the device registry only",
            )
        return self._client

    def _twice(self, what: str, attempt: Callable[[], Any]) -> Any:
        """Run ``attempt``; on an etag conflict re-run it once (it re-reads first)."""
        try:
            return attempt()
        except _EtagConflict:
            _log.info("etag conflict on %s of %s; re-reading once", what, self.config.hub_name)
        try:
            return attempt()
        except _EtagConflict as exc:
            raise ConnectorError(
                "link.conflict",
                f"{what} on {self._where} kept losing to another writer (412 twice)",
                transient=True,
            ) from exc

    # -- the hub resource -------------------------------------------------------------------

    def _service_url(self) -> str:
        if self._service_base is None:
            if self._connection is not None:
                self._service_base = f"https://{self._connection.host_name}"
            else:
                host = self._hub_description().properties.host_name
                self._service_base = f"https://{host}"
        return self._service_base

    def _hub_description(self) -> Any:
        c = self.config
        with self._management("read the hub"):
            return self._mgmt().iot_hub_resource.get(c.resource_group, c.hub_name)

    def health(self) -> HubHealth:
        """Read the hub resource (or, with a connection string only, the registry's counts).

        An unreachable or failing hub is ``reachable=False`` with the reason; a hub that
        answers with a refusal raises, since retrying will not help.

        Raises:
            ConnectorError: ``link.not_found``, ``link.forbidden``, ``link.unauthorized``,
                ``link.credential``, ``link.bad_subscription``.
        """
        try:
            if self._client is None:
                stats = self._registry.device_statistics()
                return HubHealth(
                    True,
                    f"the service API at {self._service_url()} answers "
                    f"({stats.get('totalDeviceCount', 0)} devices)",
                )
            hub = self._hub_description()
        except ConnectorError as exc:
            if exc.transient:
                return HubHealth(False, exc.message)
            raise
        properties = hub.properties
        if self._service_base is None and properties.host_name:
            self._service_base = f"https://{properties.host_name}"
        return HubHealth(
            True,
            f"IoT hub {hub.name!r} at {properties.host_name} is {properties.state or 'Active'}",
        )

    # -- certificates -----------------------------------------------------------------------

    def _get_certificate(self, name: str) -> Any | None:
        c = self.config
        try:
            with self._management(f"read certificate {name!r}"):
                return self._mgmt().certificates.get(c.resource_group, c.hub_name, name)
        except ResourceNotFoundError:
            return None

    def trust_ca(self, name: str, certificate_pem: bytes, prove: ProofSigner) -> TrustedCA:
        """Upload the CA certificate under ``name`` and prove possession (ref §4.1).

        A verified certificate with the same thumbprint is kept; the same certificate
        unverified is proven; another generation of the same CA (the same subject)
        under ``name`` is replaced with the etag read just before, and another CA's
        certificate under ``name`` is refused. A 412 re-reads and tries once more.

        Raises:
            ConnectorError: ``link.certificate_name_taken`` (:func:`check_replaceable`),
            ConnectorError: ``link.conflict`` (transient) after a second 412,
                ``link.refused`` when the hub refuses the proof, and the errors of
                :meth:`health`.
        """
        thumbprint, pem = _sha1(certificate_pem)
        subject = dotnet_subject(x509.load_pem_x509_certificate(pem.encode()).subject)

        def attempt() -> TrustedCA:
            c, client = self.config, self._mgmt()
            rg, hub = c.resource_group, c.hub_name
            current = self._get_certificate(name)
            if current is not None and (current.properties.thumbprint or "").upper() == thumbprint:
                if current.properties.is_verified:
                    return TrustedCA(name, thumbprint, True)
                etag = current.etag
            else:
                if current is not None:
                    check_replaceable(name, current.properties.subject or "", subject)
                body = CertificateDescription(properties=CertificateProperties(certificate=pem))
                with self._management(f"upload certificate {name!r}"):
                    uploaded = client.certificates.create_or_update(
                        rg, hub, name, body, if_match=current.etag if current else None
                    )
                etag = uploaded.etag
            with self._management(f"generate a verification code for {name!r}"):
                nonce = client.certificates.generate_verification_code(rg, hub, name, etag)
            proof = x509.load_der_x509_certificate(prove(nonce.properties.verification_code))
            request = CertificateVerificationDescription(
                certificate=proof.public_bytes(serialization.Encoding.PEM).decode()
            )
            with self._management(f"verify certificate {name!r}"):
                verified = client.certificates.verify(rg, hub, name, nonce.etag, request)
            return TrustedCA(name, thumbprint, bool(verified.properties.is_verified))

        trusted: TrustedCA = self._twice(f"trusting certificate {name!r}", attempt)
        _log.info("certificate %r (%s) trusted in %s", name, thumbprint, self.config.hub_name)
        return trusted

    def remove_ca(self, name: str) -> bool:
        """Delete certificate ``name`` with its current etag; ``False`` when there is none.

        Raises:
            ConnectorError: as :meth:`trust_ca`.
        """

        def attempt() -> bool:
            current = self._get_certificate(name)
            if current is None:
                return False
            c = self.config
            with self._management(f"delete certificate {name!r}"):
                self._mgmt().certificates.delete(c.resource_group, c.hub_name, name, current.etag)
            return True

        removed: bool = self._twice(f"removing certificate {name!r}", attempt)
        return removed

    # -- devices ----------------------------------------------------------------------------

    def register_device(
        self, device_id: str, *, initial_twin: Mapping[str, Any] | None = None
    ) -> bool:
        """Create the device with certificate-authority authentication; keep an existing one.

        A device created here gets ``initial_twin`` (tags and desired properties) with
        a twin PATCH (``If-Match: "*"``, ref §3.3). Returns whether it was created.

        Raises:
            ConnectorError: the registry's errors (``link.forbidden`` names the role).
        """
        if self._registry.get(device_id) is not None:
            return False
        body = {
            "deviceId": device_id,
            "status": "enabled",
            "authentication": {"type": "certificateAuthority"},
            "capabilities": {"iotEdge": False},
        }
        # Created without If-Match (ref §3.2); a 409 means another writer created it.
        created = self._registry.request("PUT", device_id, body=body).status_code != 409
        if created and initial_twin:
            self._registry.request(
                "PATCH", device_id, body=dict(initial_twin), if_match="*", collection="twins"
            )
        return created

    def _update_device(
        self, device_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> bool:
        """Read the device, apply ``change`` (``None``: nothing to do), write with its etag."""

        def attempt() -> bool:
            current = self._registry.get(device_id)
            if current is None:
                return False
            body = change(current)
            if body is None:
                return True
            response = self._registry.request(
                "PUT", device_id, body=body, if_match=str(current.get("etag") or "*")
            )
            if response.status_code == 412:
                raise _EtagConflict(device_id)
            return response.status_code != 404

        updated: bool = self._twice(f"updating device {device_id!r}", attempt)
        return updated

    def set_device_enabled(
        self, device_id: str, enabled: bool, *, reason: str | None = None
    ) -> bool:
        """Enable or disable the device (a no-op when it already is); ``False`` if absent.

        Raises:
            ConnectorError: the registry's errors.
        """
        status = "enabled" if enabled else "disabled"

        def change(current: dict[str, Any]) -> dict[str, Any] | None:
            if current.get("status") == status:
                return None
            return {**current, "status": status, "statusReason": reason}

        return self._update_device(device_id, change)

    def set_device_authentication(
        self, device_id: str, authentication: DeviceAuthentication
    ) -> bool:
        """Switch to CA authentication or pin a thumbprint (selfSigned); ``False`` if absent.

        Raises:
            ConnectorError: the registry's errors.
        """
        pin = _thumbprint(authentication.thumbprint)
        wanted_type = "certificateAuthority" if pin is None else "selfSigned"

        def change(current: dict[str, Any]) -> dict[str, Any] | None:
            auth = current.get("authentication") or {}
            thumbs = auth.get("x509Thumbprint") or {}
            if (
                auth.get("type") == wanted_type
                and _thumbprint(thumbs.get("primaryThumbprint")) == pin
            ):
                return None
            return {
                **current,
                "authentication": {
                    **auth,
                    "type": wanted_type,
                    "x509Thumbprint": {"primaryThumbprint": pin, "secondaryThumbprint": None},
                },
            }

        return self._update_device(device_id, change)


def connector_for_link(link: LinkConnection) -> AzureHubConnector:
    """The azure connector of a stored azure hub link (its secret revealed only here).

    Raises:
        ConnectorError: ``link.credential`` when the link is not an azure link.
    """
    target = link.azure
    if target is None:
        raise ConnectorError("link.credential", f"link {link.name!r} is not an azure link")
    secret = link.secret.reveal() if link.secret is not None else None
    kind = target.credential.value
    credential: AzureCredentialConfig | None
    connection_string = None
    if kind == "connection-string":
        credential, connection_string = None, secret
    elif kind == "client-secret":
        credential = AzureCredentialConfig(
            kind=CredentialKind.CLIENT_SECRET,
            tenant_id=target.tenant_id,
            client_id=target.client_id,
            client_secret=secret,
            authority_host=target.authority_host,
        )
    elif kind == "client-certificate":
        credential = AzureCredentialConfig(
            kind=CredentialKind.CERTIFICATE,
            tenant_id=target.tenant_id,
            client_id=target.client_id,
            certificate_path=target.certificate_path,
            certificate_password=secret,
            authority_host=target.authority_host,
        )
    else:
        credential = AzureCredentialConfig(
            kind=CredentialKind.DEFAULT,
            tenant_id=target.tenant_id,
            client_id=target.client_id,
            authority_host=target.authority_host,
        )
    return AzureHubConnector(
        AzureHubConfig(
            subscription_id=target.subscription_id,
            resource_group=target.resource_group,
            hub_name=target.hub_name,
            credential=credential,
            management_url=target.management_url,
            connection_string=connection_string,
            service_url=target.service_url,
            ca_bundle=target.ca_bundle,
        )
    )
