"""Revocation status for relying parties: CA certificates (caIssuers) and OCSP answers.

CRLs are :mod:`fleetpki.services.crl_publisher`'s (cached, rebuilt in the background).
OCSP answers are signed by the CA key itself (RFC 6960 §4.2.2.2 allows the issuer to
respond) and built per request, since they carry the request's nonce.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from cryptography import x509

from fleetpki.errors import FleetPKIError, NotFoundError, ValidationError
from fleetpki.keystore import KeyStore
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
from fleetpki.services.context import Clock
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.store.models import CAGeneration, CARecord

__all__ = ["OCSP_LIFETIME", "RevocationStatusService", "ocsp_answer_in"]

#: OCSP responses say fresher information may come this much later (RFC 6960 §4.2.2.1).
OCSP_LIFETIME = dt.timedelta(hours=1)


def _generation(ca: CARecord, number: int) -> CAGeneration:
    generation = generation_of(ca, number)
    if generation is None:
        raise NotFoundError("ca.not_found", f"CA {ca.id} has no generation {number}")
    return generation


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
    """What relying parties ask: CA certificates (caIssuers) and OCSP (CRLs: CrlPublisher).

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
