"""Revocation status for relying parties: each CA's CRL (cached) and OCSP answers.

CRLs follow Vault PKI's habit: the DER is cached on each CA generation's row with its
number and next update; a revocation marks it stale and the next read rebuilds it with the
next CRL number (RFC 5280 §5.2.3 requires the number to increase).  OCSP answers
are signed by the CA key itself (RFC 6960 §4.2.2.2 allows the issuer to respond)
and built per request, since they carry the request's nonce.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from cryptography import x509

from fleetpki.errors import FleetPKIError, NotFoundError, ValidationError
from fleetpki.keystore import KeyStore
from fleetpki.pki.crl import CrlScope, RevokedEntry, build_crl
from fleetpki.pki.ocsp import (
    CertificateStatus,
    OcspRequest,
    build_ocsp_error_response,
    build_ocsp_response,
    parse_ocsp_request,
    parse_ocsp_request_path,
    response_status_for,
)
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services.authority import CAUrlsConfig, ca_record
from fleetpki.services.ca_generations import generation_of
from fleetpki.services.ca_views import CrlView
from fleetpki.services.context import Clock
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.store.models import CAGeneration, CARecord

__all__ = ["CRL_LIFETIME", "OCSP_LIFETIME", "RevocationStatusService", "crl_in", "ocsp_answer_in"]

#: A CRL is valid this long; it is rebuilt on the first read after it lapses, or
#: after any revocation.
CRL_LIFETIME = dt.timedelta(hours=24)
#: OCSP responses say fresher information may come this much later (RFC 6960 §4.2.2.1).
OCSP_LIFETIME = dt.timedelta(hours=1)
# Rebuild a little before nextUpdate so that clients never fetch a lapsed CRL.
_REFRESH_MARGIN = dt.timedelta(minutes=5)


def _entries_for(tx: UnitOfWork, ca: CARecord, generation: CAGeneration) -> list[RevokedEntry]:
    if ca.tier == "root":
        # The root's CRL lists revoked subordinate CAs (the issuing CA's CRL DP
        # points here); fleetpki does not revoke CAs yet, so it is empty.
        return []
    return [
        RevokedEntry(
            serial=int(row.serial_hex, 16),
            revoked_at=row.revoked_at or row.created_at,
            reason=RevocationReason.parse(row.revocation_reason or 0),
        )
        for row in tx.certificates.revoked_of(ca.id)
        if row.ca_generation == generation.number
    ]


def _fresh(generation: CAGeneration, now: dt.datetime) -> bool:
    return (
        generation.crl_der is not None
        and generation.crl_next_update is not None
        and not generation.crl_stale
        and now < generation.crl_next_update - _REFRESH_MARGIN
    )


def _cached(generation: CAGeneration) -> tuple[bytes, dt.datetime]:
    assert generation.crl_der is not None
    assert generation.crl_next_update is not None
    return generation.crl_der, generation.crl_next_update


def _generation(ca: CARecord, number: int) -> CAGeneration:
    generation = generation_of(ca, number)
    if generation is None:
        raise NotFoundError("ca.not_found", f"CA {ca.id} has no generation {number}")
    return generation


def crl_in(
    tx: UnitOfWork,
    keystore: KeyStore,
    urls: CAUrlsConfig,
    ca_id: str,
    *,
    now: dt.datetime,
    generation: int = 1,
) -> tuple[bytes, dt.datetime]:
    """A CA generation's current CRL in DER and its next update (caller's unit of work).

    Each generation has its own CRL, signed by its key and listing the certificates it
    issued (the CRL DP of each certificate names its generation's URL). Served from the
    cache while it is fresh and no revocation happened since; otherwise rebuilt,
    numbered one higher and cached. Rebuilds hold a lock on the generation
    (:meth:`CARepository.lock_generation_for_crl`: a row lock on PostgreSQL, the write
    lock on SQLite) and look at the cache again once they have it, so concurrent
    readers after a revocation get one new CRL with one new number, never two CRLs
    with the same number (RFC 5280 §5.2.3 wants it to increase).

    Raises:
        NotFoundError: ``ca.not_found`` (for the CA or the generation).
    """
    ca = ca_record(tx, ca_id)
    current = _generation(ca, generation)
    if _fresh(current, now):
        return _cached(current)
    locked = tx.cas.lock_generation_for_crl(ca.id, generation)
    if _fresh(locked, now):
        # Another transaction rebuilt it while this one waited for the lock.
        return _cached(locked)
    certificate = x509.load_der_x509_certificate(locked.certificate_der)
    this_update = now.replace(microsecond=0)
    next_update = min(this_update + CRL_LIFETIME, certificate.not_valid_after_utc)
    number = locked.crl_number + 1
    der = build_crl(
        certificate,
        keystore.signer(locked.key_ref),
        _entries_for(tx, ca, locked),
        crl_number=number,
        this_update=this_update,
        next_update=next_update,
        idp_url=urls.crl_url(ca.id, generation),
        scope=CrlScope.for_issuer(certificate),
    )
    locked.crl_number, locked.crl_der = number, der
    locked.crl_next_update, locked.crl_stale = next_update, False
    return der, next_update


def _issuer_of(
    cas: Sequence[CARecord], request: OcspRequest
) -> tuple[CARecord, CAGeneration] | None:
    # Any generation, retiring ones included: a certificate is answered for by the
    # key and certificate that signed it (RFC 6960 §4.1.1 CertID names both).
    for ca in cas:
        for generation in ca.generations:
            if request.cert_id.names_issuer(
                x509.load_der_x509_certificate(generation.certificate_der)
            ):
                return ca, generation
    return None


def _status_of(tx: UnitOfWork, ca: CARecord, serial: int) -> CertificateStatus:
    record = tx.certificates.find_by_ca_serial(ca.id, format(serial, "X"))
    if record is None:
        if any(int(child.serial_hex, 16) == serial for child in tx.cas.children_of(ca.id)):
            # A root answers for the CAs it certified; fleetpki does not revoke CAs yet.
            return CertificateStatus.good()
        # RFC 6960 §2.2: "unknown" when the responder does not know the certificate.
        return CertificateStatus.unknown()
    if record.status == "revoked":
        return CertificateStatus.revoked(
            record.revoked_at or record.created_at,
            RevocationReason.parse(record.revocation_reason or 0),
        )
    return CertificateStatus.good()


def _answer(tx: UnitOfWork, keystore: KeyStore, request: OcspRequest, now: dt.datetime) -> bytes:
    found = _issuer_of(tx.cas.all(), request)
    if found is None:
        # RFC 6960 §2.3: "unauthorized" when the responder does not serve the issuer.
        raise ValidationError("ocsp.unauthorized", "this responder does not serve that issuer")
    ca, generation = found
    certificate = x509.load_der_x509_certificate(generation.certificate_der)
    this_update = now.replace(microsecond=0)
    return build_ocsp_response(
        request,
        _status_of(tx, ca, request.cert_id.serial_number),
        issuer_cert=certificate,
        responder_cert=certificate,
        signer=keystore.signer(generation.key_ref),
        this_update=this_update,
        next_update=min(this_update + OCSP_LIFETIME, certificate.not_valid_after_utc),
    )


def ocsp_answer_in(
    tx: UnitOfWork, keystore: KeyStore, parse: Callable[[], OcspRequest], now: dt.datetime
) -> bytes:
    """The DER OCSP response for the request ``parse`` returns (caller's unit of work).

    Refusals are OCSP error responses, not errors (RFC 6960 §2.3): malformed requests
    get ``malformedRequest``, other issuers ``unauthorized``, serials this CA never
    issued ``unknown``; nothing raises.
    """
    try:
        return _answer(tx, keystore, parse(), now)
    except FleetPKIError as exc:
        return build_ocsp_error_response(response_status_for(exc))


class RevocationStatusService:
    """What relying parties ask: CRLs, CA certificates (caIssuers) and OCSP.

    Args:
        store: the database.
        keystore: custody of CA keys (CRLs and OCSP answers are signed by the CA).
        clock: the source of "now".
        urls: where CRLs are published (each CRL's issuing distribution point).
    """

    def __init__(self, store: Store, keystore: KeyStore, clock: Clock, urls: CAUrlsConfig) -> None:
        self._store = store
        self._keystore = keystore
        self._clock = clock
        self._urls = urls

    def crl(self, ca_id: str, generation: int = 1) -> CrlView:
        """The current CRL of a CA's generation (see :func:`crl_in`).

        Raises:
            NotFoundError: ``ca.not_found``.
        """
        with self._store.transaction() as tx:
            der, next_update = crl_in(
                tx, self._keystore, self._urls, ca_id, now=self._clock(), generation=generation
            )
            return CrlView(der, next_update)

    def ca_certificate_der(self, ca_id: str, generation: int = 1) -> bytes:
        """A CA generation's certificate in DER, for the caIssuers URL (RFC 5280 §4.2.2.1).

        Raises:
            NotFoundError: ``ca.not_found``.
        """
        with self._store.transaction() as tx:
            return _generation(ca_record(tx, ca_id), generation).certificate_der

    def ocsp(self, request_der: bytes) -> bytes:
        """The DER OCSP response for a POSTed request (RFC 6960 Appendix A.1); never raises."""
        with self._store.transaction() as tx:
            return ocsp_answer_in(
                tx, self._keystore, lambda: parse_ocsp_request(request_der), self._clock()
            )

    def ocsp_get(self, path: str) -> bytes:
        """The DER OCSP response for a GET whose URL ends in the base64 request; never raises."""
        with self._store.transaction() as tx:
            return ocsp_answer_in(
                tx, self._keystore, lambda: parse_ocsp_request_path(path), self._clock()
            )
