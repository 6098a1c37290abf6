"""TLS for the API port: a server context that asks for client certificates, and a way to read them.

uvicorn's ASGI scope does not carry the peer certificate, so the HTTP protocol is
subclassed: when a TLS connection is made it reads the verified client certificate
from the transport's ``ssl_object`` and puts its DER into the per-connection copy
of the ASGI ``state``, which every request's scope receives.  Routes read it with
:func:`client_certificate_der`.  EST ``simplereenroll`` (RFC 7030 §3.3.2) relies
on it.  The other certificates the client sent (its chain, as far as OpenSSL
exposes it) are kept beside it for MQTT over WebSockets.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

from starlette.requests import Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from fleetpki.hub.tls import peer_certificates

__all__ = [
    "CLIENT_CERT_STATE_KEY",
    "CLIENT_CHAIN_STATE_KEY",
    "ClientCertH11Protocol",
    "client_certificate_der",
    "http_protocol_class",
    "server_ssl_context",
]

#: The key under which the verified client certificate's DER is kept in ``scope["state"]``.
CLIENT_CERT_STATE_KEY = "fleetpki.tls_client_cert_der"
#: The key of the other certificates the client sent (DER, leaf excluded; may be empty).
CLIENT_CHAIN_STATE_KEY = "fleetpki.tls_client_chain_der"


def server_ssl_context(certfile: Path, keyfile: Path, client_ca_file: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context that requests, but does not require, a client certificate.

    A client certificate is verified against the CAs in ``client_ca_file``; a client
    that sends none still connects (``CERT_OPTIONAL``), and routes decide whether
    they need one.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    context.load_verify_locations(cafile=str(client_ca_file))
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _with_client_certificate(protocol: Any, transport: asyncio.BaseTransport) -> None:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return
    der, chain = peer_certificates(ssl_object)
    if der is not None:
        # A private copy for this connection: the shared lifespan state is untouched.
        protocol.app_state = {
            **protocol.app_state,
            CLIENT_CERT_STATE_KEY: der,
            CLIENT_CHAIN_STATE_KEY: tuple(chain),
        }


class ClientCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, exposing the verified TLS client certificate to routes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the connection and remember the client certificate, if one was sent."""
        super().connection_made(transport)
        _with_client_certificate(self, transport)


def http_protocol_class() -> type[asyncio.Protocol]:
    """The fastest available HTTP protocol class that exposes client certificates."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is optional
        return ClientCertH11Protocol

    class ClientCertHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, exposing the verified TLS client certificate."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            _with_client_certificate(self, transport)

    return ClientCertHttpToolsProtocol


def client_certificate_der(request: Request) -> bytes | None:
    """The DER of the client certificate the TLS layer verified, or ``None``.

    The certificate chained to one of fleetpki's CAs (the TLS handshake checked
    that); whether it is still valid and unrevoked is for the caller to check.
    """
    state = request.scope.get("state") or {}
    der = state.get(CLIENT_CERT_STATE_KEY)
    return der if isinstance(der, bytes) else None
