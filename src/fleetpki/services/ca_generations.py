"""CA generations: the certificates of one CA over time, their states, and activation.

A CA keeps its id across renewals; each certificate it gets is a *generation*
(:class:`~fleetpki.store.models.CAGeneration`). A new generation is *pending* until
every hub link that trusts the CA holds it verified (hubs first: a hub that does not
know a CA certificate refuses the devices it signed), then *active*: it issues, and
the CA row carries its key and certificate. The generation it replaced is *retiring*
(still trusted, its CRL and OCSP still served), and *retired* once nothing it issued
is outstanding.

The functions here run inside the caller's unit of work; :func:`activate_in` is the
one writer of the CA row's copy of its active generation.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.errors import NotFoundError
from fleetpki.pki.issuance import thumbprints
from fleetpki.pki.keys import KeySpec
from fleetpki.services.audit import write_audit
from fleetpki.services.context import Actor
from fleetpki.services.ports import UnitOfWork
from fleetpki.store.models import CAGeneration, CARecord

__all__ = [
    "ACTIVE",
    "PENDING",
    "RETIRED",
    "RETIRING",
    "GenerationView",
    "activate_if_ready_in",
    "activate_in",
    "generation_of",
    "generation_record",
    "generation_view",
    "link_certificates",
    "parent_pending",
    "pending_links_in",
    "signing_generation",
]

PENDING, ACTIVE, RETIRING, RETIRED = "pending", "active", "retiring", "retired"


@dataclass(frozen=True, slots=True)
class GenerationView:
    """A generation of a CA as callers see it.

    Attributes:
        number: 1 for the CA's first certificate, then one more per renewal.
        state: pending, active, retiring or retired.
        rekeyed: whether its key differs from the previous generation's.
        pending_links: for a pending generation, the hub links that do not hold it
            verified yet.
        parent_generation: the parent's generation that signed it (``None`` for a root).
        waits_for_parent: a pending generation signed by a parent generation that is
            itself still pending (a root rollover): it activates after its parent's.
        overdue: a pending generation that has waited for its links longer than the
            configured deadline (``ca_link_deadline_hours``).
        cross_certificates_der: for a root generation with a new key, the two link
            certificates (new key under the old, old key under the new).
    """

    ca_id: str
    number: int
    state: str
    key_spec: str
    rekeyed: bool
    subject: str
    serial_hex: str
    sha1_hex: str
    not_before: dt.datetime
    not_after: dt.datetime
    created_at: dt.datetime
    activated_at: dt.datetime | None
    retired_at: dt.datetime | None
    pending_links: tuple[str, ...]
    certificate_der: bytes
    parent_generation: int | None = None
    waits_for_parent: bool = False
    overdue: bool = False
    cross_certificates_der: tuple[bytes, ...] = ()

    @property
    def certificate(self) -> x509.Certificate:
        """The generation's certificate."""
        return x509.load_der_x509_certificate(self.certificate_der)


def generation_record(
    ca_id: str,
    number: int,
    state: str,
    cert: x509.Certificate,
    key_ref: str,
    spec: KeySpec,
    *,
    key_created_at: dt.datetime,
    now: dt.datetime,
    parent_generation: int | None = None,
) -> CAGeneration:
    """The stored form of a new generation (its CRL not built yet)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return CAGeneration(
        ca_id=ca_id,
        number=number,
        state=state,
        key_ref=key_ref,
        key_spec=spec.value,
        key_created_at=key_created_at,
        subject=cert.subject.rfc4514_string(),
        serial_hex=format(cert.serial_number, "X"),
        sha1_hex=thumbprints(der)[0],
        certificate_der=der,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        created_at=now,
        crl_number=0,
        crl_stale=True,
        parent_generation=parent_generation,
    )


def generation_of(ca: CARecord, number: int) -> CAGeneration | None:
    """Generation ``number`` of ``ca``."""
    return next((g for g in ca.generations if g.number == number), None)


def signing_generation(parent: CARecord, number: int | None) -> CAGeneration:
    """The generation of ``parent`` to put above a child generation it signed as ``number``.

    The parent's active generation when it has the same key as generation ``number``
    (a same-key renewal: the child's signature verifies under either, and the active one
    lasts longer), otherwise generation ``number`` itself (the child was signed by a key
    the parent has since rolled over).
    """
    active = generation_of(parent, parent.generation)
    signed = generation_of(parent, number) if number is not None else None
    if signed is None or (active is not None and active.key_ref == signed.key_ref):
        if active is None:  # every CA has its active generation (migration 0007)
            raise NotFoundError(
                "ca.generation_missing", f"CA {parent.id} has no generation {parent.generation}"
            )
        return active
    return signed


def link_certificates(root: CARecord, generation: CAGeneration) -> list[x509.Certificate]:
    """The rollover link certificates that let holders of another root generation validate.

    For a new-key generation whose predecessor is not retired, NewWithOld (this key
    under the old one); for a generation whose successor rolled the key and is not
    retired, that successor's OldWithNew (this key under the new one).
    """
    links = []
    previous = generation_of(root, generation.number - 1)
    if generation.cross_der and previous is not None and previous.state != RETIRED:
        links.append(x509.load_der_x509_certificate(generation.cross_der))
    following = generation_of(root, generation.number + 1)
    if following is not None and following.back_cross_der and following.state != RETIRED:
        links.append(x509.load_der_x509_certificate(following.back_cross_der))
    return links


def parent_pending(tx: UnitOfWork, ca: CARecord, generation: CAGeneration) -> bool:
    """Whether ``generation`` was signed by a parent generation that is still pending."""
    if ca.parent_id is None or generation.parent_generation is None:
        return False
    parent = tx.cas.get(ca.parent_id)
    signed = generation_of(parent, generation.parent_generation) if parent else None
    return signed is not None and signed.state == PENDING


def pending_links_in(tx: UnitOfWork, ca_id: str, number: int) -> list[str]:
    """The links that trust ``ca_id`` but do not hold its generation ``number`` verified."""
    pending = []
    for link in tx.hub_links.list():
        if not any(entry.ca_id == ca_id for entry in link.cas):
            continue
        held = next(
            (g for g in link.generations if g.ca_id == ca_id and g.generation == number), None
        )
        if held is None or held.verified_at is None:
            pending.append(link.name)
    return pending


def generation_view(
    tx: UnitOfWork,
    ca: CARecord,
    generation: CAGeneration,
    *,
    deadline: dt.timedelta | None = None,
    now: dt.datetime | None = None,
) -> GenerationView:
    """The view of one generation (the pending links read in the caller's unit).

    With ``deadline`` and ``now``, a pending generation older than the deadline is
    marked overdue.
    """
    previous = generation_of(ca, generation.number - 1)
    overdue = (
        generation.state == PENDING
        and deadline is not None
        and now is not None
        and now - generation.created_at > deadline
    )
    return GenerationView(
        ca_id=ca.id,
        number=generation.number,
        state=generation.state,
        key_spec=generation.key_spec,
        rekeyed=previous is not None and previous.key_ref != generation.key_ref,
        subject=generation.subject,
        serial_hex=generation.serial_hex,
        sha1_hex=generation.sha1_hex,
        not_before=generation.not_before,
        not_after=generation.not_after,
        created_at=generation.created_at,
        activated_at=generation.activated_at,
        retired_at=generation.retired_at,
        pending_links=(
            tuple(pending_links_in(tx, ca.id, generation.number))
            if generation.state == PENDING
            else ()
        ),
        certificate_der=generation.certificate_der,
        parent_generation=generation.parent_generation,
        waits_for_parent=generation.state == PENDING and parent_pending(tx, ca, generation),
        overdue=overdue,
        cross_certificates_der=tuple(
            der for der in (generation.cross_der, generation.back_cross_der) if der
        ),
    )


def activate_in(
    tx: UnitOfWork,
    actor: Actor,
    ca: CARecord,
    generation: CAGeneration,
    *,
    now: dt.datetime,
    forced: bool = False,
) -> None:
    """Make ``generation`` the CA's active one: it issues from now on.

    The previous active generation becomes retiring; the CA row takes the new key and
    certificate (the one place that writes them after creation). Child generations that
    waited for this one (re-certified under a rolled-over root) activate when ready.
    """
    for other in ca.generations:
        if other.state == ACTIVE and other is not generation:
            other.state = RETIRING
    generation.state, generation.activated_at = ACTIVE, now
    ca.generation = generation.number
    ca.key_ref, ca.key_spec = generation.key_ref, generation.key_spec
    ca.subject, ca.serial_hex, ca.sha1_hex = (
        generation.subject,
        generation.serial_hex,
        generation.sha1_hex,
    )
    ca.certificate_der = generation.certificate_der
    ca.not_before, ca.not_after = generation.not_before, generation.not_after
    details: dict[str, object] = {"generation": generation.number, "sha1": generation.sha1_hex}
    if forced:
        details["forced"] = True
        details["pending_links"] = pending_links_in(tx, ca.id, generation.number)
    write_audit(tx, actor, "ca.activate", "ca", ca.id, at=now, details=details)
    for child in tx.cas.children_of(ca.id):
        waiting = next(
            (
                g
                for g in child.generations
                if g.state == PENDING and g.parent_generation == generation.number
            ),
            None,
        )
        if waiting is not None:
            activate_if_ready_in(tx, actor, child.id, waiting.number, now=now)


def activate_if_ready_in(
    tx: UnitOfWork, actor: Actor, ca_id: str, number: int, *, now: dt.datetime
) -> bool:
    """Activate generation ``number`` of ``ca_id`` if it is pending, no link lacks it and
    the parent generation that signed it is active.

    Returns whether it was activated now.
    """
    ca = tx.cas.get(ca_id)
    generation = generation_of(ca, number) if ca is not None else None
    if ca is None or generation is None or generation.state != PENDING:
        return False
    if pending_links_in(tx, ca_id, number) or parent_pending(tx, ca, generation):
        return False
    activate_in(tx, actor, ca, generation, now=now)
    return True
