"""CA renewal: a new generation of a CA, with the same key or a new one, hubs first.

``fleetpki ca renew`` asks :meth:`CALifecycleService.renew`: the CA's parent (or, for
a root, the CA itself) signs a new certificate for the CA's subject, with the current
key or a new one (``rekey``, the default once the key is older than
``rekey_after``). The new generation is pending; an outbox event
(``ca.generation_created``) carries it to every hub link that trusts the CA, each of
which uploads it and proves possession; when the last one has it verified, the
generation becomes active (:func:`~fleetpki.services.ca_generations.activate_if_ready_in`)
and issuance switches to it. A CA that no link trusts activates at once. The built-in
hub, when it trusts the CA directly (``fleetpki hub trust``), gets the new
generation in the renewal's own unit of work.

A root renewed with its own key gets a new self-signed certificate over the same key
and name, so issuing CAs' certificates chain to either. A root renewed with a new key
is a *rollover* (RFC 4210 §4.4): the new self-signed root, the two link certificates
(the new key certified by the old one, and the old by the new) kept with it, and every
issuing CA under it re-certified (its own key, signed by the new root key) as a
pending generation that activates after the new root does. Chains carry the link
certificates while both root generations are live, so a relying party holding either
root validates certificates from either side of the rollover.
"""

from __future__ import annotations

import builtins
import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.errors import ConflictError, NotFoundError, PermissionDenied, ValidationError
from fleetpki.keystore import KeyStore, Signer
from fleetpki.pki.ca import CAUrls, build_cross_certificate, build_root_ca, build_subordinate_ca
from fleetpki.pki.keys import KeySpec
from fleetpki.services.audit import write_audit
from fleetpki.services.authority import CAUrlsConfig, ca_record
from fleetpki.services.ca_generations import (
    PENDING,
    RETIRED,
    RETIRING,
    GenerationView,
    activate_in,
    generation_of,
    generation_record,
    generation_view,
    parent_pending,
    pending_links_in,
)
from fleetpki.services.context import LOCAL_ADMIN_ID, Actor, Clock
from fleetpki.services.hub_trust import (
    delete_in,
    possession_proof,
    upload_in,
    verification_code_in,
    verify_in,
)
from fleetpki.services.outbox import CA_GENERATION_CREATED, CA_GENERATION_RETIRED
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.store.models import CAGeneration, CARecord

__all__ = ["DEFAULT_LINK_DEADLINE", "DEFAULT_REKEY_AFTER", "CALifecycleService", "RenewCommand"]

#: A key older than this is replaced on renewal unless the caller says otherwise.
DEFAULT_REKEY_AFTER = dt.timedelta(days=365)
#: A generation waiting longer than this for a hub link is reported as overdue.
DEFAULT_LINK_DEADLINE = dt.timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class RenewCommand:
    """A renewal: ``rekey`` ``None`` lets the key's age decide; ``days`` ``None`` keeps
    the current generation's lifetime (capped at the parent's expiry).
    """

    rekey: bool | None = None
    days: int | None = None


def _require_admin(actor: Actor) -> None:
    if not actor.is_admin:
        raise PermissionDenied("auth.admin_required", "only admins renew CAs")


def _active(ca: CARecord) -> CAGeneration:
    generation = generation_of(ca, ca.generation)
    if generation is None:  # every CA has its active generation (migration 0007)
        raise NotFoundError(
            "ca.generation_missing", f"CA {ca.id} has no generation {ca.generation}"
        )
    return generation


class CALifecycleService:
    """CA renewal, its generations, and activation (admins only).

    Args:
        store: the database.
        keystore: custody of CA keys (new keys, and the parents' signatures).
        clock: the source of "now".
        urls: where CRLs and CA certificates are published.
        rekey_after: the key age past which a renewal makes a new key by default.
        link_deadline: how long a pending generation may wait for its links before it
            is shown as overdue.
    """

    def __init__(
        self,
        store: Store,
        keystore: KeyStore,
        clock: Clock,
        urls: CAUrlsConfig,
        *,
        rekey_after: dt.timedelta = DEFAULT_REKEY_AFTER,
        link_deadline: dt.timedelta = DEFAULT_LINK_DEADLINE,
    ) -> None:
        self._store = store
        self._keystore = keystore
        self._clock = clock
        self._urls = urls
        self._rekey_after = rekey_after
        self.link_deadline = link_deadline

    def renew(self, actor: Actor, ca_id: str, command: RenewCommand) -> GenerationView:
        """Make a new generation of the CA; it activates once every link holds it.

        For a root with ``rekey``, a rollover: the new root with its link certificates,
        and a re-certified generation of every issuing CA under it (returned: the root's).

        Raises:
            PermissionDenied: ``auth.admin_required``.
            NotFoundError: ``ca.not_found``.
            ValidationError: ``ca.retired``, ``ca.bad_days``, ``ca.days_beyond_parent``,
                ``ca.parent_not_active``.
            ConflictError: ``ca.renewal_pending`` while an earlier renewal of the CA (or,
                for a root rollover, of an issuing CA under it) waits for hubs.
        """
        _require_admin(actor)
        now = self._clock()
        with self._store.transaction() as tx:
            ca = ca_record(tx, ca_id)
            if ca.status != "active":
                raise ValidationError("ca.retired", f"CA {ca.name!r} is retired; it is not renewed")
            waiting = next((g for g in ca.generations if g.state == PENDING), None)
            if waiting is not None:
                raise ConflictError(
                    "ca.renewal_pending",
                    f"generation {waiting.number} of CA {ca.name!r} still waits for its hub "
                    "links; activate it (`fleetpki ca activate --force`) before renewing again",
                )
            current = _active(ca)
            rekey = (
                command.rekey
                if command.rekey is not None
                else now - current.key_created_at >= self._rekey_after
            )
            children = [c for c in tx.cas.children_of(ca.id) if c.status == "active"]
            rollover = ca.tier == "root" and rekey
            if rollover:
                for child in children:
                    held = next((g for g in child.generations if g.state == PENDING), None)
                    if held is not None:
                        raise ConflictError(
                            "ca.renewal_pending",
                            f"generation {held.number} of the issuing CA {child.name!r} still "
                            "waits for its hub links; a root rollover re-certifies it, so "
                            "activate or finish that renewal first",
                        )
                generation = self._rolled_root(ca, current, command.days, now)
            else:
                generation = self._new_generation(tx, ca, current, rekey, command.days, now)
            try:
                self._add_generation(tx, actor, ca, generation, "ca.renew", now, rekey=rekey)
                if rollover:
                    root_cert = x509.load_der_x509_certificate(generation.certificate_der)
                    for child in children:
                        recertified = self._recertified(ca, generation, root_cert, child, now)
                        self._add_generation(tx, actor, child, recertified, "ca.recertify", now)
                if not pending_links_in(tx, ca.id, generation.number):
                    activate_in(tx, actor, ca, generation, now=now)
                return generation_view(tx, ca, generation)
            except BaseException:
                # Nothing is committed: a new key would belong to no generation.
                if rekey:
                    self._keystore.discard(generation.key_ref)
                raise

    def _add_generation(
        self,
        tx: UnitOfWork,
        actor: Actor,
        ca: CARecord,
        generation: CAGeneration,
        action: str,
        now: dt.datetime,
        *,
        rekey: bool = False,
    ) -> None:
        """Record a new pending generation: the outbox event, direct trust, the audit."""
        ca.generations.append(generation)
        tx.events.append(
            CA_GENERATION_CREATED,
            ca.id,
            {"ca_id": ca.id, "generation": generation.number},
            at=now,
        )
        self._trust_in_builtin_hub(tx, ca, generation, now)
        details: dict[str, object] = {
            "generation": generation.number,
            "rekey": rekey,
            "not_after": generation.not_after.isoformat(),
        }
        if generation.parent_generation is not None:
            details["parent_generation"] = generation.parent_generation
        write_audit(tx, actor, action, "ca", ca.id, at=now, details=details)

    def _rolled_root(
        self, ca: CARecord, current: CAGeneration, days: int | None, now: dt.datetime
    ) -> CAGeneration:
        """A new root generation on a new key, with its two link certificates."""
        if days is not None and not 1 <= days <= 36500:
            raise ValidationError("ca.bad_days", "--days must be between 1 and 36500")
        lifetime = current.not_after - current.not_before
        spec = KeySpec(current.key_spec)
        old_cert = x509.load_der_x509_certificate(current.certificate_der)
        old_signer = self._keystore.signer(current.key_ref)
        signer = self._keystore.generate(spec)
        wanted = days if days is not None else max(lifetime.days, 1)
        try:
            new_cert = build_root_ca(signer, old_cert.subject, now=now, days=wanted)
            new_with_old = build_cross_certificate(new_cert, old_cert, old_signer, now=now)
            old_with_new = build_cross_certificate(old_cert, new_cert, signer, now=now)
        except BaseException:
            self._keystore.discard(signer.key_ref)
            raise
        number = max(g.number for g in ca.generations) + 1
        generation = generation_record(
            ca.id, number, PENDING, new_cert, signer.key_ref, spec, key_created_at=now, now=now
        )
        generation.cross_der = new_with_old.public_bytes(serialization.Encoding.DER)
        generation.back_cross_der = old_with_new.public_bytes(serialization.Encoding.DER)
        return generation

    def _recertified(
        self,
        root: CARecord,
        root_generation: CAGeneration,
        root_cert: x509.Certificate,
        child: CARecord,
        now: dt.datetime,
    ) -> CAGeneration:
        """The child CA's key and name certified by the new root generation (pending)."""
        current = _active(child)
        lifetime = current.not_after - current.not_before
        cert = build_subordinate_ca(
            root_cert,
            self._keystore.signer(root_generation.key_ref),
            self._keystore.signer(current.key_ref),
            x509.load_der_x509_certificate(current.certificate_der).subject,
            now=now,
            days=max(lifetime.days, 1),
            urls=CAUrls(
                crl_url=self._urls.crl_url(root.id, root_generation.number),
                ca_issuers_url=self._urls.ca_issuers_url(root.id, root_generation.number),
            ),
        )
        return generation_record(
            child.id,
            max(g.number for g in child.generations) + 1,
            PENDING,
            cert,
            current.key_ref,
            KeySpec(current.key_spec),
            key_created_at=current.key_created_at,
            now=now,
            parent_generation=root_generation.number,
        )

    def _new_generation(
        self,
        tx: UnitOfWork,
        ca: CARecord,
        current: CAGeneration,
        rekey: bool,
        days: int | None,
        now: dt.datetime,
    ) -> CAGeneration:
        """The new generation's record; with ``rekey``, its key generated in the keystore.

        Every refusal of the input comes before a key is generated, and a key generated
        for a certificate that could not be made is discarded, so a refused renewal
        leaves nothing behind, in the database or in the keystore.
        """
        lifetime = current.not_after - current.not_before
        if days is not None and not 1 <= days <= 36500:
            raise ValidationError("ca.bad_days", "--days must be between 1 and 36500")
        spec = KeySpec(current.key_spec)
        parent: CARecord | None = None
        if ca.parent_id is not None:
            parent = ca_record(tx, ca.parent_id)
            if parent.status != "active":
                raise ValidationError(
                    "ca.parent_not_active", f"the parent CA {parent.name!r} is retired"
                )
            parent_end = x509.load_der_x509_certificate(parent.certificate_der).not_valid_after_utc
            remaining = parent_end - now
            if days is not None and dt.timedelta(days=days) > remaining:
                raise ValidationError(
                    "ca.days_beyond_parent",
                    f"--days {days} goes past the parent CA's expiry "
                    f"({parent_end:%Y-%m-%d}, {remaining.days} days left)",
                )
        parent_generation = parent.generation if parent is not None else None
        if rekey:
            signer = self._keystore.generate(spec)
            key_created_at = now
        else:
            signer = self._keystore.signer(current.key_ref)
            key_created_at = current.key_created_at
        try:
            subject = x509.load_der_x509_certificate(current.certificate_der).subject
            cert = self._certificate(subject, parent, signer, lifetime, days, now)
        except BaseException:
            if rekey:
                self._keystore.discard(signer.key_ref)
            raise
        return generation_record(
            ca.id,
            max(g.number for g in ca.generations) + 1,
            PENDING,
            cert,
            signer.key_ref,
            spec,
            key_created_at=key_created_at,
            now=now,
            parent_generation=parent_generation,
        )

    def _certificate(
        self,
        subject: x509.Name,
        parent: CARecord | None,
        signer: Signer,
        lifetime: dt.timedelta,
        days: int | None,
        now: dt.datetime,
    ) -> x509.Certificate:
        """The new generation's certificate, signed by the parent (or itself, for a root)."""
        if parent is None:
            wanted = dt.timedelta(days=days) if days is not None else lifetime
            return build_root_ca(signer, subject, now=now, days=max(wanted.days, 1))
        wanted_days = days if days is not None else max(lifetime.days, 1)
        return build_subordinate_ca(
            x509.load_der_x509_certificate(parent.certificate_der),
            self._keystore.signer(parent.key_ref),
            signer,
            subject,
            now=now,
            days=wanted_days,
            urls=CAUrls(
                crl_url=self._urls.crl_url(parent.id, parent.generation),
                ca_issuers_url=self._urls.ca_issuers_url(parent.id, parent.generation),
            ),
        )

    def _trust_in_builtin_hub(
        self, tx: UnitOfWork, ca: CARecord, generation: CAGeneration, now: dt.datetime
    ) -> None:
        """Give the built-in hub the new generation when it trusts the CA directly.

        When a link trusts the CA, the links carry the generation (a builtin link to
        this same hub included), so it is not uploaded twice.
        """
        if pending_links_in(tx, ca.id, generation.number):
            return
        if not any(h.fleetpki_ca_id == ca.id for h in tx.hub_cas.list()):
            return
        name = f"{ca.name}-g{generation.number}"
        record = upload_in(tx, name, generation.certificate_der, now=now, fleetpki_ca_id=ca.id)
        record = verification_code_in(tx, record.name, now=now)
        assert record.verification_code is not None
        proof = possession_proof(
            self._keystore,
            generation.key_ref,
            x509.load_der_x509_certificate(generation.certificate_der),
            record.verification_code,
            now=now,
        )
        verify_in(tx, record.name, proof.public_bytes(serialization.Encoding.PEM), now=now)

    def generations(self, ca_id: str) -> builtins.list[GenerationView]:
        """Every generation of the CA, oldest first, with the links a pending one waits for.

        Raises:
            NotFoundError: ``ca.not_found``.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            ca = ca_record(tx, ca_id)
            return [
                generation_view(tx, ca, g, deadline=self.link_deadline, now=now)
                for g in ca.generations
            ]

    def retire_drained(self) -> builtins.list[GenerationView]:
        """Retire every retiring generation of an issuing CA with nothing outstanding.

        Nothing outstanding: no certificate of the generation is valid, unexpired and not
        renewed away. A retired generation is removed from the built-in hub's trust here
        and from every linked hub by its link (``ca.generation_retired``); its CRL and
        OCSP are still served. Run periodically by ``fleetpki serve``; returns what was
        retired.
        """
        now = self._clock()
        actor = Actor(LOCAL_ADMIN_ID, is_admin=True, source="ca housekeeping")
        retired = []
        with self._store.transaction() as tx:
            for ca in tx.cas.all():
                if ca.tier != "issuing":
                    continue  # a root's certificates are CAs: retiring roots is an operator's call
                for generation in ca.generations:
                    if generation.state != RETIRING:
                        continue
                    if tx.certificates.outstanding_of(ca.id, generation.number, now):
                        continue
                    generation.state, generation.retired_at = RETIRED, now
                    for held in tx.hub_cas.list():
                        if held.sha1_hex.upper() == generation.sha1_hex.upper():
                            delete_in(tx, held.name)
                    tx.events.append(
                        CA_GENERATION_RETIRED,
                        ca.id,
                        {"ca_id": ca.id, "generation": generation.number},
                        at=now,
                    )
                    write_audit(
                        tx,
                        actor,
                        "ca.retire_generation",
                        "ca",
                        ca.id,
                        at=now,
                        details={"generation": generation.number},
                    )
                    retired.append(generation_view(tx, ca, generation))
        return retired

    def pending(self) -> builtins.list[GenerationView]:
        """Every generation still waiting for its hub links, oldest first (for alerts)."""
        now = self._clock()
        with self._store.transaction() as tx:
            return [
                generation_view(tx, ca, g, deadline=self.link_deadline, now=now)
                for ca in tx.cas.all()
                for g in ca.generations
                if g.state == PENDING
            ]

    def activate(self, actor: Actor, ca_id: str, *, force: bool = False) -> GenerationView:
        """Activate the CA's pending generation; with links still pending only if ``force``.

        Raises:
            PermissionDenied: ``auth.admin_required``.
            NotFoundError: ``ca.not_found``, ``ca.nothing_pending``.
            ConflictError: ``ca.links_pending`` (naming them) without ``force``;
                ``ca.parent_pending`` while the parent generation that signed it is
                pending (even with ``force``).
        """
        _require_admin(actor)
        now = self._clock()
        with self._store.transaction() as tx:
            ca = ca_record(tx, ca_id)
            generation = next((g for g in ca.generations if g.state == PENDING), None)
            if generation is None:
                raise NotFoundError(
                    "ca.nothing_pending", f"CA {ca.name!r} has no generation waiting to activate"
                )
            if parent_pending(tx, ca, generation):
                raise ConflictError(
                    "ca.parent_pending",
                    f"generation {generation.number} of CA {ca.name!r} is signed by its "
                    "parent's new generation, which is not active yet; activate the parent "
                    "first (this one follows by itself)",
                )
            waiting = pending_links_in(tx, ca.id, generation.number)
            if waiting and not force:
                raise ConflictError(
                    "ca.links_pending",
                    f"generation {generation.number} is not yet verified in: "
                    f"{', '.join(waiting)}; devices it signs would be refused there "
                    "(--force activates anyway)",
                )
            activate_in(tx, actor, ca, generation, now=now, forced=bool(waiting))
            return generation_view(tx, ca, generation)
