"""What a hub link holds: its kind, its Azure target and credential, checked; its secret, sealed.

A link to an Azure IoT Hub names the hub as Azure's management plane does (a
subscription GUID, a resource group and a hub name, under a management URL that is
Azure's public cloud unless told otherwise: a sovereign cloud, or another fleetpki's
built-in hub) and says how the connector gets a token: ``default``
(``DefaultAzureCredential``), ``client-secret``, ``client-certificate``, or, for the
device registry only, an IoT Hub ``connection-string``.

The one secret a credential may need (the client secret, the connection string, or the
client certificate's password) is sealed with Fernet under a key derived by HKDF from
the home's key passphrase, as the hub's SAS policy keys are, so the database alone
never reveals it; a :class:`LinkSecret` never shows its value in a ``repr`` or a log.
"""

from __future__ import annotations

import base64
import enum
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fleetpki.errors import ValidationError

__all__ = [
    "DEFAULT_MANAGEMENT_URL",
    "AzureTarget",
    "CredentialKind",
    "LinkKind",
    "LinkSecret",
    "certificate_name_for",
    "check_azure_target",
    "check_link_name",
    "open_secret",
    "seal_secret",
]

#: Azure Resource Manager of the public cloud.
DEFAULT_MANAGEMENT_URL = "https://management.azure.com"

_HKDF_INFO = b"fleetpki hub-link secret v1"
_LINK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
# Azure's naming rules: a resource group is 1-90 letters, digits, ``-_.()``, not ending
# in a period; an IoT hub is 3-50 letters, digits and hyphens.
_RESOURCE_GROUP = re.compile(r"^[-\w.()]{0,89}[-\w()]$", re.ASCII)
_HUB_NAME = re.compile(r"^[A-Za-z0-9-]{3,50}$")
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$")
# Azure's certificate names: ``^[A-Za-z0-9-._]{1,64}$`` (the RP's pattern).
_CERTIFICATE_NAME_BAD = re.compile(r"[^A-Za-z0-9._-]+")
# An IoT Hub connection string names these three parts (ref §3.1).
_CONNECTION_STRING_PARTS = ("hostname", "sharedaccesskeyname", "sharedaccesskey")


class LinkKind(enum.StrEnum):
    """What a link drives: the built-in hub in this process, or an Azure IoT Hub.

    A fleetpki hub in another process is an ``azure`` link pointed at its management
    URL, with the subscription, resource group and hub name ``fleetpki hub show`` prints.
    """

    BUILTIN = "builtin"
    AZURE = "azure"

    @classmethod
    def parse(cls, text: str) -> LinkKind:
        """The kind spelled ``text``.

        Raises:
            ValidationError: ``link.bad_kind``.
        """
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise ValidationError(
                "link.bad_kind", f"unknown link kind {text!r}: use builtin or azure"
            ) from None


class CredentialKind(enum.StrEnum):
    """How an azure link's connector authenticates (``azure-identity``, or SAS)."""

    DEFAULT = "default"
    CLIENT_SECRET = "client-secret"  # noqa: S105 (a credential kind)
    CLIENT_CERTIFICATE = "client-certificate"
    CONNECTION_STRING = "connection-string"

    @classmethod
    def parse(cls, text: str) -> CredentialKind:
        """The credential kind spelled ``text``.

        Raises:
            ValidationError: ``link.bad_credential``.
        """
        try:
            return cls(text.strip().lower())
        except ValueError:
            names = ", ".join(k.value for k in cls)
            raise ValidationError(
                "link.bad_credential", f"unknown credential {text!r}: use one of {names}"
            ) from None


class LinkSecret:
    """A credential's secret in memory: its value only through :meth:`reveal`.

    ``repr`` and ``str`` print ``LinkSecret(***)``, so a secret that reaches a log line
    or a traceback's locals stays hidden.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself (hand it to the credential, never print it)."""
        return self._value

    def __repr__(self) -> str:
        return "LinkSecret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinkSecret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("LinkSecret", self._value))


@dataclass(frozen=True, slots=True)
class AzureTarget:
    """Where an azure link's hub is, and how its connector gets a token (no secret here).

    Attributes:
        subscription_id: the subscription GUID (lower case).
        resource_group: the hub's resource group.
        hub_name: the IoT hub's resource name.
        management_url: Azure Resource Manager's base URL (https).
        credential: how to authenticate.
        tenant_id: the Entra tenant (client-secret, client-certificate; optional for default).
        client_id: the application (client) id (client-secret, client-certificate;
            for default, a user-assigned managed identity).
        authority_host: the token authority (``https://login.microsoftonline.com``
            unless set: a sovereign cloud, or fleetpki's own token endpoint).
        certificate_path: the client certificate's PEM (certificate and key), for
            client-certificate; read by the connector when it authenticates.
        service_url: the hub's service API (device registry), when it is not
            ``https://`` and the hub resource's hostName (another fleetpki's hub,
            which serves it on its HTTPS API port).
        ca_bundle: a CA bundle (PEM file) that the connector's TLS trusts instead of
            the system's (a hub or token endpoint under a private CA).
    """

    subscription_id: str
    resource_group: str
    hub_name: str
    management_url: str = DEFAULT_MANAGEMENT_URL
    credential: CredentialKind = CredentialKind.DEFAULT
    tenant_id: str | None = None
    client_id: str | None = None
    authority_host: str | None = None
    certificate_path: str | None = None
    service_url: str | None = None
    ca_bundle: str | None = None


def check_link_name(name: str) -> str:
    """``name`` if it is a link name: 1-64 letters, digits, ``.``, ``_``, ``-``.

    Raises:
        ValidationError: ``link.bad_name``.
    """
    if not _LINK_NAME.match(name):
        raise ValidationError(
            "link.bad_name",
            f"bad link name {name!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return name


def _https_url(value: str, what: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ValidationError("link.bad_url", f"the {what} must be an https URL, not {value!r}")
    return value.strip().rstrip("/")


def _authority(value: str) -> str:
    # azure-identity takes a bare host or an https URL; store the URL.
    text = value.strip()
    if "://" not in text and _HOST.match(text):
        text = f"https://{text}"
    return _https_url(text, "authority host")


def _blank_to_none(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


def _connection_string_ok(text: str) -> bool:
    keys = set()
    for part in text.strip().split(";"):
        key, sep, value = part.partition("=")
        if sep and value:
            keys.add(key.strip().lower())
    return all(p in keys for p in _CONNECTION_STRING_PARTS)


def check_azure_target(target: AzureTarget, secret: LinkSecret | None) -> AzureTarget:
    """``target`` checked and normalised, with what its credential needs present.

    Raises:
        ValidationError: ``link.target_incomplete`` (naming what is missing),
            ``link.bad_subscription`` (not a GUID),
            ``link.bad_resource_group``, ``link.bad_hub_name``, ``link.bad_url``,
            ``link.credential_incomplete`` (naming what is missing),
            ``link.option_not_used`` (an option the credential does not take),
            ``link.bad_connection_string``, ``link.certificate_missing``,
            ``link.ca_bundle_missing``.
    """
    parts = {
        "a subscription": target.subscription_id,
        "a resource group": target.resource_group,
        "a hub name": target.hub_name,
    }
    missing_parts = [what for what, value in parts.items() if not value.strip()]
    if missing_parts:
        raise ValidationError(
            "link.target_incomplete", f"an azure link needs {', '.join(missing_parts)}"
        )
    subscription = target.subscription_id.strip()
    if not _GUID.match(subscription):
        raise ValidationError(
            "link.bad_subscription",
            f"the subscription id {target.subscription_id!r} is not a GUID "
            "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
        )
    group = target.resource_group.strip()
    if not _RESOURCE_GROUP.match(group):
        raise ValidationError(
            "link.bad_resource_group",
            f"bad resource group {target.resource_group!r}: 1-90 letters, digits, "
            "'-', '_', '.', '(' or ')', not ending in '.'",
        )
    hub = target.hub_name.strip()
    if not _HUB_NAME.match(hub):
        raise ValidationError(
            "link.bad_hub_name",
            f"bad hub name {target.hub_name!r}: 3-50 letters, digits or hyphens",
        )
    tenant, client = _blank_to_none(target.tenant_id), _blank_to_none(target.client_id)
    certificate = _blank_to_none(target.certificate_path)
    authority = _blank_to_none(target.authority_host)
    kind = target.credential
    needs = {
        CredentialKind.DEFAULT: (),
        CredentialKind.CLIENT_SECRET: ("tenant", "client id", "secret"),
        CredentialKind.CLIENT_CERTIFICATE: ("tenant", "client id", "certificate"),
        CredentialKind.CONNECTION_STRING: ("secret",),
    }[kind]
    given = {"tenant": tenant, "client id": client, "certificate": certificate, "secret": secret}
    missing = [what for what in needs if given[what] is None]
    if missing:
        raise ValidationError(
            "link.credential_incomplete",
            f"a {kind.value} credential needs {', '.join(missing)}",
        )
    if certificate is not None and kind is not CredentialKind.CLIENT_CERTIFICATE:
        raise ValidationError(
            "link.option_not_used", f"a {kind.value} credential takes no certificate"
        )
    if secret is not None and kind is CredentialKind.DEFAULT:
        raise ValidationError("link.option_not_used", "a default credential takes no secret")
    if kind is CredentialKind.CONNECTION_STRING:
        assert secret is not None
        if not _connection_string_ok(secret.reveal()):
            # Say what is wrong without echoing the secret.
            raise ValidationError(
                "link.bad_connection_string",
                "the connection string needs HostName, SharedAccessKeyName and SharedAccessKey",
            )
    if certificate is not None:
        path = Path(certificate).expanduser()
        if not path.is_absolute() or not path.is_file():
            raise ValidationError(
                "link.certificate_missing",
                f"the client certificate {certificate!r} is not a file (give an absolute path)",
            )
        certificate = str(path)
    service_url = _blank_to_none(target.service_url)
    ca_bundle = _blank_to_none(target.ca_bundle)
    if ca_bundle is not None:
        ca_bundle = _pem_file(ca_bundle)
    return AzureTarget(
        subscription_id=subscription.lower(),
        resource_group=group,
        hub_name=hub,
        management_url=_https_url(target.management_url, "management URL"),
        credential=kind,
        tenant_id=tenant,
        client_id=client,
        authority_host=_authority(authority) if authority is not None else None,
        certificate_path=certificate,
        service_url=_https_url(service_url, "service URL") if service_url is not None else None,
        ca_bundle=ca_bundle,
    )


def _pem_file(value: str) -> str:
    path = Path(value).expanduser()
    try:
        text = path.read_text() if path.is_absolute() else ""
    except (OSError, UnicodeDecodeError):
        text = ""
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValidationError(
            "link.ca_bundle_missing",
            f"the CA bundle {value!r} is not a PEM file of certificates (give an absolute path)",
        )
    return str(path)


def _fernet(passphrase: bytes) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(passphrase)
    return Fernet(base64.urlsafe_b64encode(key))


def seal_secret(passphrase: bytes, secret: LinkSecret) -> str:
    """``secret`` encrypted for storage under a key derived from the home's passphrase."""
    return _fernet(passphrase).encrypt(secret.reveal().encode()).decode()


def open_secret(passphrase: bytes, sealed: str) -> LinkSecret:
    """The secret :func:`seal_secret` stored.

    Raises:
        ValidationError: ``link.secret_undecryptable`` when the passphrase changed.
    """
    try:
        return LinkSecret(_fernet(passphrase).decrypt(sealed.encode()).decode())
    except InvalidToken:
        raise ValidationError(
            "link.secret_undecryptable",
            "the link's stored secret cannot be decrypted (was the key passphrase changed?); "
            "remove the link and add it again",
        ) from None


def certificate_name_for(ca_name: str, ca_id: str, generation: int = 1) -> str:
    """The hub's name for a CA generation's certificate: the CA's name made Azure-safe,
    its id's start and, after the first, the generation (``-g2``).

    The id keeps two CAs of one name apart; the generation lets a hub hold a renewed
    CA's certificate beside the one it replaces until that one is retired.
    """
    slug = _CERTIFICATE_NAME_BAD.sub("-", ca_name).strip("-.") or "ca"
    if generation == 1:
        return f"{slug[:55]}-{ca_id[:8]}"
    return f"{slug[:48]}-{ca_id[:8]}-g{generation}"
