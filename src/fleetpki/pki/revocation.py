"""Revocation reasons: the closed set of RFC 5280 §5.3.1 CRLReason codes."""

from __future__ import annotations

import enum

from cryptography import x509

from fleetpki.errors import ValidationError

__all__ = ["RevocationReason"]


class RevocationReason(enum.Enum):
    """Why a certificate was revoked: RFC 5280 §5.3.1 ``CRLReason``.

    Each member's value is its ASN.1 ENUMERATED code.  Code 7 is unused by the
    RFC and has no member.  ``str()`` gives the RFC's camelCase name, the
    spelling that ``openssl crl -text`` and ``openssl ocsp`` print.
    """

    UNSPECIFIED = 0
    KEY_COMPROMISE = 1
    CA_COMPROMISE = 2
    AFFILIATION_CHANGED = 3
    SUPERSEDED = 4
    CESSATION_OF_OPERATION = 5
    CERTIFICATE_HOLD = 6
    REMOVE_FROM_CRL = 8
    PRIVILEGE_WITHDRAWN = 9
    AA_COMPROMISE = 10

    @property
    def code(self) -> int:
        """The ``CRLReason`` ENUMERATED value (0-10, never 7)."""
        return self.value

    @property
    def rfc_name(self) -> str:
        """The RFC 5280 camelCase name, for example ``keyCompromise``."""
        return _RFC_NAMES[self]

    def __str__(self) -> str:
        return self.rfc_name

    @classmethod
    def parse(cls, value: RevocationReason | str | int) -> RevocationReason:
        """Return the reason named by an RFC name (any case) or a numeric code.

        Args:
            value: a member, an RFC 5280 name such as ``keyCompromise`` (matched
                without regard to case), or a code such as ``1``.

        Raises:
            ValidationError: ``revocation.bad_reason`` for an unknown name, an
                unknown or unused code (7), or a value of another type.
        """
        if isinstance(value, RevocationReason):
            return value
        # bool is a subclass of int; True is not a reason code.
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        elif isinstance(value, str):
            found = _BY_FOLDED_NAME.get(value.strip().casefold())
            if found is not None:
                return found
        raise ValidationError(
            "revocation.bad_reason",
            f"unknown revocation reason {value!r}: expected one of "
            + ", ".join(f"{member.rfc_name} ({member.code})" for member in cls),
        )

    def to_reason_flags(self) -> x509.ReasonFlags:
        """The matching member of cryptography's :class:`x509.ReasonFlags`."""
        return _TO_FLAGS[self]

    @classmethod
    def from_reason_flags(cls, flags: x509.ReasonFlags) -> RevocationReason:
        """The reason matching a member of cryptography's :class:`x509.ReasonFlags`."""
        return _FROM_FLAGS[flags]


_RFC_NAMES: dict[RevocationReason, str] = {
    RevocationReason.UNSPECIFIED: "unspecified",
    RevocationReason.KEY_COMPROMISE: "keyCompromise",
    RevocationReason.CA_COMPROMISE: "cACompromise",
    RevocationReason.AFFILIATION_CHANGED: "affiliationChanged",
    RevocationReason.SUPERSEDED: "superseded",
    RevocationReason.CESSATION_OF_OPERATION: "cessationOfOperation",
    RevocationReason.CERTIFICATE_HOLD: "certificateHold",
    RevocationReason.REMOVE_FROM_CRL: "removeFromCRL",
    RevocationReason.PRIVILEGE_WITHDRAWN: "privilegeWithdrawn",
    RevocationReason.AA_COMPROMISE: "aACompromise",
}

_BY_FOLDED_NAME: dict[str, RevocationReason] = {
    name.casefold(): reason for reason, name in _RFC_NAMES.items()
}

_TO_FLAGS: dict[RevocationReason, x509.ReasonFlags] = {
    RevocationReason.UNSPECIFIED: x509.ReasonFlags.unspecified,
    RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    RevocationReason.CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    RevocationReason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
    RevocationReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    RevocationReason.CERTIFICATE_HOLD: x509.ReasonFlags.certificate_hold,
    RevocationReason.REMOVE_FROM_CRL: x509.ReasonFlags.remove_from_crl,
    RevocationReason.PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
    RevocationReason.AA_COMPROMISE: x509.ReasonFlags.aa_compromise,
}

_FROM_FLAGS: dict[x509.ReasonFlags, RevocationReason] = {
    flags: reason for reason, flags in _TO_FLAGS.items()
}
