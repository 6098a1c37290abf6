"""The application object: settings, store, keystore, clock and event bus, built once.

It is the composition root: the only place that picks the implementations (the SQL
store, the file or PKCS#11 keystore) and hands them to the services. Two application objects in
one process share nothing: each has its own bus, store and consumer workers.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass

from fleetpki.connectors.builtin import BuiltinHubConnector
from fleetpki.connectors.connector import ConnectorError, HubConnector
from fleetpki.errors import ConflictError, ValidationError
from fleetpki.hub.policy import DevicePolicy
from fleetpki.keystore import (
    FileKeyStore,
    KeyPassphrase,
    KeyStore,
    PassphraseOrigin,
    PassphraseReader,
    create_passphrase,
    find_passphrase,
)
from fleetpki.services.audit import AuditService
from fleetpki.services.authority import (
    CAService,
    CAUrlsConfig,
    HierarchySpec,
    TemplateService,
)
from fleetpki.services.ca_lifecycle import CALifecycleService
from fleetpki.services.ca_schedule import CASchedule
from fleetpki.services.ca_views import CAView, TemplateView
from fleetpki.services.certificates import CertificateService
from fleetpki.services.context import Clock, system_clock
from fleetpki.services.crl_publisher import CrlPublisher
from fleetpki.services.delivery import (
    DEFAULT_POLL,
    Backoff,
    ConsumerWorker,
    EventDelivery,
    Handler,
)
from fleetpki.services.domains import DomainService
from fleetpki.services.enrollment import EnrollmentService
from fleetpki.services.events import EventBus
from fleetpki.services.foreign_revocation import RevocationChecker
from fleetpki.services.hub_authentication import DeviceAuthenticator
from fleetpki.services.hub_device_keys import DeviceKeySeal
from fleetpki.services.hub_devices import HubDeviceService
from fleetpki.services.hub_eventhub import EventHubService
from fleetpki.services.hub_link_settings import LinkKind
from fleetpki.services.hub_links import HubLinkService, LinkConnection
from fleetpki.services.hub_management import HubManagementService, hub_identity
from fleetpki.services.hub_messages import HubMessageService
from fleetpki.services.hub_method_relay import MethodRelay
from fleetpki.services.hub_methods import HubMethodService
from fleetpki.services.hub_nodes import HubNodeService
from fleetpki.services.hub_routing import EventRouting
from fleetpki.services.hub_sas import HubSasService
from fleetpki.services.hub_statistics import HubStatisticsService
from fleetpki.services.hub_trust import HubTrustService, TrustCache
from fleetpki.services.hub_twins import HubTwinService
from fleetpki.services.link_workers import LinkWorkers
from fleetpki.services.ocsp_cache import OcspResponseCache
from fleetpki.services.portal_pages import PortalPageService
from fleetpki.services.portal_sessions import PortalSessionService
from fleetpki.services.principals import PrincipalService
from fleetpki.services.provisioning import ProvisioningService
from fleetpki.services.provisioning_enrollments import ProvisioningEnrollmentService
from fleetpki.services.provisioning_requests import id_scope_for
from fleetpki.services.registration_throttle import RegistrationThrottle
from fleetpki.services.renewal import RenewalService
from fleetpki.services.revocation_effects import RevocationEffectService
from fleetpki.services.revocation_status import RevocationStatusService
from fleetpki.services.server_cert import ServerCertificateService
from fleetpki.services.signing_contexts import SigningContexts
from fleetpki.services.token_issuer import LocalTokenIssuer
from fleetpki.settings import AZURE_HTTPS_PORT, Settings
from fleetpki.store.db import Database
from fleetpki.store.notify import NotifyListener
from fleetpki.store.unit_of_work import SqlStore

__all__ = ["FleetPKI", "InitResult", "init_home", "open_keystore"]


def open_keystore(settings: Settings) -> KeyStore:
    """The keystore that ``settings`` name, opened: a wrong configuration fails here.

    ``file``: the encrypted key files of the home, under the key passphrase
    (:func:`fleetpki.keystore.find_passphrase`). ``pkcs11``: the token labelled ``pkcs11_token`` in
    ``pkcs11_module``, logged in with the PIN of ``$FLEETPKI_PKCS11_PIN`` or
    ``pkcs11_pin_file``; python-pkcs11 is imported only then.

    Raises:
        NotFoundError: ``keystore.passphrase_missing``, ``keystore.token_missing``.
        ValidationError: ``keystore.module_missing``, ``keystore.pin_missing``,
            ``keystore.bad_pin``, ``keystore.pin_locked``, ``keystore.token_ambiguous``.
    """
    if settings.keystore != "pkcs11":
        passphrase = find_passphrase(settings.home, settings.key_passphrase_file)
        return FileKeyStore(settings.keys_dir, passphrase.secret)
    try:
        from fleetpki.keystore.pkcs11 import Pkcs11KeyStore
        from fleetpki.keystore.token import read_pin
    except ImportError as exc:
        raise ValidationError(
            "keystore.module_missing",
            f"keystore = pkcs11 needs python-pkcs11 ({exc.name} is not installed)",
        ) from exc
    pin = read_pin(settings.pkcs11_pin_file)
    return Pkcs11KeyStore.open(settings.pkcs11_module, settings.pkcs11_token, pin)


class FleetPKI:
    """One fleetpki instance: what every use case runs against.

    Args:
        settings: the configuration.
        database: the database handle (migrated).
        keystore: custody of CA keys.
        clock: the source of "now" (injected so tests can move time).

    Attributes:
        key_passphrase: the key passphrase, found when first needed (and where it is).
        events: this application's event bus (in-process, after-commit notifications).
        store: the database as the services see it (units of work).
        delivery: the outbox's per-consumer delivery use cases.
        cas, ca_lifecycle (renewal and generations), ca_schedule (its periodic work),
        templates, certificates, renewal, domains, principals, enrollment,
        revocation_status, crls (CRLs, built in the background), audit,
        server_certificates: the CA side's use cases.
        ocsp_cache: the signed OCSP responses that revocation_status serves.
        hub_devices / hub_twins / hub_statistics: the built-in hub's registry.
        hub_trust: the hub's trusted CAs (and this application's anchor cache).
        hub_messages: telemetry and the cloud-to-device queue.
        hub_sas: the service API's shared-access policies and tokens.
        hub_methods: direct methods through this application's live hub, if attached,
            else relayed (``hub_method_relay``) to the hub node holding the device.
        hub_nodes: the hub nodes sharing the database, by their heartbeats.
        hub_authentication: device authentication on connect (the one hub policy).
        hub_management / token_issuer: the built-in hub as an Azure resource.
        hub_eventhub: stored telemetry as the partitions of the Event Hubs-compatible
            endpoint.
        hub_links: the hubs this CA drives through connectors, and one-click trust.
        provisioning_enrollments / provisioning: the provisioning service (Azure DPS): enrollments,
            and the registration of devices into the hubs they allocate.
        link_workers: the links' delivery workers (``fleetpki serve`` starts them).
        portal_sessions: the web portal's sign-in sessions.
        revocation_effects: what revoking a certificate does in each hub.
        portal_pages: what each page of the web portal shows.
    """

    def __init__(
        self,
        settings: Settings,
        database: Database,
        keystore: KeyStore,
        clock: Clock = system_clock,
    ) -> None:
        self.settings = settings
        self.db = database
        self.keystore = keystore
        self.clock = clock
        self.urls = CAUrlsConfig(settings.public_url)
        self.key_passphrase = PassphraseReader(settings.home, settings.key_passphrase_file)
        self.events = EventBus()
        self.store = SqlStore(database, self.events)
        self.delivery = EventDelivery(
            self.store, clock, retention=dt.timedelta(days=settings.outbox_retention_days)
        )
        # -- CA side: the use cases of CAs, certificates, domains and principals --------
        # Services read the time through ``self.now``, so a test that moves
        # ``fleet.clock`` moves every service's clock with it.
        audience, now = settings.certificate_token_audience, self.now
        self.cas = CAService(self.store, keystore, now, self.urls)
        self.ca_lifecycle = CALifecycleService(
            self.store,
            keystore,
            now,
            self.urls,
            rekey_after=dt.timedelta(days=settings.ca_rekey_after_days),
            link_deadline=dt.timedelta(hours=settings.ca_link_deadline_hours),
        )
        self.ca_schedule = CASchedule(
            self.ca_lifecycle, self.store, now, auto_renew_at=settings.ca_auto_renew_at
        )
        self.templates = TemplateService(self.store)
        # The CAs' signing contexts and templates, built once, checked on each use.
        self.signing_contexts = SigningContexts(keystore, self.urls)
        self.certificates = CertificateService(
            self.store, keystore, now, self.urls, self.signing_contexts
        )
        self.renewal = RenewalService(
            self.store,
            now,
            self.signing_contexts,
            audience=audience,
            superseded_grace=dt.timedelta(seconds=settings.renewal_grace_seconds),
        )
        self.domains = DomainService(self.store, now)
        self.principals = PrincipalService(self.store, now)
        self.enrollment = EnrollmentService(self.store, now, audience=audience)
        # Signed OCSP responses, dropped by revocations committed here (this bus) or in
        # other processes (read from the outbox; at once after a PostgreSQL NOTIFY).
        self.ocsp_cache = OcspResponseCache()
        self.events.subscribe(self.ocsp_cache.on_notification)
        self.revocation_status = RevocationStatusService(
            self.store, keystore, now, self.urls, self.ocsp_cache
        )
        self.crls = CrlPublisher(self.store, keystore, now, self.urls)
        self.audit = AuditService(self.store)
        self.server_certificates = ServerCertificateService(
            self.store, keystore, now, self.urls, settings.home
        )
        # The web portal's sign-in sessions.
        self.portal_sessions = PortalSessionService(
            self.store, now, lifetime=dt.timedelta(hours=settings.portal_session_hours)
        )
        # -- end of the CA side -----------------------------------------------------------
        # -- hub side: the built-in hub's control plane ---------------------------------
        # Device symmetric keys are sealed under the home's passphrase, read when first used.
        device_keys = DeviceKeySeal(self.key_passphrase)
        # Twin change and connection state events on the built-in endpoint (issue 15).
        routing = EventRouting(
            hub_identity(settings).hub_name,
            twin_changes=settings.hub_route_twin_change_events,
            connection_states=settings.hub_route_connection_state_events,
        )
        self.hub_devices = HubDeviceService(self.store, now, device_keys, routing)
        self.hub_twins = HubTwinService(self.store, now, routing)
        self.hub_trust = HubTrustService(self.store, keystore, now, TrustCache())
        self.hub_messages = HubMessageService(self.store, now)
        self.hub_sas = HubSasService(
            self.store,
            now,
            secret=self.key_passphrase,
            hostnames={settings.hostname, "localhost", "127.0.0.1"},
            # The service SDK puts HostName in its REST URLs; on 443 it needs no port, and
            # then device and service connection strings name the same host (ref §0).
            default_hostname=(
                settings.hostname
                if settings.api_port == AZURE_HTTPS_PORT
                else f"{settings.hostname}:{settings.api_port}"
            ),
        )
        self.hub_nodes = HubNodeService(self.store, now)
        self.hub_method_relay = MethodRelay(
            self.store, now, self.hub_nodes, self.events, listen=self.follow_other_processes
        )
        self.hub_methods = HubMethodService(self.hub_devices, self.hub_method_relay)
        self.hub_statistics = HubStatisticsService(self.store, self.hub_methods, self.hub_nodes)
        self.hub_authentication = DeviceAuthenticator(
            self.store,
            policy=DevicePolicy(revocation_soft_fail=settings.hub_revocation_soft_fail),
            revocation=RevocationChecker(),
            trust=self.hub_trust,
            seal=device_keys,
        )
        # -- end of the hub side ----------------------------------------------------------
        # Hub side, Azure's management plane (issue 9): the hub as an ARM resource, and
        # fleetpki's own client-credentials token endpoint (off unless enabled).
        self.hub_management = HubManagementService(self.store, now, hub_identity(settings))
        # The Event Hubs-compatible endpoint over AMQP reads stored telemetry (issue 15).
        self.hub_eventhub = EventHubService(
            self.store, now, name=self.hub_management.identity.hub_name
        )
        self.token_issuer = LocalTokenIssuer(
            self.store,
            now,
            home=settings.home,
            public_url=settings.public_url,
            tenant_id=self.hub_management.identity.tenant_id,
            enabled=settings.token_endpoint_enabled,
            passphrase=self.key_passphrase,
        )
        # Hub links (issue 9): the hubs this CA drives through connectors; the built-in
        # hub of this process is reached through its own services.
        identity = self.hub_management.identity
        self._builtin_connector = BuiltinHubConnector(
            self.hub_trust,
            self.hub_devices,
            description=f"the built-in hub {identity.hub_name} on {identity.host_name}",
            twins=self.hub_twins,
        )
        self.hub_links = HubLinkService(
            self.store,
            keystore,
            now,
            secret=self.key_passphrase,
            connectors=self._link_connector,
        )
        # What a revocation does (or did) in each hub, for the portal's revoke page.
        self.revocation_effects = RevocationEffectService(self.store, now)
        # What each page of the web portal shows, one method a page (reads only).
        self.portal_pages = PortalPageService(
            cas=self.cas,
            lifecycle=self.ca_lifecycle,
            certificates=self.certificates,
            enrollment=self.enrollment,
            effects=self.revocation_effects,
            links=self.hub_links,
            management=self.hub_management,
            trust=self.hub_trust,
            statistics=self.hub_statistics,
            devices=self.hub_devices,
            twins=self.hub_twins,
            messages=self.hub_messages,
            urls=self.urls,
        )
        # Zero-touch provisioning (issue 13): Azure DPS's enrollments and registration,
        # devices sent to the built-in hub or to linked hubs through their connectors.
        self.provisioning_enrollments = ProvisioningEnrollmentService(
            self.store, now, builtin_host=settings.hostname
        )
        self.provisioning = ProvisioningService(
            self.store,
            now,
            authenticator=self.hub_authentication,
            links=self.hub_links,
            id_scope=settings.provisioning_id_scope or id_scope_for(str(settings.home)),
            builtin_host=settings.hostname,
            mqtt_port=settings.mqtt_port,
            api_port=settings.api_port,
            throttle=RegistrationThrottle(settings.provisioning_register_interval_seconds),
        )
        # One delivery worker per link, started by ``fleetpki serve`` (start_link_workers).
        self.link_workers = LinkWorkers(
            self.hub_links,
            self.store,
            now,
            self.events,
            keystore,
            start_consumer=self.start_consumer,
            stop_consumer=self.stop_consumer,
            housekeeping=[
                self.ca_lifecycle.retire_drained,
                self.ca_schedule.renew_due,
                self.ca_schedule.report_overdue,
                self.renewal.revoke_superseded,
                self.hub_nodes.forget_departed,
                self.hub_method_relay.sweep,
                self.delivery.prune_settled,
            ],
        )
        self._lock = threading.Lock()
        self._workers: list[ConsumerWorker] = []
        self._listener: NotifyListener | None = None
        self._following = False

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        clock: Clock = system_clock,
        migrate: bool = True,
        database_wait: float = 0.0,
        on_database_wait: Callable[[str], None] | None = None,
    ) -> FleetPKI:
        """Open an initialised home: its keystore, then its database (migrated to head).

        The keystore is opened first, so that a missing token or a wrong PIN stops
        ``fleetpki serve`` (and every local command) before anything else is done.

        Args:
            settings: the home's settings.
            clock: the source of "now".
            migrate: bring the schema to head (one process of a deployment does).
            database_wait: seconds to keep trying while the database does not answer
                (``fleetpki serve``: ``database_start_wait_seconds``); 0: one try.
            on_database_wait: called with a one-line message before each pause.

        Raises:
            NotFoundError: ``keystore.passphrase_missing``, ``keystore.token_missing``.
            ValidationError: ``keystore.bad_pin`` and the other errors of
                :func:`open_keystore`; ``database.unreachable``, ``database.refused``,
                ``database.bad_url``.
        """
        keystore = open_keystore(settings)
        try:
            database = Database(
                settings.database_url, sqlite_busy_timeout=settings.sqlite_busy_timeout_seconds
            )
            try:
                if migrate or database_wait > 0:
                    database.wait_until_answers(database_wait, on_retry=on_database_wait)
                if migrate:
                    database.migrate()
            except BaseException:
                database.dispose()
                raise
        except BaseException:
            keystore.close()
            raise
        return cls(settings, database, keystore, clock)

    def now(self) -> dt.datetime:
        """The current time from the injected clock."""
        return self.clock()

    def _link_connector(self, link: LinkConnection) -> HubConnector:
        """The connector of a link: this process's built-in hub, or the azure connector.

        The azure connector (and the Azure SDKs under it) is imported when an azure
        link is first used, so a CA that links no Azure hub never loads them.

        Raises:
            ConnectorError: ``link.connector_unavailable`` without the Azure SDKs.
        """
        if link.kind is LinkKind.BUILTIN:
            return self._builtin_connector
        try:
            from fleetpki.connectors.azure import connector_for_link
        except ImportError as exc:
            raise ConnectorError(
                "link.connector_unavailable",
                f"link {link.name!r} is an azure link, but the Azure SDKs are not installed "
                f"({exc.name}); install azure-mgmt-iothub and azure-identity",
            ) from exc
        return connector_for_link(link)

    def start_consumer(
        self,
        name: str,
        event_types: Collection[str],
        handler: Handler,
        *,
        poll: float = DEFAULT_POLL,
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
    ) -> ConsumerWorker:
        """Start delivering ``event_types`` to ``handler`` as consumer ``name``.

        The consumer is registered in the database, so events committed from now on by
        any process get a delivery for it; on PostgreSQL this application LISTENs for
        commits elsewhere. Stop the worker with :meth:`stop_consumer` (or :meth:`close`).
        """
        worker = ConsumerWorker(
            self.delivery,
            self.events,
            name,
            event_types,
            handler,
            poll=poll,
            backoff=backoff,
            max_attempts=max_attempts,
        )
        with self._lock:
            self._listen()
            self._workers.append(worker)
        worker.start()
        return worker

    def follow_other_processes(self) -> None:
        """Hear at once what other processes commit, not only at the next poll.

        On PostgreSQL this LISTENs for outbox commits (the connection that consumer
        workers share), so that, say, the OCSP cache drops a certificate revoked by
        another API worker within milliseconds; on SQLite, which has no NOTIFY, the
        readers' short poll does it, and that a relayed direct method's answer wakes
        its caller. ``fleetpki serve`` calls it, as does the method relay before it
        waits (idempotent); :meth:`close` ends it.
        """
        with self._lock:
            self._following = True
            self._listen()

    def _listen(self) -> None:
        # Called with self._lock held.
        if self._listener is None and self.db.dialect == "postgresql":
            self._listener = NotifyListener(self.db, self.events)
            self._listener.start()

    def stop_consumer(self, worker: ConsumerWorker) -> None:
        """Stop a worker started by :meth:`start_consumer` (its deliveries stay pending)."""
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
            listener = self._listener if not self._workers and not self._following else None
            if listener is not None:
                self._listener = None
        worker.stop()
        if listener is not None:
            listener.stop()

    def close(self) -> None:
        """Stop the link workers, consumer workers and the LISTEN connection; release the
        database and keystore."""
        self.link_workers.stop()
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            self.stop_consumer(worker)
        self.crls.close()
        with self._lock:
            listener, self._listener, self._following = self._listener, None, False
        if listener is not None:
            listener.stop()
        self.db.dispose()
        self.keystore.close()


@dataclass(frozen=True, slots=True)
class InitResult:
    """What ``init`` created; ``passphrase`` says where the key passphrase is."""

    app: FleetPKI
    root: CAView
    issuing: CAView
    template: TemplateView
    passphrase: KeyPassphrase


def init_home(
    settings: Settings, spec: HierarchySpec | None = None, *, clock: Clock = system_clock
) -> InitResult:
    """Create a new home: configuration, database, the local admin and a CA hierarchy.

    The key passphrase is the one the process was given (``$FLEETPKI_KEY_PASSPHRASE``,
    a systemd credential), else a new one in ``settings.key_passphrase_file`` or in a
    new file outside the home, whose path the saved configuration then names
    (:func:`fleetpki.keystore.create_passphrase`).

    Raises:
        ConflictError: ``home.exists`` when the home already holds a configuration
        (nothing is overwritten).
    """
    home = settings.home
    if settings.config_path.exists():
        raise ConflictError(
            "home.exists",
            f"{home} already holds a fleetpki configuration; refusing to overwrite it",
        )
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The passphrase also protects the hub's shared-access keys and the links' secrets,
    # so a home has one whichever keystore holds the CA keys.
    passphrase = create_passphrase(home, settings.key_passphrase_file)
    if passphrase.source.origin is PassphraseOrigin.FILE:
        settings = settings.with_changes(key_passphrase_file=str(passphrase.source.path))
    keystore = open_keystore(settings)
    try:
        database = Database(
            settings.database_url, sqlite_busy_timeout=settings.sqlite_busy_timeout_seconds
        )
        database.migrate()
    except BaseException:
        keystore.close()
        raise
    app = FleetPKI(settings, database, keystore, clock)
    made = app.cas.bootstrap(spec or HierarchySpec())
    views = made.root, made.issuing, made.template
    # The configuration is written last: a home without it is not a home, so a
    # failed init can simply be run again.
    settings.save()
    return InitResult(app, *views, passphrase)
