"""Enrolling through the EZCA-compatible routes (``shared/reference/ezca-api.md``).

`EzcaEnroller` authenticates with a bearer token (an Entra ID token for the hosted
service, a fleetpki token or OIDC token here). It picks a CA and template from
``GetAvailableSSLCAs``, can register the device id as a domain (``RegisterNewDomain``),
requests with ``RequestSSLCertificateV2`` (or ``RequestFullSSLCertificate``) and renews
with ``RenewCertificateV2`` authenticated by a certificate token signed with the current key.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography import x509

from fleetpki.device.certificate_request import check_device_id
from fleetpki.device.clock import utc_now
from fleetpki.device.enroller import (
    EnrolledCertificate,
    EnrollerBase,
    csr_pem,
    order_chain,
    split_issued,
)
from fleetpki.device.identity import DeviceIdentity, parse_certificates
from fleetpki.device.transport import DEFAULT_HTTP_TIMEOUT, HttpTransport, verify_context
from fleetpki.errors import ConflictError, FleetPKIError, NotFoundError
from fleetpki.pki.certtoken import make_certificate_token

__all__ = ["CLIENT_AUTH_EKU", "SERVER_AUTH_EKU", "EzcaEnroller", "OfferedCA"]

#: The EKUs EZCA's clients request by default (ezca-api.md, CertificateCreateRequestModel).
SERVER_AUTH_EKU = "1.3.6.1.5.5.7.3.1"
CLIENT_AUTH_EKU = "1.3.6.1.5.5.7.3.2"
_DEFAULT_KEY_USAGES = ("Key Encipherment", "Digital Signature")
_GENERAL_NAME_DNS = 2  # EZCA V2's SubjectAltType: the GeneralName tag (RFC 5280 §4.2.1.6)


def _lifetime_days(identity: DeviceIdentity) -> int:
    return max(1, round(identity.lifetime.total_seconds() / 86400))


@dataclass(frozen=True, slots=True)
class OfferedCA:
    """One entry of EZCA's ``GetAvailableSSLCAs``: a CA and template the caller may use."""

    ca_id: str
    template_id: str
    name: str
    template_type: str
    max_validity_days: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OfferedCA:
        """Read an OfferedCAModel."""
        return cls(
            ca_id=str(data["CAID"]),
            template_id=str(data["TemplateID"]),
            name=str(data.get("CAFriendlyName", "")),
            template_type=str(data.get("CATemplateType", "")),
            max_validity_days=int(data.get("MaxCertLifeDays") or 0),
        )


def _principal_from_jwt(token: str) -> tuple[str, str] | None:
    """The ``oid`` (else ``sub``) and ``upn`` (else ``name``) of a JWT, unverified.

    The hosted service names the caller by these claims; the caller is who the token says.
    A fleetpki API token is no JWT: then ``None``, and the server makes the caller owner.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    object_id = claims.get("oid") or claims.get("sub")
    if not isinstance(object_id, str) or not object_id:
        return None
    name = claims.get("upn") or claims.get("name") or object_id
    return object_id, str(name)


class EzcaEnroller(EnrollerBase):
    """Enrolls through the EZCA-compatible routes with a bearer token.

    Args:
        base_url: the server, e.g. ``https://ca.example.net:8443``.
        token: the caller's bearer token (needed to enroll; renewal needs none).
        verify: a CA bundle file, an SSL context, or ``True`` for the system's roots.
        ca_id / template_id: where to request; by default the first SSL template that
            ``GetAvailableSSLCAs`` offers.
        register_domain: register the device id as a domain before requesting, with the
            caller as owner and requester (an existing domain is fine).
        use_v2: ``RequestSSLCertificateV2`` (typed SANs) rather than
            ``RequestFullSSLCertificate``.
        audience: the certificate-token audience; by default ``base_url``.
        clock: the current time, for certificate tokens.
    """

    method = "ezca"

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        verify: Path | str | ssl.SSLContext | bool = True,
        ca_id: str | None = None,
        template_id: str | None = None,
        register_domain: bool = True,
        use_v2: bool = True,
        audience: str | None = None,
        timeout: float = DEFAULT_HTTP_TIMEOUT,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.server_url = base_url.rstrip("/")
        self._token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = HttpTransport.open(self.server_url, verify_context(verify), timeout, headers)
        self.ca_id, self.template_id = ca_id, template_id
        self.register_domain_first = register_domain
        self.use_v2 = use_v2
        self.audience = audience or self.server_url
        self._clock = clock

    def close(self) -> None:
        """Release connections."""
        self._http.close()

    def _message(self, response: httpx.Response) -> str:
        body = response.json()
        if not isinstance(body, dict) or not body.get("Success", False):
            raise FleetPKIError("ezca.failed", str(body.get("Message", "")) if body else "failed")
        return str(body.get("Message", ""))

    def available_cas(self) -> list[OfferedCA]:
        """``GetAvailableSSLCAs``: the CAs and templates the caller may request from."""
        response = self._http.call("GET", "/api/CA/GetAvailableSSLCAs")
        return [OfferedCA.from_json(item) for item in json.loads(self._message(response))]

    def choose_ca(self) -> tuple[str, str]:
        """The CA and template to use: those given, else the first SSL template offered.

        Raises:
            NotFoundError: ``enroll.no_ca`` when nothing fits.
        """
        if self.ca_id and self.template_id:
            return self.ca_id, self.template_id
        offers = self.available_cas()
        fitting = [
            o
            for o in offers
            if (self.ca_id is None or o.ca_id == self.ca_id)
            and (self.template_id is None or o.template_id == self.template_id)
        ]
        fitting.sort(key=lambda o: o.template_type != "SSL Template")
        if not fitting:
            raise NotFoundError("enroll.no_ca", "the server offers no CA and template to use")
        self.ca_id, self.template_id = fitting[0].ca_id, fitting[0].template_id
        return self.ca_id, self.template_id

    def register_domain(self, device_id: str) -> bool:
        """``RegisterNewDomain`` for ``device_id`` with the caller as owner and requester.

        Returns ``False`` when the domain already existed.
        """
        ca_id, template_id = self.choose_ca()
        body: dict[str, Any] = {"CAID": ca_id, "TemplateID": template_id, "Domain": device_id}
        me = _principal_from_jwt(self._token) if self._token else None
        if me is not None:
            member = {"ObjectId": me[0], "FriendlyName": me[1], "ObjectType": "User"}
            body["Owners"] = [member]
            body["Requesters"] = [member]
        try:
            self._message(self._http.call("POST", "/api/CA/RegisterNewDomain", json=body))
        except ConflictError:
            return False
        return True

    def enroll(
        self,
        device_id: str,
        csr: x509.CertificateSigningRequest,
        *,
        validity_days: int | None,
    ) -> EnrolledCertificate:
        """Register the domain (when asked) and request a certificate for ``csr``."""
        check_device_id(device_id)
        ca_id, template_id = self.choose_ca()
        if self.register_domain_first:
            self.register_domain(device_id)
        sans: list[Any] = (
            [{"ValueSTR": device_id, "SubjectAltType": _GENERAL_NAME_DNS}]
            if self.use_v2
            else [device_id]
        )
        body = {
            "SubjectName": f"CN={device_id}",
            "SubjectAltNames": sans,
            "CAID": ca_id,
            "TemplateID": template_id,
            "CSR": csr_pem(csr),
            "ValidityInDays": validity_days,
            "EKUs": [SERVER_AUTH_EKU, CLIENT_AUTH_EKU],
            "KeyUsages": list(_DEFAULT_KEY_USAGES),
            "SelectedLocation": "IoT Device",
        }
        route = (
            "/api/CA/RequestSSLCertificateV2"
            if self.use_v2
            else "/api/CA/RequestFullSSLCertificate"
        )
        answer = self._http.call("POST", route, json=body).json()
        certificate = parse_certificates(answer["CertificatePEM"])[0]
        issuing = parse_certificates(answer["IssuingCACertificate"])
        root = parse_certificates(answer["RootCertificate"])
        chain = order_chain(certificate, [*issuing, *root])
        return EnrolledCertificate(certificate, chain, root, ca_id, template_id)

    def renew(
        self,
        identity: DeviceIdentity,
        csr: x509.CertificateSigningRequest,
        *,
        validity_days: int | None,
    ) -> EnrolledCertificate:
        """``RenewCertificateV2`` with a certificate token signed by the current key."""
        token = make_certificate_token(
            identity.certificate, identity.key, audience=self.audience, now=self._clock()
        )
        body = {
            "Certificate": identity.certificate_pem,
            "Payload": {
                "CSR": csr_pem(csr),
                "ValidityInDays": validity_days or _lifetime_days(identity),
            },
        }
        response = self._http.call(
            "POST",
            "/api/Certificates/RenewCertificateV2",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
        issued = split_issued(parse_certificates(response.text), csr)
        return EnrolledCertificate(
            issued.certificate,
            issued.chain or identity.chain,
            issued.ca_bundle,
            identity.metadata.ca_id,
            identity.metadata.template_id,
        )
