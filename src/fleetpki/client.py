"""A Python client for a fleetpki server's native ``/v1`` API, over httpx."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from cryptography import x509

from fleetpki.errors import (
    AuthenticationError,
    ConflictError,
    FleetPKIError,
    NotFoundError,
    PermissionDenied,
    ValidationError,
)
from fleetpki.keystore import PrivateKey
from fleetpki.pki.certtoken import make_certificate_token

__all__ = ["Client", "error_from_response"]

_BY_STATUS: dict[int, type[FleetPKIError]] = {
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFoundError,
    409: ConflictError,
}


def error_from_response(response: httpx.Response) -> FleetPKIError:
    """The :class:`FleetPKIError` subclass a problem+json answer stands for."""
    code, detail = f"http.{response.status_code}", response.reason_phrase or "request failed"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code") or code)
        detail = str(body.get("detail") or detail)
    kind = _BY_STATUS.get(response.status_code)
    if kind is None:
        kind = ValidationError if 400 <= response.status_code < 500 else FleetPKIError
    return kind(code, detail)


class Client:
    """Talks to a fleetpki server.  Errors come back as the server's ``FleetPKIError``.

    Args:
        base_url: the server, e.g. ``https://ca.example.net:8443``.
        token: a fleetpki API token (``fpk_...``) or an OIDC access token.
        verify: a CA bundle path, an ``ssl.SSLContext``, ``True`` (system roots) or
            ``False`` (no checking; for experiments only).
        timeout: seconds per request.
        transport: an httpx transport (tests use one to call an app in-process).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        verify: str | Path | bool | ssl.SSLContext = True,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if isinstance(verify, str | Path):
            verify = ssl.create_default_context(cafile=str(verify))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            verify=verify,
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(
                method, path, json=json, params=clean or None, headers=headers
            )
        except httpx.HTTPError as exc:
            raise FleetPKIError(
                "client.unreachable", f"cannot reach {self.base_url}: {type(exc).__name__}"
            ) from exc
        if response.is_error:
            raise error_from_response(response)
        return response

    # ----------------------------------------------------------------- CAs and templates

    def health(self) -> dict[str, Any]:
        """The server's ``/healthz`` answer."""
        result: dict[str, Any] = self._call("GET", "/healthz").json()
        return result

    def list_cas(self) -> list[dict[str, Any]]:
        """Every CA."""
        result: list[dict[str, Any]] = self._call("GET", "/v1/cas").json()
        return result

    def get_ca(self, ca_id: str) -> dict[str, Any]:
        """One CA."""
        result: dict[str, Any] = self._call("GET", f"/v1/cas/{ca_id}").json()
        return result

    def ca_generations(self, ca_id: str) -> list[dict[str, Any]]:
        """The CA's generations (``GET /v1/cas/{id}/generations``)."""
        result: list[dict[str, Any]] = self._call("GET", f"/v1/cas/{ca_id}/generations").json()
        return result

    def renew_ca(self, ca_id: str, *, rekey: bool | None, days: int | None) -> dict[str, Any]:
        """Renew a CA (``POST /v1/cas/{id}/renew``, admins)."""
        body = {k: v for k, v in {"rekey": rekey, "days": days}.items() if v is not None}
        result: dict[str, Any] = self._call("POST", f"/v1/cas/{ca_id}/renew", json=body).json()
        return result

    def activate_ca(self, ca_id: str, *, force: bool) -> dict[str, Any]:
        """Activate a CA's pending generation (``POST /v1/cas/{id}/activate``, admins)."""
        result: dict[str, Any] = self._call(
            "POST", f"/v1/cas/{ca_id}/activate", json={"force": force}
        ).json()
        return result

    def ca_chain_pem(self, ca_id: str) -> str:
        """A CA's chain up to the root, in PEM."""
        return self._call("GET", f"/v1/cas/{ca_id}/chain").text

    def list_templates(self, ca_id: str | None = None) -> list[dict[str, Any]]:
        """Issuance templates."""
        result: list[dict[str, Any]] = self._call(
            "GET", "/v1/templates", params={"ca_id": ca_id}
        ).json()
        return result

    # ----------------------------------------------------------------- domains

    def list_domains(self, name: str | None = None) -> list[dict[str, Any]]:
        """Domains the caller can see."""
        result: list[dict[str, Any]] = self._call(
            "GET", "/v1/domains", params={"name": name}
        ).json()
        return result

    def register_domain(
        self,
        name: str,
        *,
        owners: list[str],
        requesters: list[str] | None = None,
        ca_id: str | None = None,
        template_id: str | None = None,
    ) -> dict[str, Any]:
        """Register a domain with owners and requesters (principal ids)."""
        body = {
            "name": name,
            "ca_id": ca_id,
            "template_id": template_id,
            "owners": [{"id": o} for o in owners],
            "requesters": [{"id": r} for r in requesters or []],
        }
        result: dict[str, Any] = self._call("POST", "/v1/domains", json=body).json()
        return result

    # ----------------------------------------------------------------- certificates

    def issue_certificate(
        self,
        csr: bytes | str,
        *,
        domain: str | None = None,
        ca_id: str | None = None,
        template_id: str | None = None,
        validity_days: int | None = None,
    ) -> dict[str, Any]:
        """Issue a certificate; the answer holds ``certificate``, ``chain_pem``, ``root_pem``."""
        body = {
            "csr": csr.decode() if isinstance(csr, bytes) else csr,
            "domain": domain,
            "ca_id": ca_id,
            "template_id": template_id,
            "validity_days": validity_days,
        }
        result: dict[str, Any] = self._call("POST", "/v1/certificates", json=body).json()
        return result

    def list_certificates(
        self,
        *,
        domain: str | None = None,
        status: str | None = None,
        expiring_within_days: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Certificates the caller can see, newest first."""
        params = {
            "domain": domain,
            "status": status,
            "expiring_within_days": expiring_within_days,
            "limit": limit,
            "offset": offset,
        }
        result: list[dict[str, Any]] = self._call("GET", "/v1/certificates", params=params).json()
        return result

    def get_certificate(self, serial: str) -> dict[str, Any]:
        """One certificate by serial (hex)."""
        result: dict[str, Any] = self._call("GET", f"/v1/certificates/{serial}").json()
        return result

    def revoke_certificate(self, serial: str, reason: str | int = "unspecified") -> dict[str, Any]:
        """Revoke a certificate with an RFC 5280 reason."""
        result: dict[str, Any] = self._call(
            "POST", f"/v1/certificates/{serial}/revoke", json={"reason": reason}
        ).json()
        return result

    def renew_certificate(
        self,
        certificate_pem: bytes | str,
        key: PrivateKey,
        csr: bytes | str,
        *,
        validity_days: int | None = None,
        audience: str | None = None,
    ) -> dict[str, Any]:
        """Renew with the current certificate: its key signs a one-time certificate token.

        Args:
            certificate_pem: the current certificate.
            key: its private key (never sent; it signs the token).
            csr: the CSR for the new certificate (it may carry a new key).
            validity_days: the new lifetime; by default the current one.
            audience: the server's token audience; by default the base URL.
        """
        text = certificate_pem.decode() if isinstance(certificate_pem, bytes) else certificate_pem
        current = x509.load_pem_x509_certificates(text.encode())[0]
        token = make_certificate_token(
            current, key, audience=audience or self.base_url, now=dt.datetime.now(dt.UTC)
        )
        body = {
            "certificate": text,
            "csr": csr.decode() if isinstance(csr, bytes) else csr,
            "validity_days": validity_days,
        }
        result: dict[str, Any] = self._call(
            "POST",
            "/v1/certificates/renew",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        return result

    def audit(
        self, *, object_type: str | None = None, object_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest audit entries (admins)."""
        params = {"object_type": object_type, "object_id": object_id, "limit": limit}
        result: list[dict[str, Any]] = self._call("GET", "/v1/audit", params=params).json()
        return result

    # ----------------------------------------------------------------- the hub

    def hub_messages(
        self, *, device: str | None = None, after: int | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Stored telemetry after ``after`` (``GET /v1/hub/messages``)."""
        params = {"device": device, "after": after, "limit": limit}
        result: list[dict[str, Any]] = self._call("GET", "/v1/hub/messages", params=params).json()
        return result

    def send_c2d(
        self, device_id: str, body: str, *, properties: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Queue a cloud-to-device message (``POST /v1/hub/devices/{id}/messages``)."""
        result: dict[str, Any] = self._call(
            "POST",
            f"/v1/hub/devices/{quote(device_id, safe='')}/messages",
            json={"body": body, "properties": properties or {}},
        ).json()
        return result

    # ----------------------------------------------------------------- hub links

    def list_hub_links(self) -> list[dict[str, Any]]:
        """Every hub link (``GET /v1/hub-links``, admins)."""
        result: list[dict[str, Any]] = self._call("GET", "/v1/hub-links").json()
        return result

    def add_hub_link(self, link: dict[str, Any]) -> dict[str, Any]:
        """Add a hub link (``POST /v1/hub-links`` with the ``HubLinkIn`` fields)."""
        result: dict[str, Any] = self._call("POST", "/v1/hub-links", json=link).json()
        return result

    def get_hub_link(self, name: str) -> dict[str, Any]:
        """One hub link."""
        result: dict[str, Any] = self._call("GET", f"/v1/hub-links/{quote(name, safe='')}").json()
        return result

    def remove_hub_link(self, name: str) -> None:
        """Remove a hub link."""
        self._call("DELETE", f"/v1/hub-links/{quote(name, safe='')}")

    def hub_link_status(self, name: str, *, limit: int = 20) -> dict[str, Any]:
        """The link's delivery status (``GET /v1/hub-links/{name}/status``)."""
        result: dict[str, Any] = self._call(
            "GET", f"/v1/hub-links/{quote(name, safe='')}/status", params={"limit": limit}
        ).json()
        return result

    def retry_hub_link(self, name: str) -> dict[str, Any]:
        """Requeue the link's failed deliveries (``POST /v1/hub-links/{name}/retry``)."""
        result: dict[str, Any] = self._call(
            "POST", f"/v1/hub-links/{quote(name, safe='')}/retry"
        ).json()
        return result

    def trust_in_hub_link(self, name: str, ca_id: str) -> dict[str, Any]:
        """One-click trust of ``ca_id`` in the link's hub (``POST /v1/hub-links/{name}/trust``)."""
        result: dict[str, Any] = self._call(
            "POST", f"/v1/hub-links/{quote(name, safe='')}/trust", json={"caId": ca_id}
        ).json()
        return result
