"""CRLs published from a cache and rebuilt in the background, off every request's path.

A CA generation's CRL is cached as DER on its row (with its number, next update and the
revision it was built from) and in this process's memory. A revocation only marks the
generation stale and counts one more revision (one short UPDATE, whatever the number of
revoked certificates). A read serves the cached CRL while it is still valid, even when
stale, and hands the rebuild to one background thread; only a generation with no CRL
yet, or one past its nextUpdate, waits for the build. Vault PKI's ``CrlBuilder`` serves
CRLs the same way.

A rebuild reads the revision and the revocations in one unit of work, builds and signs
outside any transaction (no database lock is held meanwhile), then stores the CRL by
compare and set on its number: if another
process stored that number first, its CRL stands (RFC 5280 §5.2.3 wants each number
used once, increasing). Revocations that committed while the CRL was built leave the
generation stale, so the next read builds again: no revocation is lost to the race.

A revocation only ever adds an entry (a revoked certificate stays listed; removeFromCRL
belongs to delta CRLs, which fleetpki does not issue), so a rebuild starts from the
previous CRL's encoded entries and adds those of the certificates whose revocation
counted a later revision than the one it was built from (``revoked_revision``, found
through a partial index): with a million revoked, the next CRL copies 45 MB of entries
instead of reading and encoding a million rows. A generation with no CRL yet, or whose
CRL predates the stamps (``crl_built_revision`` -1, migration 0017), reads them all.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass

from cryptography import x509

from fleetpki.errors import NotFoundError, ValidationError
from fleetpki.keystore import KeyStore
from fleetpki.pki.crl import CrlScope, RevokedList, StoredRevocation, build_crl
from fleetpki.services.authority import CAUrlsConfig, ca_record
from fleetpki.services.ca_generations import generation_of
from fleetpki.services.ca_views import CrlView
from fleetpki.services.context import Clock
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.store.models import CAGeneration, CARecord

__all__ = ["CRL_LIFETIME", "CRL_REFRESH_MARGIN", "CrlPublisher"]

#: A CRL is valid this long; it is rebuilt on the first read after it is due, or after
#: any revocation.
CRL_LIFETIME = dt.timedelta(hours=24)
#: Rebuild this long before nextUpdate, so that clients never fetch a lapsed CRL.
CRL_REFRESH_MARGIN = dt.timedelta(minutes=5)

_log = logging.getLogger(__name__)

_Key = tuple[str, int]


@dataclass(frozen=True, slots=True)
class _Cached:
    """What a generation's row says about its CRL, and the DER when this process holds it."""

    crl_number: int
    next_update: dt.datetime | None
    stale: bool
    revision: int = 0
    built_revision: int = 0

    def covers(self, revision: int, now: dt.datetime) -> bool:
        """Whether the CRL lists the revocations up to ``revision`` and is not yet due."""
        return (
            self.crl_number > 0
            and self.built_revision >= revision
            and self.next_update is not None
            and now < self.next_update - CRL_REFRESH_MARGIN
        )

    def fresh(self, now: dt.datetime) -> bool:
        return (
            self.crl_number > 0
            and self.next_update is not None
            and not self.stale
            and now < self.next_update - CRL_REFRESH_MARGIN
        )

    def servable(self, now: dt.datetime) -> bool:
        # A stale or due CRL is still a valid CRL until its nextUpdate (RFC 5280 §5.1.2.5).
        return self.crl_number > 0 and self.next_update is not None and now < self.next_update


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What a rebuild reads in its one unit of work."""

    certificate_der: bytes
    key_ref: str
    cached: _Cached
    revision: int
    #: The previous CRL's DER when the rows are only the revocations since it was built.
    base: bytes | None
    rows: list[StoredRevocation]


class CrlPublisher:
    """Each CA generation's CRL: served from the cache, rebuilt by a background builder.

    Args:
        store: the database.
        keystore: custody of CA keys (CRLs are signed by the CA generation's key).
        clock: the source of "now".
        urls: where CRLs are published (each CRL's issuing distribution point).
        executor: where rebuilds run; default one thread of this publisher's own.
    """

    def __init__(
        self,
        store: Store,
        keystore: KeyStore,
        clock: Clock,
        urls: CAUrlsConfig,
        *,
        executor: Executor | None = None,
    ) -> None:
        self._store = store
        self._keystore = keystore
        self._clock = clock
        self._urls = urls
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="crl-builder")
        self._lock = threading.Lock()
        self._builds: dict[_Key, Future[None]] = {}
        # The DER this process last read or built, by (CA id, generation): a CRL of a
        # million entries is ~45 MB, read from the database once per CRL number.
        self._der: dict[_Key, tuple[int, bytes]] = {}

    def crl(self, ca_id: str, generation: int = 1) -> CrlView:
        """The CRL to serve now for a CA generation, never waiting for a rebuild it can avoid.

        The cached CRL while it is valid; when it is stale (a revocation since) or due,
        a rebuild is started in the background and the cached one is served meanwhile.
        With no valid CRL at all (none built yet, or past its nextUpdate) this waits for
        the build.

        Raises:
            NotFoundError: ``ca.not_found`` (for the CA or the generation).
        """
        key, cached = self._cached(ca_id, generation)
        now = self._clock()
        if cached.fresh(now):
            return self._view(key, cached)
        if cached.servable(now):
            self._start(key)
            return self._view(key, cached)
        return self.refresh(ca_id, generation)

    def refresh(self, ca_id: str, generation: int = 1) -> CrlView:
        """The up-to-date CRL of a CA generation: waits until one lists every revocation
        committed before this call (and is not due), building it if need be; later
        revocations do not keep it waiting.

        Raises:
            NotFoundError: ``ca.not_found`` (for the CA or the generation).
        """
        key, cached = self._cached(ca_id, generation)
        # Revocations that commit after this call do not keep it waiting.
        target = cached.revision
        while not cached.covers(target, self._clock()):
            # A build already under way may have read before the last revocation; once
            # it is done the row says whether another one is needed.
            self._start(key).result()
            key, cached = self._cached(ca_id, generation)
        return self._view(key, cached)

    def close(self) -> None:
        """Stop the background builder (waiting for a build under way)."""
        if self._own_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def _cached(self, ca_id: str, generation: int) -> tuple[_Key, _Cached]:
        with self._store.reading() as tx:
            row = _generation(ca_record(tx, ca_id), generation)
            return (row.ca_id, generation), _Cached(
                row.crl_number,
                row.crl_next_update,
                row.crl_stale,
                row.crl_revision,
                row.crl_built_revision,
            )

    def _view(self, key: _Key, cached: _Cached) -> CrlView:
        assert cached.next_update is not None
        held = self._der.get(key)
        if held is not None and held[0] == cached.crl_number:
            return CrlView(held[1], cached.next_update)
        with self._store.reading() as tx:
            # The row first: a CRL stored in between is newer and lapses later still.
            next_update = _generation(ca_record(tx, key[0]), key[1]).crl_next_update
            stored = tx.cas.crl_der(*key)
        if stored is None or next_update is None:
            raise NotFoundError("crl.not_found", f"no CRL is stored for CA {key[0]}")
        # The row may have moved on since ``cached`` was read: serve what it holds now.
        self._der[key] = stored
        return CrlView(stored[1], next_update)

    def _start(self, key: _Key) -> Future[None]:
        with self._lock:
            build = self._builds.get(key)
            if build is None or build.done():
                build = self._executor.submit(self._build, key)
                self._builds[key] = build
            return build

    def _build(self, key: _Key) -> None:
        try:
            self._rebuild(key)
        except Exception:
            _log.exception("building the CRL of CA %s generation %s failed", *key)
            raise

    def _rebuild(self, key: _Key) -> None:
        ca_id, generation = key
        snapshot = self._snapshot(ca_id, generation)
        if snapshot.cached.fresh(self._clock()):
            # Another builder (this process's or another's) stored one since it was asked.
            return
        certificate = x509.load_der_x509_certificate(snapshot.certificate_der)
        this_update = self._clock().replace(microsecond=0)
        next_update = min(this_update + CRL_LIFETIME, certificate.not_valid_after_utc)
        listed = RevokedList.of_stored(snapshot.rows)
        if snapshot.base is not None:
            try:
                listed = RevokedList.of_crl(snapshot.base).merged(listed)
            except ValidationError:
                # Not a CRL this code can add to: read every revocation instead.
                _log.warning("the stored CRL of CA %s generation %s is unreadable", *key)
                snapshot = self._snapshot(ca_id, generation, full=True)
                listed = RevokedList.of_stored(snapshot.rows)
        number = snapshot.cached.crl_number + 1
        der = build_crl(
            certificate,
            self._keystore.signer(snapshot.key_ref),
            (),
            crl_number=number,
            this_update=this_update,
            next_update=next_update,
            idp_url=self._urls.crl_url(ca_id, generation),
            scope=CrlScope.for_issuer(certificate),
            listed=listed,
        )
        with self._store.transaction() as tx:
            stored = tx.cas.store_crl(
                ca_id,
                generation,
                crl_number=number,
                der=der,
                next_update=next_update,
                built_revision=snapshot.revision,
            )
        if stored:
            self._der[key] = (number, der)

    def _snapshot(self, ca_id: str, generation: int, *, full: bool = False) -> _Snapshot:
        # A reading unit: on SQLite a million rows are read beside the writers, not in
        # front of them (a writing unit would hold the write lock for the whole read).
        with self._store.reading() as tx:
            ca = ca_record(tx, ca_id)
            row = _generation(ca, generation)
            # The revision first: every revocation it counts has committed, so the rows
            # read after it list them all (more are harmless: the CRL stays stale).
            revision = row.crl_revision
            cached = _Cached(row.crl_number, row.crl_next_update, row.crl_stale)
            # The root's CRL lists revoked subordinate CAs; fleetpki does not revoke CAs
            # yet, so it is empty.
            if ca.tier == "root":
                return _Snapshot(row.certificate_der, row.key_ref, cached, revision, None, [])
            base = None if full else self._base(tx, (ca.id, generation), row)
            rows = tx.certificates.revocations_of(
                ca.id, generation, since_revision=None if base is None else row.crl_built_revision
            )
            return _Snapshot(row.certificate_der, row.key_ref, cached, revision, base, rows)

    def _base(self, tx: UnitOfWork, key: _Key, row: CAGeneration) -> bytes | None:
        """The DER of the CRL that ``row``'s ``crl_built_revision`` describes, when the next
        CRL can be that one's entries plus the revocations since."""
        if row.crl_number <= 0 or row.crl_built_revision < 0:
            return None
        held = self._der.get(key)
        if held is None or held[0] != row.crl_number:
            held = tx.cas.crl_der(*key)
        # Another process may have stored a newer one between the two reads: its
        # revision is not the row's, so read every revocation instead.
        return held[1] if held is not None and held[0] == row.crl_number else None


def _generation(ca: CARecord, number: int) -> CAGeneration:
    generation = generation_of(ca, number)
    if generation is None:
        raise NotFoundError("ca.not_found", f"CA {ca.id} has no generation {number}")
    return generation
