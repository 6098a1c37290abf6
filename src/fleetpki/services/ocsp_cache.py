"""Signed OCSP responses kept in memory, and what makes them go (RFC 5019 §2.2, §6).

Theory of operation.  Most relying parties send OCSP requests without a nonce (RFC
5019 §2.1.2: browsers, TLS stacks, anything behind an HTTP cache), and the answer for
one certificate is then the same bytes until its status changes or ``nextUpdate``
comes near.  The responder signs such an answer once, keeps it here under the
request's CertID and serves the same DER to every later request, until one of:

- a revocation of that serial, committed in this process: the
  :class:`~fleetpki.services.notifications.CertificateRevoked` notification drops it
  before the revocation's service call returns;
- a revocation committed by another process: the cache reads the outbox's
  ``certificate.revoked`` events written since it last looked (:meth:`due`) before it
  answers again: on SQLite as soon as the database's commit stamp changed (a few bytes
  of its WAL index, read on every request: the next answer after the other process's
  commit already knows), on PostgreSQL once its NOTIFY arrives (milliseconds); besides,
  at least every :data:`SYNC_INTERVAL` seconds on PostgreSQL and every
  :data:`STAMPED_SYNC_INTERVAL` on SQLite, whose stamp misses no commit (each such read
  sends the requests that come meanwhile to a worker thread, so it is not made often
  where nothing asks for it);
- a CA generation created or retired (here or elsewhere): everything is dropped,
  since the set of issuers changed;
- its refresh time (half its lifetime): it is signed anew from the database, which
  also bounds how long a missed change could live.

An answer is put in the cache only if nothing was dropped while it was being made
(:attr:`epoch`): a request that read "good" just before a revocation committed must not
store that after the revocation dropped the serial.  Requests with a nonce are signed
on demand (RFC 8954) around the parts of the cached response kept beside it (its
responder ID, SingleResponse, signature algorithm: :mod:`fleetpki.pki.ocsp_prepared`),
so a revocation that drops the response drops them with it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509

from fleetpki.pki.ocsp import CertId, CertificateStatus, OcspResponder
from fleetpki.pki.ocsp_prepared import PreparedResponse
from fleetpki.services.notifications import CertificateRevoked, EventsWritten, Notification
from fleetpki.services.outbox import (
    CA_GENERATION_CREATED,
    CA_GENERATION_RETIRED,
    CERTIFICATE_REVOKED,
)
from fleetpki.services.ports.events import WrittenEvent

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "STAMPED_SYNC_INTERVAL",
    "SYNC_INTERVAL",
    "SYNC_WINDOW",
    "WATCHED_EVENTS",
    "CachedAnswer",
    "OcspResponseCache",
    "Responder",
    "etag_of",
]

#: Cached answers kept at most; the oldest go first.  About 0.5 KB each with an EC
#: CA (a response is ~230 bytes of DER), so the default holds ~50 MB at most.
DEFAULT_MAX_ENTRIES = 100_000
#: Seconds between two reads of the outbox for changes made by other processes (the
#: consumer workers' poll, :data:`fleetpki.services.delivery.DEFAULT_POLL`).
SYNC_INTERVAL = 0.5
#: The same where the store has a commit stamp (SQLite): the stamp sees every commit,
#: so the timed read is only a safety net.
STAMPED_SYNC_INTERVAL = 10.0
#: How many outbox ids below the newest seen each read looks back over: PostgreSQL
#: hands out ids before commit, so an event may commit after a higher one was read.
SYNC_WINDOW = 1000
#: The outbox events that change OCSP answers.
WATCHED_EVENTS = frozenset({CERTIFICATE_REVOKED, CA_GENERATION_CREATED, CA_GENERATION_RETIRED})
_ISSUER_EVENTS = frozenset({CA_GENERATION_CREATED, CA_GENERATION_RETIRED})


@dataclass(frozen=True, slots=True)
class Responder:
    """Who answers for one issuer: a CA generation, ready to sign.

    Attributes:
        ca_id: the CA.
        tier: ``root`` or ``issuing`` (a root answers for the CAs it certified).
        signing: the generation's certificate and key, checked once.
    """

    ca_id: str
    tier: str
    signing: OcspResponder

    @property
    def certificate(self) -> x509.Certificate:
        """The generation's certificate, which signs the responses."""
        return self.signing.responder_cert


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One certificate's status and its signed response for requests without a nonce.

    Attributes:
        der: the signed response (no nonce).
        etag: a strong HTTP validator of ``der`` (RFC 9110 §8.8.3), quoted.
        status: the certificate's status.
        responder: who signed it.
        prepared: the parts of ``der`` that a response to a request with a nonce
            repeats (:class:`~fleetpki.pki.ocsp_prepared.PreparedResponse`): such
            requests are signed on demand around them, and dropped with ``der``.
        this_update / next_update: the response's validity (RFC 6960 §4.2.2.1).
        refresh_at: from then on the response is signed anew.
    """

    der: bytes
    etag: str
    status: CertificateStatus
    responder: Responder
    prepared: PreparedResponse
    this_update: dt.datetime
    next_update: dt.datetime
    refresh_at: dt.datetime


def etag_of(der: bytes) -> str:
    """The ETag of a response: a quoted SHA-256 prefix of its DER."""
    return '"' + hashlib.sha256(der).hexdigest()[:32] + '"'


class OcspResponseCache:
    """Signed OCSP answers by CertID, dropped on revocation and on CA changes.

    Thread-safe: requests read it from the event loop and from worker threads.

    Args:
        max_entries: answers kept at most (the oldest are dropped first).
        sync_interval: seconds between two reads of the outbox when nothing says
            that another process wrote (see :meth:`due`); with a commit stamp, at
            least :data:`STAMPED_SYNC_INTERVAL`.
        monotonic: the clock for ``sync_interval`` (injected for tests).

    Attributes:
        sync_interval: as given; may be changed (tests set it long, so that only the
            commit stamp or a NOTIFY can make the cache read the outbox).
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        sync_interval: float = SYNC_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max(1, max_entries)
        self.sync_interval = sync_interval
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        # serial -> CertID -> answer: a revocation names the serial, requests a CertID.
        self._by_serial: dict[int, dict[CertId, CachedAnswer]] = {}
        self._size = 0
        self._issuers: dict[CertId, Responder] = {}
        self._epoch = 0
        # What the last read of the outbox saw (see ``apply``).
        self._newest = -1
        self._seen: set[int] = set()
        self._synced_at = float("-inf")
        self._stamp: bytes | None = None
        self._dirty = True

    # -- answers ---------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """A counter that every drop raises; pass it back to :meth:`put`."""
        return self._epoch

    def get(self, cert_id: CertId, now: dt.datetime) -> CachedAnswer | None:
        """The answer for ``cert_id`` while it needs no refresh, else ``None``."""
        entries = self._by_serial.get(cert_id.serial_number)
        answer = entries.get(cert_id) if entries is not None else None
        if answer is None or now >= answer.refresh_at or now < answer.this_update:
            return None
        return answer

    def put(self, cert_id: CertId, answer: CachedAnswer, epoch: int) -> bool:
        """Keep ``answer`` unless something was dropped since ``epoch`` was read.

        Returns whether it was kept.
        """
        with self._lock:
            if epoch != self._epoch:
                return False
            entries = self._by_serial.setdefault(cert_id.serial_number, {})
            if cert_id not in entries:
                self._size += 1
            entries[cert_id] = answer
            while self._size > self._max:
                oldest = next(iter(self._by_serial))
                self._size -= len(self._by_serial.pop(oldest))
        return True

    def __len__(self) -> int:
        return self._size

    def forget_serial(self, serial: int) -> None:
        """Drop every answer for ``serial`` (all its CertIDs) and raise the epoch."""
        with self._lock:
            self._epoch += 1
            dropped = self._by_serial.pop(serial, None)
            if dropped is not None:
                self._size -= len(dropped)

    def clear(self) -> None:
        """Drop every answer and every known issuer, and raise the epoch."""
        with self._lock:
            self._epoch += 1
            self._by_serial.clear()
            self._size = 0
            self._issuers.clear()

    # -- issuers ---------------------------------------------------------------------

    def issuer(self, key: CertId) -> Responder | None:
        """The responder known for an issuer key (a CertID with serial 0), if known.

        Only issuers found are kept: a CA created later would be hidden otherwise.
        """
        return self._issuers.get(key)

    def remember_issuer(self, key: CertId, responder: Responder, epoch: int) -> None:
        """Remember who answers for an issuer key, unless something was dropped since."""
        with self._lock:
            if epoch == self._epoch and len(self._issuers) < 1000:
                self._issuers[key] = responder

    # -- following changes -------------------------------------------------------------

    def on_notification(self, notification: Notification) -> None:
        """The application's bus listener: drop what a committed change made stale."""
        if isinstance(notification, CertificateRevoked):
            self.forget_serial(int(notification.serial, 16))
        elif isinstance(notification, EventsWritten):
            if notification.event_types & _ISSUER_EVENTS:
                self.clear()
            # Empty types: a NOTIFY listener (re)connected and may have missed some.
            if not notification.event_types or notification.event_types & WATCHED_EVENTS:
                self._dirty = True

    def due(self, stamp: bytes | None = None) -> bool:
        """Whether the outbox must be read before the next answer (see :meth:`apply`).

        ``stamp`` is the store's commit stamp now (:meth:`Store.commit_stamp`); one
        other than the last read's means that some process committed since.
        """
        if self._dirty:
            return True
        if stamp is None:
            interval = self.sync_interval
        elif stamp != self._stamp:
            return True
        else:
            interval = max(self.sync_interval, STAMPED_SYNC_INTERVAL)
        return self._monotonic() - self._synced_at >= interval

    def begin_sync(self, stamp: bytes | None = None) -> None:
        """Note that a read of the outbox starts now (call :meth:`apply` with what it found).

        Noted before the read (with the commit stamp read before it), so that a commit
        or a NOTIFY arriving during the read asks for another.
        """
        self._dirty = False
        self._stamp = stamp
        self._synced_at = self._monotonic()

    def sync_floor(self, newest_id: int) -> int:
        """The outbox id above which to read, given the newest id there now.

        A window of :data:`SYNC_WINDOW` ids below the newest id the last read saw (the
        newest now, on the first read: the cache was empty before it).
        """
        seen = newest_id if self._newest < 0 else min(self._newest, newest_id)
        return max(0, seen - SYNC_WINDOW)

    def apply(self, events: Sequence[WrittenEvent], newest_id: int, *, complete: bool) -> None:
        """Take in what a read of the outbox found: events above :meth:`sync_floor`.

        Events seen before are skipped; a revocation drops its serial, a CA change
        everything, and so does a read that was cut short (``complete`` false: more
        events than the read's limit).  ``newest_id`` is the newest id at the read.
        """
        with self._sync_lock:
            if not complete:
                self.clear()
            for event in events:
                if event.id in self._seen:
                    continue
                self._seen.add(event.id)
                if event.event_type == CERTIFICATE_REVOKED:
                    try:
                        self.forget_serial(int(event.subject_id, 16))
                    except ValueError:
                        self.clear()
                elif event.event_type in _ISSUER_EVENTS:
                    self.clear()
            self._newest = max(self._newest, newest_id)
            floor = self._newest - SYNC_WINDOW
            self._seen = {seen for seen in self._seen if seen > floor}
