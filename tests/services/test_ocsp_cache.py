"""The cache of signed OCSP responses: what serves from it and what makes it go.

A response to a request without a nonce is signed once and served as the same bytes
until a revocation of its certificate, here or in another process on the same
database, drops it before the next answer (RFC 5019 §2.2). Requests with a nonce are
signed when they come (RFC 8954). Every response is checked by pkilint; the API tests
(tests/api/test_ocsp_http_cache.py) check them with ``openssl ocsp`` too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from conftest import ALICE, make_csr
from fleetpki.application import FleetPKI
from fleetpki.pki.ocsp import CertId, parse_ocsp_request
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.ca_lifecycle import RenewCommand
from fleetpki.services.ca_views import CAView
from fleetpki.services.certificates import IssueCommand
from fleetpki.services.notifications import EventsWritten
from fleetpki.services.ocsp_cache import STAMPED_SYNC_INTERVAL, CachedAnswer, OcspResponseCache
from fleetpki.services.outbox import CERTIFICATE_REVOKED
from support.mqtt_device import wait_until
from support.pkilint import assert_lints_clean

FLEETPKI = str(Path(sys.executable).parent / "fleetpki")
# Long enough that the cache never reads the outbox on its own during a test: only a
# revocation here, the SQLite commit stamp or a PostgreSQL NOTIFY can make it look.
NEVER = 3600.0


def _issuing(fleet: FleetPKI) -> CAView:
    return next(c for c in fleet.cas.list() if c.tier == "issuing")


def _issue(fleet: FleetPKI, name: str) -> tuple[str, x509.Certificate, x509.Certificate]:
    actor, issuing = Actor(ALICE), _issuing(fleet)
    fleet.domains.register(
        actor, ca_id=issuing.id, template_id=None, name=name, owners=[ALICE], requesters=[ALICE]
    )
    issued = fleet.certificates.issue(actor, IssueCommand(ca_id=issuing.id, csr=make_csr(name)[1]))
    issuer = x509.load_der_x509_certificate(issuing.certificate_der)
    return issued.certificate.serial_hex, issued.certificate.certificate, issuer


def _request(leaf: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _status(der: bytes) -> ocsp.OCSPCertStatus:
    assert_lints_clean("ocsp_response", der)
    return ocsp.load_der_ocsp_response(der).certificate_status


def _nonce(der: bytes) -> bytes | None:
    response = ocsp.load_der_ocsp_response(der)
    try:
        return response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


def _cached_answer(fleet: FleetPKI, request: bytes) -> bytes | None:
    """The response served without the database, or ``None`` when it would need it."""
    answer = fleet.revocation_status.ocsp_from_memory(request)
    return None if answer is None else answer.der


def test_a_response_without_a_nonce_is_signed_once_and_served_from_memory(
    fleet: FleetPKI,
) -> None:
    # No timed read of the outbox between the answers (due every 0.5 s on PostgreSQL).
    fleet.ocsp_cache.sync_interval = NEVER
    _, leaf, issuer = _issue(fleet, "dev-1")
    request = _request(leaf, issuer)
    assert _cached_answer(fleet, request) is None  # nothing cached yet
    first = fleet.revocation_status.ocsp(request)
    assert _status(first.der) == ocsp.OCSPCertStatus.GOOD
    assert first.etag is not None
    assert _nonce(first.der) is None
    # The same bytes again (ECDSA signatures differ each time: a new one would not).
    assert fleet.revocation_status.ocsp(request).der == first.der
    assert _cached_answer(fleet, request) == first.der
    assert len(fleet.ocsp_cache) == 1


def test_a_revocation_here_drops_the_cached_response_before_it_returns(fleet: FleetPKI) -> None:
    fleet.ocsp_cache.sync_interval = NEVER
    serial, leaf, issuer = _issue(fleet, "dev-1")
    _, other, _ = _issue(fleet, "dev-2")
    request, other_request = _request(leaf, issuer), _request(other, issuer)
    assert _status(fleet.revocation_status.ocsp(request).der) == ocsp.OCSPCertStatus.GOOD
    kept = fleet.revocation_status.ocsp(other_request).der
    fleet.certificates.revoke(Actor(ALICE), serial, RevocationReason.KEY_COMPROMISE)
    assert _cached_answer(fleet, request) is None
    after = fleet.revocation_status.ocsp(request).der
    assert _status(after) == ocsp.OCSPCertStatus.REVOKED
    assert ocsp.load_der_ocsp_response(after).revocation_reason == x509.ReasonFlags.key_compromise
    # The revoked answer is cached in turn; the other certificate's was never dropped.
    assert _cached_answer(fleet, request) == after
    assert _cached_answer(fleet, other_request) == kept


def test_a_revocation_by_another_process_drops_the_cached_response(
    fleet: FleetPKI, tmp_path: Path
) -> None:
    # The real CLI in a subprocess on the same database, as an operator beside
    # `fleetpki serve` (or another API worker) would revoke.
    fleet.ocsp_cache.sync_interval = NEVER
    fleet.follow_other_processes()  # what `fleetpki serve` does: LISTEN on PostgreSQL
    serial, leaf, issuer = _issue(fleet, "dev-1")
    request = _request(leaf, issuer)
    cached = fleet.revocation_status.ocsp(request).der
    assert _status(cached) == ocsp.OCSPCertStatus.GOOD
    assert _cached_answer(fleet, request) == cached
    done = subprocess.run(
        [FLEETPKI, "cert", "revoke", serial, "--reason", "keyCompromise"],
        env={**os.environ, "FLEETPKI_HOME": str(fleet.settings.home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    if fleet.store.dialect == "sqlite":
        # The WAL index changed with the other process's commit: the very next answer
        # reads the outbox first (the event loop's memory-only path declines it).
        assert _cached_answer(fleet, request) is None
        answer = fleet.revocation_status.ocsp(request).der
    else:
        # PostgreSQL's NOTIFY reaches this process a moment after the commit.
        wait_until(
            lambda: _cached_answer(fleet, request) != cached, "the NOTIFY to drop the answer"
        )
        answer = fleet.revocation_status.ocsp(request).der
    assert _status(answer) == ocsp.OCSPCertStatus.REVOKED


def test_another_commit_by_another_process_keeps_the_cache(fleet: FleetPKI, tmp_path: Path) -> None:
    # A commit elsewhere makes the cache read the outbox, which drops only what changed.
    fleet.ocsp_cache.sync_interval = NEVER
    _, leaf, issuer = _issue(fleet, "dev-1")
    request = _request(leaf, issuer)
    cached = fleet.revocation_status.ocsp(request).der
    done = subprocess.run(
        [FLEETPKI, "principal", "add", "33333333-3333-4333-8333-333333333333", "--name", "carol"],
        env={**os.environ, "FLEETPKI_HOME": str(fleet.settings.home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert fleet.revocation_status.ocsp(request).der == cached


@pytest.mark.parametrize("revoked", [False, True])
def test_nonce_requests_are_signed_fresh_with_their_nonce(fleet: FleetPKI, revoked: bool) -> None:
    serial, leaf, issuer = _issue(fleet, "dev-1")
    if revoked:
        fleet.certificates.revoke(Actor(ALICE), serial, RevocationReason.SUPERSEDED)
    plain = fleet.revocation_status.ocsp(_request(leaf, issuer)).der
    answers = []
    for nonce in (b"\x01" * 16, b"\x02" * 16, b"\x02" * 16):
        request = _request(leaf, issuer, nonce)
        # From memory (the status is cached) or through the database: the same answer.
        from_memory = fleet.revocation_status.ocsp_from_memory(request)
        assert from_memory is not None
        assert from_memory.etag is None  # never for HTTP caches: it names one client's nonce
        answer = fleet.revocation_status.ocsp(request)
        assert answer.etag is None
        for der in (from_memory.der, answer.der):
            assert _nonce(der) == nonce
            expected = ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD
            assert _status(der) == expected
        answers += [from_memory.der, answer.der]
    assert len(set(answers)) == len(answers)  # each one signed anew
    assert fleet.revocation_status.ocsp(_request(leaf, issuer)).der == plain


def test_a_nonce_response_repeats_the_cached_single_response_around_its_nonce(
    fleet: FleetPKI,
) -> None:
    _, leaf, issuer = _issue(fleet, "dev-1")
    plain = ocsp.load_der_ocsp_response(fleet.revocation_status.ocsp(_request(leaf, issuer)).der)
    answer = fleet.revocation_status.ocsp_from_memory(_request(leaf, issuer, b"\x03" * 20))
    assert answer is not None
    assert_lints_clean("ocsp_response", answer.der, include_warnings=True)
    nonced = ocsp.load_der_ocsp_response(answer.der)
    # The prepared parts of the cached response: its status, thisUpdate and nextUpdate
    # and its responder; a producedAt and a signature of its own.
    assert nonced.this_update_utc == plain.this_update_utc
    assert nonced.next_update_utc == plain.next_update_utc
    assert nonced.responder_key_hash == plain.responder_key_hash
    assert nonced.produced_at_utc >= plain.produced_at_utc
    assert nonced.signature != plain.signature
    assert _nonce(answer.der) == b"\x03" * 20


def test_a_revocation_drops_the_prepared_parts_of_nonce_responses_at_once(
    fleet: FleetPKI,
) -> None:
    fleet.ocsp_cache.sync_interval = NEVER
    serial, leaf, issuer = _issue(fleet, "dev-1")
    fleet.revocation_status.ocsp(_request(leaf, issuer))
    before = fleet.revocation_status.ocsp_from_memory(_request(leaf, issuer, b"\x04" * 16))
    assert before is not None
    assert _status(before.der) == ocsp.OCSPCertStatus.GOOD
    fleet.certificates.revoke(Actor(ALICE), serial, RevocationReason.KEY_COMPROMISE)
    # Gone with the cached response: no nonce answer from memory until it is read again.
    assert fleet.revocation_status.ocsp_from_memory(_request(leaf, issuer, b"\x05" * 16)) is None
    after = fleet.revocation_status.ocsp(_request(leaf, issuer, b"\x06" * 16)).der
    assert _status(after) == ocsp.OCSPCertStatus.REVOKED
    assert _nonce(after) == b"\x06" * 16
    again = fleet.revocation_status.ocsp_from_memory(_request(leaf, issuer, b"\x07" * 16))
    assert again is not None
    assert _status(again.der) == ocsp.OCSPCertStatus.REVOKED
    assert _nonce(again.der) == b"\x07" * 16


def test_a_nonce_request_on_a_cold_cache_fills_it_for_plain_requests(fleet: FleetPKI) -> None:
    # No timed read of the outbox between the two answers: on PostgreSQL one is due
    # every 0.5 s, and a busy machine took longer than that (seen in make test).
    fleet.ocsp_cache.sync_interval = NEVER
    _, leaf, issuer = _issue(fleet, "dev-1")
    first = fleet.revocation_status.ocsp(_request(leaf, issuer, b"\x07" * 8)).der
    assert _nonce(first) == b"\x07" * 8
    plain = _cached_answer(fleet, _request(leaf, issuer))
    assert plain is not None
    assert _nonce(plain) is None
    assert _status(plain) == ocsp.OCSPCertStatus.GOOD


def test_unknown_serials_are_never_cached(fleet: FleetPKI) -> None:
    _, leaf, issuer = _issue(fleet, "dev-1")
    probe = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(
            probe.issuer_name_hash, probe.issuer_key_hash, 12345, hashes.SHA1()
        )
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    assert _status(fleet.revocation_status.ocsp(request).der) == ocsp.OCSPCertStatus.UNKNOWN
    assert _cached_answer(fleet, request) is None
    assert len(fleet.ocsp_cache) == 0


def test_a_cached_response_is_signed_anew_after_half_its_lifetime(fleet: FleetPKI) -> None:
    _, leaf, issuer = _issue(fleet, "dev-1")
    request = _request(leaf, issuer)
    first = fleet.revocation_status.ocsp(request)
    assert first.this_update is not None and first.next_update is not None
    later = first.this_update + (first.next_update - first.this_update) / 2
    real_clock = fleet.clock
    fleet.clock = lambda: later
    try:
        renewed = fleet.revocation_status.ocsp(request)
    finally:
        fleet.clock = real_clock
    assert renewed.der != first.der
    assert renewed.this_update == later.replace(microsecond=0)
    assert _status(renewed.der) == ocsp.OCSPCertStatus.GOOD


def test_a_renewed_ca_empties_the_cache(fleet: FleetPKI) -> None:
    # A new generation changes who answers for which issuer: nothing cached survives it.
    _, leaf, issuer = _issue(fleet, "dev-1")
    fleet.revocation_status.ocsp(_request(leaf, issuer))
    assert len(fleet.ocsp_cache) == 1
    fleet.ca_lifecycle.renew(Actor.local_admin(), _issuing(fleet).id, RenewCommand())
    assert len(fleet.ocsp_cache) == 0
    assert _status(fleet.revocation_status.ocsp(_request(leaf, issuer)).der) == (
        ocsp.OCSPCertStatus.GOOD
    )


def _cached_entry(fleet: FleetPKI) -> tuple[CertId, CachedAnswer]:
    """A real cached answer and its CertID, to store under other CertIDs."""
    _, leaf, issuer = _issue(fleet, "dev-1")
    request = _request(leaf, issuer)
    fleet.revocation_status.ocsp(request)
    cert_id = parse_ocsp_request(request).cert_id
    answer = fleet.ocsp_cache.get(cert_id, fleet.now())
    assert answer is not None
    return cert_id, answer


def _other(cert_id: CertId, serial: int) -> CertId:
    return CertId(cert_id.hash_algorithm, cert_id.issuer_name_hash, cert_id.issuer_key_hash, serial)


def test_an_answer_read_before_a_drop_is_not_kept(sqlite_fleet: FleetPKI) -> None:
    # A request that read "good" just before a revocation committed must not store it
    # after the revocation dropped the serial (the epoch says something was dropped).
    cert_id, answer = _cached_entry(sqlite_fleet)
    cache, now = OcspResponseCache(), sqlite_fleet.now()
    epoch = cache.epoch
    cache.forget_serial(cert_id.serial_number)
    assert not cache.put(cert_id, answer, epoch)
    assert cache.get(cert_id, now) is None
    assert cache.put(cert_id, answer, cache.epoch)
    assert cache.get(cert_id, now) is answer


def test_the_cache_keeps_at_most_its_size_dropping_the_oldest(sqlite_fleet: FleetPKI) -> None:
    cert_id, answer = _cached_entry(sqlite_fleet)
    cache, now = OcspResponseCache(max_entries=2), sqlite_fleet.now()
    ids = [_other(cert_id, serial) for serial in (1, 2, 3)]
    for each in ids:
        assert cache.put(each, answer, cache.epoch)
    assert len(cache) == 2
    assert [cache.get(each, now) is not None for each in ids] == [False, True, True]


def test_the_timed_read_of_the_outbox_waits_longer_where_a_commit_stamp_sees_every_commit() -> None:
    now = [100.0]
    cache = OcspResponseCache(sync_interval=0.5, monotonic=lambda: now[0])
    cache.begin_sync(b"stamp-1")
    assert not cache.due(b"stamp-1")
    assert cache.due(b"stamp-2")  # another process committed: read at once
    now[0] += 1.0
    assert cache.due(None)  # no stamp (PostgreSQL): every sync_interval
    assert not cache.due(b"stamp-1")  # the stamp says nothing changed
    now[0] += STAMPED_SYNC_INTERVAL
    assert cache.due(b"stamp-1")  # the safety net, less often
    cache.begin_sync(b"stamp-1")
    cache.on_notification(EventsWritten(frozenset({CERTIFICATE_REVOKED})))
    assert cache.due(b"stamp-1")  # a NOTIFY of a revocation: read at once
