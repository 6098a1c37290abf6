"""The connector to the built-in hub of this process: the hub services, called directly.

Each operation is one or more calls on the application's hub services
(``fleet.hub_trust``, ``fleet.hub_devices``), each its own unit of work, in the same
steps Azure's management plane and service API take: upload, generate a verification
code, verify with a proof, each step naming the etag it read (ref §4.1, §3.3). A
fleetpki hub in another process is reached by the azure connector instead, pointed at
that hub's management URL.

The hub services raise fleetpki's own errors; this connector turns them into
:class:`ConnectorError` with the hub's code in the message, an etag race being
transient (another writer got there first; the next attempt reads the new etag).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.connectors.connector import (
    ConnectorError,
    DeviceAuthentication,
    HubHealth,
    ProofSigner,
    TrustedCA,
    check_replaceable,
)
from fleetpki.errors import ConflictError, FleetPKIError, NotFoundError
from fleetpki.hub.policy import AuthType, DeviceStatus
from fleetpki.pki.issuance import thumbprints
from fleetpki.pki.names import dotnet_subject
from fleetpki.services.hub_devices import DeviceSpec, HubDeviceService
from fleetpki.services.hub_trust import HubCAView, HubTrustService
from fleetpki.services.hub_twins import HubTwinService

__all__ = ["BuiltinHubConnector"]

_T = TypeVar("_T")


def _hub_call(call: Callable[[], _T]) -> _T:
    try:
        return call()
    except ConnectorError:
        raise
    except FleetPKIError as exc:
        raise ConnectorError(
            "link.conflict" if exc.code == "precondition.failed" else "link.refused",
            f"the built-in hub refused: {exc.message} ({exc.code})",
            transient=exc.code == "precondition.failed",
        ) from exc


class BuiltinHubConnector:
    """:class:`fleetpki.connectors.HubConnector` for this process's built-in hub.

    Args:
        trust: the hub's trusted CAs.
        devices: the hub's device registry.
        twins: the hub's twins (a registered device's initial twin).
        description: how :meth:`health` names the hub (its host and hub name).
    """

    def __init__(
        self,
        trust: HubTrustService,
        devices: HubDeviceService,
        *,
        description: str,
        twins: HubTwinService | None = None,
    ) -> None:
        self._trust = trust
        self._devices = devices
        self._twins = twins
        self._description = description

    def trust_ca(self, name: str, certificate_pem: bytes, prove: ProofSigner) -> TrustedCA:
        """See :meth:`HubConnector.trust_ca`.

        A certificate the hub already holds (under any name, e.g. from ``fleetpki hub
        trust``) is proven under that name, or kept as it is when verified.
        """
        der = x509.load_pem_x509_certificate(certificate_pem).public_bytes(
            serialization.Encoding.DER
        )
        sha1 = thumbprints(der)[0]
        held = _hub_call(self._trust.list)
        record: HubCAView | None = next((c for c in held if c.sha1_hex.upper() == sha1), None)
        if record is not None and record.is_verified:
            return TrustedCA(record.name, sha1, True)
        if record is None:
            other = next((c for c in held if c.name == name), None)
            if other is not None:
                # Another certificate under this name: the CA's older generation is
                # replaced, another CA's certificate refused.
                new_subject = x509.load_der_x509_certificate(der).subject
                held_subject = x509.load_der_x509_certificate(other.certificate_der).subject
                check_replaceable(name, dotnet_subject(held_subject), dotnet_subject(new_subject))
                _hub_call(lambda: self._trust.delete(name, if_match=other.etag))
            record = _hub_call(lambda: self._trust.upload(name, certificate_pem))
        uploaded = record
        coded = _hub_call(
            lambda: self._trust.generate_verification_code(uploaded.name, if_match=uploaded.etag)
        )
        if coded.verification_code is None:
            raise ConnectorError("link.refused", "the built-in hub gave no verification code")
        proof = prove(coded.verification_code)
        verified = _hub_call(lambda: self._trust.verify(coded.name, proof, if_match=coded.etag))
        return TrustedCA(verified.name, verified.sha1_hex.upper(), verified.is_verified)

    def remove_ca(self, name: str) -> bool:
        """See :meth:`HubConnector.remove_ca`."""
        try:
            _hub_call(lambda: self._trust.delete(name))
        except ConnectorError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                return False
            raise
        return True

    def register_device(
        self, device_id: str, *, initial_twin: Mapping[str, Any] | None = None
    ) -> bool:
        """See :meth:`HubConnector.register_device` (an existing device is kept as it is)."""
        try:
            _hub_call(lambda: self._devices.put(DeviceSpec(device_id)))
        except ConnectorError as exc:
            cause = exc.__cause__
            if isinstance(cause, ConflictError) and cause.code == "hub.device_exists":
                return False
            raise
        if initial_twin and self._twins is not None:
            twins = self._twins
            _hub_call(lambda: twins.patch(device_id, initial_twin))
        return True

    def set_device_enabled(
        self, device_id: str, enabled: bool, *, reason: str | None = None
    ) -> bool:
        """See :meth:`HubConnector.set_device_enabled`."""
        status = DeviceStatus.ENABLED if enabled else DeviceStatus.DISABLED
        try:
            _hub_call(lambda: self._devices.set_status(device_id, status, reason=reason))
        except ConnectorError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                return False
            raise
        return True

    def set_device_authentication(
        self, device_id: str, authentication: DeviceAuthentication
    ) -> bool:
        """See :meth:`HubConnector.set_device_authentication` (status and reason kept)."""
        try:
            device = _hub_call(lambda: self._devices.get(device_id))
        except ConnectorError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                return False
            raise
        spec = DeviceSpec(
            device_id,
            auth_type=(
                AuthType.CERTIFICATE_AUTHORITY
                if authentication.is_certificate_authority
                else AuthType.SELF_SIGNED
            ),
            primary_thumbprint=authentication.thumbprint,
            status=DeviceStatus(device.status),
            status_reason=device.status_reason,
        )
        _hub_call(lambda: self._devices.put(spec, if_match=device.etag))
        return True

    def health(self) -> HubHealth:
        """See :meth:`HubConnector.health`: the hub answers when its registry reads."""
        try:
            self._devices.list(limit=1)
        except Exception as exc:  # a health check reports what failed, it does not raise
            return HubHealth(False, f"{self._description}: {type(exc).__name__}")
        return HubHealth(True, self._description)

    def close(self) -> None:
        """See :meth:`HubConnector.close`: the built-in hub holds no connections of its own."""
