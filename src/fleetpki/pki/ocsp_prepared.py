"""Responses to OCSP requests with a nonce, assembled around the parts of a signed one.

A request with a nonce (RFC 8954) needs its own signature, since the nonce is in the
signed ``ResponseData``; everything else in the answer for one certificate is the same
as in the response to a request without a nonce: the responder ID, the
``SingleResponse`` (CertID, status, thisUpdate, nextUpdate), the signature algorithm and
the certificates (RFC 6960 §4.2.1):

    OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, responseBytes [0] EXPLICIT
        SEQUENCE { responseType OBJECT IDENTIFIER, response OCTET STRING } }
    BasicOCSPResponse ::= SEQUENCE { tbsResponseData ResponseData,
        signatureAlgorithm AlgorithmIdentifier, signature BIT STRING,
        certs [0] EXPLICIT SEQUENCE OF Certificate OPTIONAL }
    ResponseData ::= SEQUENCE { version [0] EXPLICIT DEFAULT v1, responderID,
        producedAt GeneralizedTime, responses SEQUENCE OF SingleResponse,
        responseExtensions [1] EXPLICIT Extensions OPTIONAL }

:class:`PreparedResponse` takes those parts, as encoded, from a signed response without
a nonce (made by :meth:`fleetpki.pki.ocsp.OcspResponder.respond`, so checked by pkilint
and openssl like every other) and, for each nonce, encodes only the ``ResponseData``
around it (its producedAt now, the nonce extension as ``OCSPResponseBuilder`` writes it),
has the signer sign those bytes (:meth:`Signer.sign_tbs`) and wraps the signature: a
few microseconds of byte joining beside the signature, instead of a builder per request.
"""

from __future__ import annotations

import datetime as dt

from fleetpki.keystore import Signer
from fleetpki.keystore.der import DerError, children, encode, encode_oid, whole

__all__ = ["PreparedResponse"]

_SEQUENCE = 0x30
_OCTET_STRING = 0x04
_BIT_STRING = 0x03
_GENERALIZED_TIME = 0x18
_CONTEXT_0 = 0xA0
_CONTEXT_1 = 0xA1
_RESPONDER_IDS = (0xA1, 0xA2)  # byName [1], byKey [2]
# id-pkix-ocsp-nonce (RFC 8954 §2.1), the Extension's extnID.
_NONCE_OID = encode_oid("1.3.6.1.5.5.7.48.1.2")


class PreparedResponse:
    """The unchanging parts of one certificate's response, ready for any nonce.

    Build one with :meth:`of`. The nonce response carries the same status, thisUpdate
    and nextUpdate as the response it was prepared from (the status it states is known
    to be correct since then, RFC 6960 §4.2.2.1) and its own producedAt.

    Args:
        head: the ``ResponseData``'s version (if any) and responderID, encoded.
        responses: its ``responses`` SEQUENCE, encoded.
        signature_algorithm: the ``BasicOCSPResponse``'s AlgorithmIdentifier, encoded.
        certs: its ``[0] certs``, encoded, or empty.
        response_type: ``responseType`` (id-pkix-ocsp-basic), encoded.
        signer: the responder's key.
    """

    __slots__ = (
        "_certs",
        "_head",
        "_response_type",
        "_responses",
        "_signature_algorithm",
        "signer",
    )

    def __init__(
        self,
        head: bytes,
        responses: bytes,
        signature_algorithm: bytes,
        certs: bytes,
        response_type: bytes,
        signer: Signer,
    ) -> None:
        self._head = head
        self._responses = responses
        self._signature_algorithm = signature_algorithm
        self._certs = certs
        self._response_type = response_type
        self.signer = signer

    @classmethod
    def of(cls, response: bytes, signer: Signer) -> PreparedResponse:
        """The parts of ``response``, a successful signed response without extensions.

        Args:
            response: a DER ``OCSPResponse`` whose ``ResponseData`` has no extensions.
            signer: the key that signed it (it signs the nonce responses).

        Raises:
            DerError: when ``response`` is not such a response.
        """
        outer = whole(response)
        layers = children(outer) if outer.tag == _SEQUENCE else []
        if len(layers) != 2 or layers[0].encoding != b"\x0a\x01\x00" or layers[1].tag != _CONTEXT_0:
            raise DerError("a successful OCSPResponse was expected")
        (response_bytes,) = children(layers[1])
        response_type, octets = children(response_bytes)
        if octets.tag != _OCTET_STRING:
            raise DerError("ResponseBytes carries its response in an OCTET STRING")
        basic = children(whole(octets.content))
        if len(basic) not in (3, 4) or basic[2].tag != _BIT_STRING:
            raise DerError("BasicOCSPResponse is SEQUENCE { tbs, algorithm, signature, certs }")
        certs = basic[3].encoding if len(basic) == 4 else b""
        if certs and basic[3].tag != _CONTEXT_0:
            raise DerError("BasicOCSPResponse's certificates are [0] EXPLICIT")
        fields = children(basic[0])
        head = fields[:-2]
        if not head or head[-1].tag not in _RESPONDER_IDS or len(head) > 2:
            raise DerError("ResponseData must end in responderID, producedAt, responses")
        produced_at, responses = fields[-2:]
        if produced_at.tag != _GENERALIZED_TIME or responses.tag != _SEQUENCE:
            raise DerError("ResponseData must end in producedAt, responses (no extensions)")
        return cls(
            b"".join(field.encoding for field in head),
            responses.encoding,
            basic[1].encoding,
            certs,
            response_type.encoding,
            signer,
        )

    def tbs_with_nonce(self, nonce: bytes, produced_at: dt.datetime) -> bytes:
        """The ``ResponseData`` that echoes ``nonce`` (non-critical, RFC 8954 §2.1)."""
        extension = encode(
            _SEQUENCE, _NONCE_OID + encode(_OCTET_STRING, encode(_OCTET_STRING, nonce))
        )
        produced = produced_at.astimezone(dt.UTC).strftime("%Y%m%d%H%M%SZ").encode()
        return encode(
            _SEQUENCE,
            self._head
            + encode(_GENERALIZED_TIME, produced)
            + self._responses
            + encode(_CONTEXT_1, encode(_SEQUENCE, extension)),
        )

    def with_nonce(self, nonce: bytes, produced_at: dt.datetime) -> bytes:
        """The signed DER ``OCSPResponse`` that echoes ``nonce``, produced at ``produced_at``.

        The caller has checked the nonce (1 to 32 octets, RFC 8954 §2.1).
        """
        tbs = self.tbs_with_nonce(nonce, produced_at)
        signature = self.signer.sign_tbs(tbs)
        basic = encode(
            _SEQUENCE,
            tbs
            + self._signature_algorithm
            + encode(_BIT_STRING, b"\x00" + signature)
            + self._certs,
        )
        response_bytes = encode(_SEQUENCE, self._response_type + encode(_OCTET_STRING, basic))
        return encode(_SEQUENCE, b"\x0a\x01\x00" + encode(_CONTEXT_0, response_bytes))
