"""What each page of the web portal shows: one method a page, over the other services.

The portal is an adapter: a route parses the request, calls one method here (or one
use case elsewhere, for a form), and renders what it gets. A page shows several things
(the dashboard: CAs, certificates expiring, hub links, devices online, activity), so a
method here gathers them from the services that own them, with the same authorization
they apply (the caller's domains only, hub links for admins only). Every method only
reads, each part in the short unit of work of the service that owns it: a page is a
snapshot of a few reads, and nothing here writes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

from fleetpki.errors import PermissionDenied
from fleetpki.services.authority import CAService, CAUrlsConfig
from fleetpki.services.ca_generations import GenerationView
from fleetpki.services.ca_lifecycle import CALifecycleService
from fleetpki.services.ca_views import (
    AuditEntryView,
    CAView,
    CertificateView,
    DomainInformationView,
)
from fleetpki.services.certificates import CertificateQuery, CertificateService, DailyActivity
from fleetpki.services.context import Actor
from fleetpki.services.enrollment import EnrollmentService
from fleetpki.services.hub_devices import HubDeviceService, HubDeviceView
from fleetpki.services.hub_link_views import HubLinkView, LinkStatusView
from fleetpki.services.hub_links import HubLinkService
from fleetpki.services.hub_management import HubIdentity, HubManagementService
from fleetpki.services.hub_messages import C2DMessageView, HubMessageService, HubMessageView
from fleetpki.services.hub_statistics import HubStatisticsService, RegistryStatistics
from fleetpki.services.hub_trust import HubCAView, HubTrustService
from fleetpki.services.hub_twins import HubTwinService, TwinView
from fleetpki.services.revocation_effects import RevocationEffectService, RevocationEffectView

__all__ = [
    "ACTIVITY_DAYS",
    "EXPIRY_WINDOW_DAYS",
    "CAPage",
    "CertificatePage",
    "CertificateSearchPage",
    "DashboardPage",
    "DevicePage",
    "DevicesPage",
    "DomainPage",
    "DomainsPage",
    "HubsOverview",
    "HubsPage",
    "PortalPageService",
]

#: Certificates ending within this many days are on the dashboard.
EXPIRY_WINDOW_DAYS = 30
#: Days in the dashboard's chart of issuances and revocations.
ACTIVITY_DAYS = 30


@dataclass(frozen=True, slots=True)
class HubsOverview:
    """Hub links with their delivery, and the built-in hub's devices (admins')."""

    links: list[HubLinkView]
    statuses: dict[str, LinkStatusView]
    online: int
    registry: RegistryStatistics


@dataclass(frozen=True, slots=True)
class DashboardPage:
    """The dashboard: ``hubs`` is ``None`` for a caller who is not an admin."""

    cas: list[CAView]
    expiring: list[CertificateView]
    activity: list[DailyActivity]
    window_days: int
    hubs: HubsOverview | None


@dataclass(frozen=True, slots=True)
class CAPage:
    """One CA: its parent, its generations (newest first) and their published paths."""

    ca: CAView
    parent: CAView | None
    generations: list[GenerationView]
    crl_urls: dict[int, str]
    certificate_urls: dict[int, str]

    @property
    def pending(self) -> bool:
        """Whether a generation waits to become active."""
        return any(g.state == "pending" for g in self.generations)


@dataclass(frozen=True, slots=True)
class DomainsPage:
    """The caller's domains (every one for admins) and the CAs a new one may use."""

    domains: list[DomainInformationView]
    issuers: list[CAView]


@dataclass(frozen=True, slots=True)
class DomainPage:
    """One domain and a page of its certificates."""

    info: DomainInformationView
    certificates: list[CertificateView]


@dataclass(frozen=True, slots=True)
class CertificateSearchPage:
    """Search results, and the CAs' names to show with them."""

    certificates: list[CertificateView]
    ca_names: dict[str, str]


@dataclass(frozen=True, slots=True)
class CertificatePage:
    """One certificate: its CA, what revoking it does (or did), its recent audit."""

    certificate: CertificateView
    ca: CAView
    effect: RevocationEffectView
    audit: list[AuditEntryView]


@dataclass(frozen=True, slots=True)
class HubsPage:
    """The built-in hub, its trusted CAs, every link with its delivery, the CAs to link."""

    identity: HubIdentity
    hub_cas: list[HubCAView]
    overview: HubsOverview
    cas: list[CAView]


@dataclass(frozen=True, slots=True)
class DevicesPage:
    """A page of the built-in hub's devices and its counts."""

    devices: list[HubDeviceView]
    registry: RegistryStatistics
    online: int


@dataclass(frozen=True, slots=True)
class DevicePage:
    """One device: twin (with its registry entry), recent telemetry, queued C2D, and
    whether it is connected to this process's hub (``None`` when none runs here)."""

    twin: TwinView
    telemetry: list[HubMessageView]
    last_message_id: int
    pending: list[C2DMessageView]
    connected: bool | None

    @property
    def device(self) -> HubDeviceView:
        """The registry entry."""
        return self.twin.device


def _require_admin(actor: Actor) -> None:
    if not actor.is_admin:
        raise PermissionDenied("auth.admin_required", "only admins may do this")


class PortalPageService:
    """The portal's pages, one method each (every method reads only).

    Args:
        cas, lifecycle, certificates, enrollment, effects: the CA side's services.
        links, management, trust, statistics, devices, twins, messages: the hub side's.
        urls: where CRLs and CA certificates are published.
    """

    def __init__(
        self,
        *,
        cas: CAService,
        lifecycle: CALifecycleService,
        certificates: CertificateService,
        enrollment: EnrollmentService,
        effects: RevocationEffectService,
        links: HubLinkService,
        management: HubManagementService,
        trust: HubTrustService,
        statistics: HubStatisticsService,
        devices: HubDeviceService,
        twins: HubTwinService,
        messages: HubMessageService,
        urls: CAUrlsConfig,
    ) -> None:
        self._cas = cas
        self._lifecycle = lifecycle
        self._certificates = certificates
        self._enrollment = enrollment
        self._effects = effects
        self._links = links
        self._management = management
        self._trust = trust
        self._statistics = statistics
        self._devices = devices
        self._twins = twins
        self._messages = messages
        self._urls = urls

    def _hubs_overview(self, actor: Actor, *, failed_rows: int) -> HubsOverview:
        return HubsOverview(
            links=self._links.list(actor),
            statuses={s.link: s for s in self._links.status(actor, limit=failed_rows)},
            online=self._statistics.connected_devices(),
            registry=self._statistics.devices(),
        )

    def dashboard(self, actor: Actor, *, limit: int) -> DashboardPage:
        """CAs, at most ``limit`` valid certificates expiring within
        :data:`EXPIRY_WINDOW_DAYS` (that the actor can see), the activity chart's days,
        and for admins the hub links and devices."""
        expiring = self._certificates.search(
            actor,
            CertificateQuery(
                status="valid",
                expiring_within=dt.timedelta(days=EXPIRY_WINDOW_DAYS),
                limit=limit,
            ),
        )
        return DashboardPage(
            cas=self._cas.list(),
            expiring=expiring,
            activity=self._certificates.daily_activity(actor, days=ACTIVITY_DAYS),
            window_days=EXPIRY_WINDOW_DAYS,
            hubs=self._hubs_overview(actor, failed_rows=1) if actor.is_admin else None,
        )

    def cas(self) -> list[CAView]:
        """Every CA (the page draws the tree)."""
        return self._cas.list()

    def ca(self, ca_id: str) -> CAPage:
        """One CA with its generations.

        Raises:
            NotFoundError: ``ca.not_found``.
        """
        ca = self._cas.get(ca_id)
        generations = self._lifecycle.generations(ca.id)
        return CAPage(
            ca=ca,
            parent=self._cas.get(ca.parent_id) if ca.parent_id else None,
            generations=list(reversed(generations)),
            crl_urls={g.number: self._urls.crl_url(ca.id, g.number) for g in generations},
            certificate_urls={
                g.number: self._urls.ca_issuers_url(ca.id, g.number) for g in generations
            },
        )

    def ca_chain(self, ca_id: str) -> tuple[CAView, list[x509.Certificate]]:
        """The CA and its certificate with its parents up to the root.

        Raises:
            NotFoundError: ``ca.not_found``.
        """
        return self._cas.get(ca_id), self._cas.chain(ca_id)

    def domains(self, actor: Actor) -> DomainsPage:
        """The actor's domains and the active issuing CAs."""
        return DomainsPage(
            domains=self._enrollment.my_domains(actor),
            issuers=[c for c in self._cas.list() if c.tier == "issuing" and c.status == "active"],
        )

    def domain(self, actor: Actor, domain_id: str, *, offset: int, limit: int) -> DomainPage:
        """One domain the actor can see, with ``limit`` of its certificates from ``offset``.

        Raises:
            NotFoundError: ``domain.not_found``, also for a domain the actor cannot see.
        """
        info = self._enrollment.domain_information(actor, domain_id)
        certificates = self._certificates.search(
            actor,
            CertificateQuery(
                domain=info.domain.name, ca_id=info.domain.ca_id, offset=offset, limit=limit
            ),
        )
        return DomainPage(info=info, certificates=certificates)

    def certificate_search(self, actor: Actor, query: CertificateQuery) -> CertificateSearchPage:
        """The certificates the query finds among those the actor can see.

        Raises:
            ValidationError: the query's codes (:meth:`CertificateService.search`).
        """
        return CertificateSearchPage(
            certificates=self._certificates.search(actor, query),
            ca_names={ca.id: ca.name for ca in self._cas.list()},
        )

    def certificate(self, actor: Actor, serial: str, *, audit_rows: int = 20) -> CertificatePage:
        """One certificate the actor can see.

        Raises:
            NotFoundError: ``certificate.not_found``, also for one the actor cannot see.
        """
        certificate = self._certificates.get(actor, serial)
        return CertificatePage(
            certificate=certificate,
            ca=self._cas.get(certificate.ca_id),
            effect=self._effects.effect(actor, serial),
            audit=self._certificates.audit(actor, serial, limit=audit_rows),
        )

    def certificate_chain(
        self, actor: Actor, serial: str
    ) -> tuple[CertificateView, list[x509.Certificate]]:
        """The certificate and the CA chain that issued it.

        Raises:
            NotFoundError: ``certificate.not_found``.
        """
        return self._certificates.get(actor, serial), self._certificates.chain_of(actor, serial)

    def hubs(self, actor: Actor, *, failed_rows: int = 20) -> HubsPage:
        """The built-in hub and every link (admins only).

        Raises:
            PermissionDenied: ``auth.admin_required``.
        """
        _require_admin(actor)
        return HubsPage(
            identity=self._management.show(),
            hub_cas=self._trust.list(),
            overview=self._hubs_overview(actor, failed_rows=failed_rows),
            cas=self._cas.list(),
        )

    def devices(self, actor: Actor, *, offset: int, limit: int) -> DevicesPage:
        """``limit`` of the built-in hub's devices from ``offset`` (admins only).

        Raises:
            PermissionDenied: ``auth.admin_required``.
        """
        _require_admin(actor)
        return DevicesPage(
            devices=self._devices.list(limit=limit, offset=offset),
            registry=self._statistics.devices(),
            online=self._statistics.connected_devices(),
        )

    def device(self, actor: Actor, device_id: str, *, telemetry_rows: int) -> DevicePage:
        """One device of the built-in hub (admins only).

        Raises:
            PermissionDenied: ``auth.admin_required``.
            NotFoundError: ``hub.device_not_found``.
        """
        _require_admin(actor)
        twin = self._twins.get(device_id)
        telemetry = self._messages.recent_telemetry(device_id, limit=telemetry_rows)
        return DevicePage(
            twin=twin,
            telemetry=telemetry,
            last_message_id=(
                telemetry[-1].id if telemetry else self._messages.latest_id(device_id)
            ),
            pending=self._messages.pending_c2d(device_id),
            connected=self._statistics.is_connected(device_id),
        )

    def device_exists(self, actor: Actor, device_id: str) -> HubDeviceView:
        """The device's registry entry, before its telemetry is streamed (admins only).

        Raises:
            PermissionDenied: ``auth.admin_required``.
            NotFoundError: ``hub.device_not_found``.
        """
        _require_admin(actor)
        return self._devices.get(device_id)
