"""The SASL exchange in front of Proton's engine (AMQP 1.0 §5.3), accepting MSSBCBS.

Azure's clients authenticate by claims (``$cbs`` put-token) after the connection is
open, so SASL only has to let them in. They do not all ask for the same mechanism:
azure-eventhub asks for ANONYMOUS, but the service SDK's uamqp asks for ``MSSBCBS``
(azure-uamqp-c ``saslmssbcbs.c``: Microsoft's "claims-based security follows"
mechanism, empty initial response), which Proton's built-in SASL cannot offer as a
server: it knows only ANONYMOUS, EXTERNAL and PLAIN, and fails any other mechanism.

So this small gate answers the SASL layer itself and hands everything after it, from
the AMQP protocol header on, to Proton. The performatives are encoded and decoded by
Proton's own codec (``proton.Data``); only the frame header (§2.3.1: size, data
offset, type 1 for SASL, channel) is put together here.

A peer that starts with the plain AMQP header (no SASL) goes straight to Proton, which
refuses it: every client of the hub's service endpoints uses SASL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from proton import Data, Described

__all__ = ["MECHANISMS", "SaslGate", "SaslStep"]

#: What the hub offers: claims-based security follows (uamqp) and anonymous (pyamqp).
MECHANISMS = ("MSSBCBS", "ANONYMOUS")
_SASL_HEADER = b"AMQP\x03\x01\x00\x00"
_AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
_SASL_FRAME = 0x01
_SASL_MECHANISMS = 0x40
_SASL_INIT = 0x41
_SASL_OUTCOME = 0x44
_OUTCOME_OK = 0
_OUTCOME_AUTH = 1
#: A SASL frame is small (a mechanism name and an empty response); anything larger is not one.
_MAX_SASL_FRAME = 4096


@dataclass(frozen=True, slots=True)
class SaslStep:
    """What feeding the gate gave.

    Attributes:
        reply: bytes to write to the peer.
        rest: the bytes after the SASL layer (for Proton), once it is done; else ``None``.
        failed: the peer broke the SASL exchange: close after writing ``reply``.
    """

    reply: bytes
    rest: bytes | None
    failed: bool = False


def _frame(descriptor: int, fields: Data) -> bytes:
    body = fields.encode()
    return struct.pack(">IBBH", 8 + len(body), 2, _SASL_FRAME, 0) + body


def _mechanisms_frame() -> bytes:
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(_SASL_MECHANISMS)
    data.put_list()
    data.enter()
    data.put_array(False, Data.SYMBOL)
    data.enter()
    for mechanism in MECHANISMS:
        data.put_symbol(mechanism)
    data.exit()
    data.exit()
    data.exit()
    return _frame(_SASL_MECHANISMS, data)


def _outcome_frame(code: int) -> bytes:
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(_SASL_OUTCOME)
    data.put_list()
    data.enter()
    data.put_ubyte(code)
    data.exit()
    data.exit()
    return _frame(_SASL_OUTCOME, data)


class SaslGate:
    """The server side of the SASL layer; then out of the way."""

    def __init__(self) -> None:
        self._buffer = b""
        self._header_seen = False
        self.done = False
        self.mechanism: str | None = None

    def receive(self, data: bytes) -> SaslStep:
        """Feed bytes from the peer."""
        if self.done:
            return SaslStep(b"", data)
        self._buffer += data
        reply = b""
        if not self._header_seen:
            if len(self._buffer) < len(_SASL_HEADER):
                if not _SASL_HEADER.startswith(self._buffer) and not _AMQP_HEADER.startswith(
                    self._buffer
                ):
                    return self._fail(b"")
                return SaslStep(b"", None)
            if not self._buffer.startswith(_SASL_HEADER):
                # No SASL: Proton answers (and refuses what it does not serve).
                self.done = True
                rest, self._buffer = self._buffer, b""
                return SaslStep(b"", rest)
            self._buffer = self._buffer[len(_SASL_HEADER) :]
            self._header_seen = True
            reply += _SASL_HEADER + _mechanisms_frame()
        while len(self._buffer) >= 8:
            size, offset, kind, _channel = struct.unpack(">IBBH", self._buffer[:8])
            if size < 8 or size > _MAX_SASL_FRAME or offset < 2 or kind != _SASL_FRAME:
                return self._fail(reply)
            if len(self._buffer) < size:
                break
            body, self._buffer = self._buffer[offset * 4 : size], self._buffer[size:]
            if len(body) == 0:
                continue  # an empty frame (a heartbeat)
            mechanism = _init_mechanism(body)
            if mechanism is None:
                return self._fail(reply)
            if mechanism not in MECHANISMS:
                return SaslStep(reply + _outcome_frame(_OUTCOME_AUTH), None, failed=True)
            self.mechanism = mechanism
            self.done = True
            rest, self._buffer = self._buffer, b""
            return SaslStep(reply + _outcome_frame(_OUTCOME_OK), rest)
        return SaslStep(reply, None)

    def _fail(self, reply: bytes) -> SaslStep:
        self.done = True
        return SaslStep(reply, None, failed=True)


def _init_mechanism(body: bytes) -> str | None:
    """The mechanism of a ``sasl-init`` frame body, or ``None`` if it is not one."""
    data = Data()
    try:
        data.decode(body)
        data.rewind()
        data.next()
        value = data.get_object()
    except Exception:  # Proton's codec raises its own error types
        return None
    if not isinstance(value, Described) or value.descriptor != _SASL_INIT:
        return None
    fields = value.value
    if not isinstance(fields, list) or not fields:
        return None
    return str(fields[0])
