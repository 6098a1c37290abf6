"""Enrolling through fleetpki's native ``/v1`` API, by way of `fleetpki.client.Client`."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509

from fleetpki.client import Client
from fleetpki.device.certificate_request import check_device_id
from fleetpki.device.enroller import EnrolledCertificate, EnrollerBase, csr_pem, split_issued
from fleetpki.device.identity import DeviceIdentity, parse_certificates
from fleetpki.device.transport import DEFAULT_HTTP_TIMEOUT, verify_context
from fleetpki.errors import ConflictError, FleetPKIError, ValidationError

__all__ = ["V1Enroller"]


class V1Enroller(EnrollerBase):
    """Enrolls through fleetpki's native ``/v1`` API.

    Args:
        base_url / token / verify: as for `fleetpki.client.Client`.
        ca_id / template_id: where to request; by default the domain's or the server's.
        register_domain: register the device id as a domain first (caller as owner and
            requester; an existing domain is fine). Needs ``owner_id``: the caller's
            principal id, since ``/v1`` takes owners explicitly.
        owner_id: the caller's principal id, for ``register_domain``.
        audience: the certificate-token audience; by default ``base_url``.
    """

    method = "v1"

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        verify: Path | str | ssl.SSLContext | bool = True,
        ca_id: str | None = None,
        template_id: str | None = None,
        register_domain: bool = False,
        owner_id: str | None = None,
        audience: str | None = None,
        timeout: float = DEFAULT_HTTP_TIMEOUT,
    ) -> None:
        self.server_url = base_url.rstrip("/")
        self.client = Client(self.server_url, token, verify=verify_context(verify), timeout=timeout)
        self.ca_id, self.template_id = ca_id, template_id
        self.register_domain_first = register_domain
        self.owner_id = owner_id
        self.audience = audience

    def close(self) -> None:
        """Release connections."""
        self.client.close()

    def _issued(
        self, answer: dict[str, Any], csr: x509.CertificateSigningRequest
    ) -> EnrolledCertificate:
        found = [*parse_certificates(answer["chain_pem"]), *parse_certificates(answer["root_pem"])]
        issued = split_issued(found, csr)
        record = answer["certificate"]
        percentage: int | None = None
        try:
            templates = self.client.list_templates(record.get("ca_id"))
            percentage = next(
                int(t["auto_renew_percentage"])
                for t in templates
                if t.get("id") == record.get("template_id")
            )
        except (FleetPKIError, KeyError, TypeError, ValueError, StopIteration):
            percentage = None  # only a hint for the renewal time
        return EnrolledCertificate(
            issued.certificate,
            issued.chain,
            issued.ca_bundle,
            record.get("ca_id"),
            record.get("template_id"),
            percentage,
        )

    def enroll(
        self,
        device_id: str,
        csr: x509.CertificateSigningRequest,
        *,
        validity_days: int | None,
    ) -> EnrolledCertificate:
        """``POST /v1/certificates`` for the device's domain."""
        check_device_id(device_id)
        if self.register_domain_first:
            if not self.owner_id:
                raise ValidationError(
                    "enroll.owner_required", "registering a domain through /v1 needs owner_id"
                )
            with contextlib.suppress(ConflictError):
                self.client.register_domain(
                    device_id,
                    owners=[self.owner_id],
                    requesters=[self.owner_id],
                    ca_id=self.ca_id,
                    template_id=self.template_id,
                )
        answer = self.client.issue_certificate(
            csr_pem(csr),
            domain=device_id,
            ca_id=self.ca_id,
            template_id=self.template_id,
            validity_days=validity_days,
        )
        return self._issued(answer, csr)

    def renew(
        self,
        identity: DeviceIdentity,
        csr: x509.CertificateSigningRequest,
        *,
        validity_days: int | None,
    ) -> EnrolledCertificate:
        """``POST /v1/certificates/renew`` with a certificate token."""
        answer = self.client.renew_certificate(
            identity.certificate_pem,
            identity.key,
            csr_pem(csr),
            validity_days=validity_days,
            audience=self.audience,
        )
        return self._issued(answer, csr)
