"""Hub links: the hubs this CA drives through connectors, and one-click trust of a CA in one.

A link names a hub (the built-in hub of this process, or an Azure IoT Hub reached
through Azure's own APIs), the CAs it trusts, and two options: disable a device in the
hub when its certificate is revoked (on by default) and register devices in the hub
when their domain is registered (off by default). Each link is an event consumer of
its own, ``link:<name>`` (:attr:`HubLinkView.consumer`), through which the changes it
must see will be delivered.

One-click trust (:meth:`HubLinkService.trust`) runs Azure's proof-of-possession flow
against the linked hub: upload the CA certificate, fetch a verification code, sign the
verification certificate with the CA's key through the keystore's signer, verify. The
hub is reached outside any transaction: the link and the CA are read in one unit of
work, the connector is called, and the result is recorded in another.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.connectors.connector import ConnectorError, HubConnector, TrustedCA
from fleetpki.errors import ConflictError, NotFoundError, PermissionDenied, ValidationError
from fleetpki.keystore import KeyStore
from fleetpki.services.audit import write_audit
from fleetpki.services.ca_generations import ACTIVE, PENDING, RETIRING, activate_if_ready_in
from fleetpki.services.context import Actor, Clock
from fleetpki.services.hub_link_settings import (
    DEFAULT_MANAGEMENT_URL,
    AzureTarget,
    CredentialKind,
    LinkKind,
    check_azure_target,
    check_link_name,
    open_secret,
    seal_secret,
)
from fleetpki.services.hub_link_views import (
    CONSUMER_PREFIX,
    HubLinkView,
    LinkCAView,
    LinkCommand,
    LinkConnection,
    LinkRetryView,
    LinkRuntime,
    LinkStatusView,
    LinkTrustView,
    certificate_name_for,
    link_command,
)
from fleetpki.services.hub_trust import proof_signer
from fleetpki.services.link_delivery import LINK_EVENT_TYPES, LinkTarget, record_generation_in
from fleetpki.services.notifications import EventsWritten, HubLinksChanged
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.store.hub_models import HubLink, HubLinkCA

__all__ = [
    "CONSUMER_PREFIX",
    "ConnectorFactory",
    "HubLinkService",
    "HubLinkView",
    "HubLinksChanged",
    "LinkCAView",
    "LinkCommand",
    "LinkConnection",
    "LinkRetryView",
    "LinkRuntime",
    "LinkStatusView",
    "LinkTrustView",
    "certificate_name_for",
    "link_command",
]

#: Builds the connector that drives a link's hub (chosen by the application object).
ConnectorFactory = Callable[[LinkConnection], HubConnector]


def _require_admin(actor: Actor) -> None:
    if not actor.is_admin:
        raise PermissionDenied("auth.admin_required", "only admins manage hub links")


def _azure_target(record: HubLink) -> AzureTarget | None:
    if record.kind != LinkKind.AZURE.value:
        return None
    # An azure link is stored with its whole target (add checks it).
    return AzureTarget(
        subscription_id=record.subscription_id or "",
        resource_group=record.resource_group or "",
        hub_name=record.hub_name or "",
        management_url=record.management_url or DEFAULT_MANAGEMENT_URL,
        credential=CredentialKind(record.credential or CredentialKind.DEFAULT.value),
        tenant_id=record.tenant_id,
        client_id=record.client_id,
        authority_host=record.authority_host,
        certificate_path=record.certificate_path,
        service_url=record.service_url,
        ca_bundle=record.ca_bundle,
    )


def _link_view(tx: UnitOfWork, record: HubLink) -> HubLinkView:
    cas = []
    for entry in record.cas:
        ca = tx.cas.get(entry.ca_id)
        # What the hub holds of the CA's active generation, once a renewal reached it.
        held = next(
            (
                g
                for g in record.generations
                if ca is not None and g.ca_id == ca.id and g.generation == ca.generation
            ),
            None,
        )
        cas.append(
            LinkCAView(
                ca_id=entry.ca_id,
                ca_name=ca.name if ca is not None else "",
                added_at=entry.added_at,
                certificate_name=held.certificate_name if held else entry.certificate_name,
                thumbprint=held.thumbprint if held else entry.thumbprint,
                verified_at=held.verified_at if held else entry.verified_at,
                last_error=entry.last_error,
            )
        )
    return HubLinkView(
        name=record.name,
        kind=LinkKind(record.kind),
        consumer=record.consumer,
        disable_on_revoke=record.disable_on_revoke,
        register_devices=record.register_devices,
        azure=_azure_target(record),
        has_secret=record.secret is not None,
        cas=tuple(cas),
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def _require_link(tx: UnitOfWork, name: str) -> HubLink:
    record = tx.hub_links.get(name)
    if record is None:
        raise NotFoundError("link.not_found", f"no hub link named {name!r}")
    return record


def _check_command(command: LinkCommand) -> tuple[AzureTarget | None, list[str]]:
    """The command's target and CA ids, checked before any unit of work opens."""
    check_link_name(command.name)
    target = None
    if command.kind is LinkKind.AZURE:
        if command.azure is None:
            raise ValidationError(
                "link.target_incomplete",
                "an azure link needs a subscription, a resource group and a hub name",
            )
        target = check_azure_target(command.azure, command.secret)
    elif command.azure is not None or command.secret is not None:
        raise ValidationError(
            "link.option_not_used",
            "a builtin link drives this process's own hub and takes no Azure target or "
            "credential; link a fleetpki hub in another process as an azure link",
        )
    ca_ids: list[str] = []
    for ca_id in command.ca_ids:
        if ca_id not in ca_ids:
            ca_ids.append(ca_id)
    return target, ca_ids


class HubLinkService:
    """Hub links: add, list, show, remove; one-click trust; the connector for a link.

    Args:
        store: the database.
        keystore: custody of the CAs' keys (signs the verification certificates).
        clock: the source of "now".
        secret: returns the home's key passphrase (read when first needed), from
            which the key sealing the links' secrets is derived.
        connectors: builds the connector of a link (the application object picks the
            implementation: this process's built-in hub, or the azure connector).
    """

    def __init__(
        self,
        store: Store,
        keystore: KeyStore,
        clock: Clock,
        *,
        secret: Callable[[], bytes],
        connectors: ConnectorFactory,
    ) -> None:
        self._store = store
        self._keystore = keystore
        self._clock = clock
        self._passphrase = secret
        self._connectors = connectors

    # -- the resource -------------------------------------------------------------------

    def add(self, actor: Actor, command: LinkCommand) -> HubLinkView:
        """Add a link (admins only); nothing is written when anything is refused.

        Raises:
            PermissionDenied: ``auth.admin_required``.
            ValidationError: ``link.bad_name``, the checks of the Azure target
                (``link.target_incomplete``, ``link.bad_subscription``, ``link.bad_resource_group``,
                ``link.bad_hub_name``, ``link.bad_url``, ``link.credential_incomplete``,
                ``link.option_not_used``, ``link.bad_connection_string``,
                ``link.certificate_missing``).
            NotFoundError: ``ca.not_found`` for a CA id that names no CA.
            ConflictError: ``link.exists``.
        """
        _require_admin(actor)
        target, ca_ids = _check_command(command)
        sealed = (
            seal_secret(self._passphrase(), command.secret) if command.secret is not None else None
        )
        now = self._clock()
        with self._store.transaction() as tx:
            if tx.hub_links.get(command.name) is not None:
                raise ConflictError("link.exists", f"a hub link named {command.name!r} exists")
            for ca_id in ca_ids:
                if tx.cas.get(ca_id) is None:
                    raise NotFoundError("ca.not_found", f"no CA {ca_id}")
            record = HubLink(
                name=command.name,
                kind=command.kind.value,
                consumer=CONSUMER_PREFIX + command.name,
                disable_on_revoke=command.disable_on_revoke,
                register_devices=command.register_devices,
                subscription_id=target.subscription_id if target else None,
                resource_group=target.resource_group if target else None,
                hub_name=target.hub_name if target else None,
                management_url=target.management_url if target else None,
                credential=target.credential.value if target else None,
                tenant_id=target.tenant_id if target else None,
                client_id=target.client_id if target else None,
                authority_host=target.authority_host if target else None,
                certificate_path=target.certificate_path if target else None,
                service_url=target.service_url if target else None,
                ca_bundle=target.ca_bundle if target else None,
                secret=sealed,
                created_at=now,
                updated_at=now,
                cas=[HubLinkCA(ca_id=ca_id, added_at=now) for ca_id in ca_ids],
            )
            tx.hub_links.add(record)
            # Subscribed with the link, so events committed from now on are kept for it
            # even before a worker delivers them (``fleetpki serve`` need not be running).
            tx.events.register_consumer(record.consumer, LINK_EVENT_TYPES, at=now)
            tx.publish(HubLinksChanged())
            write_audit(
                tx,
                actor,
                "hub.link.add",
                "hub_link",
                command.name,
                at=now,
                details={"kind": command.kind.value, "cas": ca_ids},
            )
            return _link_view(tx, record)

    def list(self, actor: Actor) -> list[HubLinkView]:
        """Every link, by name (admins only).

        Raises:
            PermissionDenied: ``auth.admin_required``.
        """
        _require_admin(actor)
        with self._store.transaction() as tx:
            return [_link_view(tx, r) for r in tx.hub_links.list()]

    def get(self, actor: Actor, name: str) -> HubLinkView:
        """One link (admins only).

        Raises:
            PermissionDenied: ``auth.admin_required``.
            NotFoundError: ``link.not_found``.
        """
        _require_admin(actor)
        with self._store.transaction() as tx:
            return _link_view(tx, _require_link(tx, name))

    def set_options(
        self,
        actor: Actor,
        name: str,
        *,
        disable_on_revoke: bool | None = None,
        register_devices: bool | None = None,
    ) -> HubLinkView:
        """Change a link's options (admins only); ``None`` keeps one as it is.

        The link's worker is rebuilt with them on commit (:class:`HubLinksChanged`), so
        a revocation delivered from then on follows the new "disable on revoke".

        Raises:
            PermissionDenied: ``auth.admin_required``.
            NotFoundError: ``link.not_found``.
        """
        _require_admin(actor)
        now = self._clock()
        with self._store.transaction() as tx:
            record = _require_link(tx, name)
            changes: dict[str, object] = {}
            if disable_on_revoke is not None and disable_on_revoke != record.disable_on_revoke:
                record.disable_on_revoke = disable_on_revoke
                changes["disable_on_revoke"] = disable_on_revoke
            if register_devices is not None and register_devices != record.register_devices:
                record.register_devices = register_devices
                changes["register_devices"] = register_devices
            if changes:
                record.updated_at = now
                tx.publish(HubLinksChanged())
                write_audit(tx, actor, "hub.link.update", "hub_link", name, at=now, details=changes)
            return _link_view(tx, record)

    def remove(self, actor: Actor, name: str) -> None:
        """Remove a link; the hub keeps what it was given (admins only).

        Raises:
            PermissionDenied: ``auth.admin_required``.
            NotFoundError: ``link.not_found``.
        """
        _require_admin(actor)
        with self._store.transaction() as tx:
            record = _require_link(tx, name)
            tx.events.unregister_consumer(record.consumer)
            tx.hub_links.delete(record)
            tx.publish(HubLinksChanged())
            write_audit(tx, actor, "hub.link.remove", "hub_link", name, at=self._clock())

    # -- delivery -----------------------------------------------------------------------

    def status(
        self, actor: Actor, name: str | None = None, *, limit: int = 20
    ) -> builtins.list[LinkStatusView]:
        """The delivery of one link, or of every link: its backlog and failed rows.

        Raises:
            PermissionDenied: ``auth.admin_required``.
            NotFoundError: ``link.not_found``.
        """
        _require_admin(actor)
        with self._store.transaction() as tx:
            records = [_require_link(tx, name)] if name is not None else tx.hub_links.list()
            return [
                LinkStatusView(
                    link=r.name,
                    kind=LinkKind(r.kind),
                    backlog=tx.events.backlog(r.consumer),
                    failed=tuple(tx.events.failed(r.consumer, limit=limit)),
                )
                for r in records
            ]

    def retry(self, actor: Actor, name: str | None = None) -> builtins.list[LinkRetryView]:
        """Requeue the failed deliveries of one link, or of every link (due now, their
        attempts counted from zero); the links' workers are woken on commit.

        Raises:
            PermissionDenied: ``auth.admin_required``.
            NotFoundError: ``link.not_found``.
        """
        _require_admin(actor)
        now = self._clock()
        with self._store.transaction() as tx:
            records = [_require_link(tx, name)] if name is not None else tx.hub_links.list()
            views = [
                LinkRetryView(link=r.name, requeued=tx.events.requeue_failed(r.consumer, at=now))
                for r in records
            ]
            requeued = sum(v.requeued for v in views)
            if requeued:
                tx.publish(EventsWritten(frozenset(LINK_EVENT_TYPES)))
                write_audit(
                    tx,
                    actor,
                    "hub.link.retry",
                    "hub_link",
                    name or "*",
                    at=now,
                    details={"requeued": {v.link: v.requeued for v in views}},
                )
            return views

    def runtimes(self) -> builtins.list[LinkRuntime]:
        """What each link's delivery worker runs from (for the server, not for people:
        the connections hold the opened secrets).

        Raises:
            ValidationError: ``link.secret_undecryptable``.
        """
        with self._store.transaction() as tx:
            return [
                LinkRuntime(
                    target=LinkTarget(
                        name=r.name,
                        ca_ids=frozenset(entry.ca_id for entry in r.cas),
                        disable_on_revoke=r.disable_on_revoke,
                        register_devices=r.register_devices,
                    ),
                    connection=self._connection(r),
                )
                for r in tx.hub_links.list()
            ]

    # -- connectors ---------------------------------------------------------------------

    def connector_for(self, link: LinkConnection) -> HubConnector:
        """The connector that drives ``link``'s hub.

        Raises:
            ConnectorError: ``link.connector_unavailable`` when this installation has no
                connector for the link's kind.
        """
        return self._connectors(link)

    def _connection(self, record: HubLink) -> LinkConnection:
        secret = open_secret(self._passphrase(), record.secret) if record.secret else None
        return LinkConnection(
            name=record.name,
            kind=LinkKind(record.kind),
            azure=_azure_target(record),
            secret=secret,
        )

    def link_connector(self, name: str) -> HubConnector:
        """The connector of the link ``name``, for the server's own use cases (the
        provisioning service registering a device in a linked hub); the caller closes it.

        Raises:
            NotFoundError: ``link.not_found``.
            ValidationError: ``link.secret_undecryptable``.
            ConnectorError: ``link.connector_unavailable``.
        """
        with self._store.transaction() as tx:
            connection = self._connection(_require_link(tx, name))
        return self.connector_for(connection)

    def connector(self, actor: Actor, name: str) -> HubConnector:
        """The connector of the link ``name`` (admins only).

        Raises:
            PermissionDenied: ``auth.admin_required``.
            NotFoundError: ``link.not_found``.
            ValidationError: ``link.secret_undecryptable``.
            ConnectorError: ``link.connector_unavailable``.
        """
        _require_admin(actor)
        with self._store.transaction() as tx:
            connection = self._connection(_require_link(tx, name))
        return self.connector_for(connection)

    # -- one-click trust ----------------------------------------------------------------

    def trust(self, actor: Actor, link: str, ca_id: str) -> LinkTrustView:
        """Trust a CA in the link's hub with proof of possession, in one call (admins only).

        Uploads the CA certificate, fetches a verification code, signs the verification
        certificate (:func:`fleetpki.pki.proof.verification_certificate_builder`) with
        the CA's key through the keystore's signer, and verifies it. The CA joins the
        link's CAs. Repeating it is harmless: a hub that holds the certificate verified
        keeps it. The hub is called between two units of work, never inside one.

        Raises:
            PermissionDenied: ``auth.admin_required``.
            NotFoundError: ``link.not_found``, ``ca.not_found``.
            ConnectorError: what the hub refused (its ``transient`` says whether a
                retry may succeed); the error is recorded on the link's CA entry.
        """
        _require_admin(actor)
        with self._store.transaction() as tx:
            record = _require_link(tx, link)
            ca = tx.cas.get(ca_id)
            if ca is None:
                raise NotFoundError("ca.not_found", f"no CA {ca_id}")
            connection = self._connection(record)
            # Every generation a device may hold a certificate of, the active one first.
            live = sorted(
                (g for g in ca.generations if g.state in (PENDING, ACTIVE, RETIRING)),
                key=lambda g: (g.number != ca.generation, g.number),
            )
            uploads = [
                (
                    g.number,
                    certificate_name_for(ca.name, ca.id, g.number),
                    x509.load_der_x509_certificate(g.certificate_der),
                    g.key_ref,
                )
                for g in live
            ]
        connector = self.connector_for(connection)
        results: list[tuple[int, TrustedCA]] = []
        try:
            for number, name, certificate, key_ref in uploads:
                trusted = connector.trust_ca(
                    name,
                    certificate.public_bytes(serialization.Encoding.PEM),
                    proof_signer(self._keystore, key_ref, certificate, self._clock),
                )
                results.append((number, trusted))
        except ConnectorError as exc:
            error = f"{exc.message} ({exc.code})"
            self._record_trust(actor, link, ca_id, results, error=error)
            raise
        finally:
            connector.close()
        self._record_trust(actor, link, ca_id, results, error=None)
        _, active = results[0]
        return LinkTrustView(
            link=link,
            ca_id=ca_id,
            certificate_name=active.name,
            thumbprint=active.thumbprint,
            verified=active.verified,
        )

    def _record_trust(
        self,
        actor: Actor,
        link: str,
        ca_id: str,
        results: builtins.list[tuple[int, TrustedCA]],
        *,
        error: str | None,
    ) -> None:
        now = self._clock()
        with self._store.transaction() as tx:
            record = tx.hub_links.get(link)
            if record is None:
                # Removed while the hub was being called: the hub keeps the CA, and
                # there is no link left to record it on.
                return
            entry = next((e for e in record.cas if e.ca_id == ca_id), None)
            if entry is None:
                entry = HubLinkCA(ca_id=ca_id, added_at=now)
                record.cas.append(entry)
                tx.publish(HubLinksChanged())
            ca = tx.cas.get(ca_id)
            for number, trusted in results:
                record_generation_in(record, ca_id, number, trusted, None, now=now)
                if ca is not None and number == ca.generation:
                    entry.certificate_name = trusted.name
                    entry.thumbprint = trusted.thumbprint
                    entry.verified_at = now if trusted.verified else entry.verified_at
            entry.last_error = error
            record.updated_at = now
            for number, trusted in results:
                if trusted.verified:
                    activate_if_ready_in(tx, actor, ca_id, number, now=now)
            first = results[0][1] if results and error is None else None
            details: dict[str, object] = {"ca_id": ca_id}
            if first is not None:
                details |= {"certificate": first.name, "thumbprint": first.thumbprint}
                details["generations"] = [number for number, _ in results]
            else:
                details["error"] = error
            write_audit(
                tx,
                actor,
                "hub.link.trust" if first is not None else "hub.link.trust_failed",
                "hub_link",
                link,
                at=now,
                details=details,
            )
