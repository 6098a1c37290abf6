"""TLS for the API port: a server context that asks for client certificates, and a way to read them.

uvicorn's ASGI scope does not carry the peer certificate, so the HTTP protocol is
subclassed: when a TLS connection is made it reads the verified client certificate
from the transport's ``ssl_object`` and puts its DER into the per-connection copy
of the ASGI ``state``, which every request's scope receives.  Routes read it with
:func:`client_certificate_der`.  EST ``simplereenroll`` (RFC 7030 §3.3.2) relies
on it.  The other certificates the client sent (its chain, as far as OpenSSL
exposes it) are kept beside it for MQTT over WebSockets.

The subclass also hands uvicorn a transport that sends what one response writes in
one turn of the event loop at once (:class:`_CoalescingTransport`): uvicorn writes a
response's headers and its body separately, which over TLS made two records and two
``send`` calls for every small answer (an OCSP response, a certificate); now one.

The same subclass bounds how long a client may take to send a request's headers:
uvicorn has a keep-alive timeout between requests, but none from the connection's
start, and any byte received cancels it, so a client that opens a connection (or
starts a request) and never ends its headers would hold it for ever. The header
deadline is armed when the connection is made and after each response; when it
fires with no request in flight, the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

from starlette.requests import Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from fleetpki.hub.tls import peer_certificates

_log = logging.getLogger("fleetpki.api")

__all__ = [
    "CLIENT_CERT_STATE_KEY",
    "CLIENT_CHAIN_STATE_KEY",
    "DEFAULT_HEADER_TIMEOUT",
    "ClientCertH11Protocol",
    "client_certificate_der",
    "http_protocol_class",
    "server_ssl_context",
]

#: The key under which the verified client certificate's DER is kept in ``scope["state"]``.
CLIENT_CERT_STATE_KEY = "fleetpki.tls_client_cert_der"
#: The key of the other certificates the client sent (DER, leaf excluded; may be empty).
CLIENT_CHAIN_STATE_KEY = "fleetpki.tls_client_chain_der"
#: Seconds a client may take to send a request's headers (from the connection's start,
#: or from the previous response).
DEFAULT_HEADER_TIMEOUT = 10.0


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


class _HeaderDeadline:
    """The header deadline of one connection (see the module docstring)."""

    __slots__ = ("_handle", "_protocol", "_timeout")

    def __init__(self, protocol: Any, timeout: float) -> None:
        self._protocol = protocol
        self._timeout = timeout
        self._handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.cancel()
        if self._timeout > 0:
            self._handle = asyncio.get_running_loop().call_later(self._timeout, self._expired)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _expired(self) -> None:
        self._handle = None
        protocol = self._protocol
        cycle = protocol.cycle
        if cycle is not None and not cycle.response_complete:
            return  # the headers came: a request is being served
        transport = protocol.transport
        if transport is not None and not transport.is_closing():
            _log.debug("closed a connection that sent no complete headers in time")
            # abort, not close: a client that sends nothing may read nothing either.
            transport.abort()


#: Bytes held for one send at most: more is sent at once, so that a response streamed
#: without yielding to the loop stays under the transport's flow control.
_COALESCE_LIMIT = 64 * 1024


class _CoalescingTransport:
    """A transport whose writes in one turn of the event loop leave as one write.

    What is written waits until the loop's next callbacks run (or until more than
    :data:`_COALESCE_LIMIT` bytes wait, or the connection is closed), then goes to the
    real transport in one ``write``: one TLS record and one system call for a
    response's headers and body. Everything else is the real transport's.
    """

    __slots__ = ("_loop", "_pending", "_size", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._size += len(data)
        if self._size > _COALESCE_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Send what waits, now."""
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        self._size = 0
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._size = 0
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def _protocol_with(base: type[Any], header_timeout: float) -> type[asyncio.Protocol]:
    class ClientCertProtocol(base):  # type: ignore[misc]
        """uvicorn's protocol, exposing the TLS client certificate, with a header deadline."""

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            # uvicorn's flow control keeps the real transport (taken above).
            coalescing: Any = _CoalescingTransport(transport, asyncio.get_running_loop())
            self.transport = coalescing
            _with_client_certificate(self, transport)
            self._fleetpki_deadline = _HeaderDeadline(self, header_timeout)
            self._fleetpki_deadline.arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._fleetpki_deadline.arm()

        def handle_websocket_upgrade(self, *args: Any) -> None:
            # The connection now belongs to the WebSocket protocol and its own pings.
            self._fleetpki_deadline.cancel()
            # ... and its own writes go straight to the real transport.
            coalescing = self.transport
            if isinstance(coalescing, _CoalescingTransport):
                coalescing.flush()
                self.transport = coalescing.transport
            super().handle_websocket_upgrade(*args)

        def connection_lost(self, exc: Exception | None) -> None:
            self._fleetpki_deadline.cancel()
            super().connection_lost(exc)

    ClientCertProtocol.__name__ = f"ClientCert{base.__name__}"
    ClientCertProtocol.__qualname__ = ClientCertProtocol.__name__
    return ClientCertProtocol


#: uvicorn's h11 protocol, exposing the verified TLS client certificate to routes.
ClientCertH11Protocol = _protocol_with(H11Protocol, DEFAULT_HEADER_TIMEOUT)


def http_protocol_class(header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> type[asyncio.Protocol]:
    """The fastest available HTTP protocol class that exposes client certificates.

    Args:
        header_timeout: seconds a client may take to send a request's headers
            (0 turns the deadline off).
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is optional
        return _protocol_with(H11Protocol, header_timeout)
    return _protocol_with(HttpToolsProtocol, header_timeout)


def client_certificate_der(request: Request) -> bytes | None:
    """The DER of the client certificate the TLS layer verified, or ``None``.

    The certificate chained to one of fleetpki's CAs (the TLS handshake checked
    that); whether it is still valid and unrevoked is for the caller to check.
    """
    state = request.scope.get("state") or {}
    der = state.get(CLIENT_CERT_STATE_KEY)
    return der if isinstance(der, bytes) else None
