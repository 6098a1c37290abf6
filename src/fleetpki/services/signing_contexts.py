"""Signing contexts: what an issuance under one CA needs, built once and kept.

Theory of operation.  Every issuance needs the issuing CA's certificate object, its
signer, the URLs it publishes, its chain up to the root (for the answer) and the
template.  Built from the database each time, that is a CA with its generations, its
parent with theirs, the certificates parsed again and the template row: about half of
an issuance's CPU when it went through the ORM.  None of it changes between two
issuances unless a CA changes, and every change that matters shows in a few columns:

- a CA's ``status``, ``tier``, ``name``, ``parent_id``, active ``generation`` and
  ``key_ref`` (renewal, rollover, retirement);
- the set of generations and their ``state`` (a root's link certificates depend on
  its neighbours' states; a generation's certificate and links are written once).

So each issuance reads those columns of every CA in one small statement (a handful of
rows: :meth:`~fleetpki.services.ports.ca.CARepository.signing_stamp`), in its own unit
of work, and uses the context built for the same stamp; otherwise it builds a new one
from the records.  A change committed by another process is therefore seen by the
next issuance that reads after it, as without the cache.  Templates are immutable once
stored (they are only ever added), so they are kept by id for good.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass

from cryptography import x509

from fleetpki.errors import NotFoundError
from fleetpki.keystore import KeyStore
from fleetpki.pki.issuance import Issuer
from fleetpki.pki.profile import Template
from fleetpki.services.authority import (
    CAUrlsConfig,
    ca_chain_of,
    ca_record,
    canonical_id,
    issuer_for,
    template_for,
    template_from_record,
    template_record_of,
)
from fleetpki.services.ports import UnitOfWork
from fleetpki.store.models import CARecord, TemplateRecord

__all__ = ["SigningContext", "SigningContexts", "TemplateChoice", "signing_context"]


@dataclass(frozen=True, slots=True)
class SigningContext:
    """One CA's active generation, ready to sign.

    Attributes:
        ca_id / ca_name: the CA.
        generation: the active generation, which signs.
        issuer: its certificate, signer and published URLs.
        chain: its certificate followed by its parents up to the root (and a root's
            rollover link certificates), for the answer to the requester.
    """

    ca_id: str
    ca_name: str
    generation: int
    issuer: Issuer
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True, slots=True)
class TemplateChoice:
    """A stored template: its id and its domain form."""

    template_id: str
    template: Template


def signing_context(
    tx: UnitOfWork, ca: CARecord, keystore: KeyStore, urls: CAUrlsConfig
) -> SigningContext:
    """The signing context of ``ca`` built from its records (caller's unit of work).

    Raises:
        ValidationError: ``ca.not_issuing`` for a root, ``ca.retired``.
    """
    issuer = issuer_for(ca, keystore, urls)
    return SigningContext(
        ca_id=ca.id,
        ca_name=ca.name,
        generation=ca.generation,
        issuer=issuer,
        chain=tuple(ca_chain_of(tx, ca, ca.generation)),
    )


class SigningContexts:
    """The signing contexts and templates of this process, checked against the database.

    Safe to share between threads: a context is immutable, and two threads that build
    the same one at once both get a correct one (the last kept wins).

    Args:
        keystore: custody of CA keys (its signers are cached by the keystore itself).
        urls: where CRLs, OCSP and CA certificates are published.
    """

    def __init__(self, keystore: KeyStore, urls: CAUrlsConfig) -> None:
        self._keystore = keystore
        self._urls = urls
        self._lock = threading.Lock()
        self._contexts: dict[str, tuple[Hashable, SigningContext]] = {}
        self._templates: dict[str, tuple[str, TemplateChoice]] = {}
        self._defaults: dict[str, TemplateChoice] = {}

    def get(self, tx: UnitOfWork, ca_id: str) -> SigningContext:
        """The signing context of the CA ``ca_id`` as the caller's unit of work sees it.

        Raises:
            NotFoundError: ``ca.not_found``.
            ValidationError: ``ca.not_issuing`` for a root, ``ca.retired``.
        """
        key = canonical_id(ca_id, "ca")
        stamp = tx.cas.signing_stamp()
        with self._lock:
            kept = self._contexts.get(key)
        if kept is not None and kept[0] == stamp:
            return kept[1]
        context = signing_context(tx, ca_record(tx, key), self._keystore, self._urls)
        with self._lock:
            self._contexts[key] = (stamp, context)
        return context

    def template(self, tx: UnitOfWork, ca_id: str, template_id: str | None) -> TemplateChoice:
        """The template a request to ``ca_id`` uses: the one named, or the CA's first.

        Raises:
            NotFoundError: ``template.not_found``, also for a template of another CA.
        """
        if template_id is None:
            with self._lock:
                default = self._defaults.get(ca_id)
            if default is None:
                default = self._keep(template_for(tx, ca_record(tx, ca_id), None))
                with self._lock:
                    self._defaults[ca_id] = default
            return default
        key = canonical_id(template_id, "template")
        with self._lock:
            kept = self._templates.get(key)
        if kept is not None:
            owner, choice = kept
            if owner != ca_id:
                raise NotFoundError("template.not_found", f"no template {template_id} for that CA")
            return choice
        record = template_record_of(tx, key, ca_id)
        return self._keep(record)

    def _keep(self, record: TemplateRecord) -> TemplateChoice:
        choice = TemplateChoice(record.id, template_from_record(record))
        with self._lock:
            self._templates[record.id] = (record.ca_id, choice)
        return choice
