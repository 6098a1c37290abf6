"""Azure IoT Hub's shared access signature tokens: parse, sign, check (ref §3.1).

A token is ``SharedAccessSignature sr={resource}&sig={signature}&se={expiry}[&skn={policy}]``
(the fields in any order). ``sig`` is the base64 HMAC-SHA256, keyed with the
base64-decoded key, over the *URL-encoded* resource URI exactly as it appears in the
token, a newline, and ``se`` (learn.microsoft.com, iot-hub "Control access to IoT Hub
with shared access signatures", "Security token structure"). Both SDKs build it so:

* the device SDK (azure-iot-device 2.14.0, ``common/auth/sastoken.py``) signs
  ``quote(uri, safe="")`` + ``"\\n"`` + ``se`` for ``uri = {host}/devices/{deviceId}``
  (``/modules/{moduleId}`` for a module), with the device's own key and no ``skn``, and
  sends the token as the MQTT CONNECT password;
* the service SDK (azure-iot-hub 2.7.0) signs ``quote_plus(host)`` with a policy key and
  names the policy in ``skn``.

Microsoft's documentation asks for a lower-case encoding, which neither SDK sends
(``%2F`` is upper case and device ids keep their case), so a signature is checked over
the resource as sent and over its lower-cased form. The resource URI is a prefix, by
whole segments, of the endpoints the token grants: ``{host}/devices/d1`` grants
``{host}/devices/d1`` and everything under it, not ``{host}/devices/d10``.

Nothing here decides who may connect or call: the device policy
(`fleetpki.hub.policy`) and the service API's (`fleetpki.services.hub_sas`) do, from
these facts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

__all__ = [
    "SAS_PREFIX",
    "SasToken",
    "SasTokenMalformed",
    "device_resource_uri",
    "generate_key",
    "is_valid_key",
    "key_id",
    "make_device_token",
    "resource_covers",
    "sign",
]

#: How every token starts (the SDKs send it with the space).
SAS_PREFIX = "SharedAccessSignature "
#: Azure's bounds on a symmetric key, decoded (learn.microsoft.com, iot-hub REST
#: "Devices - Create Or Update Identity": "between 16 and 64 bytes").
_MIN_KEY_BYTES = 16
_MAX_KEY_BYTES = 64
#: A token longer than this is refused unread (the SDK's are about 150 characters).
_MAX_TOKEN_LENGTH = 4096


class SasTokenMalformed(ValueError):
    """The text is not a shared access signature token (no prefix, a field missing...)."""


def sign(encoded_resource: str, expiry: int | str, key: str, *, service_bus: bool = False) -> bytes:
    """The raw HMAC-SHA256 of ``{encoded_resource}\\n{expiry}`` under the base64 ``key``.

    IoT Hub keys the HMAC with the base64-decoded key; Service Bus and Event Hubs
    (``service_bus``) with the key's text itself, as azure-eventhub's
    ``generate_sas_token`` does (``HMAC(key.encode("utf-8"), ...)``).

    Raises:
        ValueError: ``key`` is not base64.
    """
    raw_key = base64.b64decode(key, validate=True)
    if service_bus:
        raw_key = key.encode()
    message = f"{encoded_resource}\n{expiry}".encode()
    return hmac.new(raw_key, message, hashlib.sha256).digest()


def is_valid_key(key: str) -> bool:
    """Whether ``key`` is base64 of 16 to 64 bytes, as Azure requires of symmetric keys."""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return False
    return _MIN_KEY_BYTES <= len(raw) <= _MAX_KEY_BYTES


def generate_key() -> str:
    """A new random 256-bit key, base64 (the length Azure generates)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def key_id(key: str) -> str:
    """A short public name for a key (16 hex digits of its SHA-256), to match sessions to it.

    It names which key a session was authenticated with, so that replacing that key can
    end the session; it is not a secret and reveals nothing useful about the key.
    """
    return hashlib.sha256(key.encode()).hexdigest()[:16].upper()


def device_resource_uri(host: str, device_id: str, module_id: str | None = None) -> str:
    """``{host}/devices/{deviceId}[/modules/{moduleId}]``, unencoded (the device SDK's URI)."""
    uri = f"{host}/devices/{device_id}"
    return uri if module_id is None else f"{uri}/modules/{module_id}"


def make_device_token(resource_uri: str, key: str, expiry: int) -> str:
    """A device token exactly as the device SDK builds it (no ``skn``), for tests and tools."""
    encoded = quote(resource_uri, safe="")
    signature = base64.b64encode(sign(encoded, expiry, key)).decode()
    return f"{SAS_PREFIX}sr={encoded}&sig={quote(signature, safe='')}&se={expiry}"


def _without_scheme(uri: str) -> str:
    scheme, sep, rest = uri.partition("://")
    return rest if sep and "/" not in scheme else uri


def _segments(uri: str) -> list[str]:
    return _without_scheme(uri).lower().rstrip("/").split("/")


def resource_covers(granted: str, resource: str) -> bool:
    """Whether resource URI ``granted`` is a whole-segment prefix of ``resource``.

    Compared without case, without a scheme and without a ``:port`` on the host, so
    ``hub.example/devices/d1`` covers ``https://HUB.example:443/devices/d1/messages`` but
    not ``hub.example/devices/d10``.
    """
    mine = _segments(granted)
    theirs = _segments(resource)
    mine[0] = mine[0].rsplit(":", 1)[0] if mine[0].count(":") == 1 else mine[0]
    theirs[0] = theirs[0].rsplit(":", 1)[0] if theirs[0].count(":") == 1 else theirs[0]
    return len(mine) <= len(theirs) and theirs[: len(mine)] == mine


@dataclass(frozen=True, slots=True)
class SasToken:
    """A parsed token: its fields as sent, nothing checked yet but their form.

    Attributes:
        resource: ``sr`` exactly as sent (URL-encoded), what the signature covers.
        signature: ``sig``, URL-decoded and base64-decoded.
        expiry: ``se``, seconds since the epoch.
        key_name: ``skn``, the shared access policy; ``None`` for a device's own key.
    """

    resource: str
    signature: bytes
    expiry: int
    key_name: str | None

    @classmethod
    def parse(cls, text: str) -> SasToken:
        """Split ``SharedAccessSignature sr=..&sig=..&se=..[&skn=..]``.

        Raises:
            SasTokenMalformed: no prefix, a part without ``=``, a field missing, repeated
                or unknown, ``se`` not a number, ``sig`` not base64, or over 4 KiB.
        """
        if len(text) > _MAX_TOKEN_LENGTH or not text.startswith(SAS_PREFIX):
            raise SasTokenMalformed("not a SharedAccessSignature")
        fields: dict[str, str] = {}
        for part in text[len(SAS_PREFIX) :].strip().split("&"):
            key, sep, value = part.partition("=")
            if not sep or key in fields or key not in ("sr", "sig", "se", "skn"):
                raise SasTokenMalformed("the SharedAccessSignature's fields are malformed")
            fields[key] = value
        resource, sig, expiry = fields.get("sr"), fields.get("sig"), fields.get("se")
        if not (resource and sig and expiry) or not (expiry.isascii() and expiry.isdigit()):
            raise SasTokenMalformed("the SharedAccessSignature lacks sr, sig or se")
        try:
            signature = base64.b64decode(unquote(sig), validate=True)
        except (binascii.Error, ValueError):
            raise SasTokenMalformed("the SharedAccessSignature's sig is not base64") from None
        return cls(resource, signature, int(expiry), fields.get("skn") or None)

    @property
    def service_bus(self) -> bool:
        """Whether this is an Event Hubs token (``sr`` is an ``sb://`` URI), signed as
        Service Bus signs: with the key's text, not its decoded bytes (:func:`sign`)."""
        return self.resource_uri.lower().startswith("sb://")

    @property
    def resource_uri(self) -> str:
        """``sr`` decoded: ``{host}[/devices/{id}...]``."""
        return unquote(self.resource)

    @property
    def host(self) -> str:
        """The resource URI's host (the hub's host name, maybe with a port).

        A URI with a scheme (``sb://{host}/{entity}``, what azure-eventhub signs for an
        Event Hubs endpoint) names its host after the ``//``.
        """
        return _without_scheme(self.resource_uri).split("/", 1)[0]

    def signed_by(self, keys: Sequence[str]) -> int | None:
        """The index in ``keys`` (base64) of the key that made ``sig``, or ``None``.

        The HMAC is computed over ``sr`` as sent and over its lower-cased form (module
        docstring), and compared in constant time with every key, so the time taken
        does not tell which key or form matched. A key that is not base64 matches nothing.
        """
        found: int | None = None
        resources = {self.resource, self.resource.lower()}
        for index, key in enumerate(keys):
            for resource in resources:
                try:
                    expected = sign(resource, self.expiry, key, service_bus=self.service_bus)
                except (binascii.Error, ValueError):
                    continue
                if hmac.compare_digest(expected, self.signature) and found is None:
                    found = index
        return found

    def grants(self, resource_uri: str) -> bool:
        """Whether the token's resource URI is a whole-segment prefix of ``resource_uri``.

        Compared without case (the documented lower-case form must match too),
        without a scheme (``sb://``, ``amqps://``, ``https://``: the audiences of AMQP
        claims) and without a ``:port`` on the host.
        """
        return resource_covers(self.resource_uri, resource_uri)

    def expired(self, now_epoch: float) -> bool:
        """Whether ``se`` is at or before ``now_epoch`` (seconds since the epoch)."""
        return self.expiry <= now_epoch
