"""The hub's TLS: a server context that takes any client certificate, and the peer's chain.

Why not ``ssl.CERT_REQUIRED`` or ``CERT_OPTIONAL`` with the trusted CAs as verify
locations: OpenSSL then checks the client chain *during* the handshake and aborts it
on an unknown CA, an expired certificate or a bad chain. The Azure device SDK reports
a TLS abort as ``ConnectionFailedError`` and retries for ever, while Azure IoT Hub
finishes TLS and answers CONNACK 5, which the SDK turns into a credential error and
stops (ref §1.1, §1.4, §5). So the hub must *request* a certificate, accept whatever
arrives at the TLS layer (the handshake signature still proves possession of the key),
and judge the chain in the application (`fleetpki.pki.chain.verify_client_chain`).

CPython's ``ssl`` module (3.11) exposes neither OpenSSL's verify callback nor the peer's
unverified chain, and uvloop accepts only ``ssl.SSLContext``. The approach taken:

* ``SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, accept_all)`` is called through ``ctypes``
  on the context's own ``SSL_CTX*``, read from the ``PySSLContext`` object (its first
  field after the object header, unchanged since CPython 3.7). The pointer is checked
  before use: the context's verify mode is set through Python to two distinct values
  and read back through ``SSL_CTX_get_verify_mode``; any mismatch disables the trick.
  The callback is a C function pointer that ctypes backs with a tiny Python function;
  OpenSSL calls it once per certificate depth, which costs a few microseconds.
* After the handshake, ``SSL_get_peer_cert_chain`` (via the ``SSL*`` of the
  ``_ssl._SSLSocket`` under the ``SSLObject``, checked with ``SSL_get_SSL_CTX``) gives the
  intermediates the device sent; the hub's trusted CA set supplies the rest.

Limits: if the ctypes route is unavailable (another Python, another layout), the
context falls back to ``CERT_OPTIONAL`` with every hub CA as a verify location: devices
from trusted CAs still get CONNACK 5 for every application-level refusal, but a
certificate from an unknown CA aborts TLS. `ACCEPTS_ANY_CLIENT_CERTIFICATE` says
which mode is in force. A device that sends no certificate completes TLS either way
and is refused with CONNACK 5.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "ACCEPTS_ANY_CLIENT_CERTIFICATE",
    "HubSSLObject",
    "hub_ssl_context",
    "peer_certificates",
    "release_handshake_memory",
    "session_cache_mode",
]

_log = logging.getLogger("fleetpki.hub.tls")

_SSL_VERIFY_PEER = 0x01
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept_all(_preverify_ok: int, _store_ctx: int | None) -> int:
    # Any client certificate passes the TLS layer; the application verifies the chain.
    return 1


# Kept at module level: OpenSSL holds the raw pointer for the process's lifetime.
_ACCEPT_ALL = _VERIFY_CALLBACK(_accept_all)


class _LibSSL:
    """The OpenSSL functions CPython's ``_ssl`` module is linked against."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(ssl._ssl.__file__)  # type: ignore[attr-defined]
        self.set_verify = lib.SSL_CTX_set_verify
        self.set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
        self.set_verify.restype = None
        self.get_verify_mode = lib.SSL_CTX_get_verify_mode
        self.get_verify_mode.argtypes = [ctypes.c_void_p]
        self.get_verify_mode.restype = ctypes.c_int
        self.get_ssl_ctx = lib.SSL_get_SSL_CTX
        self.get_ssl_ctx.argtypes = [ctypes.c_void_p]
        self.get_ssl_ctx.restype = ctypes.c_void_p
        self.peer_chain = lib.SSL_get_peer_cert_chain
        self.peer_chain.argtypes = [ctypes.c_void_p]
        self.peer_chain.restype = ctypes.c_void_p
        self.sk_num = lib.OPENSSL_sk_num
        self.sk_num.argtypes = [ctypes.c_void_p]
        self.sk_num.restype = ctypes.c_int
        self.sk_value = lib.OPENSSL_sk_value
        self.sk_value.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.sk_value.restype = ctypes.c_void_p
        self.i2d_x509 = lib.i2d_X509
        self.i2d_x509.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.i2d_x509.restype = ctypes.c_int
        # For release_handshake_memory.
        void_p = ctypes.c_void_p
        self.verified_chain = lib.SSL_get0_verified_chain
        self.verified_chain.argtypes = [void_p]
        self.verified_chain.restype = void_p
        self.sk_pop = lib.OPENSSL_sk_pop
        self.sk_pop.argtypes = [void_p]
        self.sk_pop.restype = void_p
        self.x509_free = lib.X509_free
        self.x509_free.argtypes = [void_p]
        self.x509_free.restype = None
        self.version = lib.SSL_version
        self.version.argtypes = [void_p]
        self.version.restype = ctypes.c_int
        self.get_session = lib.SSL_get_session
        self.get_session.argtypes = [void_p]
        self.get_session.restype = void_p
        self.session_id = lib.SSL_SESSION_get_id
        self.session_id.argtypes = [void_p, ctypes.POINTER(ctypes.c_uint)]
        self.session_id.restype = void_p
        self.get_rbio = lib.SSL_get_rbio
        self.get_rbio.argtypes = [void_p]
        self.get_rbio.restype = void_p
        self.get_wbio = lib.SSL_get_wbio
        self.get_wbio.argtypes = [void_p]
        self.get_wbio.restype = void_p
        self.bio_method_type = lib.BIO_method_type
        self.bio_method_type.argtypes = [void_p]
        self.bio_method_type.restype = ctypes.c_int
        self.bio_ctrl = lib.BIO_ctrl
        self.bio_ctrl.argtypes = [void_p, ctypes.c_int, ctypes.c_long, void_p]
        self.bio_ctrl.restype = ctypes.c_long
        self.buf_mem_new = lib.BUF_MEM_new
        self.buf_mem_new.argtypes = []
        self.buf_mem_new.restype = void_p
        # For the session cache mode (SSL_CTX_set/get_session_cache_mode are macros).
        self.ctx_ctrl = lib.SSL_CTX_ctrl
        self.ctx_ctrl.argtypes = [void_p, ctypes.c_int, ctypes.c_long, void_p]
        self.ctx_ctrl.restype = ctypes.c_long


def _load() -> _LibSSL | None:
    if sys.implementation.name != "cpython":
        return None
    try:
        return _LibSSL()
    except (OSError, AttributeError):
        return None


_LIB = _load()
_HEADER = object.__basicsize__  # PyObject_HEAD: the C pointer follows it


def _field_pointer(obj: object, offset: int) -> int | None:
    value: int | None = ctypes.c_void_p.from_address(id(obj) + offset).value
    return value


def _ssl_ctx_pointer(context: ssl.SSLContext) -> int | None:
    """The ``SSL_CTX*`` of ``context``, or ``None`` if it cannot be proven right."""
    if _LIB is None:
        return None
    pointer = _field_pointer(context, _HEADER)
    if not pointer:
        return None
    saved = context.verify_mode
    try:
        context.verify_mode = ssl.CERT_REQUIRED  # SSL_VERIFY_PEER | FAIL_IF_NO_PEER_CERT
        required = _LIB.get_verify_mode(pointer)
        context.verify_mode = ssl.CERT_OPTIONAL  # SSL_VERIFY_PEER
        optional = _LIB.get_verify_mode(pointer)
    finally:
        context.verify_mode = saved
    return pointer if (required, optional) == (0x03, 0x01) else None


def _accept_any_client_certificate(context: ssl.SSLContext) -> bool:
    pointer = _ssl_ctx_pointer(context)
    if pointer is None or _LIB is None:
        return False
    context.verify_mode = ssl.CERT_OPTIONAL
    # Python's setter installs no callback; replace it with one that accepts the chain.
    _LIB.set_verify(pointer, _SSL_VERIFY_PEER, _ACCEPT_ALL)
    mode: int = _LIB.get_verify_mode(pointer)
    return mode == _SSL_VERIFY_PEER


_SSL_CTRL_SET_SESS_CACHE_MODE = 44
_SSL_CTRL_GET_SESS_CACHE_MODE = 45
_SSL_SESS_CACHE_OFF = 0
_SSL_SESS_CACHE_SERVER = 0x0002


def _turn_session_cache_off(context: ssl.SSLContext) -> bool:
    pointer = _ssl_ctx_pointer(context)
    if pointer is None or _LIB is None:
        return False
    _LIB.ctx_ctrl(pointer, _SSL_CTRL_SET_SESS_CACHE_MODE, _SSL_SESS_CACHE_OFF, None)
    return session_cache_mode(context) == _SSL_SESS_CACHE_OFF


def session_cache_mode(context: ssl.SSLContext) -> int | None:
    """OpenSSL's session cache mode of ``context`` (0: off), or ``None`` if unreadable."""
    pointer = _ssl_ctx_pointer(context)
    if pointer is None or _LIB is None:
        return None
    mode: int = _LIB.ctx_ctrl(pointer, _SSL_CTRL_GET_SESS_CACHE_MODE, 0, None)
    return mode


#: Whether this interpreter lets the hub finish TLS with any client certificate.
ACCEPTS_ANY_CLIENT_CERTIFICATE = _accept_any_client_certificate(
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
)


class HubSSLObject(ssl.SSLObject):
    """The hub's TLS connection object: the peer certificate only in DER.

    uvloop asks every new TLS connection for ``getpeercert()`` and keeps the answer as
    the transport's ``peercert`` extra info for the connection's life: with a client
    certificate that is a decoded dict of ~1.7 KB of Python objects per idle
    connection, which the hub never reads (it reads the DER, `peer_certificates`, and
    judges the chain itself). Here the decoded form is ``None``; ``binary_form=True``
    answers as before.
    """

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The peer's certificate as DER (``binary_form=True``), else ``None``."""
        if not binary_form:
            return None
        return super().getpeercert(True)


def hub_ssl_context(
    certfile: Path, keyfile: Path, fallback_ca_pems: Iterable[bytes] = ()
) -> ssl.SSLContext:
    """A TLS 1.2/1.3 server context that requests a client certificate and accepts any.

    TLS 1.2 stays enabled because the Azure device SDK speaks nothing else (ref §1.1).

    Args:
        certfile / keyfile: the hub's certificate chain and key (PEM).
        fallback_ca_pems: CA certificates to verify against when the accept-any route is
            not available (see the module docstring); unused otherwise.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    context.sslobject_class = HubSSLObject
    # No stateful session cache: OpenSSL would keep every TLS 1.2 session without a
    # ticket (its peer certificates included, ~12 KB) for two hours, up to 20,480 of
    # them, past the connection's end. Resumption stays, from stateless tickets
    # (TLS 1.2 and 1.3; docs/hub.md, "TLS").
    if not _turn_session_cache_off(context):
        _log.warning("cannot turn the hub's TLS session cache off on this Python")
    # Ask for client certificates from any issuer: send no CA name list.
    if not _accept_any_client_certificate(context):
        _log.warning(
            "cannot accept unverified client certificates at the TLS layer on this Python; "
            "certificates from unknown CAs will abort the handshake"
        )
        cadata = "".join(pem.decode() for pem in fallback_ca_pems)
        if cadata:
            context.load_verify_locations(cadata=cadata)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _ssl_pointer(ssl_object: Any) -> int | None:
    inner = getattr(ssl_object, "_sslobj", None)
    if inner is None or _LIB is None:
        return None
    # _ssl._SSLSocket: PyObject_HEAD, a weakref to the socket, then SSL *ssl.
    pointer = _field_pointer(inner, _HEADER + ctypes.sizeof(ctypes.c_void_p))
    if not pointer:
        return None
    ctx_pointer = _field_pointer(ssl_object.context, _HEADER)
    return pointer if _LIB.get_ssl_ctx(pointer) == ctx_pointer else None


def _der(x509_pointer: int) -> bytes:
    assert _LIB is not None
    length = _LIB.i2d_x509(x509_pointer, None)
    if length <= 0:
        return b""
    buffer = ctypes.create_string_buffer(length)
    cursor = ctypes.c_char_p(ctypes.addressof(buffer))
    _LIB.i2d_x509(x509_pointer, ctypes.byref(cursor))
    return buffer.raw


def peer_certificates(ssl_object: Any) -> tuple[bytes | None, list[bytes]]:
    """The client's leaf certificate and the other certificates it sent, as DER.

    Args:
        ssl_object: the transport's ``ssl_object`` after the handshake.

    Returns:
        ``(leaf, others)``: ``leaf`` is ``None`` when the client sent no certificate;
        ``others`` is empty when the chain cannot be read (then the hub's CA set
        supplies the intermediates).
    """
    try:
        leaf: bytes | None = ssl_object.getpeercert(binary_form=True)
    except (ValueError, ssl.SSLError):
        return None, []
    if not leaf:
        return None, []
    others: list[bytes] = []
    pointer = _ssl_pointer(ssl_object)
    if pointer is not None and _LIB is not None:
        stack = _LIB.peer_chain(pointer)
        if stack:
            for index in range(_LIB.sk_num(stack)):
                der = _der(_LIB.sk_value(stack, index))
                if der and der != leaf:
                    others.append(der)
    return leaf, others


_TLS1_3_VERSION = 0x0304
_BIO_TYPE_MEM = 1 | 0x0400  # BIO_TYPE_MEM: number 1, BIO_TYPE_SOURCE_SINK
_BIO_CTRL_PENDING = 10
_BIO_C_SET_BUF_MEM = 114
_BIO_CLOSE = 1


def _empty_stack(stack: int | None) -> None:
    assert _LIB is not None
    if stack:
        while (x509 := _LIB.sk_pop(stack)) is not None:
            _LIB.x509_free(x509)


def _cached_session(pointer: int) -> bool:
    """Whether the connection's session may sit in the context's session cache (a
    TLS 1.2 session with an id, the cache on), shared with a later resumption of it."""
    assert _LIB is not None
    mode = _LIB.ctx_ctrl(_LIB.get_ssl_ctx(pointer), _SSL_CTRL_GET_SESS_CACHE_MODE, 0, None)
    if not mode & _SSL_SESS_CACHE_SERVER:
        return False  # the hub's context: no cache
    if _LIB.version(pointer) >= _TLS1_3_VERSION:
        return False  # resumed from stateless tickets only (the hub sets no NO_TICKET)
    session = _LIB.get_session(pointer)
    if not session:
        return False
    length = ctypes.c_uint(0)
    _LIB.session_id(session, ctypes.byref(length))
    return length.value > 0


def release_handshake_memory(ssl_object: Any) -> bool:
    """Free what OpenSSL keeps of a finished handshake that the hub no longer reads.

    Call it once the peer's certificates have been read (`peer_certificates`), for an
    idle connection's memory (bench/README.md, "Hub"): the other certificates the
    client sent (``SSL_get_peer_cert_chain``) and the chain OpenSSL built from them
    (``SSL_get0_verified_chain``), about 6 KB per certificate, are emptied, and the
    memory BIOs uvloop reads and writes TLS records through, which keep the size of the
    largest handshake flight (several KB each), get a new empty buffer when they hold no
    data. The leaf stays (``getpeercert(True)`` still answers). A TLS 1.2 session that
    may be in a session cache keeps its chain, for a resumption of it (the hub's own
    context has the cache off, `hub_ssl_context`). Nothing else changes:
    both BIOs grow again with the next record.

    Returns:
        whether the ``SSL*`` could be reached (``False``: nothing was done).
    """
    pointer = _ssl_pointer(ssl_object)
    if pointer is None or _LIB is None:
        return False
    if not _cached_session(pointer):
        _empty_stack(_LIB.peer_chain(pointer))
        _empty_stack(_LIB.verified_chain(pointer))
    for bio in {_LIB.get_rbio(pointer), _LIB.get_wbio(pointer)}:
        if (
            bio
            and _LIB.bio_method_type(bio) == _BIO_TYPE_MEM
            and _LIB.bio_ctrl(bio, _BIO_CTRL_PENDING, 0, None) == 0
        ):
            fresh = _LIB.buf_mem_new()
            if fresh:
                # BIO_set_mem_buf: the old buffer is freed, the BIO owns the new one.
                _LIB.bio_ctrl(bio, _BIO_C_SET_BUF_MEM, _BIO_CLOSE, fresh)
    return True
