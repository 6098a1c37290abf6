"""Revocation status for relying parties: CA certificates (caIssuers) and OCSP answers.

CRLs are :mod:`fleetpki.services.crl_publisher`'s (cached, rebuilt in the background).
OCSP answers are signed by the CA key itself (RFC 6960 §4.2.2.2 allows the issuer to respond); the
answer to a request without a nonce is signed once and served from memory until a
revocation or its refresh time (RFC 5019 §2.2, :mod:`fleetpki.services.ocsp_cache`),
and a request with a nonce is signed when it comes, since the nonce is in the signed part:
around the prepared parts of the cached response (:mod:`fleetpki.pki.ocsp_prepared`),
so that only its ResponseData is encoded and signed per request.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509 import ocsp

from fleetpki.errors import FleetPKIError, NotFoundError, ValidationError
from fleetpki.keystore import KeyStore
from fleetpki.pki.ocsp import (
    CertId,
    CertificateStatus,
    OcspRequest,
    OcspResponder,
    build_ocsp_error_response,
    parse_ocsp_request,
    parse_ocsp_request_path,
    response_status_for,
)
from fleetpki.pki.ocsp_prepared import PreparedResponse
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services.authority import CAUrlsConfig, ca_record
from fleetpki.services.ca_generations import generation_of
from fleetpki.services.context import Clock
from fleetpki.services.ocsp_cache import (
    WATCHED_EVENTS,
    CachedAnswer,
    OcspResponseCache,
    Responder,
    etag_of,
)
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.store.models import CAGeneration, CARecord

__all__ = ["OCSP_LIFETIME", "OcspAnswer", "RevocationStatusService"]

#: OCSP responses say fresher information may come this much later (RFC 6960 §4.2.2.1).
OCSP_LIFETIME = dt.timedelta(hours=1)
# Outbox events read at most per look at other processes' changes; a longer backlog
# empties the OCSP cache instead.
_SYNC_LIMIT = 5000
# Requests without a nonce kept parsed, by their DER (or GET path), at most: a client
# asks about one certificate with the same bytes each time (RFC 5019 §2.1.1).
_PARSED_MAX = 10_000


def _generation(ca: CARecord, number: int) -> CAGeneration:
    generation = generation_of(ca, number)
    if generation is None:
        raise NotFoundError("ca.not_found", f"CA {ca.id} has no generation {number}")
    return generation


def _responder_for(
    cas: Sequence[CARecord], keystore: KeyStore, request: OcspRequest
) -> Responder | None:
    # Any generation, retiring ones included: a certificate is answered for by the
    # key and certificate that signed it (RFC 6960 §4.1.1 CertID names both).
    for ca in cas:
        for generation in ca.generations:
            certificate = x509.load_der_x509_certificate(generation.certificate_der)
            if request.cert_id.names_issuer(certificate):
                signer = keystore.signer(generation.key_ref)
                return Responder(
                    ca.id, ca.tier, OcspResponder.create(certificate, certificate, signer)
                )
    return None


def _status_of(tx: UnitOfWork, responder: Responder, serial: int) -> CertificateStatus:
    record = tx.certificates.revocation_by_ca_serial(responder.ca_id, format(serial, "X"))
    if record is None:
        if responder.tier == "root" and any(
            int(child.serial_hex, 16) == serial for child in tx.cas.children_of(responder.ca_id)
        ):
            # A root answers for the CAs it certified; fleetpki does not revoke CAs yet.
            return CertificateStatus.good()
        # RFC 6960 §2.2: "unknown" when the responder does not know the certificate.
        return CertificateStatus.unknown()
    state, revoked_at, reason, created_at = record
    if state == "revoked":
        return CertificateStatus.revoked(
            revoked_at or created_at, RevocationReason.parse(reason or 0)
        )
    return CertificateStatus.good()


def _issuer_key(cert_id: CertId) -> CertId:
    # The CertID's issuer part: what names the responder, whatever the serial.
    return CertId(cert_id.hash_algorithm, cert_id.issuer_name_hash, cert_id.issuer_key_hash, 0)


@dataclass(frozen=True, slots=True)
class OcspAnswer:
    """A DER OCSP response and, for one that any client may reuse, its HTTP validators.

    Attributes:
        der: the response (successful or an error status).
        etag: for a successful response to a request without a nonce, its ETag; such
            a response is the same bytes for every client until ``next_update``
            (RFC 5019 §6.2), so HTTP caches may keep it.
        this_update / next_update: that response's validity (RFC 6960 §4.2.2.1).
    """

    der: bytes
    etag: str | None = None
    this_update: dt.datetime | None = None
    next_update: dt.datetime | None = None

    @classmethod
    def cached(cls, answer: CachedAnswer) -> OcspAnswer:
        """The answer that a cached response gives."""
        return cls(answer.der, answer.etag, answer.this_update, answer.next_update)

    @classmethod
    def refusal(cls, error: FleetPKIError) -> OcspAnswer:
        """An unsuccessful response for ``error`` (RFC 6960 §2.3), never cached."""
        return cls(build_ocsp_error_response(response_status_for(error)))


class RevocationStatusService:
    """What relying parties ask: CA certificates (caIssuers) and OCSP (CRLs: CrlPublisher).

    Args:
        store: the database.
        keystore: custody of CA keys (CRLs and OCSP answers are signed by the CA).
        clock: the source of "now".
        urls: where CRLs are published (each CRL's issuing distribution point).
        cache: this application's signed OCSP responses; the application subscribes
            it to its event bus (a new, unsubscribed one by default: tests only).
    """

    def __init__(
        self,
        store: Store,
        keystore: KeyStore,
        clock: Clock,
        urls: CAUrlsConfig,
        cache: OcspResponseCache | None = None,
    ) -> None:
        self._store = store
        self._keystore = keystore
        self._clock = clock
        self._urls = urls
        self._cache = cache if cache is not None else OcspResponseCache()
        self._parsed: dict[bytes | str, OcspRequest] = {}

    def ca_certificate_der(self, ca_id: str, generation: int = 1) -> bytes:
        """A CA generation's certificate in DER, for the caIssuers URL (RFC 5280 §4.2.2.1).

        Raises:
            NotFoundError: ``ca.not_found``.
        """
        with self._store.reading() as tx:
            return _generation(ca_record(tx, ca_id), generation).certificate_der

    def ocsp(self, request_der: bytes) -> OcspAnswer:
        """The OCSP response to a POSTed DER request (RFC 6960 Appendix A.1); never raises.

        Refusals are OCSP error responses, not errors (RFC 6960 §2.3): malformed
        requests get ``malformedRequest``, other issuers ``unauthorized``, serials this
        CA never issued ``unknown``.  Requests without a nonce are answered from the
        cache of signed responses (:mod:`fleetpki.services.ocsp_cache`) while it holds
        a fresh one; requests with a nonce are signed now, around the cached response's
        parts when there is one (the same status, thisUpdate and nextUpdate).
        """
        return self._answer(lambda: self._parse(request_der))

    def ocsp_get(self, path: str) -> OcspAnswer:
        """The OCSP response to a GET whose URL ends in the base64 request; never raises."""
        return self._answer(lambda: self._parse(path=path))

    def ocsp_from_memory(
        self, request_der: bytes | None = None, *, path: str | None = None
    ) -> OcspAnswer | None:
        """The answer to a POST body (or a GET path) when it needs no database and no I/O.

        That is a cached response to a request without a nonce; a response to a request
        with a nonce, signed now around the cached response's parts, when the keystore
        signs in this process; or the refusal of a malformed request. Anything else returns
        ``None`` and is for :meth:`ocsp` or :meth:`ocsp_get`. It never blocks on I/O,
        so an event loop may call it.
        """
        try:
            request = self._parse(request_der, path=path)
        except FleetPKIError as exc:
            return OcspAnswer.refusal(exc)
        if self._cache.due(self._store.commit_stamp()):
            return None
        now = self._clock()
        hit = self._cache.get(request.cert_id, now)
        if hit is None:
            return None
        if request.nonce is None:
            return OcspAnswer.cached(hit)
        if not self._keystore.signs_in_process:
            return None  # a token's signature may block: for a worker thread
        return OcspAnswer(hit.prepared.with_nonce(request.nonce, now))

    def _parse(self, request_der: bytes | None = None, *, path: str | None = None) -> OcspRequest:
        """The parsed POST body (or GET path); one without a nonce is kept by its bytes.

        Raises:
            ValidationError: as :func:`parse_ocsp_request`.
        """
        key: bytes | str = path if path is not None else (request_der or b"")
        known = self._parsed.get(key) if isinstance(key, bytes | str) else None
        if known is not None:
            return known
        if path is not None:
            request = parse_ocsp_request_path(path)
        else:
            request = parse_ocsp_request(request_der if request_der is not None else b"")
        if request.nonce is None and isinstance(key, bytes | str):
            if len(self._parsed) >= _PARSED_MAX:
                self._parsed.clear()
            self._parsed[key] = request
        return request

    def _answer(self, parse: Callable[[], OcspRequest]) -> OcspAnswer:
        try:
            request = parse()
        except FleetPKIError as exc:
            return OcspAnswer.refusal(exc)
        cache = self._cache
        stamp = self._store.commit_stamp()
        if cache.due(stamp):
            self._sync(stamp)
        now = self._clock()
        hit = cache.get(request.cert_id, now)
        if hit is not None:
            if request.nonce is None:
                return OcspAnswer.cached(hit)
            return OcspAnswer(hit.prepared.with_nonce(request.nonce, now))
        epoch = cache.epoch
        try:
            with self._store.reading() as tx:
                responder = self._responder(tx, request, epoch)
                status = _status_of(tx, responder, request.cert_id.serial_number)
            if status.state is ocsp.OCSPCertStatus.UNKNOWN:
                # Not kept: a serial nobody issued yet costs its asker a signature each time.
                return OcspAnswer(self._sign(request, status, responder, now)[0])
            plain, this_update, next_update = self._sign(
                OcspRequest(request.cert_id), status, responder, now
            )
        except FleetPKIError as exc:
            return OcspAnswer.refusal(exc)
        prepared = PreparedResponse.of(plain, responder.signing.signer)
        answer = CachedAnswer(
            der=plain,
            etag=etag_of(plain),
            status=status,
            responder=responder,
            prepared=prepared,
            this_update=this_update,
            next_update=next_update,
            refresh_at=this_update + (next_update - this_update) / 2,
        )
        cache.put(request.cert_id, answer, epoch)
        if request.nonce is not None:
            return OcspAnswer(prepared.with_nonce(request.nonce, now))
        return OcspAnswer.cached(answer)

    def _responder(self, tx: UnitOfWork, request: OcspRequest, epoch: int) -> Responder:
        key = _issuer_key(request.cert_id)
        known = self._cache.issuer(key)
        if known is None:
            known = _responder_for(tx.cas.all(), self._keystore, request)
            if known is not None:
                self._cache.remember_issuer(key, known, epoch)
        if known is None:
            # RFC 6960 §2.3: "unauthorized" when the responder does not serve the issuer.
            raise ValidationError("ocsp.unauthorized", "this responder does not serve that issuer")
        return known

    def _sign(
        self,
        request: OcspRequest,
        status: CertificateStatus,
        responder: Responder,
        now: dt.datetime,
    ) -> tuple[bytes, dt.datetime, dt.datetime]:
        this_update = now.replace(microsecond=0)
        next_update = min(this_update + OCSP_LIFETIME, responder.certificate.not_valid_after_utc)
        der = responder.signing.respond(
            request, status, this_update=this_update, next_update=next_update
        )
        return der, this_update, next_update

    def _sync(self, stamp: bytes | None) -> None:
        """Read what other processes changed since the last read (see OcspResponseCache)."""
        cache = self._cache
        cache.begin_sync(stamp)
        with self._store.reading() as tx:
            newest = tx.events.newest_id()
            events = tx.events.written_after(
                cache.sync_floor(newest), WATCHED_EVENTS, limit=_SYNC_LIMIT
            )
        cache.apply(events, newest, complete=len(events) < _SYNC_LIMIT)
