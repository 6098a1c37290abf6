"""A minimal DER reader and writer (X.690) for the few structures the keystore handles.

Used for the DER surgery of :mod:`fleetpki.keystore.tbs` (signatures made in a token)
and for encrypted PKCS#8 (:mod:`fleetpki.keystore.pkcs8`), whose scrypt form
``cryptography`` reads but does not write. Single-byte tags and definite lengths only:
all that these structures use.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DerError",
    "Element",
    "children",
    "decode_integer",
    "decode_oid",
    "encode",
    "encode_integer",
    "encode_oid",
    "read_element",
    "whole",
]

INTEGER = 0x02
OCTET_STRING = 0x04
OBJECT_IDENTIFIER = 0x06
SEQUENCE = 0x30


class DerError(ValueError):
    """The DER is not the structure expected."""


@dataclass(frozen=True, slots=True)
class Element:
    """One DER TLV: its tag byte, its whole encoding and where its content starts."""

    tag: int
    encoding: bytes
    header_length: int

    @property
    def content(self) -> bytes:
        """The value octets, without tag and length."""
        return self.encoding[self.header_length :]


def read_element(data: bytes, offset: int) -> Element:
    """The TLV at ``offset``.

    Raises:
        DerError: truncated, a multi-byte tag, or a length that runs past ``data``.
    """
    if offset + 2 > len(data):
        raise DerError("truncated DER header")
    tag, first = data[offset], data[offset + 1]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte DER tags are not expected here")
    position = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or position + count > len(data):
            raise DerError("bad DER length")
        length = int.from_bytes(data[position : position + count], "big")
        position += count
    end = position + length
    if end > len(data):
        raise DerError("DER element runs past its container")
    return Element(tag, data[offset:end], position - offset)


def children(element: Element) -> list[Element]:
    """The TLVs inside a constructed element, in order."""
    content, offset, out = element.content, 0, []
    while offset < len(content):
        child = read_element(content, offset)
        out.append(child)
        offset += len(child.encoding)
    return out


def whole(der: bytes) -> Element:
    """``der`` as one element.

    Raises:
        DerError: bytes follow the element, or it is malformed.
    """
    element = read_element(der, 0)
    if len(element.encoding) != len(der):
        raise DerError("trailing bytes after the DER element")
    return element


def encode(tag: int, content: bytes) -> bytes:
    """A DER TLV with a definite, minimal length (X.690 §10.1)."""
    length = len(content)
    if length < 0x80:
        header = bytes([tag, length])
    else:
        size = (length.bit_length() + 7) // 8
        header = bytes([tag, 0x80 | size]) + length.to_bytes(size, "big")
    return header + content


def encode_integer(value: int) -> bytes:
    """A non-negative INTEGER in its minimal two's-complement form (X.690 §8.3)."""
    if value < 0:
        raise DerError("only non-negative integers are encoded here")
    return encode(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def decode_integer(element: Element) -> int:
    """The value of a non-negative INTEGER element.

    Raises:
        DerError: not an INTEGER, empty, or negative.
    """
    content = element.content
    if element.tag != INTEGER or not content or content[0] & 0x80:
        raise DerError("a non-negative INTEGER was expected")
    return int.from_bytes(content, "big")


def encode_oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER from its dotted form (X.690 §8.19)."""
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        septets, rest = [arc & 0x7F], arc >> 7
        while rest:
            septets.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body.extend(reversed(septets))
    return encode(OBJECT_IDENTIFIER, bytes(body))


def decode_oid(element: Element) -> str:
    """The dotted form of an OBJECT IDENTIFIER element.

    Raises:
        DerError: not an OBJECT IDENTIFIER, or malformed.
    """
    content = element.content
    if element.tag != OBJECT_IDENTIFIER or not content or content[-1] & 0x80:
        raise DerError("an OBJECT IDENTIFIER was expected")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(arc) for arc in [*head, *arcs[1:]])
