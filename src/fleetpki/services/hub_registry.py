"""The hub's device registry: re-exports of devices, twins and statistics, and authentication.

The registry's use cases live in :mod:`fleetpki.services.hub_devices`,
:mod:`fleetpki.services.hub_twins` and :mod:`fleetpki.services.hub_statistics` (services
built by the application: ``fleet.hub_devices``, ``fleet.hub_twins``,
``fleet.hub_statistics``). This module keeps :func:`authenticate_device`, which the MQTT
server calls on every connect (X.509 device authentication, ref §4.2), and the
transitional session-taking functions below for callers that still hold a session.

Revocation goes further than Azure, which never checks it (§4.2): for CAs that this
fleetpki manages the certificate table decides; for foreign CAs the OCSP responder
or CRL that the certificate names (:mod:`fleetpki.services.foreign_revocation`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetpki.errors import AuthenticationError
from fleetpki.pki.chain import verify_client_chain
from fleetpki.pki.issuance import thumbprints
from fleetpki.services import foreign_revocation
from fleetpki.services.events import unit_of
from fleetpki.services.hub_devices import (
    AuthType,
    DeviceSpec,
    DeviceStatus,
    delete_device_in,
    put_device_in,
    record_connection_in,
    require_device,
    set_status_in,
)
from fleetpki.services.hub_statistics import RegistryStatistics
from fleetpki.services.hub_trust import trust_anchors
from fleetpki.services.hub_twins import patch_reported_in, patch_twin_in, replace_twin_in
from fleetpki.store.hub_models import HubDevice
from fleetpki.store.models import CARecord, CertificateRecord

__all__ = [
    "AuthType",
    "AuthenticatedDevice",
    "DeviceSpec",
    "DeviceStatus",
    "RegistryStatistics",
    "authenticate_device",
    "connected_device_count",
    "delete_device",
    "get_device",
    "get_twin",
    "list_devices",
    "patch_reported",
    "patch_twin",
    "put_device",
    "record_connection",
    "registry_statistics",
    "replace_twin",
    "set_device_status",
]


@dataclass(frozen=True, slots=True)
class AuthenticatedDevice:
    """A device the hub let in (what :func:`authenticate_device` returns).

    Attributes:
        device_id / module_id: the identity (the client id is ``device`` or ``device/module``).
        auth_type: how it authenticated.
        certificate_sha1 / certificate_serial: the leaf's thumbprint and serial,
            upper-case hex, to match later revocations.
        fleetpki_ca_id: the fleetpki CA that issued the leaf, when it is one of ours.
    """

    device_id: str
    module_id: str | None
    auth_type: AuthType
    certificate_sha1: str
    certificate_serial: str
    fleetpki_ca_id: str | None = None


# --------------------------------------------------------------------------- transitional
# Session-taking functions for callers not yet moved to the services (the MQTT server's
# store backend, demo, benchmarks, test fixtures). Each is the service's use case inside
# the caller's transaction and returns the record; they go when those callers move.


def get_device(session: Any, device_id: str) -> HubDevice:
    """Transitional: :meth:`HubDeviceService.get` in ``session``'s transaction.

    Raises:
        NotFoundError: ``hub.device_not_found``.
    """
    return require_device(unit_of(session), device_id)


def list_devices(session: Any, *, limit: int | None = None) -> list[HubDevice]:
    """Transitional: :meth:`HubDeviceService.list` in ``session``'s transaction."""
    return list(unit_of(session).hub_devices.list(limit=limit))


def put_device(
    session: Any, spec: DeviceSpec, *, now: dt.datetime, if_match: str | None = None
) -> tuple[HubDevice, bool]:
    """Transitional: :meth:`HubDeviceService.put` in ``session``'s transaction."""
    return put_device_in(unit_of(session), spec, now=now, if_match=if_match)


def set_device_status(
    session: Any,
    device_id: str,
    status: DeviceStatus,
    *,
    now: dt.datetime,
    reason: str | None = None,
    if_match: str | None = None,
) -> HubDevice:
    """Transitional: :meth:`HubDeviceService.set_status` in ``session``'s transaction."""
    return set_status_in(
        unit_of(session), device_id, status, now=now, reason=reason, if_match=if_match
    )


def delete_device(session: Any, device_id: str, *, if_match: str | None = None) -> None:
    """Transitional: :meth:`HubDeviceService.delete` in ``session``'s transaction."""
    delete_device_in(unit_of(session), device_id, if_match=if_match)


def record_connection(session: Any, device_id: str, *, connected: bool, now: dt.datetime) -> None:
    """Transitional: :meth:`HubDeviceService.record_connection` in ``session``."""
    record_connection_in(unit_of(session), device_id, connected=connected, now=now)


def registry_statistics(session: Any) -> RegistryStatistics:
    """Transitional: :meth:`HubStatisticsService.devices` in ``session``'s transaction."""
    counts = unit_of(session).hub_devices.count_by_status()
    enabled = int(counts.get("enabled", 0))
    disabled = int(counts.get("disabled", 0))
    return RegistryStatistics(total=enabled + disabled, enabled=enabled, disabled=disabled)


def connected_device_count(session: Any) -> int:
    """Transitional: the registry's connected count in ``session``'s transaction."""
    return unit_of(session).hub_devices.count_connected()


def get_twin(session: Any, device_id: str) -> HubDevice:
    """Transitional: :meth:`HubTwinService.get` in ``session``'s transaction (the record)."""
    return require_device(unit_of(session), device_id)


def patch_twin(
    session: Any,
    device_id: str,
    document: Mapping[str, Any],
    *,
    now: dt.datetime,
    if_match: str | None = None,
) -> HubDevice:
    """Transitional: :meth:`HubTwinService.patch` in ``session``'s transaction."""
    return patch_twin_in(unit_of(session), device_id, document, if_match=if_match)


def replace_twin(
    session: Any,
    device_id: str,
    document: Mapping[str, Any],
    *,
    now: dt.datetime,
    if_match: str | None = None,
) -> HubDevice:
    """Transitional: :meth:`HubTwinService.replace` in ``session``'s transaction."""
    return replace_twin_in(unit_of(session), device_id, document, if_match=if_match)


def patch_reported(
    session: Any, device_id: str, patch: Mapping[str, Any], *, now: dt.datetime
) -> int:
    """Transitional: :meth:`HubTwinService.patch_reported` in ``session``'s transaction."""
    return patch_reported_in(unit_of(session), device_id, patch, now=now)


# --------------------------------------------------------------------------- authentication


def _common_name(cert: x509.Certificate) -> str | None:
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode()


def _refuse(code: str, message: str) -> AuthenticationError:
    return AuthenticationError(code, message)


def authenticate_device(
    session: Session,
    leaf: x509.Certificate,
    chain: Sequence[x509.Certificate],
    client_id: str,
    now: dt.datetime,
) -> AuthenticatedDevice:
    """Decide whether the TLS client certificate ``leaf`` may connect as ``client_id`` (ref §4.2).

    Checks, in order: the leaf CN equals the client id; the device (the part before
    ``/`` for a module) is registered and enabled; its authentication type is
    certificateAuthority, or selfSigned with a matching thumbprint (hex, any case);
    for certificateAuthority the chain (``chain`` holds what the peer sent besides the
    leaf; a copy of the leaf in it is ignored) verifies up to a *verified* hub CA; and
    the certificate is not revoked: fleetpki's own records for its CAs, the OCSP
    responder or CRL the certificate names for foreign CAs.

    Raises:
        AuthenticationError: ``hub.cn_mismatch``, ``hub.unknown_device``,
            ``hub.device_disabled``, ``hub.wrong_auth_type``, ``hub.untrusted_ca``,
            ``hub.ca_unverified``, ``hub.certificate_revoked``,
            ``hub.revocation_unknown``. The server answers
            CONNACK 5 to every one (ref §1.4).
    """
    cn = _common_name(leaf)
    if cn != client_id:
        raise _refuse("hub.cn_mismatch", "the certificate CN is not the MQTT client id")
    device_id, _, module_id = client_id.partition("/")
    record = session.get(HubDevice, device_id)
    if record is None:
        raise _refuse("hub.unknown_device", "the device is not registered in the hub")
    if record.status != DeviceStatus.ENABLED.value:
        raise _refuse("hub.device_disabled", "the device is disabled")
    der = leaf.public_bytes(serialization.Encoding.DER)
    sha1, sha256 = thumbprints(der)
    serial = format(leaf.serial_number, "X")
    auth_type = AuthType(record.auth_type)
    if auth_type is AuthType.SELF_SIGNED:
        allowed = {t.upper() for t in (record.primary_thumbprint, record.secondary_thumbprint) if t}
        if sha1 not in allowed and sha256 not in allowed:
            raise _refuse("hub.wrong_auth_type", "the certificate thumbprint is not the device's")
        return AuthenticatedDevice(device_id, module_id or None, auth_type, sha1, serial)
    if auth_type is not AuthType.CERTIFICATE_AUTHORITY:
        raise _refuse("hub.wrong_auth_type", "the device does not use X.509 CA authentication")
    intermediates = [c for c in chain if c != leaf]
    anchors = trust_anchors(session)
    try:
        verified = verify_client_chain(
            leaf, intermediates, [a.certificate for a in anchors.verified], now=now
        )
    except AuthenticationError as exc:
        if anchors.unverified:
            try:
                verify_client_chain(
                    leaf, intermediates, [a.certificate for a in anchors.unverified], now=now
                )
            except AuthenticationError:
                pass
            else:
                raise _refuse(
                    "hub.ca_unverified", "the certificate's CA is not verified in the hub"
                ) from exc
        raise _refuse("hub.untrusted_ca", "the certificate does not chain to a hub CA") from exc
    ca_id = _managed_issuer(session, verified)
    if ca_id is not None:
        status = session.scalar(
            select(CertificateRecord.status).where(
                CertificateRecord.ca_id == ca_id, CertificateRecord.serial_hex == serial
            )
        )
        if status != "valid":
            # Revoked, or signed by one of our CAs without being on record: refuse both.
            raise _refuse("hub.certificate_revoked", "the certificate is revoked")
    elif len(verified) >= 2:
        # A foreign CA: its OCSP responder or CRL decides (services.foreign_revocation).
        foreign_revocation.checker().check(leaf, verified[1], now)
    return AuthenticatedDevice(device_id, module_id or None, auth_type, sha1, serial, ca_id)


def _managed_issuer(session: Session, verified: Sequence[x509.Certificate]) -> str | None:
    """The fleetpki CA id of the leaf's issuer (``verified[1]``), if it is one of ours."""
    if len(verified) < 2:
        return None
    issuer_sha1, _ = thumbprints(verified[1].public_bytes(serialization.Encoding.DER))
    return session.scalar(select(CARecord.id).where(CARecord.sha1_hex == issuer_sha1))
