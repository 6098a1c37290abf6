"""OCSP requests: parse them per RFC 6960 (POST bodies and GET paths) with RFC 8954 nonces,
and the CertID that names a certificate by its issuer's name and key hashes.

Responses are built and signed in `fleetpki.pki.ocsp`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from fleetpki.errors import ValidationError

__all__ = [
    "CERT_ID_HASHES",
    "MAX_NONCE_LENGTH",
    "MAX_REQUEST_SIZE",
    "CertId",
    "OcspRequest",
    "issuer_hashes",
    "parse_ocsp_request",
    "parse_ocsp_request_path",
]


#: RFC 8954 §2.1: a nonce is 1 to 32 octets; responders reject longer ones.
MAX_NONCE_LENGTH = 32


#: Requests larger than this are refused unread.  A single-certificate request
#: is about a hundred octets; a signed one with its certificate a few kilobytes.
MAX_REQUEST_SIZE = 16 * 1024


# The CertID hash algorithms cryptography can answer with, by their names.
CERT_ID_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


@dataclass(frozen=True, slots=True)
class CertId:
    """The certificate an OCSP request asks about: RFC 6960 §4.1.1 ``CertID``.

    Args:
        hash_algorithm: the hash of the two issuer hashes, by cryptography's name
            (``sha1``, ``sha256``, ...).
        issuer_name_hash: the hash of the DER of the issuer's subject name.
        issuer_key_hash: the hash of the issuer's subjectPublicKey BIT STRING value.
        serial_number: the certificate's serial number.
    """

    hash_algorithm: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial_number: int

    def names_issuer(self, issuer_cert: x509.Certificate) -> bool:
        """Whether this CertID's issuer hashes are those of ``issuer_cert``."""
        return issuer_hashes(issuer_cert, self.hash_algorithm) == (
            self.issuer_name_hash,
            self.issuer_key_hash,
        )


@dataclass(frozen=True, slots=True)
class OcspRequest:
    """A parsed single-certificate OCSP request (RFC 6960 §4.1.1).

    Args:
        cert_id: the certificate asked about.
        nonce: the RFC 8954 nonce to echo, 1 to 32 octets, or ``None``.
    """

    cert_id: CertId
    nonce: bytes | None = None


def parse_ocsp_request(der: bytes) -> OcspRequest:
    """Parse a DER OCSP request, the body of an HTTP POST (RFC 6960 Appendix A.1).

    Only single-certificate requests are served; a signature on the request is
    ignored, since this responder answers anyone (RFC 6960 §4.1.2).

    Args:
        der: the DER-encoded ``OCSPRequest``.

    Raises:
        ValidationError: ``ocsp.malformed_request`` for anything that is not one
            well-formed request for one certificate, or that has an unknown critical
            extension (RFC 6960 §4.4); ``ocsp.bad_nonce`` for a nonce outside 1 to
            32 octets (RFC 8954 §2.1); ``ocsp.unsupported_hash`` for a CertID
            hashed with an algorithm other than SHA-1 or SHA-2.
    """
    if not isinstance(der, bytes | bytearray | memoryview):
        raise ValidationError("ocsp.malformed_request", "an OCSP request is DER bytes")
    der = bytes(der)
    if not der or len(der) > MAX_REQUEST_SIZE:
        raise ValidationError(
            "ocsp.malformed_request",
            f"an OCSP request is 1 to {MAX_REQUEST_SIZE} octets, not {len(der)}",
        )
    try:
        request = ocsp.load_der_ocsp_request(der)
    except NotImplementedError as exc:
        # RFC 5019 §2.1.1: clients of a lightweight responder ask about one
        # certificate per request; cryptography cannot parse more.
        raise ValidationError(
            "ocsp.malformed_request", "only one certificate per OCSP request is served"
        ) from exc
    except ValueError as exc:
        raise ValidationError("ocsp.malformed_request", "not a well-formed OCSP request") from exc
    try:
        extensions = request.extensions
        name_hash = request.issuer_name_hash
        key_hash = request.issuer_key_hash
        serial = request.serial_number
    except (ValueError, x509.DuplicateExtension) as exc:
        raise ValidationError(
            "ocsp.malformed_request", "the OCSP request has malformed extensions"
        ) from exc
    try:
        algorithm = request.hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise ValidationError(
            "ocsp.unsupported_hash", "the CertID hash algorithm is not supported"
        ) from exc
    if algorithm.name not in CERT_ID_HASHES:
        raise ValidationError("ocsp.unsupported_hash", f"CertID hash {algorithm.name} unsupported")
    if len(name_hash) != algorithm.digest_size or len(key_hash) != algorithm.digest_size:
        raise ValidationError(
            "ocsp.malformed_request", f"the CertID hashes are not {algorithm.name} digests"
        )
    return OcspRequest(CertId(algorithm.name, name_hash, key_hash, serial), _nonce_of(extensions))


def _nonce_of(extensions: x509.Extensions) -> bytes | None:
    nonce: bytes | None = None
    for extension in extensions:
        if isinstance(extension.value, x509.OCSPNonce):
            nonce = extension.value.nonce
            # RFC 8954 §2.1: the nonce is 1 to 32 octets; a responder SHOULD
            # reject a longer one, which could be used to choose signed content.
            if not 1 <= len(nonce) <= MAX_NONCE_LENGTH:
                raise ValidationError(
                    "ocsp.bad_nonce",
                    f"the nonce is {len(nonce)} octets; RFC 8954 allows 1 to {MAX_NONCE_LENGTH}",
                )
        elif extension.critical:
            # RFC 6960 §4.4: unrecognised extensions are ignored unless critical.
            raise ValidationError(
                "ocsp.malformed_request",
                f"unsupported critical request extension {extension.oid.dotted_string}",
            )
    return nonce


def parse_ocsp_request_path(path: str) -> OcspRequest:
    """Parse the GET form of a request: the URL-encoded base64 of its DER.

    RFC 6960 Appendix A.1: ``GET {url}/{url-encoding of base-64 encoding of the
    DER encoding of the OCSPRequest}``.  Missing padding and the URL-safe
    alphabet (RFC 4648 §5) are accepted too, since clients produce both.

    Args:
        path: the part of the URL path after the responder's prefix.

    Raises:
        ValidationError: ``ocsp.malformed_request`` when it does not decode, and
            whatever :func:`parse_ocsp_request` raises.
    """
    if not isinstance(path, str):
        raise ValidationError("ocsp.malformed_request", "an OCSP GET path is text")
    if len(path) > 3 * 4 * (MAX_REQUEST_SIZE // 3 + 1):  # every character percent-encoded
        raise ValidationError("ocsp.malformed_request", "the OCSP GET path is too long")
    text = unquote_to_bytes(path.lstrip("/")).strip()
    text = text.replace(b"-", b"+").replace(b"_", b"/")
    text += b"=" * (-len(text) % 4)
    try:
        der = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValidationError(
            "ocsp.malformed_request", "the OCSP GET path is not base64 of a DER request"
        ) from exc
    return parse_ocsp_request(der)


def issuer_hashes(issuer_cert: x509.Certificate, algorithm: str = "sha1") -> tuple[bytes, bytes]:
    """The CertID ``(issuerNameHash, issuerKeyHash)`` for certificates ``issuer_cert`` issued.

    RFC 6960 §4.1.1: the hash of the DER encoding of the issuer's name as it
    appears in the issuer certificate's subject, and the hash of the value of
    its subjectPublicKey BIT STRING (without tag, length and unused-bits octet).

    Args:
        issuer_cert: the issuing CA's certificate.
        algorithm: cryptography's name of the hash, ``sha1`` by default.

    Raises:
        ValidationError: ``ocsp.unsupported_hash`` for any other algorithm.
    """
    try:
        hash_class = CERT_ID_HASHES[algorithm]
    except KeyError:
        raise ValidationError(
            "ocsp.unsupported_hash", f"CertID hash {algorithm!r} unsupported"
        ) from None
    subject_der, key_bits = _subject_and_key_bits(issuer_cert)
    return _digest(hash_class(), subject_der), _digest(hash_class(), key_bits)


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    context = hashes.Hash(algorithm)
    context.update(data)
    return context.finalize()


def _subject_and_key_bits(cert: x509.Certificate) -> tuple[bytes, bytes]:
    # Walk the TBSCertificate (RFC 5280 §4.1) to take the subject exactly as
    # encoded in the certificate and the subjectPublicKey BIT STRING's value.
    tbs = cert.tbs_certificate_bytes
    _, start, end = _tlv(tbs, 0)
    fields = []
    offset = start
    while offset < end:
        tag, content_start, field_end = _tlv(tbs, offset)
        fields.append((tag, offset, content_start, field_end))
        offset = field_end
    if fields and fields[0][0] == 0xA0:  # [0] EXPLICIT version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
    _, subject_start, _, subject_end = fields[4]
    _, _, spki_start, spki_end = fields[5]
    _, _, algorithm_end = _tlv(tbs, spki_start)
    tag, bits_start, bits_end = _tlv(tbs, algorithm_end)
    if tag != 0x03 or bits_end != spki_end or bits_end <= bits_start:
        raise ValueError("the certificate's subjectPublicKeyInfo is not well formed")
    # The first content octet counts the unused bits; it is not hashed.
    return tbs[subject_start:subject_end], tbs[bits_start + 1 : bits_end]


def _tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """Return ``(tag, content start, end)`` of the DER element at ``offset``."""
    tag = data[offset]
    length = data[offset + 1]
    position = offset + 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(data[position : position + size], "big")
        position += size
    end = position + length
    if end > len(data):
        raise ValueError("truncated DER element")
    return tag, position, end
