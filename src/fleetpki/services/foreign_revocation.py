"""Revocation checks for device certificates from CAs that fleetpki does not manage.

For its own CAs the hub reads fleetpki's certificate table.  For a foreign CA that
was uploaded and verified in the hub, the leaf's own pointers are followed:

1. OCSP (RFC 6960) at each AIA OCSP URL (RFC 5280 §4.2.2.1), POSTed with a nonce
   (RFC 6960 §4.4.1, RFC 8954).  The response must be signed by the issuer or by a
   responder the issuer certified with id-kp-OCSPSigning (RFC 6960 §4.2.2.2), hold
   a SingleResponse for this CertID (§4.1.1), echo the nonce when it carries one,
   and be current: thisUpdate not in the future, nextUpdate not past (§4.2.2.1,
   five minutes of clock skew allowed).  ``good`` accepts, ``revoked`` refuses,
   ``unknown`` or anything unusable moves on.
2. Then the CRL at each http(s) CRL distribution point (RFC 5280 §4.2.1.13):
   signed with the issuer's key and naming it (§5.1.2.3, §6.3.3 (f)-(g)), a
   complete CRL (no delta-CRL indicator, §5.2.4), current (thisUpdate not in the
   future, nextUpdate present and not past, §5.1.2.4-5), and, when it has an
   issuing distribution point, one that covers this certificate (§5.2.5, §6.3.3
   (b)(2)).  Parsed CRLs are cached per URL and issuer key until their nextUpdate,
   within a bounded cache.

The checker reports what the sources say (`fleetpki.hub.policy.RevocationVerdict`);
the hub's policy decides.  A certificate that names neither source is accepted, since
there is nothing to check; the checker logs that once per CA.  When it names sources
but none answers (network error, timeout, bad signature, stale data), the policy
refuses it with ``hub.revocation_unknown``, unless ``hub_revocation_soft_fail`` is set:
the hub's promise is that it enforces revocation, so it fails closed by default.

The checker fetches over the network, so it is called with no database transaction
open (`fleetpki.services.hub_authentication` reads first, closes, then asks).

Every fetch is bounded (``FETCH_TIMEOUT`` per connect and read, the same as a
deadline for the whole body, and ``MAX_RESPONSE_SIZE``).  A URL whose fetch failed
is not asked again for ``FAILURE_HOLD`` seconds, so an unreachable responder costs
one timeout, not one per connecting device, in the broker's small thread pool.
The checker is thread-safe: the broker authenticates from a thread pool.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    SignatureAlgorithmOID,
)

from fleetpki.errors import ValidationError
from fleetpki.hub.policy import RevocationStatus, RevocationVerdict
from fleetpki.pki.ocsp import issuer_hashes

__all__ = [
    "FAILURE_HOLD",
    "FETCH_TIMEOUT",
    "MAX_RESPONSE_SIZE",
    "Fetcher",
    "RevocationChecker",
]

_log = logging.getLogger("fleetpki.hub.revocation")

#: Seconds a fetch may wait to connect or for data, and for the whole body.
FETCH_TIMEOUT = 2.0
#: Bytes accepted from a responder or CRL server; larger answers are failures.
MAX_RESPONSE_SIZE = 8 * 1024 * 1024
#: Seconds a URL whose fetch failed is skipped (counted as no answer).
FAILURE_HOLD = 10.0

_SKEW = dt.timedelta(minutes=5)
_MAX_CACHED_CRLS = 64
_MAX_CACHED_SERIALS = 2_000_000

#: ``fetch(url, body)``: GET ``url`` when ``body`` is ``None``, else POST ``body`` as
#: ``application/ocsp-request``; returns the response body.  Any exception means the
#: source did not answer.
Fetcher = Callable[[str, bytes | None], bytes]

_VerifyingKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


def _http_fetch(url: str, body: bytes | None) -> bytes:
    """Fetch with httpx: no redirects, bounded in time and size."""
    deadline = time.monotonic() + FETCH_TIMEOUT
    with httpx.Client(timeout=FETCH_TIMEOUT, follow_redirects=False) as client:
        if body is None:
            request = client.build_request("GET", url)
        else:
            request = client.build_request(
                "POST", url, content=body, headers={"Content-Type": "application/ocsp-request"}
            )
        response = client.send(request, stream=True)
        try:
            response.raise_for_status()
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE_SIZE:
                    raise OSError(f"more than {MAX_RESPONSE_SIZE} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no complete answer within {FETCH_TIMEOUT} s")
                chunks.append(chunk)
        finally:
            response.close()
    return b"".join(chunks)


def _verify(
    public_key: object,
    signature: bytes,
    data: bytes,
    algorithm: hashes.HashAlgorithm | None,
    algorithm_oid: x509.ObjectIdentifier,
) -> bool:
    """Whether ``public_key`` signed ``data`` (PKCS#1 v1.5 or PSS, ECDSA, EdDSA)."""
    try:
        if isinstance(public_key, rsa.RSAPublicKey) and algorithm is not None:
            pad: padding.AsymmetricPadding = (
                padding.PSS(padding.MGF1(algorithm), padding.PSS.AUTO)
                if algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
                else padding.PKCS1v15()
            )
            public_key.verify(signature, data, pad, algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and algorithm is not None:
            public_key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            public_key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _http_urls(names: object) -> list[str]:
    if not isinstance(names, list):
        return []
    return [
        n.value
        for n in names
        if isinstance(n, x509.UniformResourceIdentifier)
        and n.value.lower().startswith(("http://", "https://"))
    ]


def _ocsp_urls(leaf: x509.Certificate) -> list[str]:
    try:
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return _http_urls(
        [d.access_location for d in aia if d.access_method == AuthorityInformationAccessOID.OCSP]
    )


def _distribution_points(leaf: x509.Certificate) -> list[x509.DistributionPoint]:
    """The leaf's CRL distribution points this checker can use (RFC 5280 §4.2.1.13).

    Points whose CRL another entity issues (``cRLIssuer``, an indirect CRL) are left
    out: only the issuer's own key is trusted to sign.
    """
    try:
        points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    return [p for p in points if p.crl_issuer is None and _http_urls(p.full_name)]


def _spki_sha256(cert: x509.Certificate) -> bytes:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


@dataclass(frozen=True, slots=True)
class _CachedCrl:
    """What a verified CRL says: the revoked serials, until its nextUpdate.

    ``partial`` marks a CRL limited to some revocation reasons (RFC 5280 §5.2.5
    onlySomeReasons, or a distribution point with ``reasons``): a serial on it is
    revoked, but a serial missing from it is not shown to be good.
    """

    serials: frozenset[int]
    next_update: dt.datetime
    partial: bool


class RevocationChecker:
    """Checks foreign leaves by OCSP, then CRL; thread-safe (the hub calls from a pool).

    One checker belongs to one application (the hub backend builds it and hands it to
    `fleetpki.services.hub_authentication.DeviceAuthenticator`): its CRL cache and
    failure holds are never shared with another application in the same process.

    Args:
        fetch: how URLs are fetched (tests pass a counting wrapper).
    """

    def __init__(self, fetch: Fetcher | None = None) -> None:
        self.fetch: Fetcher = fetch or _http_fetch
        self._lock = threading.Lock()
        self._crls: dict[tuple[str, bytes], _CachedCrl] = {}
        self._held: dict[str, float] = {}
        self._warned: set[bytes] = set()

    def verdict(
        self, leaf: x509.Certificate, issuer: x509.Certificate, now: dt.datetime
    ) -> RevocationVerdict:
        """What the sources ``leaf`` names say about it: OCSP first, then CRLs.

        Fetches over the network: never call this inside a database transaction.

        Args:
            leaf: the device certificate.
            issuer: the verified certificate that issued ``leaf`` (its chain's next link).
            now: the time of the check, timezone-aware.

        Returns:
            ``GOOD`` or ``REVOKED`` from the first source that could say; ``UNKNOWN``
            when sources exist but none answered usably; ``UNCHECKED`` when the leaf
            names none (logged once per CA). The hub's policy
            (`fleetpki.hub.policy.DevicePolicy`) decides what each means.
        """
        ocsp_urls = _ocsp_urls(leaf)
        points = _distribution_points(leaf)
        if not ocsp_urls and not points:
            self._warn_unchecked(issuer)
            return RevocationVerdict(RevocationStatus.UNCHECKED, "none")
        for url in ocsp_urls:
            status = self._ask_ocsp(url, leaf, issuer, now)
            if status is ocsp.OCSPCertStatus.REVOKED:
                return RevocationVerdict(RevocationStatus.REVOKED, "OCSP")
            if status is ocsp.OCSPCertStatus.GOOD:
                return RevocationVerdict(RevocationStatus.GOOD, "OCSP")
        for point in points:
            for url in _http_urls(point.full_name):
                entry = self._crl(url, point, leaf, issuer, now)
                if entry is None:
                    continue
                if leaf.serial_number in entry.serials:
                    return RevocationVerdict(RevocationStatus.REVOKED, "CRL")
                if not entry.partial:
                    return RevocationVerdict(RevocationStatus.GOOD, "CRL")
        return RevocationVerdict(RevocationStatus.UNKNOWN, "OCSP and CRL")

    def _warn_unchecked(self, issuer: x509.Certificate) -> None:
        key = _spki_sha256(issuer)
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        _log.warning(
            "hub: certificates of %s name no OCSP responder or CRL; revocation is not checked",
            issuer.subject.rfc4514_string(),
        )

    # -- fetching --

    def _get(self, url: str, body: bytes | None) -> bytes | None:
        """The body at ``url``, or ``None`` (logged) when it failed or is on hold."""
        with self._lock:
            until = self._held.get(url)
            if until is not None and time.monotonic() < until:
                return None
        try:
            return self.fetch(url, body)
        except Exception as exc:  # any failure of any fetcher: no answer
            _log.info("hub: revocation source %s did not answer: %s", url, type(exc).__name__)
            with self._lock:
                if len(self._held) >= 256:
                    moment = time.monotonic()
                    self._held = {u: t for u, t in self._held.items() if t > moment}
                self._held[url] = time.monotonic() + FAILURE_HOLD
            return None

    # -- OCSP (RFC 6960) --

    def _ask_ocsp(
        self, url: str, leaf: x509.Certificate, issuer: x509.Certificate, now: dt.datetime
    ) -> ocsp.OCSPCertStatus | None:
        """The status ``url`` gives for ``leaf``, or ``None`` when it gave no usable answer."""
        nonce = os.urandom(16)
        request = (
            ocsp.OCSPRequestBuilder()
            # RFC 5019 §2.1.1: responders must accept SHA-1 CertIDs; it names, not signs.
            .add_certificate(leaf, issuer, hashes.SHA1())  # noqa: S303
            .add_extension(x509.OCSPNonce(nonce), critical=False)
            .build()
        )
        raw = self._get(url, request.public_bytes(serialization.Encoding.DER))
        if raw is None:
            return None
        try:
            answer = ocsp.load_der_ocsp_response(raw)
            if answer.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
                _log.info("hub: OCSP %s answered %s", url, answer.response_status.name)
                return None
            if not self._ocsp_signed_for(answer, issuer, now):
                _log.warning("hub: OCSP answer from %s is not signed for the issuer; ignored", url)
                return None
            try:
                echoed = answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
            except x509.ExtensionNotFound:
                echoed = None  # RFC 8954 §2.1: responders may leave it out; freshness decides
            if echoed is not None and echoed != nonce:
                _log.warning("hub: OCSP answer from %s has another nonce; ignored", url)
                return None
            single = self._single_response(answer, leaf, issuer)
        except ValueError as exc:
            _log.info("hub: OCSP answer from %s unusable: %s", url, exc)
            return None
        if single is None:
            _log.warning("hub: OCSP answer from %s is not about this certificate; ignored", url)
            return None
        next_update = single.next_update_utc
        if single.this_update_utc > now + _SKEW or (
            next_update is not None and next_update < now - _SKEW
        ):
            _log.warning("hub: OCSP answer from %s is not current; ignored", url)
            return None
        return single.certificate_status

    @staticmethod
    def _single_response(
        answer: ocsp.OCSPResponse, leaf: x509.Certificate, issuer: x509.Certificate
    ) -> ocsp.OCSPSingleResponse | None:
        """The SingleResponse whose CertID names ``leaf`` (RFC 6960 §4.1.1, §4.2.2.3)."""
        for single in answer.responses:
            if single.serial_number != leaf.serial_number:
                continue
            try:
                name_hash, key_hash = issuer_hashes(issuer, single.hash_algorithm.name)
            except ValidationError:
                continue
            if (single.issuer_name_hash, single.issuer_key_hash) == (name_hash, key_hash):
                return single
        return None

    @staticmethod
    def _ocsp_signed_for(
        answer: ocsp.OCSPResponse, issuer: x509.Certificate, now: dt.datetime
    ) -> bool:
        """Whether the issuer, or a delegate it certified (RFC 6960 §4.2.2.2), signed ``answer``."""
        data, signature = answer.tbs_response_bytes, answer.signature
        algorithm, oid = answer.signature_hash_algorithm, answer.signature_algorithm_oid
        if _verify(issuer.public_key(), signature, data, algorithm, oid):
            return True
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
            if _verify(responder.public_key(), signature, data, algorithm, oid):
                return True
        return False

    # -- CRL (RFC 5280 §5, §6.3) --

    def _crl(
        self,
        url: str,
        point: x509.DistributionPoint,
        leaf: x509.Certificate,
        issuer: x509.Certificate,
        now: dt.datetime,
    ) -> _CachedCrl | None:
        """What the CRL at ``url`` says, from the cache while current, else fetched."""
        key = (url, _spki_sha256(issuer))
        with self._lock:
            cached = self._crls.get(key)
        if cached is not None and now <= cached.next_update:
            return cached
        raw = self._get(url, None)
        if raw is None:
            return None
        try:
            crl = (
                x509.load_pem_x509_crl(raw)
                if raw.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_crl(raw)
            )
            entry = self._usable_crl(crl, url, point, leaf, issuer, now)
        except ValueError as exc:
            _log.info("hub: CRL from %s unusable: %s", url, exc)
            return None
        if entry is None:
            return None
        with self._lock:
            while self._crls and (
                len(self._crls) >= _MAX_CACHED_CRLS
                or sum(len(c.serials) for c in self._crls.values()) + len(entry.serials)
                > _MAX_CACHED_SERIALS
            ):
                self._crls.pop(next(iter(self._crls)))  # the oldest entry
            self._crls.pop(key, None)
            self._crls[key] = entry
        return entry

    @staticmethod
    def _usable_crl(
        crl: x509.CertificateRevocationList,
        url: str,
        point: x509.DistributionPoint,
        leaf: x509.Certificate,
        issuer: x509.Certificate,
        now: dt.datetime,
    ) -> _CachedCrl | None:
        """``crl`` as a cache entry if it may decide for ``leaf`` now, else ``None`` (logged)."""
        public_key = issuer.public_key()
        if crl.issuer != issuer.subject or not isinstance(public_key, _VerifyingKey):
            _log.warning("hub: CRL from %s is not the issuer's; ignored", url)
            return None
        if not crl.is_signature_valid(public_key):
            _log.warning("hub: CRL from %s is not signed by its issuer; ignored", url)
            return None
        next_update = crl.next_update_utc
        if crl.last_update_utc > now + _SKEW or next_update is None or next_update < now:
            # RFC 5280 §5.1.2.5: a CRL past its nextUpdate says nothing about now.
            _log.warning("hub: CRL from %s is not current; ignored", url)
            return None
        partial = point.reasons is not None
        extensions = crl.extensions
        try:
            extensions.get_extension_for_class(x509.DeltaCRLIndicator)
        except x509.ExtensionNotFound:
            pass
        else:
            _log.warning("hub: CRL from %s is a delta CRL (RFC 5280 §5.2.4); ignored", url)
            return None
        try:
            idp = extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
        except x509.ExtensionNotFound:
            idp = None
        if idp is not None:
            # RFC 5280 §6.3.3 (b)(2): the CRL's scope must include this certificate.
            covers = (
                idp.relative_name is None
                and (idp.full_name is None or bool(set(idp.full_name) & set(point.full_name or ())))
                and not idp.only_contains_ca_certs
                and not idp.only_contains_attribute_certs
                and not (idp.only_contains_user_certs and _is_ca(leaf))
                and not idp.indirect_crl
            )
            if not covers:
                _log.warning("hub: CRL from %s does not cover this certificate; ignored", url)
                return None
            partial = partial or idp.only_some_reasons is not None
        return _CachedCrl(frozenset(r.serial_number for r in crl), next_update, partial)
