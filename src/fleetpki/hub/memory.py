"""An in-memory `HubBackend`: a device registry, trusted CAs, twins and queues in dicts.

It stands in for the database-backed control plane in tests and benchmarks, and makes
the same decisions in the same order (ref §4.2): the chain must reach a *verified*
trusted CA, the leaf CN must be the client id, the device must be registered and
enabled, and the certificate must not be revoked. Telemetry is kept in a list, or
handed to a ``telemetry_sink`` (a benchmark's durable store).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from fleetpki.errors import AuthenticationError, NotFoundError
from fleetpki.hub.backend import (
    AuthenticatedDevice,
    C2DMessage,
    C2DQueued,
    CertificateRevoked,
    DesiredPatched,
    DeviceBlocked,
    HubEvent,
    HubListener,
    TelemetryRecord,
    Twin,
)
from fleetpki.pki.chain import verify_client_chain

__all__ = ["InMemoryHubBackend", "certificate_sha1", "common_name"]


def certificate_sha1(certificate: x509.Certificate) -> str:
    """The SHA-1 thumbprint as upper-case hex, the form Azure and fleetpki show."""
    return certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - a thumbprint


def common_name(certificate: x509.Certificate) -> str | None:
    """The subject CN, or ``None``."""
    attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode()


@dataclass(slots=True)
class _Device:
    enabled: bool = True
    desired: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)
    desired_version: int = 1
    reported_version: int = 1
    c2d: list[C2DMessage] = field(default_factory=list)


class InMemoryHubBackend:
    """A `HubBackend` in memory; thread-safe.

    Args:
        telemetry_sink: called with each batch instead of keeping it in `telemetry`.
    """

    def __init__(
        self, *, telemetry_sink: Callable[[Sequence[TelemetryRecord]], None] | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._cas: dict[str, tuple[x509.Certificate, bool]] = {}
        self._revoked_sha1: set[str] = set()
        self._revoked_serials: set[str] = set()
        self._listeners: list[HubListener] = []
        self._sink = telemetry_sink
        #: Telemetry stored so far, when there is no sink.
        self.telemetry: list[TelemetryRecord] = []

    # -- control plane side --

    def trust_ca(self, certificate: x509.Certificate, *, verified: bool = True) -> None:
        """Trust a CA certificate; only verified ones authenticate devices (ref §4.1)."""
        with self._lock:
            self._cas[certificate_sha1(certificate)] = (certificate, verified)

    def add_device(self, device_id: str, *, enabled: bool = True) -> None:
        """Register a certificate-authority device."""
        with self._lock:
            self._devices[device_id] = _Device(enabled=enabled)

    def set_enabled(self, device_id: str, enabled: bool) -> None:
        """Enable or disable a device; disabling closes its live session."""
        with self._lock:
            self._device(device_id).enabled = enabled
        if not enabled:
            self._emit(DeviceBlocked(device_id, "hub.device_disabled"))

    def delete_device(self, device_id: str) -> None:
        """Remove a device; its live session is closed."""
        with self._lock:
            self._devices.pop(device_id, None)
        self._emit(DeviceBlocked(device_id, "hub.unknown_device"))

    def revoke(self, certificate: x509.Certificate) -> None:
        """Revoke a certificate; a session using it is closed."""
        sha1 = certificate_sha1(certificate)
        serial = format(certificate.serial_number, "X")
        with self._lock:
            self._revoked_sha1.add(sha1)
            self._revoked_serials.add(serial)
        self._emit(CertificateRevoked(sha1=sha1, serial=serial))

    def patch_desired(self, device_id: str, patch: Mapping[str, Any]) -> int:
        """Merge a desired-properties patch and notify the device; return the version."""
        with self._lock:
            device = self._device(device_id)
            _merge(device.desired, patch)
            device.desired_version += 1
            version = device.desired_version
        self._emit(DesiredPatched(device_id, dict(patch), version))
        return version

    def send_c2d(self, device_id: str, message: C2DMessage) -> None:
        """Queue a cloud-to-device message."""
        with self._lock:
            self._device(device_id).c2d.append(message)
        self._emit(C2DQueued(device_id))

    # -- HubBackend --

    def authenticate(
        self,
        leaf: x509.Certificate,
        chain: Sequence[x509.Certificate],
        client_id: str,
        now: dt.datetime,
    ) -> AuthenticatedDevice:
        """See `HubBackend.authenticate`."""
        with self._lock:
            cas = list(self._cas.values())
            device = self._devices.get(client_id.partition("/")[0])
            enabled = device.enabled if device else False
        verified = [cert for cert, ok in cas if ok]
        intermediates = [*chain, *(cert for cert, _ in cas)]
        try:
            verify_client_chain(leaf, intermediates, verified, now=now)
        except AuthenticationError:
            try:
                verify_client_chain(leaf, intermediates, [c for c, _ in cas], now=now)
            except AuthenticationError:
                raise AuthenticationError(
                    "hub.untrusted_ca", "the certificate does not chain to a trusted CA"
                ) from None
            raise AuthenticationError(
                "hub.ca_unverified", "the certificate's CA is trusted but not verified"
            ) from None
        if common_name(leaf) != client_id:
            raise AuthenticationError("hub.cn_mismatch", "the certificate CN is not the client id")
        if device is None:
            raise AuthenticationError("hub.unknown_device", "no such device in the registry")
        if not enabled:
            raise AuthenticationError("hub.device_disabled", "the device is disabled")
        sha1 = certificate_sha1(leaf)
        serial = format(leaf.serial_number, "X")
        if sha1 in self._revoked_sha1 or serial in self._revoked_serials:
            raise AuthenticationError("hub.certificate_revoked", "the certificate is revoked")
        device_id, _, module_id = client_id.partition("/")
        return AuthenticatedDevice(device_id, sha1, serial, module_id or None)

    def store_telemetry(self, batch: Sequence[TelemetryRecord]) -> None:
        """See `HubBackend.store_telemetry`."""
        if self._sink is not None:
            self._sink(batch)
            return
        with self._lock:
            self.telemetry.extend(batch)

    def get_twin(self, device_id: str) -> Twin:
        """See `HubBackend.get_twin`."""
        with self._lock:
            d = self._device(device_id)
            return Twin(dict(d.desired), dict(d.reported), d.desired_version, d.reported_version)

    def patch_reported(self, device_id: str, patch: Mapping[str, Any]) -> int:
        """See `HubBackend.patch_reported`."""
        with self._lock:
            device = self._device(device_id)
            _merge(device.reported, patch)
            device.reported_version += 1
            return device.reported_version

    def pending_c2d(self, device_id: str) -> Sequence[C2DMessage]:
        """See `HubBackend.pending_c2d`."""
        with self._lock:
            device = self._devices.get(device_id)
            return list(device.c2d) if device else []

    def mark_c2d_delivered(self, device_id: str, message_id: str) -> None:
        """See `HubBackend.mark_c2d_delivered`."""
        with self._lock:
            device = self._devices.get(device_id)
            if device is not None:
                device.c2d = [m for m in device.c2d if m.message_id != message_id]

    def add_listener(self, listener: HubListener) -> None:
        """See `HubBackend.add_listener`."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: HubListener) -> None:
        """See `HubBackend.remove_listener`."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # -- internals --

    def _device(self, device_id: str) -> _Device:
        device = self._devices.get(device_id)
        if device is None:
            raise NotFoundError("hub.unknown_device", f"no device {device_id!r}")
        return device

    def _emit(self, event: HubEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    # A twin patch is a JSON merge: null deletes a key (ref §3.3).
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
