"""Getting and renewing a device certificate: the EZCA-compatible API, ``/v1`` or EST.

Three `Enroller` implementations speak to a CA server over HTTPS:

* `EzcaEnroller`: the EZCA routes (``shared/reference/ezca-api.md``) with a bearer token
  (an Entra ID token for the hosted service, a fleetpki token or OIDC token here). It
  picks a CA and template from ``GetAvailableSSLCAs``, can register the device id as a
  domain (``RegisterNewDomain``), requests with ``RequestSSLCertificateV2`` (or
  ``RequestFullSSLCertificate``) and renews with ``RenewCertificateV2`` authenticated by a
  certificate token signed with the current key.
* `V1Enroller`: fleetpki's native ``/v1`` API through `fleetpki.client.Client`.
* `EstEnroller`: EST (RFC 7030): ``simpleenroll`` authenticated by a bearer token or HTTP
  Basic, ``simplereenroll`` by the current certificate as the TLS client certificate.

`enroll_device` makes a key and a CSR, enrolls and saves; `renew_identity` renews with a
new key (by default) and returns the renewed identity. Nothing secret is logged: no
token, passphrase or key ever reaches a log line or an exception message.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from fleetpki.client import Client, error_from_response
from fleetpki.device.csr import (
    DEFAULT_DEVICE_KEY_SPEC,
    check_device_id,
    generate_device_key,
    make_csr,
)
from fleetpki.device.identity import (
    DeviceDirectory,
    DeviceIdentity,
    DeviceMetadata,
    client_ssl_context,
    key_matches_certificate,
    parse_certificates,
)
from fleetpki.device.renewal import utc_now
from fleetpki.errors import ConflictError, FleetPKIError, NotFoundError, ValidationError
from fleetpki.keystore import PrivateKey
from fleetpki.pki.certtoken import make_certificate_token
from fleetpki.pki.keys import KeySpec, key_spec_of

__all__ = [
    "CLIENT_AUTH_EKU",
    "SERVER_AUTH_EKU",
    "AvailableCA",
    "Enroller",
    "EstEnroller",
    "EzcaEnroller",
    "IssuedCertificate",
    "V1Enroller",
    "enroll_device",
    "renew_identity",
]

_log = logging.getLogger("fleetpki.device.enrollment")

#: The EKUs EZCA's clients request by default (ezca-api.md, CertificateCreateRequestModel).
SERVER_AUTH_EKU = "1.3.6.1.5.5.7.3.1"
CLIENT_AUTH_EKU = "1.3.6.1.5.5.7.3.2"
_DEFAULT_KEY_USAGES = ("Key Encipherment", "Digital Signature")
_GENERAL_NAME_DNS = 2  # EZCA V2's SubjectAltType: the GeneralName tag (RFC 5280 §4.2.1.6)
_PKCS10 = "application/pkcs10"
_DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
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
    ) -> IssuedCertificate:
        """Request a first certificate for ``device_id``."""
        ...

    def renew(
        self,
        identity: DeviceIdentity,
        csr: x509.CertificateSigningRequest,
        *,
        validity_days: int | None,
    ) -> IssuedCertificate:
        """Renew ``identity``'s certificate, authenticated by that certificate alone."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def _pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _verify_for(ca_bundle: Path | str | ssl.SSLContext | bool) -> ssl.SSLContext | bool:
    if isinstance(ca_bundle, str | Path):
        context = ssl.create_default_context(cafile=str(ca_bundle))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context
    return ca_bundle


def _lifetime_days(identity: DeviceIdentity) -> int:
    return max(1, round(identity.lifetime.total_seconds() / 86400))


def _order_chain(
    leaf: x509.Certificate, others: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """The intermediates from ``others`` that lead from ``leaf`` upwards, issuer first."""
    chain: list[x509.Certificate] = []
    current = leaf
    pool = [c for c in others if c.subject != c.issuer]  # roots are trust anchors, not sent
    while True:
        parent = next((c for c in pool if c.subject == current.issuer and c not in chain), None)
        if parent is None:
            return tuple(chain)
        chain.append(parent)
        current = parent


def _split_issued(
    certificates: Sequence[x509.Certificate], key_of: x509.CertificateSigningRequest
) -> IssuedCertificate:
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
    roots = tuple(c for c in others if c.subject == c.issuer)
    return IssuedCertificate(leaf, _order_chain(leaf, others), roots)


class _Http:
    """An httpx client whose errors become `FleetPKIError`s without secrets in them."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.base_url = str(client.base_url).rstrip("/")

    @classmethod
    def open(
        cls,
        base_url: str,
        verify: ssl.SSLContext | bool,
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> _Http:
        """A new client for ``base_url``."""
        return cls(
            httpx.Client(
                base_url=base_url.rstrip("/"), verify=verify, timeout=timeout, headers=headers
            )
        )

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise FleetPKIError(
                "client.unreachable", f"cannot reach {self.base_url}: {type(exc).__name__}"
            ) from exc
        if response.is_error:
            raise error_from_response(response)
        return response

    def close(self) -> None:
        self.client.close()


class _EnrollerBase:
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


@dataclass(frozen=True, slots=True)
class AvailableCA:
    """One entry of EZCA's ``GetAvailableSSLCAs``: a CA and template the caller may use."""

    ca_id: str
    template_id: str
    name: str
    template_type: str
    max_validity_days: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AvailableCA:
        """Read an AvailableCAModel."""
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


class EzcaEnroller(_EnrollerBase):
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
        timeout: float = _DEFAULT_TIMEOUT,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.server_url = base_url.rstrip("/")
        self._token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = _Http.open(self.server_url, _verify_for(verify), timeout, headers)
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

    def available_cas(self) -> list[AvailableCA]:
        """``GetAvailableSSLCAs``: the CAs and templates the caller may request from."""
        response = self._http.call("GET", "/api/CA/GetAvailableSSLCAs")
        return [AvailableCA.from_json(item) for item in json.loads(self._message(response))]

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
    ) -> IssuedCertificate:
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
            "CSR": _pem(csr),
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
        chain = _order_chain(certificate, [*issuing, *root])
        return IssuedCertificate(certificate, chain, root, ca_id, template_id)

    def renew(
        self,
        identity: DeviceIdentity,
        csr: x509.CertificateSigningRequest,
        *,
        validity_days: int | None,
    ) -> IssuedCertificate:
        """``RenewCertificateV2`` with a certificate token signed by the current key."""
        token = make_certificate_token(
            identity.certificate, identity.key, audience=self.audience, now=self._clock()
        )
        body = {
            "Certificate": identity.certificate_pem,
            "Payload": {
                "CSR": _pem(csr),
                "ValidityInDays": validity_days or _lifetime_days(identity),
            },
        }
        response = self._http.call(
            "POST",
            "/api/Certificates/RenewCertificateV2",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
        issued = _split_issued(parse_certificates(response.text), csr)
        return IssuedCertificate(
            issued.certificate,
            issued.chain or identity.chain,
            issued.ca_bundle,
            identity.metadata.ca_id,
            identity.metadata.template_id,
        )


class V1Enroller(_EnrollerBase):
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
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> None:
        self.server_url = base_url.rstrip("/")
        self.client = Client(self.server_url, token, verify=_verify_for(verify), timeout=timeout)
        self.ca_id, self.template_id = ca_id, template_id
        self.register_domain_first = register_domain
        self.owner_id = owner_id
        self.audience = audience

    def close(self) -> None:
        """Release connections."""
        self.client.close()

    def _issued(
        self, answer: dict[str, Any], csr: x509.CertificateSigningRequest
    ) -> IssuedCertificate:
        found = [*parse_certificates(answer["chain_pem"]), *parse_certificates(answer["root_pem"])]
        issued = _split_issued(found, csr)
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
        return IssuedCertificate(
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
    ) -> IssuedCertificate:
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
            _pem(csr),
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
    ) -> IssuedCertificate:
        """``POST /v1/certificates/renew`` with a certificate token."""
        answer = self.client.renew_certificate(
            identity.certificate_pem,
            identity.key,
            _pem(csr),
            validity_days=validity_days,
            audience=self.audience,
        )
        return self._issued(answer, csr)


class EstEnroller(_EnrollerBase):
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
        timeout: float = _DEFAULT_TIMEOUT,
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
        self._http = _Http.open(self.server_url, _verify_for(verify), timeout, headers)

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
    ) -> IssuedCertificate:
        issued = _split_issued(found, csr)
        chain, roots = issued.chain, issued.ca_bundle
        if not chain or not roots:
            cas = self.ca_certificates()
            chain = chain or _order_chain(issued.certificate, cas)
            roots = roots or tuple(c for c in cas if c.subject == c.issuer)
        return IssuedCertificate(issued.certificate, chain, roots)

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
    ) -> IssuedCertificate:
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
    ) -> IssuedCertificate:
        """``POST /simplereenroll`` over TLS with the current certificate (RFC 7030 §4.2.2)."""
        bundle = self._verify_source if isinstance(self._verify_source, str | Path) else None
        context = client_ssl_context(identity, ca_bundle=bundle)
        if self._verify_source is True and bundle is None:
            context.load_default_certs()
        with httpx.Client(
            base_url=self.server_url, verify=context, timeout=self._timeout
        ) as client:
            response = _Http(client).call(
                "POST",
                f"{self._prefix}/simplereenroll",
                content=self._body(csr),
                headers={"Content-Type": _PKCS10, "Content-Transfer-Encoding": "base64"},
            )
        self._check_ready(response)
        return self._complete(self._certificates(response), csr)


def _identity_from(
    device_id: str,
    key: PrivateKey,
    issued: IssuedCertificate,
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
