"""TLS for the hub's MQTT connections on memory BIOs, without uvloop's SSL protocol.

uvloop's TLS layer (its ``SSLProtocol``) gives every connection a 256 KiB read buffer
of its own (one page of it resident, 4 KB, however idle the device), a write deque,
an extra-info dict and a dozen bound methods: ~6.5 KB of an idle connection's ~32 KB
(bench/README.md, "Hub"). Here the listener accepts plain TCP and each connection's
`TLSConnection` runs TLS itself, on two ``ssl.MemoryBIO`` and the context's
``SSLObject``, as uvloop does: encrypted bytes are read into one buffer the server's
connections share (each read is handled before the next one starts), fed to the
incoming BIO, and the decrypted bytes go into the protocol's own shared buffer.

`TLSConnection` is the TCP transport's protocol and the hub connection's transport.
It keeps what the guarded listener did for TLS connections (`fleetpki.listener`): the
handshake must end within the handshake timeout, and a failed or timed-out one counts
in the listener's ``failed_handshakes``. On close it sends close_notify and closes
the socket once the bytes are out, without waiting for the peer's close_notify (RFC
8446 §6.1 allows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

__all__ = ["CIPHERTEXT_BUFFER_SIZE", "TLSConnection", "TLSServerSide"]

_log = logging.getLogger("fleetpki.hub.tls")

#: The size of the buffer the server's connections read encrypted bytes into, in turn.
CIPHERTEXT_BUFFER_SIZE = 256 * 1024

_HANDSHAKE = 0
_OPEN = 1
_CLOSED_AFTER_OPEN = 2  # the application protocol was told connection_made
_CLOSED = 3  # it was not (the handshake failed or timed out)


class TLSServerSide:
    """What the TLS connections of one listener share.

    Args:
        context: the hub's server context (`fleetpki.hub.tls.hub_ssl_context`).
        handshake_timeout: seconds a TLS handshake may take.
        on_failed_handshake: called for each handshake that fails or times out.
    """

    __slots__ = ("buffer", "context", "handshake_timeout", "on_failed_handshake", "view")

    def __init__(
        self,
        context: ssl.SSLContext,
        handshake_timeout: float,
        on_failed_handshake: Callable[[], None],
    ) -> None:
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.on_failed_handshake = on_failed_handshake
        self.buffer = bytearray(CIPHERTEXT_BUFFER_SIZE)
        self.view = memoryview(self.buffer)


class TLSConnection(asyncio.BufferedProtocol):
    """One server-side TLS connection: the protocol of a TCP transport, and the
    transport of ``app`` (a buffered protocol), which sees ``connection_made`` once the
    handshake is done.
    """

    __slots__ = (
        "_app",
        "_incoming",
        "_outgoing",
        "_paused",
        "_raw",
        "_side",
        "_ssl",
        "_state",
        "_timer",
    )

    def __init__(self, app: asyncio.BufferedProtocol, side: TLSServerSide) -> None:
        self._app = app
        self._side = side
        self._raw: asyncio.Transport | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl: ssl.SSLObject | None = None
        self._state = _HANDSHAKE
        self._timer: asyncio.TimerHandle | None = None  # the handshake's timeout
        self._paused = False

    # -- protocol of the TCP transport --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the TLS handshake (the client speaks first)."""
        self._raw = transport  # type: ignore[assignment]
        self._ssl = self._side.context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._side.handshake_timeout, self._handshake_timed_out)

    def get_buffer(self, sizehint: int) -> memoryview:
        """The shared buffer for encrypted bytes."""
        return self._side.view

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` of TLS records arrived: handshake, or decrypt them for the protocol."""
        self._incoming.write(self._side.view[:nbytes])
        if self._state == _OPEN:
            self._read()
        elif self._state == _HANDSHAKE:
            self._handshake()

    def eof_received(self) -> bool | None:
        """The client half-closed: close (the transport then reports the loss)."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the protocol, if it was told of the connection."""
        state = self._state
        self._cancel_handshake_timer()
        self._state = _CLOSED_AFTER_OPEN if state in (_OPEN, _CLOSED_AFTER_OPEN) else _CLOSED
        if state == _HANDSHAKE:
            self._side.on_failed_handshake()
            _log.debug("hub: TLS handshake ended by the client: %r", exc)
        if self._state == _CLOSED_AFTER_OPEN:
            self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        """The socket's send buffer is full: tell the protocol."""
        if self._state == _OPEN:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        """The socket drained: tell the protocol."""
        if self._state == _OPEN:
            self._app.resume_writing()

    # -- transport of the application protocol --

    def write(self, data: bytes) -> None:
        """Encrypt ``data`` and send it; ignored once closing."""
        if self._state != _OPEN or self._ssl is None:
            return
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            _log.info("hub: TLS write failed: %r", exc)
            self.abort()
            return
        self._flush()

    def close(self) -> None:
        """Send close_notify and close once the bytes are out."""
        state = self._state
        if state in (_CLOSED, _CLOSED_AFTER_OPEN) or self._raw is None:
            return
        self._cancel_handshake_timer()
        self._state = _CLOSED_AFTER_OPEN if state == _OPEN else _CLOSED
        if state == _OPEN and self._ssl is not None:
            # SSLWantReadError: close_notify is out; the peer's reply is not awaited.
            with contextlib.suppress(ssl.SSLError, ValueError):
                self._ssl.unwrap()
            self._flush()
        self._raw.close()

    def abort(self) -> None:
        """Close the socket now."""
        state = self._state
        self._cancel_handshake_timer()
        self._state = _CLOSED_AFTER_OPEN if state in (_OPEN, _CLOSED_AFTER_OPEN) else _CLOSED
        if self._raw is not None:
            self._raw.abort()

    def is_closing(self) -> bool:
        """Whether `close` or `abort` was called, or the socket is closing."""
        return self._state != _OPEN or self._raw is None or self._raw.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``ssl_object``, ``sslcontext``, ``peercert``, ``cipher``; the rest from the socket's."""
        if name == "ssl_object":
            return self._ssl
        if name == "sslcontext":
            return self._side.context
        if name == "peercert":
            return None if self._ssl is None else self._ssl.getpeercert()
        if name == "cipher":
            return None if self._ssl is None else self._ssl.cipher()
        if self._raw is None:
            return default
        return self._raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        """Stop reading from the socket (back-pressure from the protocol)."""
        if self._state == _OPEN and not self._paused:
            self._paused = True
            if self._raw is not None:
                self._raw.pause_reading()

    def resume_reading(self) -> None:
        """Read again, starting with records already received."""
        if self._state == _OPEN and self._paused:
            self._paused = False
            if self._raw is not None:
                self._raw.resume_reading()
            asyncio.get_running_loop().call_soon(self._read)

    def get_write_buffer_size(self) -> int:
        """Bytes the socket has not sent yet."""
        return 0 if self._raw is None else self._raw.get_write_buffer_size()

    # -- internals --

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self._raw is not None:
            self._raw.write(data)

    def _cancel_handshake_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _handshake(self) -> None:
        assert self._ssl is not None
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._flush()  # the alert, so the client can tell why
            _log.debug("hub: TLS handshake failed: %r", exc)
            self._cancel_handshake_timer()
            self._state = _CLOSED
            self._side.on_failed_handshake()
            if self._raw is not None:
                self._raw.close()
            return
        self._flush()  # the session tickets (TLS 1.3)
        self._cancel_handshake_timer()
        self._state = _OPEN
        self._app.connection_made(self)  # type: ignore[arg-type]
        if self._state == _OPEN and (self._incoming.pending or self._ssl.pending()):
            self._read()  # the first packets came with the client's last flight

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._state != _HANDSHAKE:
            return
        self._state = _CLOSED
        self._side.on_failed_handshake()
        _log.debug("hub: TLS handshake timed out")
        if self._raw is not None:
            self._raw.abort()

    def _read(self) -> None:
        sslobj = self._ssl
        if sslobj is None:
            return
        inner = sslobj._sslobj  # type: ignore[attr-defined]  # _ssl._SSLObject, one call less
        app = self._app
        incoming = self._incoming
        while self._state == _OPEN and not self._paused:
            buffer = app.get_buffer(-1)
            try:
                count = inner.read(len(buffer), buffer)  # type: ignore[arg-type]
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:
                _log.info("hub: TLS read failed: %r", exc)
                self._flush()
                self.abort()
                return
            if not count:  # the client's close_notify
                self.close()
                return
            app.buffer_updated(count)
            if not incoming.pending and not inner.pending():
                break
        if self._outgoing.pending:
            self._flush()  # a key update's answer
