"""Names: device ids (domains), DNS names and typed subject alternative names."""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass

from cryptography import x509

from fleetpki.errors import ValidationError

__all__ = [
    "MAX_DOMAIN_LENGTH",
    "SanType",
    "SubjectAltName",
    "dotnet_subject",
    "is_dns_name",
    "validate_domain_name",
]

#: Azure IoT Hub device ids are at most 128 characters (identity registry docs).
MAX_DOMAIN_LENGTH = 128

# Azure device ids: ASCII letters, digits and - . + % _ # * ? ! ( ) , = @ $ '
# (learn.microsoft.com, iot-hub-devguide-identity-registry).  A domain in
# fleetpki is either such a device id or a DNS name, and both fit this set.
_DOMAIN_RE = re.compile(r"[A-Za-z0-9\-.+%_#*?!(),=@$':]{1,128}")
# RFC 1035 §2.3.1 labels as relaxed by RFC 1123 §2.1 (a label may start with a digit);
# a leading "*." wildcard label is allowed for server certificates.
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def validate_domain_name(name: str) -> str:
    """Check a domain (device id or DNS name) and return it unchanged.

    Raises:
        ValidationError: ``domain.invalid_name`` when the name is empty, too long or
        holds characters outside the device-id set.
    """
    if not isinstance(name, str) or not _DOMAIN_RE.fullmatch(name):
        raise ValidationError(
            "domain.invalid_name",
            f"invalid domain {name!r}: 1-{MAX_DOMAIN_LENGTH} characters of letters, digits "
            "and - . + % _ # * ? ! ( ) , = @ $ '",
        )
    return name


def is_dns_name(name: str) -> bool:
    """Whether ``name`` is a fully qualified DNS name (an optional ``*.`` first label).

    RFC 5280 §4.2.1.6 asks for the preferred name syntax of RFC 1034 §3.5.  fleetpki
    also requires at least two labels and an alphabetic top-level label, as linters
    (pkilint) and public CAs do: a single label such as a GUID device id or
    ``localhost`` is not a DNS name here and belongs in the subject CN.
    """
    if not name or len(name) > 253 or name.endswith("."):
        return False
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if len(labels) < 2 or not (len(labels[-1]) >= 2 and labels[-1].isalpha()):
        return False
    return all(_LABEL_RE.fullmatch(label) for label in labels)


class SanType(enum.IntEnum):
    """GeneralName tags (RFC 5280 §4.2.1.6) as EZCA's ``SubjectAltType`` numbers them."""

    EMAIL = 1
    DNS = 2
    URI = 6
    IP = 7


@dataclass(frozen=True, slots=True)
class SubjectAltName:
    """One subject alternative name: its type and its text value."""

    type: SanType
    value: str

    @classmethod
    def from_general_name(cls, name: x509.GeneralName) -> SubjectAltName:
        """Convert a cryptography ``GeneralName``.

        Raises:
            ValidationError: ``csr.unsupported_san`` for other GeneralName kinds.
        """
        if isinstance(name, x509.DNSName):
            return cls(SanType.DNS, name.value)
        if isinstance(name, x509.IPAddress):
            return cls(SanType.IP, str(name.value))
        if isinstance(name, x509.RFC822Name):
            return cls(SanType.EMAIL, name.value)
        if isinstance(name, x509.UniformResourceIdentifier):
            return cls(SanType.URI, name.value)
        raise ValidationError(
            "csr.unsupported_san", f"unsupported subject alternative name {name!r}"
        )

    def to_general_name(self, *, local_names: Collection[str] = ()) -> x509.GeneralName:
        """Convert to a cryptography ``GeneralName``, checking the value's syntax.

        Args:
            local_names: single-label host names accepted as DNS names all the same
                (``localhost`` on a server certificate for this machine).

        Raises:
            ValidationError: ``san.invalid`` when the value does not fit its type.
        """
        value = self.value
        try:
            if self.type is SanType.DNS:
                if not is_dns_name(value) and value.lower() not in local_names:
                    raise ValueError(value)
                return x509.DNSName(value)
            if self.type is SanType.IP:
                return x509.IPAddress(ipaddress.ip_address(value))
            if self.type is SanType.EMAIL:
                local, _, host = value.partition("@")
                if not local or not is_dns_name(host) or not value.isascii():
                    raise ValueError(value)
                return x509.RFC822Name(value)
            if ":" not in value or not value.isascii():
                raise ValueError(value)
            return x509.UniformResourceIdentifier(value)
        except ValueError:
            raise ValidationError(
                "san.invalid", f"invalid {self.type.name} subject alternative name {value!r}"
            ) from None

    @property
    def authorization_name(self) -> str:
        """The domain a requester must hold to get this SAN: the DNS name, or the value."""
        return self.value


def dotnet_subject(name: x509.Name) -> str:
    """``name`` as Azure shows a certificate's subject: .NET's form, most specific RDN
    first, ``", "`` between (``CN=Issuing CA, O=Contoso``).
    """
    return ", ".join(rdn.rfc4514_string() for rdn in reversed(name.rdns))
