"""The built-in hub as an Azure resource: its ARM identity and its certificates' use cases.

Azure's management plane names a hub by subscription, resource group and hub name, and
manages its CA certificates under that path (ref §4.1). This service answers those use
cases for the built-in hub: it checks that the path names this hub, authenticates the
caller inside the same unit of work as the change, requires an admin (the hub's trust is
the operator's), and runs the proof-of-possession flow of :mod:`fleetpki.services.hub_trust`.

Each use case runs the trust functions inside its own unit of work, so the path check,
the caller's authentication, the change and its audit entry commit together.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from fleetpki.errors import (
    ConflictError,
    NotFoundError,
    PermissionDenied,
    ValidationError,
)
from fleetpki.services.audit import write_audit
from fleetpki.services.context import Actor, Clock
from fleetpki.services.hub_trust import (
    delete_in,
    require_hub_ca,
    upload_in,
    verification_code_in,
    verify_in,
)
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.services.principals import authenticate_token_in, ensure_principal_in
from fleetpki.settings import Settings

__all__ = [
    "ARM_AUDIENCES",
    "DEFAULT_RESOURCE_GROUP",
    "ApiTokenSecret",
    "BearerIdentity",
    "CertificatePut",
    "HubCertificateView",
    "HubIdentity",
    "HubManagementService",
    "HubTarget",
    "ManagementCredential",
    "PutResult",
    "hub_identity",
]

#: The audiences Azure Resource Manager accepts in a bearer token, exactly (its own
#: ``InvalidAuthenticationTokenAudience`` message lists these four).
ARM_AUDIENCES = (
    "https://management.core.windows.net/",
    "https://management.core.windows.net",
    "https://management.azure.com/",
    "https://management.azure.com",
)
DEFAULT_RESOURCE_GROUP = "fleetpki"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
# An IoT hub name is 3-50 letters, digits and hyphens (Azure's naming rules).
_HUB_NAME_BAD = re.compile(r"[^A-Za-z0-9-]")


@dataclass(frozen=True, slots=True)
class HubIdentity:
    """Where the built-in hub sits in Azure's resource tree, and its token tenant.

    Attributes:
        subscription_id: the subscription GUID the hub answers under.
        resource_group: its resource group.
        hub_name: its hub (resource) name.
        tenant_id: the tenant of fleetpki's own token endpoint.
        host_name: the hub's host name (``properties.hostName``).
    """

    subscription_id: str
    resource_group: str
    hub_name: str
    tenant_id: str
    host_name: str

    @property
    def resource_id(self) -> str:
        """The hub's ARM resource id."""
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Devices/IotHubs/{self.hub_name}"
        )


def _home_guid(settings: Settings, group: str) -> str:
    # A fixed GUID per home, all zeros but its last group, so that it reads as local
    # and stays the same across restarts.
    digest = hashlib.sha256(str(settings.home).encode()).hexdigest()[:12]
    return f"00000000-0000-0000-{group}-{digest}"


def hub_identity(settings: Settings) -> HubIdentity:
    """The hub's ARM identity: the settings, or defaults derived from the home and hostname."""
    hub_name = settings.arm_hub_name or _HUB_NAME_BAD.sub("-", settings.hostname.split(".")[0])
    if len(hub_name) < 3:
        hub_name = f"{hub_name}-hub"
    return HubIdentity(
        subscription_id=(settings.arm_subscription_id or _home_guid(settings, "0000")).lower(),
        resource_group=settings.arm_resource_group or DEFAULT_RESOURCE_GROUP,
        hub_name=hub_name[:50],
        tenant_id=(settings.token_tenant_id or _home_guid(settings, "0001")).lower(),
        host_name=settings.hostname,
    )


@dataclass(frozen=True, slots=True)
class HubTarget:
    """The hub a management request names by its path."""

    subscription_id: str
    resource_group: str
    hub_name: str


@dataclass(frozen=True, slots=True)
class BearerIdentity:
    """A caller proven by a verified OIDC bearer token."""

    principal_id: str
    display_name: str


@dataclass(frozen=True, slots=True)
class ApiTokenSecret:
    """A caller presenting a fleetpki API token (checked, hashed, in the use case's unit)."""

    secret: str


#: How a management request proves who calls it.
ManagementCredential = BearerIdentity | ApiTokenSecret


@dataclass(frozen=True, slots=True)
class HubCertificateView:
    """A hub CA certificate as Azure's ``CertificateDescription`` presents it."""

    name: str
    certificate_der: bytes
    sha1_hex: str
    subject: str
    not_after: dt.datetime
    is_verified: bool
    verification_code: str | None
    etag: str
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class CertificatePut:
    """A create-or-update of a certificate (Azure's ``CertificateDescription`` body).

    Attributes:
        certificate: PEM text or base64 DER.
        is_verified: create it verified, skipping proof of possession (ref §4.1).
        if_match: the ``If-Match`` header, required to replace an existing certificate.
    """

    certificate: str
    is_verified: bool = False
    if_match: str | None = None


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a create-or-update did."""

    certificate: HubCertificateView
    created: bool


class _HubCARecord(Protocol):
    name: str
    certificate_der: bytes
    sha1_hex: str
    subject: str
    not_after: dt.datetime
    is_verified: bool
    verification_code: str | None
    etag: str
    created_at: dt.datetime
    updated_at: dt.datetime


def _view(record: _HubCARecord) -> HubCertificateView:
    return HubCertificateView(
        name=record.name,
        certificate_der=record.certificate_der,
        sha1_hex=record.sha1_hex.upper(),
        subject=record.subject,
        not_after=record.not_after,
        is_verified=record.is_verified,
        verification_code=record.verification_code,
        etag=record.etag,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def _certificate_bytes(text: str) -> bytes:
    """PEM text as is, anything else as base64 DER (Azure accepts both, SDK docstrings)."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        return stripped.encode()
    try:
        return base64.b64decode("".join(stripped.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError(
            "certificate.malformed", "the certificate is neither PEM nor base64 DER"
        ) from exc


_T = TypeVar("_T")


class HubManagementService:
    """The built-in hub's resource and certificates, as Azure's management plane has them.

    Args:
        store: the database.
        clock: the source of "now".
        identity: where the hub sits in Azure's resource tree.
    """

    def __init__(self, store: Store, clock: Clock, identity: HubIdentity) -> None:
        self._store = store
        self._clock = clock
        self.identity = identity

    def show(self) -> HubIdentity:
        """The hub's subscription, resource group, hub name and token tenant."""
        return self.identity

    # -- checks -----------------------------------------------------------------------------

    def _check_target(self, target: HubTarget, *, child: bool) -> None:
        if not _GUID.match(target.subscription_id):
            raise ValidationError(
                "arm.bad_subscription",
                f"The provided subscription identifier '{target.subscription_id}' is "
                "malformed or invalid.",
            )
        # Azure resource names are case-insensitive.
        if target.subscription_id.lower() != self.identity.subscription_id:
            raise NotFoundError(
                "arm.subscription_not_found",
                f"The subscription '{target.subscription_id}' could not be found.",
            )
        if target.resource_group.lower() != self.identity.resource_group.lower():
            raise NotFoundError(
                "arm.resource_group_not_found",
                f"Resource group '{target.resource_group}' could not be found.",
            )
        if target.hub_name.lower() != self.identity.hub_name.lower():
            if child:
                raise NotFoundError(
                    "arm.parent_not_found",
                    "Can not perform requested operation on nested resource. Parent resource "
                    f"'{target.hub_name}' not found.",
                )
            raise NotFoundError(
                "arm.hub_not_found",
                f"The Resource 'Microsoft.Devices/IotHubs/{target.hub_name}' under resource "
                f"group '{target.resource_group}' was not found.",
            )

    def _actor(self, tx: UnitOfWork, credential: ManagementCredential, source: str) -> Actor:
        now = self._clock()
        if isinstance(credential, ApiTokenSecret):
            holder = authenticate_token_in(tx, credential.secret, now=now)
            return Actor(holder.principal_id, holder.is_admin, source)
        principal = ensure_principal_in(
            tx, credential.principal_id, credential.display_name, now=now
        )
        return Actor(principal_id=principal.id, is_admin=principal.is_admin, source=source)

    def _run(
        self,
        credential: ManagementCredential,
        target: HubTarget,
        source: str,
        action: str,
        work: Callable[[UnitOfWork, Actor], _T],
        *,
        child: bool = True,
    ) -> _T:
        """Check the path, then authenticate, authorise and act in one unit of work."""
        self._check_target(target, child=child)
        with self._store.transaction() as tx:
            actor = self._actor(tx, credential, source)
            if not actor.is_admin:
                raise PermissionDenied(
                    "arm.authorization_failed",
                    f"The client '{actor.principal_id}' does not have authorization to perform "
                    f"action 'Microsoft.Devices/IotHubs/{action}' over scope "
                    f"'{self.identity.resource_id}'. Only fleetpki admins manage the hub.",
                )
            return work(tx, actor)

    # -- use cases --------------------------------------------------------------------------

    def get_hub(
        self, credential: ManagementCredential, target: HubTarget, *, source: str
    ) -> HubIdentity:
        """The hub resource, for a caller allowed to read it.

        Raises:
            ValidationError: ``arm.bad_subscription``.
            NotFoundError: ``arm.subscription_not_found``, ``arm.resource_group_not_found``,
                ``arm.hub_not_found``.
            AuthenticationError: ``auth.bad_token``.
            PermissionDenied: ``arm.authorization_failed``.
        """
        return self._run(
            credential, target, source, "read", lambda _s, _a: self.identity, child=False
        )

    def list_certificates(
        self, credential: ManagementCredential, target: HubTarget, *, source: str
    ) -> list[HubCertificateView]:
        """Every CA certificate of the hub, by name.

        Raises:
            As :meth:`get_hub`, with ``arm.parent_not_found`` for another hub.
        """
        return self._run(
            credential,
            target,
            source,
            "certificates/read",
            lambda tx, _a: [_view(r) for r in tx.hub_cas.list()],
        )

    def get_certificate(
        self, credential: ManagementCredential, target: HubTarget, name: str, *, source: str
    ) -> HubCertificateView:
        """One CA certificate of the hub.

        Raises:
            NotFoundError: ``hub.ca_not_found``; the errors of :meth:`list_certificates`.
        """
        return self._run(
            credential,
            target,
            source,
            "certificates/read",
            lambda tx, _a: _view(require_hub_ca(tx, name)),
        )

    def put_certificate(
        self,
        credential: ManagementCredential,
        target: HubTarget,
        name: str,
        command: CertificatePut,
        *,
        source: str,
    ) -> PutResult:
        """Create a CA certificate, or replace one whose etag ``If-Match`` names.

        A replaced certificate starts over: unverified unless ``is_verified``, with a new
        etag, as an upload does (ref §4.1).

        Raises:
            ConflictError: ``precondition.failed`` (412) for an ``If-Match`` that does not
                match, for ``If-Match`` on a certificate that does not exist, and for a
                replacement without ``If-Match`` (Azure requires it to update).
            ValidationError: ``certificate.malformed``, ``hub.not_a_ca``.
        """
        der_or_pem = _certificate_bytes(command.certificate)

        def work(tx: UnitOfWork, actor: Actor) -> PutResult:
            now = self._clock()
            existing = tx.hub_cas.get_by_name(name)
            if existing is None and command.if_match is not None:
                raise ConflictError("precondition.failed", "Invalid ETag supplied.")
            created_at, fleetpki_ca_id = None, None
            if existing is not None:
                if command.if_match is None:
                    raise ConflictError("precondition.failed", "Invalid ETag supplied.")
                created_at, fleetpki_ca_id = existing.created_at, existing.fleetpki_ca_id
                delete_in(tx, name, if_match=command.if_match)
            record = upload_in(
                tx,
                name,
                der_or_pem,
                now=now,
                fleetpki_ca_id=fleetpki_ca_id,
                verified=command.is_verified,
            )
            if created_at is not None:
                record.created_at = created_at
            write_audit(
                tx,
                actor,
                "hub.certificate.put",
                "hub_ca",
                name,
                at=now,
                details={"replaced": existing is not None, "verified": command.is_verified},
            )
            return PutResult(_view(record), created=existing is None)

        return self._run(credential, target, source, "certificates/write", work)

    def delete_certificate(
        self,
        credential: ManagementCredential,
        target: HubTarget,
        name: str,
        if_match: str,
        *,
        source: str,
    ) -> bool:
        """Delete a CA certificate; ``False`` when there was none (Azure answers 204).

        Raises:
            ConflictError: ``precondition.failed``.
        """

        def work(tx: UnitOfWork, actor: Actor) -> bool:
            try:
                delete_in(tx, name, if_match=if_match)
            except NotFoundError:
                return False
            write_audit(tx, actor, "hub.certificate.delete", "hub_ca", name, at=self._clock())
            return True

        return self._run(credential, target, source, "certificates/delete", work)

    def generate_verification_code(
        self,
        credential: ManagementCredential,
        target: HubTarget,
        name: str,
        if_match: str,
        *,
        source: str,
    ) -> HubCertificateView:
        """A new verification code for proof of possession (ref §4.1 step 2), and a new etag.

        Raises:
            NotFoundError: ``hub.ca_not_found``.
            ConflictError: ``precondition.failed``.
        """
        return self._run(
            credential,
            target,
            source,
            "certificates/generateVerificationCode/action",
            lambda tx, _a: _view(
                verification_code_in(tx, name, now=self._clock(), if_match=if_match)
            ),
        )

    def verify_certificate(
        self,
        credential: ManagementCredential,
        target: HubTarget,
        name: str,
        if_match: str,
        certificate: str,
        *,
        source: str,
    ) -> HubCertificateView:
        """Check the verification certificate and mark the CA verified (ref §4.1 steps 3-4).

        Raises:
            NotFoundError: ``hub.ca_not_found``.
            ConflictError: ``precondition.failed``, ``hub.no_verification_code``.
            ValidationError: ``certificate.malformed``, ``hub.verification_cn_mismatch``,
                ``hub.verification_bad_signature``.
        """
        proof = _certificate_bytes(certificate)

        def work(tx: UnitOfWork, actor: Actor) -> HubCertificateView:
            now = self._clock()
            record = verify_in(tx, name, proof, now=now, if_match=if_match)
            write_audit(tx, actor, "hub.certificate.verify", "hub_ca", name, at=now)
            return _view(record)

        return self._run(credential, target, source, "certificates/verify/action", work)
