"""Who may call the hub's service API: SAS tokens of its policies (ref §3.1) and bearer tokens.

A SAS token is ``SharedAccessSignature sr=..&sig=..&se=..&skn=..`` where ``sig`` is
HMAC-SHA256, keyed with the base64-decoded policy key, over the *encoded* ``sr`` as
it appears in the token, a newline and ``se``. Checking it needs the key itself, so
policy keys cannot be stored as hashes like API tokens are; they are encrypted at
rest (Fernet) with a key derived by HKDF from the home's key passphrase, the same
secret that protects the CA keys.

Azure IoT Hub also takes Microsoft Entra bearer tokens for the resource
``https://iothubs.azure.net`` on its service API, authorised by Azure roles
(learn.microsoft.com, iot-hub "Control access to IoT Hub by using Microsoft Entra ID").
The built-in hub does the same for tokens of the configured OIDC issuer and of
fleetpki's own token endpoint: fleetpki admins hold what "IoT Hub Data Contributor"
grants, every other principal what "IoT Hub Data Reader" grants.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import secrets
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fleetpki.errors import AuthenticationError, NotFoundError, PermissionDenied
from fleetpki.hub.azure.sas import (
    SAS_PREFIX,
    SasToken,
    SasTokenMalformed,
    resource_covers,
    sign,
)
from fleetpki.services.context import Clock
from fleetpki.services.hub_management import ApiTokenSecret, ManagementCredential
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.services.principals import authenticate_token_in, ensure_principal_in
from fleetpki.store.hub_models import HubSasPolicy

__all__ = [
    "ADMIN_RIGHTS",
    "AZURE_ROLES",
    "DEFAULT_POLICIES",
    "IOTHUB_AUDIENCES",
    "READER_RIGHTS",
    "ClaimGrant",
    "HubSasService",
    "PolicyKeys",
    "Right",
    "SasCaller",
    "make_sas_token",
    "require_right",
]


class Right(enum.Enum):
    """Permissions a policy grants (Azure's names)."""

    REGISTRY_READ = "RegistryRead"
    REGISTRY_WRITE = "RegistryWrite"
    SERVICE_CONNECT = "ServiceConnect"
    DEVICE_CONNECT = "DeviceConnect"


#: Azure's default policies and their rights (ref §3.1; RegistryWrite implies read).
DEFAULT_POLICIES: dict[str, frozenset[Right]] = {
    "iothubowner": frozenset(
        {Right.REGISTRY_READ, Right.REGISTRY_WRITE, Right.SERVICE_CONNECT, Right.DEVICE_CONNECT}
    ),
    "service": frozenset({Right.SERVICE_CONNECT}),
    "device": frozenset({Right.DEVICE_CONNECT}),
    "registryRead": frozenset({Right.REGISTRY_READ}),
    "registryReadWrite": frozenset({Right.REGISTRY_READ, Right.REGISTRY_WRITE}),
}

#: The audiences a bearer token for the service API may carry: Entra's resource for IoT
#: Hub's service APIs, with and without the trailing slash that v1 and v2 tokens differ by.
IOTHUB_AUDIENCES = ("https://iothubs.azure.net", "https://iothubs.azure.net/")
#: The rights of a fleetpki admin presenting a bearer token ("IoT Hub Data Contributor").
ADMIN_RIGHTS = frozenset({Right.REGISTRY_READ, Right.REGISTRY_WRITE, Right.SERVICE_CONNECT})
#: The rights of any other principal ("IoT Hub Data Reader": reads only).
READER_RIGHTS = frozenset({Right.REGISTRY_READ})
#: The Azure built-in role that grants each right to an Entra principal, named in refusals.
AZURE_ROLES: dict[Right, str] = {
    Right.REGISTRY_READ: "IoT Hub Data Reader",
    Right.REGISTRY_WRITE: "IoT Hub Registry Contributor",
    Right.SERVICE_CONNECT: "IoT Hub Data Contributor",
    Right.DEVICE_CONNECT: "IoT Hub Data Contributor",
}

_HKDF_INFO = b"fleetpki hub sas policy keys v1"


@dataclass(frozen=True, slots=True)
class SasCaller:
    """A service caller whose SAS or bearer token checked out.

    Attributes:
        policy: the shared access policy of a SAS token, or ``principal <id>``.
        rights: what the caller may do.
        principal_id: the fleetpki principal of a bearer token; ``None`` for SAS.
    """

    policy: str
    rights: frozenset[Right]
    principal_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimGrant:
    """A claim an AMQP peer put to ``$cbs`` that checked out.

    Attributes:
        audience: what the claim is for (the put-token's ``name``).
        caller: the policy and its rights.
        expires_at: the token's ``se``: the claim lapses then.
    """

    audience: str
    caller: SasCaller
    expires_at: int

    def covers(self, resource: str, now_epoch: float) -> bool:
        """Whether the claim is live at ``now_epoch`` and its audience covers ``resource``."""
        return now_epoch < self.expires_at and resource_covers(self.audience, resource)


@dataclass(frozen=True, slots=True)
class PolicyKeys:
    """A policy's two keys (base64) and its rights."""

    name: str
    primary: str
    secondary: str
    rights: frozenset[Right]


def _fernet(secret: bytes) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret)
    return Fernet(base64.urlsafe_b64encode(key))


def _rights_text(rights: frozenset[Right]) -> str:
    return ",".join(sorted(r.value for r in rights))


def ensure_policies_in(tx: UnitOfWork, secret: bytes, *, now: dt.datetime) -> None:
    """:meth:`HubSasService.ensure_policies` inside the caller's unit of work."""
    existing = tx.hub_sas_policies.names()
    fernet = _fernet(secret)
    for name, rights in DEFAULT_POLICIES.items():
        if name in existing:
            continue
        keys = [base64.b64encode(secrets.token_bytes(32)) for _ in range(2)]
        tx.hub_sas_policies.add(
            HubSasPolicy(
                name=name,
                rights=_rights_text(rights),
                primary_key=fernet.encrypt(keys[0]).decode(),
                secondary_key=fernet.encrypt(keys[1]).decode(),
                created_at=now,
            )
        )


def policy_keys_in(tx: UnitOfWork, secret: bytes, name: str) -> PolicyKeys:
    """:meth:`HubSasService.policy_keys` inside the caller's unit of work."""
    policy = tx.hub_sas_policies.get(name)
    if policy is None:
        raise NotFoundError("hub.policy_not_found", f"no shared access policy {name!r}")
    fernet = _fernet(secret)
    try:
        primary = fernet.decrypt(policy.primary_key).decode()
        secondary = fernet.decrypt(policy.secondary_key).decode()
    except InvalidToken:
        raise AuthenticationError(
            "hub.policy_key_undecryptable", "the policy keys cannot be decrypted"
        ) from None
    rights = frozenset(Right(r) for r in policy.rights.split(",") if r)
    return PolicyKeys(name, primary, secondary, rights)


def _connection_string(hostname: str, policy: str, key: str) -> str:
    return f"HostName={hostname};SharedAccessKeyName={policy};SharedAccessKey={key}"


def make_sas_token(hostname: str, policy: str, key: str, expiry: int) -> str:
    """A token exactly as the Azure SDK computes it (ref §3.1), for tests and tools."""
    sr = quote_plus(hostname)
    sig = quote(base64.b64encode(sign(sr, expiry, key)).decode(), safe="/")
    return f"{SAS_PREFIX}sr={sr}&sig={sig}&se={expiry}&skn={policy}"


def verify_token_in(
    tx: UnitOfWork,
    secret: bytes,
    authorization: str | None,
    hostnames: Collection[str],
    *,
    now: dt.datetime,
) -> SasCaller:
    """Check a service SAS token (ref §3.1 "Server check", steps 1-6).

    The HMAC is computed over the raw ``sr`` as sent, and over its lower-cased form
    (the docs ask for lower-case escapes; Python sends upper case), and compared in
    constant time with either policy key. ``unquote(sr)`` must be one of ``hostnames``,
    with or without a port.

    Raises:
        AuthenticationError: ``hub.sas_missing``, ``hub.sas_malformed``,
            ``hub.sas_expired``, ``hub.sas_bad_signature``, ``hub.sas_wrong_host``.
    """
    if not authorization or not authorization.startswith(SAS_PREFIX):
        raise AuthenticationError("hub.sas_missing", "a SharedAccessSignature is required")
    try:
        token = SasToken.parse(authorization)
    except SasTokenMalformed:
        raise AuthenticationError(
            "hub.sas_malformed", "the SharedAccessSignature is malformed"
        ) from None
    skn = token.key_name
    if skn is None:
        raise AuthenticationError("hub.sas_malformed", "the SharedAccessSignature is malformed")
    if token.expired(now.timestamp()):
        raise AuthenticationError("hub.sas_expired", "the SharedAccessSignature has expired")
    try:
        keys = policy_keys_in(tx, secret, skn)
    except NotFoundError:
        raise AuthenticationError(
            "hub.sas_bad_signature", "the SharedAccessSignature does not verify"
        ) from None
    if token.signed_by((keys.primary, keys.secondary)) is None:
        raise AuthenticationError(
            "hub.sas_bad_signature", "the SharedAccessSignature does not verify"
        )
    host = token.host.lower()
    if host not in hostnames and host.rsplit(":", 1)[0] not in hostnames:
        raise AuthenticationError("hub.sas_wrong_host", "the token is for another hub")
    return SasCaller(policy=skn, rights=keys.rights)


class HubSasService:
    """Shared-access policies and service SAS tokens of the built-in hub (ref §3.1).

    Args:
        store: the database.
        clock: the source of "now".
        secret: returns the home's key passphrase (read once, when first needed),
            from which the policy keys' encryption key is derived.
        hostnames: the names a token's ``sr`` may carry (with or without a port).
        default_hostname: the ``HostName`` of connection strings when none is given.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        secret: Callable[[], bytes],
        hostnames: Collection[str],
        default_hostname: str,
    ) -> None:
        self._store = store
        self._clock = clock
        self._load_secret = secret
        self._secret: bytes | None = None
        self._lock = threading.Lock()
        self.hostnames = frozenset(h.lower() for h in hostnames)
        self.default_hostname = default_hostname

    def _key(self) -> bytes:
        with self._lock:
            if self._secret is None:
                self._secret = self._load_secret()
            return self._secret

    def ensure_policies(self) -> None:
        """Create Azure's default policies with random 256-bit keys where missing."""
        secret = self._key()
        with self._store.transaction() as tx:
            ensure_policies_in(tx, secret, now=self._clock())

    def policy_keys(self, name: str) -> PolicyKeys:
        """The keys and rights of policy ``name`` (the default policies are created first).

        Raises:
            NotFoundError: ``hub.policy_not_found``.
            AuthenticationError: ``hub.policy_key_undecryptable`` when the passphrase changed.
        """
        secret = self._key()
        with self._store.transaction() as tx:
            ensure_policies_in(tx, secret, now=self._clock())
            return policy_keys_in(tx, secret, name)

    def connection_string(self, policy: str, hostname: str | None = None) -> str:
        """``HostName=..;SharedAccessKeyName=..;SharedAccessKey=..`` for ``policy`` (ref §3.1).

        ``hostname`` defaults to the hub's hostname and API port.

        Raises:
            NotFoundError: ``hub.policy_not_found``.
        """
        keys = self.policy_keys(policy)
        return _connection_string(hostname or self.default_hostname, policy, keys.primary)

    def authenticate(self, authorization: str | None) -> SasCaller:
        """Check a service SAS token (ref §3.1 "Server check", steps 1-6).

        The HMAC is computed over the raw ``sr`` as sent, and over its lower-cased form
        (the docs ask for lower-case escapes; Python sends upper case), and compared in
        constant time with either policy key. ``unquote(sr)`` must be one of the hub's
        hostnames, with or without a port.

        Raises:
            AuthenticationError: ``hub.sas_missing``, ``hub.sas_malformed``,
                ``hub.sas_expired``, ``hub.sas_bad_signature``, ``hub.sas_wrong_host``.
        """
        secret = self._key()
        now = self._clock()
        with self._store.transaction() as tx:
            ensure_policies_in(tx, secret, now=now)
            return verify_token_in(tx, secret, authorization, self.hostnames, now=now)

    def authenticate_claim(self, token: str, audience: str) -> ClaimGrant:
        """Check a token put to an AMQP connection's ``$cbs`` node for ``audience``.

        The token is checked exactly as :meth:`authenticate` checks the REST API's (one
        rule); then its resource must cover ``audience`` (the put-token's ``name``:
        ``https://{host}`` from the service SDK, ``sb://{host}/{entity}`` from
        azure-eventhub; compared by whole segments, without scheme, case or port) and
        its policy must hold ServiceConnect, as Azure's service endpoints require.

        Raises:
            AuthenticationError: as :meth:`authenticate`; ``hub.sas_wrong_audience``.
            PermissionDenied: ``hub.sas_forbidden`` for a policy without ServiceConnect.
        """
        caller = self.authenticate(token)
        parsed = SasToken.parse(token)
        if not parsed.grants(audience):
            raise AuthenticationError(
                "hub.sas_wrong_audience", "the token's resource does not cover the audience"
            )
        require_right(caller, Right.SERVICE_CONNECT)
        return ClaimGrant(audience, caller, parsed.expiry)

    def eventhub_connection_string(self, policy: str, hostname: str, entity: str) -> str:
        """``Endpoint=sb://{hostname}/;SharedAccessKeyName=..;SharedAccessKey=..;EntityPath=..``.

        The string of the built-in Event Hubs-compatible endpoint, for azure-eventhub's
        ``EventHubConsumerClient.from_connection_string``.

        Raises:
            NotFoundError: ``hub.policy_not_found``.
        """
        keys = self.policy_keys(policy)
        return (
            f"Endpoint=sb://{hostname}/;SharedAccessKeyName={policy};"
            f"SharedAccessKey={keys.primary};EntityPath={entity}"
        )

    def authenticate_bearer(self, credential: ManagementCredential) -> SasCaller:
        """The rights of a bearer caller: a verified OIDC token's principal, or an API token.

        The token's signature, issuer and audience (:data:`IOTHUB_AUDIENCES`) are checked
        before this call, where the OIDC keys are; this is the rule: a principal seen
        for the first time is created, admins get :data:`ADMIN_RIGHTS` and every other
        principal :data:`READER_RIGHTS`.

        Raises:
            AuthenticationError: ``auth.bad_token`` for an unknown, expired or revoked
                API token.
            ValidationError: ``principal.bad_id``.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            if isinstance(credential, ApiTokenSecret):
                holder = authenticate_token_in(tx, credential.secret, now=now)
                principal_id, is_admin = holder.principal_id, holder.is_admin
            else:
                principal = ensure_principal_in(
                    tx, credential.principal_id, credential.display_name, now=now
                )
                principal_id, is_admin = principal.id, principal.is_admin
            rights = ADMIN_RIGHTS if is_admin else READER_RIGHTS
            return SasCaller(f"principal {principal_id}", rights, principal_id=principal_id)


def require_right(caller: SasCaller, *alternatives: Right) -> None:
    """Refuse unless the caller holds one of ``alternatives``.

    A bearer caller is told which Azure role it would need (:data:`AZURE_ROLES`), as a
    principal of an Azure IoT Hub would be.

    Raises:
        PermissionDenied: ``hub.sas_forbidden``, ``hub.role_required``.
    """
    if caller.rights.intersection(alternatives):
        return
    if caller.principal_id is None:
        raise PermissionDenied("hub.sas_forbidden", "this policy may not do that")
    roles = " or ".join(dict.fromkeys(f"'{AZURE_ROLES[r]}'" for r in alternatives))
    raise PermissionDenied(
        "hub.role_required",
        f"The principal '{caller.principal_id}' may not do that: it needs the {roles} role "
        "on the hub, which fleetpki grants to its admins only.",
    )
