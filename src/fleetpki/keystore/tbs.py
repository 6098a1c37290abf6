"""Signing a to-be-signed structure with a key that ``cryptography`` cannot hold.

``cryptography``'s builders sign only with its own private key objects, and it has
no API that returns the unsigned DER (the "TBS" part) of a certificate, a CRL or an
OCSP response. A key in a token is signed with as follows:

1. the builder signs with a *stand-in* key of the same algorithm and hash, so the
   ``signature`` AlgorithmIdentifier inside the TBS (RFC 5280 §4.1.2.3, §5.1.2.2)
   is the one the real key makes; the TBS holds the real subject public key and
   identifiers, since the builder was given them;
2. the TBS bytes are taken from the result (``tbs_certificate_bytes`` and its
   siblings) and signed by the real key;
3. the stand-in signature BIT STRING is replaced by the real one and the outer
   SEQUENCE re-encoded; the TBS bytes are left exactly as they were.

The functions here are the DER surgery of step 3 (RFC 5280 §4.1 Certificate and
§5.1 CertificateList; RFC 6960 §4.2.1 OCSPResponse and BasicOCSPResponse all are
``SEQUENCE { tbs, signatureAlgorithm, signature BIT STRING, ... }``), and the
conversion of a raw PKCS#11 ECDSA signature (``r || s``, PKCS#11 v2.40 §2.3.1)
into the DER ``Ecdsa-Sig-Value`` of RFC 5480 §2.2 / RFC 3279 §2.2.3.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from fleetpki.keystore.der import DerError, Element, children, encode, whole

__all__ = [
    "DerError",
    "basic_ocsp_response",
    "ecdsa_der_signature",
    "replace_ocsp_responder_key_hash",
    "replace_signature",
    "replace_signed_ocsp",
]

_SEQUENCE = 0x30
_BIT_STRING = 0x03
_OCTET_STRING = 0x04
_CONTEXT_0 = 0xA0  # [0] EXPLICIT, constructed
_RESPONDER_BY_KEY = 0xA2  # ResponderID byKey [2] EXPLICIT KeyHash (RFC 6960 §4.2.1)


def _signed_parts(der: bytes) -> list[Element]:
    outer = whole(der)
    if outer.tag != _SEQUENCE:
        raise DerError("a signed structure is a SEQUENCE")
    parts = children(outer)
    if len(parts) < 3 or parts[0].tag != _SEQUENCE or parts[1].tag != _SEQUENCE:
        raise DerError("expected SEQUENCE { tbs, signatureAlgorithm, signature, ... }")
    if parts[2].tag != _BIT_STRING:
        raise DerError("the signature of a signed structure is a BIT STRING")
    return parts


def replace_signature(der: bytes, signature: bytes, *, tbs: bytes | None = None) -> bytes:
    """Return ``der`` with its signature BIT STRING replaced by ``signature``.

    Args:
        der: a Certificate, CertificateList or BasicOCSPResponse.
        signature: the signature value (DER ``Ecdsa-Sig-Value``, RSA octets or EdDSA).
        tbs: the TBS to put in place of the one in ``der`` (default: keep it as is).

    Raises:
        DerError: when ``der`` is not such a structure.
    """
    parts = _signed_parts(der)
    if tbs is not None:
        if whole(tbs).tag != _SEQUENCE:
            raise DerError("a TBS structure is a SEQUENCE")
    else:
        tbs = parts[0].encoding
    # A BIT STRING of whole octets: the first content octet says 0 unused bits.
    bit_string = encode(_BIT_STRING, b"\x00" + signature)
    rest = b"".join(part.encoding for part in parts[3:])
    return encode(_SEQUENCE, tbs + parts[1].encoding + bit_string + rest)


def replace_ocsp_responder_key_hash(tbs_response_data: bytes, key_hash: bytes) -> bytes:
    """Return an OCSP ``ResponseData`` whose ``responderID`` is ``byKey key_hash``.

    RFC 6960 §4.2.1: ``ResponseData ::= SEQUENCE { version [0] DEFAULT v1,
    responderID ResponderID, producedAt, responses, responseExtensions [1] }`` and
    ``ResponderID ::= CHOICE { byName [1] Name, byKey [2] KeyHash }``.

    Raises:
        DerError: when the ResponseData has no byKey responder ID.
    """
    data = whole(tbs_response_data)
    if data.tag != _SEQUENCE:
        raise DerError("ResponseData is a SEQUENCE")
    fields = children(data)
    index = next((i for i, c in enumerate(fields) if c.tag == _RESPONDER_BY_KEY), None)
    if index is None or index > 1:
        raise DerError("ResponseData has no responderID byKey")
    by_key = encode(_RESPONDER_BY_KEY, encode(_OCTET_STRING, key_hash))
    encodings = [c.encoding for c in fields]
    encodings[index] = by_key
    return encode(_SEQUENCE, b"".join(encodings))


def basic_ocsp_response(ocsp_response: bytes) -> bytes:
    """The DER ``BasicOCSPResponse`` inside a successful ``OCSPResponse`` (RFC 6960 §4.2.1).

    Raises:
        DerError: when the response has no response bytes.
    """
    return _ocsp_layers(ocsp_response)[3].content


def replace_signed_ocsp(ocsp_response: bytes, basic: bytes) -> bytes:
    """Return ``ocsp_response`` with its ``BasicOCSPResponse`` replaced by ``basic``.

    ``OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, responseBytes [0]
    EXPLICIT ResponseBytes }``, ``ResponseBytes ::= SEQUENCE { responseType OID,
    response OCTET STRING }`` (RFC 6960 §4.2.1); the status and type are kept.

    Raises:
        DerError: when the response has no response bytes.
    """
    outer, explicit, response_bytes, _ = _ocsp_layers(ocsp_response)
    status, _tagged = children(outer)
    response_type, _octets = children(response_bytes)
    inner = encode(_SEQUENCE, response_type.encoding + encode(_OCTET_STRING, basic))
    return encode(_SEQUENCE, status.encoding + encode(explicit.tag, inner))


def _ocsp_layers(ocsp_response: bytes) -> tuple[Element, Element, Element, Element]:
    outer = whole(ocsp_response)
    layers = children(outer) if outer.tag == _SEQUENCE else []
    if len(layers) != 2 or layers[1].tag != _CONTEXT_0:
        raise DerError("an OCSPResponse with responseBytes was expected")
    explicit = layers[1]
    (response_bytes,) = children(explicit)
    parts = children(response_bytes)
    if response_bytes.tag != _SEQUENCE or len(parts) != 2 or parts[1].tag != _OCTET_STRING:
        raise DerError("ResponseBytes is SEQUENCE { responseType, response OCTET STRING }")
    return outer, explicit, response_bytes, parts[1]


def ecdsa_der_signature(raw: bytes) -> bytes:
    """The DER ``Ecdsa-Sig-Value`` of a PKCS#11 ECDSA signature ``r || s``.

    Raises:
        DerError: for an odd-length signature.
    """
    if not raw or len(raw) % 2:
        raise DerError("a raw ECDSA signature is r || s of equal lengths")
    half = len(raw) // 2
    return encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )
