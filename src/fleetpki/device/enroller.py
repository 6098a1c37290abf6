"""Getting and renewing a device certificate: the `Enroller` protocol and the two use cases.

Three `Enroller` implementations speak to a CA server over HTTPS, one module each:
`fleetpki.device.ezca_enroller` (the EZCA-compatible API), `fleetpki.device.v1_enroller`
(fleetpki's ``/v1``) and `fleetpki.device.est_enroller` (EST, RFC 7030).

`enroll_device` makes a key and a CSR, enrolls and saves; `renew_identity` renews with a
new key (by default) and returns the renewed identity. Nothing secret is logged: no
token, passphrase or key ever reaches a log line or an exception message.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.device.certificate_request import (
    DEFAULT_DEVICE_KEY_SPEC,
    generate_device_key,
    make_csr,
)
from fleetpki.device.clock import utc_now
from fleetpki.device.identity import (
    DeviceDirectory,
    DeviceIdentity,
    DeviceMetadata,
    key_matches_certificate,
)
from fleetpki.errors import ValidationError
from fleetpki.keystore import PrivateKey
from fleetpki.pki.chain import is_self_signed, issued_by
from fleetpki.pki.keys import KeySpec, key_spec_of

__all__ = [
    "EnrolledCertificate",
    "Enroller",
    "EnrollerBase",
    "csr_pem",
    "enroll_device",
    "order_chain",
    "renew_identity",
    "split_issued",
]

# The name the log lines had before the enrollers were split out of device/enrollment.py.
_log = logging.getLogger("fleetpki.device.enrollment")


@dataclass(frozen=True, slots=True)
class EnrolledCertificate:
    """A certificate a CA just issued.

    Attributes:
        certificate: the new certificate.
        chain: the intermediates to send with it (issuing CA first).
        ca_bundle: the trust anchors the server named (empty when it named none).
        ca_id / template_id / auto_renew_percentage: what the server said, when it did.
    """

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    ca_bundle: tuple[x509.Certificate, ...] = ()
    ca_id: str | None = None
    template_id: str | None = None
    auto_renew_percentage: int | None = None


class Enroller(Protocol):
    """Gets and renews device certificates from one CA server."""

    #: ``ezca``, ``v1`` or ``est``: recorded in the device metadata.
    method: str
    #: The server's base URL.
    server_url: str

    def enroll(
        self, device_id: str, csr: x509.CertificateSigningRequest, *, validity_days: int | None
    ) -> EnrolledCertificate:
        """Request a first certificate for ``device_id``."""
        ...

    def renew(
        self,
        identity: DeviceIdentity,
        csr: x509.CertificateSigningRequest,
        *,
        validity_days: int | None,
    ) -> EnrolledCertificate:
        """Renew ``identity``'s certificate, authenticated by that certificate alone."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def csr_pem(csr: x509.CertificateSigningRequest) -> str:
    """The CSR in PEM, as the JSON APIs carry it."""
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def order_chain(
    leaf: x509.Certificate, others: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """The intermediates from ``others`` that lead from ``leaf`` upwards, issuer first."""
    chain: list[x509.Certificate] = []
    current = leaf
    pool = [c for c in others if not is_self_signed(c)]  # roots are trust anchors, not sent
    while True:
        parent = next((c for c in pool if issued_by(current, c) and c not in chain), None)
        if parent is None:
            return tuple(chain)
        chain.append(parent)
        current = parent


def split_issued(
    certificates: Sequence[x509.Certificate], key_of: x509.CertificateSigningRequest
) -> EnrolledCertificate:
    """Find the certificate for ``key_of``'s key among ``certificates``; order the rest."""
    public = key_of.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    leaf = next(
        (
            c
            for c in certificates
            if c.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            == public
        ),
        None,
    )
    if leaf is None:
        raise ValidationError(
            "enroll.no_certificate", "the server's answer holds no certificate for the CSR's key"
        )
    others = [c for c in certificates if c is not leaf]
    roots = tuple(c for c in others if is_self_signed(c))
    return EnrolledCertificate(leaf, order_chain(leaf, others), roots)


class EnrollerBase:
    """Context manager plumbing shared by the enrollers."""

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _identity_from(
    device_id: str,
    key: PrivateKey,
    issued: EnrolledCertificate,
    enroller: Enroller,
    auto_renew_percentage: int | None,
) -> DeviceIdentity:
    if not key_matches_certificate(key, issued.certificate):
        raise ValidationError(
            "enroll.key_mismatch", "the server issued a certificate for another key"
        )
    metadata = DeviceMetadata(
        device_id=device_id,
        method=enroller.method,
        server_url=enroller.server_url,
        ca_id=issued.ca_id,
        template_id=issued.template_id,
        auto_renew_percentage=(
            auto_renew_percentage
            if auto_renew_percentage is not None
            else issued.auto_renew_percentage
        ),
    )
    return DeviceIdentity(key, issued.certificate, issued.chain, issued.ca_bundle, metadata)


def enroll_device(
    enroller: Enroller,
    device_id: str,
    *,
    key_spec: KeySpec = DEFAULT_DEVICE_KEY_SPEC,
    key: PrivateKey | None = None,
    validity_days: int | None = None,
    directory: DeviceDirectory | None = None,
    auto_renew_percentage: int | None = None,
) -> DeviceIdentity:
    """Make a key and a CSR for ``device_id``, enroll, and save to ``directory`` if given.

    Args:
        enroller: the CA server and method.
        device_id: the device id (CN and DNS SAN).
        key_spec: the key to make (ignored when ``key`` is given).
        key: an existing key to use instead.
        validity_days: the lifetime to ask for; the template's default otherwise.
        directory: where to keep the identity.
        auto_renew_percentage: overrides the template's renewal percentage in metadata.

    Raises:
        FleetPKIError: the server's refusal, with its stable code.
    """
    key = key or generate_device_key(key_spec)
    csr = make_csr(device_id, key)
    issued = enroller.enroll(device_id, csr, validity_days=validity_days)
    identity = _identity_from(device_id, key, issued, enroller, auto_renew_percentage)
    if directory is not None:
        directory.save(identity)
    _log.info(
        "device %s enrolled through %s (serial %s, until %s)",
        device_id,
        enroller.method,
        identity.serial_hex,
        identity.not_after.isoformat(),
    )
    return identity


def renew_identity(
    enroller: Enroller,
    identity: DeviceIdentity,
    *,
    new_key: bool = True,
    key_spec: KeySpec | None = None,
    validity_days: int | None = None,
    directory: DeviceDirectory | None = None,
    clock: Callable[[], dt.datetime] = utc_now,
) -> DeviceIdentity:
    """Renew ``identity`` with its current certificate; save to ``directory`` if given.

    Args:
        enroller: the CA server and method.
        identity: the current identity (its key signs the renewal's proof).
        new_key: make a new key (the default) or keep the current one.
        key_spec: the new key's type; by default the current key's.
        validity_days: the new lifetime; by default the current one.
        directory: where to save the renewed identity.
        clock: the current time (recorded as ``renewed_at``).

    Raises:
        FleetPKIError: the server's refusal, with its stable code.
    """
    if new_key:
        spec = key_spec or key_spec_of(identity.key) or DEFAULT_DEVICE_KEY_SPEC
        key = generate_device_key(spec)
    else:
        key = identity.key
    csr = make_csr(identity.device_id, key)
    issued = enroller.renew(identity, csr, validity_days=validity_days)
    renewed = identity.renewed(
        key,
        issued.certificate,
        issued.chain or identity.chain,
        now=clock(),
        ca_bundle=issued.ca_bundle or None,
    )
    if directory is not None:
        directory.save(renewed)
    _log.info(
        "device %s renewed through %s (serial %s, until %s)",
        renewed.device_id,
        enroller.method,
        renewed.serial_hex,
        renewed.not_after.isoformat(),
    )
    return renewed
