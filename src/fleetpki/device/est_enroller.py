"""Enrolling through EST (RFC 7030).

`EstEnroller` sends ``simpleenroll`` authenticated by a bearer token or HTTP Basic, and
``simplereenroll`` authenticated by the current certificate as the TLS client certificate.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from fleetpki.device.certificate_request import check_device_id
from fleetpki.device.enroller import EnrolledCertificate, EnrollerBase, order_chain, split_issued
from fleetpki.device.identity import DeviceIdentity, client_ssl_context
from fleetpki.device.transport import DEFAULT_HTTP_TIMEOUT, HttpTransport, verify_context
from fleetpki.errors import FleetPKIError, ValidationError
from fleetpki.pki.chain import is_self_signed

__all__ = ["EstEnroller"]

_PKCS10 = "application/pkcs10"


class EstEnroller(EnrollerBase):
    """Enrolls through EST (RFC 7030) under ``/.well-known/est[/label]``.

    Args:
        base_url: the server.
        token: a bearer token for ``simpleenroll``; or
        username / password: HTTP Basic for ``simpleenroll`` (RFC 7030 §3.2.3).
        verify: a CA bundle file, an SSL context, or ``True``.
        label: an optional CA label (RFC 7030 §3.2.2).
    """

    method = "est"

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        verify: Path | str | ssl.SSLContext | bool = True,
        label: str | None = None,
        timeout: float = DEFAULT_HTTP_TIMEOUT,
    ) -> None:
        self.server_url = base_url.rstrip("/")
        self._verify_source = verify
        self._timeout = timeout
        self._prefix = "/.well-known/est" + (f"/{label}" if label else "")
        self._auth: httpx.Auth | None = None
        headers: dict[str, str] = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif username is not None:
            self._auth = httpx.BasicAuth(username, password or "")
        self._http = HttpTransport.open(self.server_url, verify_context(verify), timeout, headers)

    def close(self) -> None:
        """Release connections."""
        self._http.close()

    @staticmethod
    def _certificates(response: httpx.Response) -> list[x509.Certificate]:
        """A base64 ``application/pkcs7-mime`` certs-only answer (RFC 7030 §4.1.3, §4.2.3)."""
        try:
            der = base64.b64decode(response.content, validate=False)
            return pkcs7.load_der_pkcs7_certificates(der)
        except ValueError as exc:
            raise ValidationError(
                "est.bad_answer", "the EST answer is not a base64 PKCS#7 certs-only"
            ) from exc

    def ca_certificates(self) -> list[x509.Certificate]:
        """``GET /cacerts``: the CA certificates (RFC 7030 §4.1)."""
        return self._certificates(self._http.call("GET", f"{self._prefix}/cacerts"))

    def _complete(
        self, found: list[x509.Certificate], csr: x509.CertificateSigningRequest
    ) -> EnrolledCertificate:
        issued = split_issued(found, csr)
        chain, roots = issued.chain, issued.ca_bundle
        if not chain or not roots:
            cas = self.ca_certificates()
            chain = chain or order_chain(issued.certificate, cas)
            roots = roots or tuple(c for c in cas if is_self_signed(c))
        return EnrolledCertificate(issued.certificate, chain, roots)

    @staticmethod
    def _body(csr: x509.CertificateSigningRequest) -> bytes:
        # RFC 7030 §4.2.1: base64 of the DER PKCS#10 (RFC 2045 lines are fine).
        return base64.encodebytes(csr.public_bytes(serialization.Encoding.DER))

    @staticmethod
    def _check_ready(response: httpx.Response) -> None:
        if response.status_code == 202:  # RFC 7030 §4.2.3: pending manual approval
            raise FleetPKIError(
                "est.pending", "the EST server holds the request for approval; retry later"
            )

    def enroll(
        self,
        device_id: str,
        csr: x509.CertificateSigningRequest,
        *,
        validity_days: int | None,
    ) -> EnrolledCertificate:
        """``POST /simpleenroll`` (``validity_days`` is up to the server's template)."""
        check_device_id(device_id)
        response = self._http.call(
            "POST",
            f"{self._prefix}/simpleenroll",
            content=self._body(csr),
            headers={"Content-Type": _PKCS10, "Content-Transfer-Encoding": "base64"},
            auth=self._auth or httpx.USE_CLIENT_DEFAULT,
        )
        self._check_ready(response)
        return self._complete(self._certificates(response), csr)

    def renew(
        self,
        identity: DeviceIdentity,
        csr: x509.CertificateSigningRequest,
        *,
        validity_days: int | None,
    ) -> EnrolledCertificate:
        """``POST /simplereenroll`` over TLS with the current certificate (RFC 7030 §4.2.2)."""
        bundle = self._verify_source if isinstance(self._verify_source, str | Path) else None
        context = client_ssl_context(identity, ca_bundle=bundle)
        if self._verify_source is True and bundle is None:
            context.load_default_certs()
        with httpx.Client(
            base_url=self.server_url, verify=context, timeout=self._timeout
        ) as client:
            response = HttpTransport(client).call(
                "POST",
                f"{self._prefix}/simplereenroll",
                content=self._body(csr),
                headers={"Content-Type": _PKCS10, "Content-Transfer-Encoding": "base64"},
            )
        self._check_ready(response)
        return self._complete(self._certificates(response), csr)
