"""The HTTPS transport the enrollers share: an httpx client whose errors carry no secrets."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from fleetpki.client import error_from_response
from fleetpki.errors import FleetPKIError

__all__ = ["DEFAULT_HTTP_TIMEOUT", "HttpTransport", "verify_context"]

#: Seconds an enroller waits for the CA server.
DEFAULT_HTTP_TIMEOUT = 30.0


def verify_context(ca_bundle: Path | str | ssl.SSLContext | bool) -> ssl.SSLContext | bool:
    if isinstance(ca_bundle, str | Path):
        context = ssl.create_default_context(cafile=str(ca_bundle))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context
    return ca_bundle


class HttpTransport:
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
    ) -> HttpTransport:
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
