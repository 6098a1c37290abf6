"""Outgoing AMQP performatives with every field present, for azure-eventhub's decoder.

AMQP 1.0 lets an encoder leave out a performative's trailing null fields (§1.4: "a
list ... may be truncated"), and Proton does. azure-eventhub's own AMQP client
(``_pyamqp``, 5.15) does not accept that: it indexes the decoded fields by position
(``frame[13]`` of an attach, ``frame[7]`` of a begin, ``frame[9]`` of an open) and
finds a transfer's payload at ``frame[11]``, i.e. it needs exactly the 11 fields of a
transfer; Azure's servers always send every field. So the hub sends every field too:
this rewrites each outgoing frame's performative list to its full length by appending
nulls (``0x40``), which changes no value. A ``list0`` becomes a ``list8``, since that
decoder reads a list's count from a fixed place.
"""

from __future__ import annotations

import struct

__all__ = ["FramePadder"]

_AMQP_HEADER_SIZE = 8
_NULL = b"\x40"
#: Fields per performative (AMQP 1.0 §2.7), by descriptor code.
_FIELDS = {
    0x10: 10,  # open
    0x11: 8,  # begin
    0x12: 14,  # attach
    0x13: 11,  # flow
    0x14: 11,  # transfer
    0x15: 6,  # disposition
    0x16: 3,  # detach
    0x17: 1,  # end
    0x18: 1,  # close
}


class FramePadder:
    """Rewrites a stream of outgoing AMQP frames (after the protocol header)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._header_left = _AMQP_HEADER_SIZE

    def feed(self, data: bytes) -> bytes:
        """Bytes from Proton in; the bytes to write out (whole frames only)."""
        out = []
        if self._header_left:
            head, data = data[: self._header_left], data[self._header_left :]
            self._header_left -= len(head)
            out.append(head)
        self._buffer += data
        while len(self._buffer) >= 8:
            size = struct.unpack(">I", self._buffer[:4])[0]
            if len(self._buffer) < size:
                break
            frame, self._buffer = self._buffer[:size], self._buffer[size:]
            out.append(_pad(frame))
        return b"".join(out)


def _pad(frame: bytes) -> bytes:
    offset = frame[4] * 4
    body = frame[offset:]
    if len(body) < 4 or body[0] != 0x00 or body[1] != 0x53:
        return frame  # an empty frame (heartbeat), or a descriptor not in Proton's form
    wanted = _FIELDS.get(body[2])
    if wanted is None:
        return frame
    constructor = body[3]
    if constructor == 0x45:  # list0
        count, items, rest = 0, b"", body[4:]
    elif constructor == 0xC0:  # list8: size, count
        size, count = body[4], body[5]
        items, rest = body[6 : 5 + size], body[5 + size :]
    elif constructor == 0xD0:  # list32: size, count
        size, count = struct.unpack(">II", body[4:12])
        items, rest = body[12 : 8 + size], body[8 + size :]
    else:
        return frame
    if count >= wanted and constructor != 0x45:
        return frame
    items += _NULL * max(0, wanted - count)
    count = max(count, wanted)
    if len(items) + 1 <= 0xFF:
        listed = bytes((0xC0, len(items) + 1, count)) + items
    else:
        listed = b"\xd0" + struct.pack(">II", len(items) + 4, count) + items
    new_body = body[:3] + listed + rest
    header = frame[4:offset]
    return struct.pack(">I", 4 + len(header) + len(new_body)) + header + new_body
