"""The hub's one device-authentication policy: pure, no I/O (azure-iot-hub-protocol.md §4.2).

Theory of operation
-------------------
Whether a client may connect as an MQTT client id is decided here and nowhere else,
from plain facts the caller gathered: what the client presented (a TLS client
certificate and its chain, `PresentedCertificate`, or a SAS token as its CONNECT
password, `PresentedToken`), the device's registry entry (`RegistryEntry`), the hub's
trust anchors (`TrustedCAs`) and, last, a revocation verdict (`RevocationVerdict`).
Every hub backend uses `DevicePolicy`; the caller owns the I/O.

X.509 (ref §4.2). Revocation needs the verified chain first (the issuer decides which
source to ask: for a fleetpki CA its certificate table, for a foreign CA the OCSP
responder or CRL the leaf names, over the network), so the decision has two steps:

1. `DevicePolicy.admit` runs every check but revocation, in this order: the device (the
   part of the client id before ``/`` for a module) is registered and enabled; a
   selfSigned device's certificate has one of its thumbprints (and nothing else is
   asked of it: Azure matches such devices by thumbprint only, whatever their CN); a
   certificateAuthority device's leaf CN is the client id and its chain verifies up to
   a *verified* hub CA (a chain to an unverified one is told apart). It returns an
   `Admission` that names the verified issuer whose revocation source must be asked,
   if any.
2. `DevicePolicy.decide` takes that admission and the verdict of the source and
   returns the `AuthenticatedDevice`, or refuses a revoked certificate, and one whose
   status no source could give unless revocation soft-fail is on.

Symmetric keys (ref §3.1; `fleetpki.hub.azure.sas`). `DevicePolicy.admit_token` decides
in one step: the password is a SharedAccessSignature; the device is registered,
enabled and a ``sas`` device (modules have no identities of their own here); the token
carries no ``skn`` (a device signs with its own key); its resource URI grants
``{host}/devices/{deviceId}`` for the host the CONNECT username named; it has not
expired; and one of the device's two keys signed it. The device it returns carries
the token's expiry, at which the hub ends the session, and the id of the key that
signed it, so that replacing that key ends the session too.

Every refusal is an `AuthenticationError` whose code comes from one table,
`Refusal`; the MQTT server answers CONNACK 5 to each (ref §1.4).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fleetpki.errors import AuthenticationError, ValidationError
from fleetpki.hub.azure.sas import SasToken, SasTokenMalformed, device_resource_uri, key_id
from fleetpki.pki.chain import verify_client_chain

__all__ = [
    "Admission",
    "AuthType",
    "AuthenticatedDevice",
    "DevicePolicy",
    "DeviceStatus",
    "PresentedCertificate",
    "PresentedToken",
    "Refusal",
    "RegistryEntry",
    "RevocationStatus",
    "RevocationVerdict",
    "TrustedCAs",
]


class Refusal(enum.Enum):
    """Why the hub refuses a device: the one table of stable codes and safe messages.

    Each member is ``(code, message)``; the code is what logs, tests and operators
    read, the message is safe to show to the device's owner.
    """

    NO_CLIENT_CERTIFICATE = (
        "hub.no_client_certificate",
        "no TLS client certificate and no SAS token",
    )
    BAD_CERTIFICATE = ("hub.bad_certificate", "unreadable certificate")
    CN_MISMATCH = ("hub.cn_mismatch", "the certificate CN is not the MQTT client id")
    UNKNOWN_DEVICE = ("hub.unknown_device", "the device is not registered in the hub")
    DEVICE_DISABLED = ("hub.device_disabled", "the device is disabled")
    THUMBPRINT_MISMATCH = ("hub.wrong_auth_type", "the certificate thumbprint is not the device's")
    WRONG_AUTH_TYPE = ("hub.wrong_auth_type", "the device does not use X.509 CA authentication")
    UNTRUSTED_CA = ("hub.untrusted_ca", "the certificate does not chain to a hub CA")
    CA_UNVERIFIED = ("hub.ca_unverified", "the certificate's CA is not verified in the hub")
    CERTIFICATE_REVOKED = ("hub.certificate_revoked", "the certificate is revoked")
    REVOCATION_UNKNOWN = (
        "hub.revocation_unknown",
        "the certificate's revocation status cannot be established",
    )
    NOT_A_SAS_DEVICE = ("hub.wrong_auth_type", "the device does not use symmetric-key (sas) auth")
    SAS_MODULE = ("hub.sas_module", "modules have no identities of their own to sign SAS tokens")
    SAS_MALFORMED = ("hub.sas_malformed", "the CONNECT password is not a SharedAccessSignature")
    SAS_POLICY_TOKEN = (
        "hub.sas_policy_token",
        "a device token is signed with the device's own key and names no skn",
    )
    SAS_WRONG_RESOURCE = ("hub.sas_wrong_resource", "the SAS token is for another device or hub")
    SAS_EXPIRED = ("hub.sas_expired", "the SAS token has expired")
    SAS_BAD_SIGNATURE = ("hub.sas_bad_signature", "the SAS token is not signed with a device key")
    INTERNAL_ERROR = ("hub.internal_error", "authentication failed")

    @property
    def code(self) -> str:
        """The stable code, ``hub.*``."""
        code: str = self.value[0]
        return code

    @property
    def message(self) -> str:
        """The safe message."""
        message: str = self.value[1]
        return message

    def error(self, detail: str | None = None) -> AuthenticationError:
        """The `AuthenticationError` for this refusal; ``detail`` is appended in brackets."""
        message = self.message if detail is None else f"{self.message} ({detail})"
        return AuthenticationError(self.code, message)


class DeviceStatus(enum.Enum):
    """Whether a device may connect (ref §3.3)."""

    ENABLED = "enabled"
    DISABLED = "disabled"

    @classmethod
    def parse(cls, text: str) -> DeviceStatus:
        """Parse ``enabled``/``disabled`` in any case.

        Raises:
            ValidationError: ``hub.bad_status``.
        """
        try:
            return cls(text.lower())
        except ValueError:
            raise ValidationError("hub.bad_status", "status must be enabled or disabled") from None


class AuthType(enum.Enum):
    """How a device authenticates (ref §3.2 "SDK bodies")."""

    CERTIFICATE_AUTHORITY = "certificateAuthority"
    SELF_SIGNED = "selfSigned"
    SAS = "sas"

    @classmethod
    def parse(cls, text: str) -> AuthType:
        """Parse the Azure spelling, case-insensitively.

        Raises:
            ValidationError: ``hub.bad_auth_type``.
        """
        for member in cls:
            if member.value.lower() == text.lower():
                return member
        raise ValidationError(
            "hub.bad_auth_type",
            "authentication type must be certificateAuthority, selfSigned or sas",
        )


@dataclasses.dataclass(frozen=True, slots=True)
class PresentedCertificate:
    """What a connecting client presented: its TLS certificates and its MQTT client id.

    Attributes:
        leaf: the TLS client certificate.
        chain: the other certificates the peer sent (a copy of the leaf is ignored).
        client_id: the CONNECT client id, ``device`` or ``device/module``.
    """

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    client_id: str

    @property
    def device_id(self) -> str:
        """The device part of the client id (the registry key)."""
        return self.client_id.partition("/")[0]


@dataclasses.dataclass(frozen=True, slots=True)
class RegistryEntry:
    """The registry's facts about a device, as the policy needs them.

    Attributes:
        device_id: the registry id.
        status: enabled or disabled.
        auth_type: how the device must authenticate.
        thumbprints: for selfSigned devices, the allowed SHA-1 or SHA-256
            thumbprints (hex, any case).
        symmetric_keys: for sas devices, the primary and secondary keys (base64).
    """

    device_id: str
    status: DeviceStatus
    auth_type: AuthType
    thumbprints: frozenset[str] = frozenset()
    symmetric_keys: tuple[str, ...] = ()

    def __repr__(self) -> str:
        # The keys are secrets: never in a log line or a test failure.
        return (
            f"RegistryEntry({self.device_id!r}, {self.status}, {self.auth_type}, "
            f"thumbprints={sorted(self.thumbprints)}, symmetric_keys=<{len(self.symmetric_keys)}>)"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class PresentedToken:
    """A client that sent a SAS token as its CONNECT password (ref §1.3).

    Attributes:
        token: the password, decoded as UTF-8.
        client_id: the CONNECT client id, ``device`` or ``device/module``.
        host: the host part of the CONNECT username, which the broker has already
            checked is one of the hub's names; the token's resource must name it.
    """

    token: str
    client_id: str
    host: str

    def __repr__(self) -> str:
        return f"PresentedToken(<token>, {self.client_id!r}, {self.host!r})"


@dataclasses.dataclass(frozen=True, slots=True)
class TrustedCAs:
    """The hub's CA certificates by state: only ``verified`` ones authenticate (ref §4.1)."""

    verified: tuple[x509.Certificate, ...]
    unverified: tuple[x509.Certificate, ...] = ()


class RevocationStatus(enum.Enum):
    """What a revocation source said about a certificate."""

    #: The source vouches that the certificate is not revoked.
    GOOD = "good"
    #: The source says the certificate is revoked (or, for fleetpki's own CAs, not on record).
    REVOKED = "revoked"
    #: The certificate names sources, but none gave a usable answer.
    UNKNOWN = "unknown"
    #: The certificate names no source, so there is nothing to ask.
    UNCHECKED = "unchecked"


@dataclasses.dataclass(frozen=True, slots=True)
class RevocationVerdict:
    """A revocation source's answer for one certificate.

    Attributes:
        status: the answer.
        source: where it came from (``fleetpki records``, ``OCSP``, ``CRL``), for messages.
        fleetpki_ca_id: the fleetpki CA whose records answered, when it is one of ours.
    """

    status: RevocationStatus
    source: str
    fleetpki_ca_id: str | None = None

    @classmethod
    def from_fleetpki_record(cls, ca_id: str, record_status: str | None) -> RevocationVerdict:
        """The verdict of fleetpki's certificate table for a leaf of its CA ``ca_id``.

        ``record_status`` is the certificate's status on record, ``None`` when it is
        not on record: a leaf signed by one of our CAs that we never recorded is
        refused like a revoked one.
        """
        status = RevocationStatus.GOOD if record_status == "valid" else RevocationStatus.REVOKED
        return cls(status, "fleetpki records", ca_id)


@dataclasses.dataclass(frozen=True, slots=True)
class AuthenticatedDevice:
    """A device the hub let in.

    Attributes:
        device_id / module_id: the identity (the client id is ``device`` or ``device/module``).
        auth_type: how it authenticated.
        certificate_sha1 / certificate_serial: the leaf's thumbprint and serial,
            upper-case hex, to match later revocations; ``None`` for a SAS token.
        fleetpki_ca_id: the fleetpki CA that issued the leaf, when it is one of ours.
        key_id: for a SAS token, the id (`fleetpki.hub.azure.sas.key_id`) of the device
            key that signed it, to match a later key replacement.
        expires_at: for a SAS token, its expiry: the hub ends the session then.
    """

    device_id: str
    module_id: str | None
    auth_type: AuthType
    certificate_sha1: str | None
    certificate_serial: str | None
    fleetpki_ca_id: str | None = None
    key_id: str | None = None
    expires_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    """A device that passed every check but revocation (`DevicePolicy.admit`).

    Attributes:
        device: the device as it will be authenticated.
        leaf: its certificate.
        issuer: the verified certificate that issued ``leaf``, whose revocation source
            must be asked; ``None`` when no revocation check applies (a selfSigned
            device is pinned by thumbprint, and a leaf that is itself a hub CA has no
            issuer in the chain).
        anchor: the trusted CA the verified chain ends at (``None`` for a selfSigned
            device); the provisioning service finds the enrollment group by it.
    """

    device: AuthenticatedDevice
    leaf: x509.Certificate
    issuer: x509.Certificate | None
    anchor: x509.Certificate | None = None

    @property
    def issuer_sha1(self) -> str | None:
        """The issuer's SHA-1 thumbprint, upper-case hex (how fleetpki CAs are looked up)."""
        if self.issuer is None:
            return None
        return _sha1(self.issuer.public_bytes(serialization.Encoding.DER))


def _sha1(der: bytes) -> str:
    return hashlib.sha1(der).hexdigest().upper()  # noqa: S324 - a thumbprint, not a signature


def _common_name(cert: x509.Certificate) -> str | None:
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode()


def _chains(
    leaf: x509.Certificate,
    intermediates: Iterable[x509.Certificate],
    anchors: tuple[x509.Certificate, ...],
    now: dt.datetime,
) -> list[x509.Certificate] | None:
    try:
        return verify_client_chain(leaf, list(intermediates), anchors, now=now)
    except AuthenticationError:
        return None


class DevicePolicy:
    """The device-authentication decision (module docstring); holds no state but its options.

    Args:
        revocation_soft_fail: accept a certificate whose revocation status no source
            could give (``Settings.hub_revocation_soft_fail``); the hub fails closed by
            default, since its promise is that it enforces revocation.
    """

    def __init__(self, *, revocation_soft_fail: bool = False) -> None:
        self.revocation_soft_fail = revocation_soft_fail

    def admit(
        self,
        presented: PresentedCertificate,
        entry: RegistryEntry | None,
        trusted: TrustedCAs,
        now: dt.datetime,
    ) -> Admission:
        """Step 1: every check but revocation, in the order of the module docstring.

        Args:
            presented: the certificates and client id.
            entry: the registry entry of ``presented.device_id``, ``None`` if unregistered.
            trusted: the hub's CA certificates.
            now: the time of the check (timezone-aware ``datetime``).

        Raises:
            AuthenticationError: ``hub.unknown_device``, ``hub.device_disabled``,
                ``hub.wrong_auth_type``, ``hub.cn_mismatch``, ``hub.untrusted_ca``,
                ``hub.ca_unverified``.
        """
        leaf = presented.leaf
        device_id, _, module_id = presented.client_id.partition("/")
        if entry is None:
            raise Refusal.UNKNOWN_DEVICE.error()
        if entry.status is not DeviceStatus.ENABLED:
            raise Refusal.DEVICE_DISABLED.error()
        der = leaf.public_bytes(serialization.Encoding.DER)
        sha1 = _sha1(der)
        serial = format(leaf.serial_number, "X")
        device = AuthenticatedDevice(device_id, module_id or None, entry.auth_type, sha1, serial)
        if entry.auth_type is AuthType.SELF_SIGNED:
            # Matched by thumbprint alone, as Azure does: the CN is not asked (ref §4.2).
            sha256 = hashlib.sha256(der).hexdigest().upper()
            allowed = {t.upper() for t in entry.thumbprints}
            if sha1 not in allowed and sha256 not in allowed:
                raise Refusal.THUMBPRINT_MISMATCH.error()
            return Admission(device, leaf, None)
        if entry.auth_type is not AuthType.CERTIFICATE_AUTHORITY:
            raise Refusal.WRONG_AUTH_TYPE.error()
        if _common_name(leaf) != presented.client_id:
            raise Refusal.CN_MISMATCH.error()
        intermediates = [c for c in presented.chain if c != leaf]
        verified = _chains(leaf, intermediates, trusted.verified, now)
        if verified is None:
            if trusted.unverified and _chains(leaf, intermediates, trusted.unverified, now):
                raise Refusal.CA_UNVERIFIED.error()
            raise Refusal.UNTRUSTED_CA.error()
        return Admission(device, leaf, verified[1] if len(verified) >= 2 else None, verified[-1])

    def decide(
        self, admission: Admission, verdict: RevocationVerdict | None
    ) -> AuthenticatedDevice:
        """Step 2: the authenticated device, given the revocation source's verdict.

        Args:
            admission: what `admit` returned.
            verdict: the answer of the issuer's revocation source; ignored (and may be
                ``None``) when ``admission.issuer`` is ``None``.

        Raises:
            AuthenticationError: ``hub.certificate_revoked``; ``hub.revocation_unknown``
                when no source could answer and soft-fail is off, or when a check
                applies but no verdict was given.
        """
        if admission.issuer is None:
            return admission.device
        if verdict is None:
            raise Refusal.REVOCATION_UNKNOWN.error("not checked")
        if verdict.status is RevocationStatus.REVOKED:
            raise Refusal.CERTIFICATE_REVOKED.error(verdict.source)
        if verdict.status is RevocationStatus.UNKNOWN and not self.revocation_soft_fail:
            raise Refusal.REVOCATION_UNKNOWN.error()
        if verdict.fleetpki_ca_id is None:
            return admission.device
        return dataclasses.replace(admission.device, fleetpki_ca_id=verdict.fleetpki_ca_id)

    def admit_token(
        self, presented: PresentedToken, entry: RegistryEntry | None, now: dt.datetime
    ) -> AuthenticatedDevice:
        """Decide on a SAS token, in the order of the module docstring.

        Args:
            presented: the token, the client id and the username's host.
            entry: the registry entry of the client id's device, ``None`` if unregistered.
            now: the time of the check (timezone-aware ``datetime``).

        Raises:
            AuthenticationError: ``hub.sas_malformed``, ``hub.unknown_device``,
                ``hub.device_disabled``, ``hub.wrong_auth_type``, ``hub.sas_module``,
                ``hub.sas_policy_token``, ``hub.sas_wrong_resource``,
                ``hub.sas_expired``, ``hub.sas_bad_signature``.
        """
        try:
            token = SasToken.parse(presented.token)
        except SasTokenMalformed as exc:
            raise Refusal.SAS_MALFORMED.error() from exc
        device_id, _, module_id = presented.client_id.partition("/")
        if entry is None:
            raise Refusal.UNKNOWN_DEVICE.error()
        if entry.status is not DeviceStatus.ENABLED:
            raise Refusal.DEVICE_DISABLED.error()
        if entry.auth_type is not AuthType.SAS:
            raise Refusal.NOT_A_SAS_DEVICE.error()
        if module_id:
            raise Refusal.SAS_MODULE.error()
        if token.key_name is not None:
            raise Refusal.SAS_POLICY_TOKEN.error()
        if not token.grants(device_resource_uri(presented.host, device_id)):
            raise Refusal.SAS_WRONG_RESOURCE.error()
        if token.expired(now.timestamp()):
            raise Refusal.SAS_EXPIRED.error()
        index = token.signed_by(entry.symmetric_keys)
        if index is None:
            raise Refusal.SAS_BAD_SIGNATURE.error()
        return AuthenticatedDevice(
            device_id,
            None,
            AuthType.SAS,
            None,
            None,
            key_id=key_id(entry.symmetric_keys[index]),
            expires_at=dt.datetime.fromtimestamp(token.expiry, dt.UTC),
        )
