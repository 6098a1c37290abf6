"""Revocation checks for device certificates from CAs that fleetpki does not manage.

For its own CAs the hub reads fleetpki's certificate table.  For a foreign CA that
was uploaded and verified in the hub, the leaf's own pointers are followed:

1. OCSP (RFC 6960) at each AIA OCSP URL, with a nonce (RFC 8954); the response
   must be signed by the issuer or by a responder it certified with
   id-kp-OCSPSigning (§4.2.2.2), name this certificate, echo the nonce and be
   current (§3.2).  ``good`` accepts, ``revoked`` refuses.
2. Otherwise the CRL at each CRL distribution point (RFC 5280 §5), signed by the
   issuer and current, cached per URL until its next update.

A certificate that names neither is accepted: there is nothing to check.  When it
names them but no source answers (network error, bad signature, stale data), the
hub refuses it (``hub.revocation_unknown``) unless soft-fail is configured: the
hub's promise is that it enforces revocation, so it fails closed by default.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from fleetpki.errors import AuthenticationError

__all__ = [
    "FETCH_TIMEOUT",
    "Fetcher",
    "RevocationChecker",
    "checker",
    "configure",
]

_log = logging.getLogger("fleetpki.hub.revocation")

#: Each OCSP or CRL fetch gives up after this many seconds (the hub is waiting).
FETCH_TIMEOUT = 2.0
_SKEW = dt.timedelta(minutes=5)
_MAX_CACHED_CRLS = 256

#: ``fetch(url, body)``: GET when ``body`` is ``None``, else POST an OCSP request.
Fetcher = Callable[[str, bytes | None], bytes]


def _http_fetch(url: str, body: bytes | None) -> bytes:
    with httpx.Client(timeout=FETCH_TIMEOUT, follow_redirects=False) as client:
        if body is None:
            response = client.get(url)
        else:
            response = client.post(
                url, content=body, headers={"Content-Type": "application/ocsp-request"}
            )
        response.raise_for_status()
        return response.content


def _verify(
    public_key: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None
) -> bool:
    try:
        if isinstance(public_key, rsa.RSAPublicKey) and algorithm is not None:
            public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and algorithm is not None:
            public_key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _urls(leaf: x509.Certificate) -> tuple[list[str], list[str]]:
    ocsp_urls: list[str] = []
    crl_urls: list[str] = []
    try:
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        ocsp_urls = [
            d.access_location.value
            for d in aia
            if d.access_method == AuthorityInformationAccessOID.OCSP
            and isinstance(d.access_location, x509.UniformResourceIdentifier)
        ]
    except x509.ExtensionNotFound:
        pass
    try:
        points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        crl_urls = [
            name.value
            for point in points
            for name in (point.full_name or [])
            if isinstance(name, x509.UniformResourceIdentifier)
        ]
    except x509.ExtensionNotFound:
        pass
    return [u for u in ocsp_urls if u.startswith(("http://", "https://"))], [
        u for u in crl_urls if u.startswith(("http://", "https://"))
    ]


@dataclass(frozen=True, slots=True)
class _CachedCrl:
    crl: x509.CertificateRevocationList
    next_update: dt.datetime


class RevocationChecker:
    """Checks foreign leaves by OCSP, then CRL; thread-safe (the hub calls from a pool).

    Args:
        fetch: how URLs are fetched (tests pass a counting wrapper).
        soft_fail: accept when no source answers, instead of refusing.
    """

    def __init__(self, fetch: Fetcher = _http_fetch, *, soft_fail: bool = False) -> None:
        self.fetch = fetch
        self.soft_fail = soft_fail
        self._lock = threading.Lock()
        self._crls: dict[str, _CachedCrl] = {}
        self._warned: set[str] = set()

    def check(self, leaf: x509.Certificate, issuer: x509.Certificate, now: dt.datetime) -> None:
        """Refuse ``leaf`` if a source says it is revoked, or if no source can say.

        Raises:
            AuthenticationError: ``hub.certificate_revoked``; ``hub.revocation_unknown``
            when sources exist but none answered and soft-fail is off.
        """
        ocsp_urls, crl_urls = _urls(leaf)
        if not ocsp_urls and not crl_urls:
            name = issuer.subject.rfc4514_string()
            if name not in self._warned:
                self._warned.add(name)
                _log.warning("hub: certificates of %s name no OCSP or CRL; not checked", name)
            return
        for url in ocsp_urls:
            status = self._ask_ocsp(url, leaf, issuer, now)
            if status is ocsp.OCSPCertStatus.REVOKED:
                raise AuthenticationError(
                    "hub.certificate_revoked", "the certificate is revoked (OCSP)"
                )
            if status is ocsp.OCSPCertStatus.GOOD:
                return
        for url in crl_urls:
            crl = self._crl(url, issuer, now)
            if crl is None:
                continue
            if crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
                raise AuthenticationError(
                    "hub.certificate_revoked", "the certificate is revoked (CRL)"
                )
            return
        if self.soft_fail:
            _log.warning(
                "hub: revocation status of serial %X unknown; accepted (soft-fail)",
                leaf.serial_number,
            )
            return
        raise AuthenticationError(
            "hub.revocation_unknown", "the certificate's revocation status cannot be established"
        )

    # -- OCSP --

    def _ask_ocsp(
        self, url: str, leaf: x509.Certificate, issuer: x509.Certificate, now: dt.datetime
    ) -> ocsp.OCSPCertStatus | None:
        nonce = os.urandom(16)
        request = (
            ocsp.OCSPRequestBuilder()
            # RFC 5019 §2.1.1: responders must accept SHA-1 CertIDs; it names, not signs.
            .add_certificate(leaf, issuer, hashes.SHA1())  # noqa: S303
            .add_extension(x509.OCSPNonce(nonce), critical=False)
            .build()
        )
        try:
            answer = ocsp.load_der_ocsp_response(
                self.fetch(url, request.public_bytes(serialization.Encoding.DER))
            )
        except (httpx.HTTPError, ValueError, OSError) as exc:
            _log.info("hub: OCSP %s failed: %s", url, type(exc).__name__)
            return None
        if answer.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            return None
        if not self._ocsp_signed_by_issuer(answer, issuer, now):
            _log.warning("hub: OCSP answer from %s is not signed for the issuer; ignored", url)
            return None
        if (
            answer.serial_number != leaf.serial_number
            or answer.issuer_key_hash != request.issuer_key_hash
            or answer.issuer_name_hash != request.issuer_name_hash
        ):
            return None
        try:
            echoed = answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            echoed = None
        if echoed is not None and echoed != nonce:
            return None
        this_update = answer.this_update_utc
        next_update = answer.next_update_utc
        if this_update > now + _SKEW or (next_update is not None and next_update < now - _SKEW):
            return None
        return answer.certificate_status

    @staticmethod
    def _ocsp_signed_by_issuer(
        answer: ocsp.OCSPResponse, issuer: x509.Certificate, now: dt.datetime
    ) -> bool:
        data, signature = answer.tbs_response_bytes, answer.signature
        algorithm = answer.signature_hash_algorithm
        if _verify(issuer.public_key(), signature, data, algorithm):
            return True
        # RFC 6960 §4.2.2.2: a delegate certified by the issuer for OCSP signing.
        for responder in answer.certificates:
            try:
                responder.verify_directly_issued_by(issuer)
                eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
                continue
            if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
                continue
            if not responder.not_valid_before_utc <= now <= responder.not_valid_after_utc:
                continue
            if _verify(responder.public_key(), signature, data, algorithm):
                return True
        return False

    # -- CRL --

    def _crl(
        self, url: str, issuer: x509.Certificate, now: dt.datetime
    ) -> x509.CertificateRevocationList | None:
        with self._lock:
            cached = self._crls.get(url)
        if cached is not None and now < cached.next_update:
            return cached.crl
        try:
            raw = self.fetch(url, None)
            crl = (
                x509.load_pem_x509_crl(raw)
                if raw.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_crl(raw)
            )
        except (httpx.HTTPError, ValueError, OSError) as exc:
            _log.info("hub: CRL %s failed: %s", url, type(exc).__name__)
            return None
        public_key = issuer.public_key()
        if crl.issuer != issuer.subject or not isinstance(
            public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
        ):
            return None
        if not crl.is_signature_valid(public_key):
            _log.warning("hub: CRL from %s is not signed by its issuer; ignored", url)
            return None
        next_update = crl.next_update_utc
        if next_update is None or next_update < now:
            return None  # a lapsed CRL says nothing about now (RFC 5280 §5.1.2.5)
        with self._lock:
            if len(self._crls) >= _MAX_CACHED_CRLS:
                self._crls.pop(next(iter(self._crls)))
            self._crls[url] = _CachedCrl(crl, next_update)
        return crl


_checker = RevocationChecker()


def checker() -> RevocationChecker:
    """The process-wide checker the hub uses."""
    return _checker


def configure(*, soft_fail: bool | None = None, fetch: Fetcher | None = None) -> RevocationChecker:
    """Replace the process-wide checker (the hub does at start, tests to inject a fetcher)."""
    global _checker  # noqa: PLW0603 - one checker per process, replaced at start
    _checker = RevocationChecker(
        fetch or _http_fetch, soft_fail=_checker.soft_fail if soft_fail is None else soft_fail
    )
    return _checker
