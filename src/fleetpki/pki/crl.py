"""Certificate revocation lists: X.509 v2 CRLs built per RFC 5280 §5, DER out."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import itertools
import time
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from operator import itemgetter
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from fleetpki.errors import ValidationError
from fleetpki.keystore import Signer
from fleetpki.keystore.der import DerError, children, encode, whole
from fleetpki.keystore.tbs import replace_signature
from fleetpki.pki.revocation import RevocationReason

__all__ = [
    "DEFAULT_REFRESH_MARGIN",
    "MAX_CRL_NUMBER",
    "CachedCrl",
    "CrlScope",
    "RevokedEntry",
    "RevokedList",
    "RevokedRow",
    "StoredRevocation",
    "build_crl",
]

#: RFC 5280 §5.2.3: a CRL number is at most 20 octets; as a non-negative
#: DER INTEGER that leaves 159 bits.
MAX_CRL_NUMBER = 2**159 - 1

#: RFC 5280 §4.1.2.2: serial numbers are positive and at most 20 octets.
_MAX_SERIAL = 2**159 - 1

#: A cached CRL is rebuilt this long before its nextUpdate, so relying parties
#: that fetch just before expiry never receive a CRL about to go stale.
DEFAULT_REFRESH_MARGIN = dt.timedelta(minutes=5)

#: A revoked certificate as ``(serial, revoked_at, reason)``, the fields of :class:`RevokedEntry`.
RevokedRow = tuple[int, dt.datetime, RevocationReason]

#: A revoked certificate as a store reads it: ``(serial_hex, revoked_at, reason_code)``,
#: the serial in hexadecimal, the time as ``YYYY-MM-DD HH:MM:SS`` in UTC, the code as
#: RFC 5280 §5.3.1 numbers it. Plain strings and an int, so that a million of them cost
#: no per-row conversion before they are encoded.
StoredRevocation = tuple[str, str, int]

_URL_SCHEMES = frozenset({"http", "https", "ldap"})


class CrlScope(enum.Enum):
    """Which certificates a CRL covers, stated in its issuing distribution point.

    RFC 5280 §5.2.5: ``onlyContainsUserCerts`` and ``onlyContainsCACerts`` narrow a
    CRL's scope, and a relying party refuses to use a CRL whose scope excludes the
    certificate it checks, so the flag must match what the issuer really issues.
    """

    #: Every certificate the issuer issued: neither flag is set.
    ALL = "all"
    #: End-entity certificates only (``onlyContainsUserCerts``): an issuing CA
    #: whose pathLenConstraint is 0 and so issues nothing else.
    USER_CERTS = "user_certs"
    #: CA certificates only (``onlyContainsCACerts``): a root's authority
    #: revocation list (ARL) for its subordinate CAs.
    CA_CERTS = "ca_certs"

    @classmethod
    def for_issuer(cls, issuer_cert: x509.Certificate) -> CrlScope:
        """The narrowest scope that is always true for what ``issuer_cert`` can issue.

        A CA whose basic constraints carry ``pathLenConstraint`` 0 cannot issue
        (non-self-issued) CA certificates (RFC 5280 §4.2.1.9), so its CRLs cover
        user certificates only; any other CA gets :attr:`ALL`.
        """
        try:
            constraints = issuer_cert.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            return cls.ALL
        if constraints.value.ca and constraints.value.path_length == 0:
            return cls.USER_CERTS
        return cls.ALL


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    """One revoked certificate as a CRL lists it (RFC 5280 §5.1.2.6, §5.3.1).

    Args:
        serial: the certificate's serial number: positive, at most 20 octets.
        revoked_at: when it was revoked; a timezone-aware datetime.
        reason: why; ``UNSPECIFIED`` leaves the reason code extension out.

    Raises:
        ValidationError: ``crl.bad_serial`` for a serial that is not positive or
            longer than 20 octets, ``crl.naive_time`` for a naive ``revoked_at``,
            ``revocation.bad_reason`` for a reason that is not a
            :class:`RevocationReason`.
    """

    serial: int
    revoked_at: dt.datetime
    reason: RevocationReason = RevocationReason.UNSPECIFIED

    def __post_init__(self) -> None:
        _check_serial(self.serial)
        _require_aware(self.revoked_at, "revoked_at")
        if not isinstance(self.reason, RevocationReason):
            raise ValidationError(
                "revocation.bad_reason", f"reason must be a RevocationReason, not {self.reason!r}"
            )


@dataclass(frozen=True, slots=True)
class CachedCrl:
    """A built CRL held as DER with the times that decide when to rebuild it.

    A service keeps one per CA, answers reads from ``der`` while the CRL is fresh,
    and marks it stale when a certificate is revoked so that the next read rebuilds.

    Args:
        der: the DER-encoded CRL.
        crl_number: its CRL number (RFC 5280 §5.2.3).
        this_update: its thisUpdate, timezone-aware.
        next_update: its nextUpdate, timezone-aware.
        stale: true once a revocation has made the CRL out of date.
    """

    der: bytes
    crl_number: int
    this_update: dt.datetime
    next_update: dt.datetime
    stale: bool = False

    @classmethod
    def from_der(cls, der: bytes) -> CachedCrl:
        """Read the number and times out of a CRL that :func:`build_crl` made.

        Raises:
            ValidationError: ``crl.malformed`` when ``der`` is not a CRL with a
                CRL number and a nextUpdate.
        """
        try:
            crl = x509.load_der_x509_crl(der)
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except (ValueError, x509.ExtensionNotFound) as exc:
            raise ValidationError("crl.malformed", "not a CRL with a CRL number") from exc
        next_update = crl.next_update_utc
        if next_update is None:
            raise ValidationError("crl.malformed", "the CRL has no nextUpdate")
        return cls(der, number, crl.last_update_utc, next_update)

    def is_fresh(
        self, now: dt.datetime, *, refresh_margin: dt.timedelta = DEFAULT_REFRESH_MARGIN
    ) -> bool:
        """Whether the cached CRL may still be served at ``now``.

        Args:
            now: the current time, timezone-aware.
            refresh_margin: how long before nextUpdate the CRL counts as due.
        """
        return not self.stale and now < self.next_update - refresh_margin

    def mark_stale(self) -> CachedCrl:
        """A copy marked stale: a revocation happened after this CRL was built."""
        return dataclasses.replace(self, stale=True)


@dataclass(frozen=True, slots=True)
class RevokedList:
    """The encoded entries of a CRL's ``revokedCertificates``, sorted by serial.

    ``content`` is the DER of each entry (RFC 5280 §5.1: ``SEQUENCE { userCertificate,
    revocationDate, crlEntryExtensions }``) one after the other, without the list's own
    header. A revocation only ever adds an entry, so the next CRL's list is the previous
    CRL's (:meth:`of_crl`) with the revocations since added (:meth:`merged`): a million
    entries are copied as bytes, not encoded again.
    """

    content: bytes = b""

    @classmethod
    def of_stored(cls, rows: Iterable[StoredRevocation]) -> RevokedList:
        """Encode a store's rows (:data:`StoredRevocation`), best read in serial order.

        Raises:
            ValidationError: ``crl.bad_serial`` (not hexadecimal, not positive or longer
                than 20 octets), ``crl.bad_time`` (not ``YYYY-MM-DD HH:MM:SS``),
                ``revocation.bad_reason`` (an unknown code, or removeFromCRL, which only
                delta CRLs may hold), ``crl.duplicate_serial``.
        """
        times: dict[str, bytes] = {}
        extensions = _REASON_EXTENSIONS_BY_CODE
        encoded: list[bytes] = []
        append = encoded.append
        previous = b""
        ordered = True
        for index, (serial_hex, revoked_at, code) in enumerate(rows):
            if not index & _PAUSE_MASK:
                time.sleep(0)  # let the process's other threads in, as below
            number = _serial_octets(serial_hex)
            # The INTEGER's length octet and value: for minimal positive integers,
            # comparing these octet strings compares the numbers.
            key = b"%c%b" % (len(number), number)
            if key <= previous:
                if key == previous:
                    raise ValidationError(
                        "crl.duplicate_serial", f"serial {serial_hex} is listed more than once"
                    )
                ordered = False
            previous = key
            when = times.get(revoked_at)
            if when is None:
                when = times[revoked_at] = _stored_time(revoked_at)
            extension = extensions.get(code)
            if extension is None:
                RevocationReason.parse(code)  # revocation.bad_reason for an unknown code
                raise ValidationError(
                    "revocation.bad_reason",
                    "removeFromCRL belongs in delta CRLs only (RFC 5280 §5.3.1)",
                )
            # Each part is shorter than 128 octets, and so is the entry.
            tail = when + extension
            append(b"\x30%c\x02%b%b" % (len(key) + len(tail) + 1, key, tail))
        if not ordered:
            encoded.sort(key=_entry_key)
            for before, after in itertools.pairwise(encoded):
                if _entry_key(before) == _entry_key(after):
                    raise ValidationError(
                        "crl.duplicate_serial", "a serial is listed more than once"
                    )
        return cls(b"".join(encoded))

    @classmethod
    def of_crl(cls, der: bytes) -> RevokedList:
        """The entries of a CRL that :func:`build_crl` made, as they are encoded in it.

        Raises:
            ValidationError: ``crl.malformed`` when ``der`` is not a CertificateList.
        """
        try:
            tag, start, end = _tlv(der, 0)
            if tag != _SEQUENCE or end != len(der):
                raise DerError("a CertificateList is one SEQUENCE")
            tag, at, tbs_end = _tlv(der, start)  # TBSCertList
            if tag != _SEQUENCE:
                raise DerError("a TBSCertList is a SEQUENCE")
            # version, signature, issuer, thisUpdate, [nextUpdate], [revokedCertificates],
            # [crlExtensions]: the list is the SEQUENCE that follows the times.
            seen_time = False
            while at < tbs_end:
                tag, content, after = _tlv(der, at)
                if tag in (_UTC_TIME, _GENERALIZED_TIME):
                    seen_time = True
                elif tag == _SEQUENCE and seen_time:
                    return cls(der[content:after])
                elif seen_time:
                    break
                at = after
        except (DerError, IndexError) as exc:
            raise ValidationError("crl.malformed", f"not a CertificateList: {exc}") from exc
        return cls()

    def merged(self, added: RevokedList) -> RevokedList:
        """These entries with ``added``'s put in their places by serial; an entry whose
        serial is already listed is left out (it is the same revocation, read twice).

        ``added`` must be sorted, as every :class:`RevokedList` is.
        """
        if not added.content:
            return self
        if not self.content:
            return added
        base = self.content
        offsets = _offsets(base)
        key_at = partial(_key_at, base)
        view = memoryview(base)
        pieces: list[bytes | memoryview] = []
        copied = 0
        for start in _offsets(added.content):
            key = _key_at(added.content, start)
            index = bisect_left(offsets, key, lo=0, key=key_at)
            if index < len(offsets) and key_at(offsets[index]) == key:
                continue
            position = offsets[index] if index < len(offsets) else len(base)
            pieces.append(view[copied:position])
            pieces.append(added.content[start : _tlv(added.content, start)[2]])
            copied = position
        pieces.append(view[copied:])
        return RevokedList(b"".join(pieces))

    def __len__(self) -> int:
        """How many entries there are (walks them)."""
        return len(_offsets(self.content))


def build_crl(
    issuer_cert: x509.Certificate,
    signer: Signer,
    revoked: Iterable[RevokedEntry],
    *,
    crl_number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    idp_url: str | None,
    scope: CrlScope | None = None,
    revoked_rows: Iterable[RevokedRow] = (),
    listed: RevokedList | None = None,
) -> bytes:
    """Build and sign a complete X.509 v2 CRL (RFC 5280 §5) and return its DER.

    The CRL carries the authority key identifier (§5.2.1), the CRL number
    (§5.2.3) and, when ``idp_url`` or a narrowed scope is given, a critical
    issuing distribution point (§5.2.5).  Entries are sorted by serial; each has
    its revocation date and, unless the reason is ``unspecified``, a reason code
    extension (§5.3.1).

    Args:
        issuer_cert: the CA certificate whose certificates the CRL covers.
        signer: the CA's key; it must match ``issuer_cert``'s public key.
        revoked: the revoked certificates; serials must be unique.
        crl_number: a monotonically increasing number, 0 to ``MAX_CRL_NUMBER``.
        this_update: the issue time, timezone-aware.
        next_update: when the next CRL will be issued, after ``this_update``.
        idp_url: the URL that the certificates' CRL distribution points name; it
            becomes the distribution point full name, so relying parties can match
            the CRL to a certificate (RFC 5280 §6.3.3 (b)(2)(i)).  ``None`` leaves it out.
        scope: what the CRL covers; ``None`` takes :meth:`CrlScope.for_issuer`.
        revoked_rows: more revoked certificates as plain ``(serial, revoked_at,
            reason)`` tuples, checked as they are encoded.
        listed: entries already encoded (:class:`RevokedList`: those of the previous
            CRL with the revocations since, or a store's rows); ``revoked`` and
            ``revoked_rows`` are added to them, skipping serials they already list.

    Raises:
        ValidationError: ``crl.bad_number``, ``crl.bad_validity``, ``crl.naive_time``,
            ``crl.bad_url``, ``crl.duplicate_serial``, ``revocation.bad_reason`` (a
            ``removeFromCRL`` entry, which only delta CRLs may hold),
            ``crl.issuer_not_ca``, ``crl.issuer_cannot_sign_crl`` (key usage without
            cRLSign, RFC 5280 §4.2.1.3) or ``crl.signer_mismatch``.
    """
    _check_issuer(issuer_cert, signer)
    if isinstance(crl_number, bool) or not 0 <= crl_number <= MAX_CRL_NUMBER:
        raise ValidationError(
            "crl.bad_number", "the CRL number must be between 0 and 2**159 - 1 (RFC 5280 §5.2.3)"
        )
    this_update = _require_aware(this_update, "this_update")
    next_update = _require_aware(next_update, "next_update")
    if next_update <= this_update:
        raise ValidationError("crl.bad_validity", "nextUpdate must be later than thisUpdate")
    if scope is None:
        scope = CrlScope.for_issuer(issuer_cert)

    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(_authority_key_identifier(issuer_cert, signer), critical=False)
        # RFC 5280 §5.2.3: the CRL number is non-critical.
        .add_extension(x509.CRLNumber(crl_number), critical=False)
    )
    idp = _issuing_distribution_point(idp_url, scope)
    if idp is not None:
        # RFC 5280 §5.2.5: the issuing distribution point is a critical extension.
        builder = builder.add_extension(idp, critical=True)
    # cryptography signs the header (issuer, times, extensions, the signature
    # algorithm) with no entries; the entries are encoded here and spliced in, and the
    # whole TBS signed again. Its builder copies its entry list on every addition and
    # builds a Python object per entry: a million entries would take minutes.
    header = signer.sign_crl(builder)
    rows = (
        *((entry.serial, entry.revoked_at, entry.reason) for entry in revoked),
        *revoked_rows,
    )
    entries = RevokedList(_revoked_certificates(rows))
    if listed is not None:
        entries = listed.merged(entries)
    tbs = _with_entries(header.tbs_certlist_bytes, entries.content)
    return replace_signature(
        header.public_bytes(serialization.Encoding.DER), signer.sign_tbs(tbs), tbs=tbs
    )


def _check_issuer(issuer_cert: x509.Certificate, signer: Signer) -> None:
    try:
        constraints = issuer_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ValidationError("crl.issuer_not_ca", "only a CA certificate can issue CRLs")
    try:
        key_usage = issuer_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        key_usage = None
    if key_usage is not None and not key_usage.crl_sign:
        raise ValidationError(
            "crl.issuer_cannot_sign_crl",
            "the CA certificate's key usage lacks cRLSign (RFC 5280 §4.2.1.3)",
        )
    if _spki(signer.public_key()) != _spki(issuer_cert.public_key()):
        raise ValidationError(
            "crl.signer_mismatch", "the signer's key is not the CA certificate's key"
        )


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _authority_key_identifier(
    issuer_cert: x509.Certificate, signer: Signer
) -> x509.AuthorityKeyIdentifier:
    # RFC 5280 §5.2.1: conforming CRL issuers MUST include the AKI, and its key
    # identifier is the issuer certificate's subject key identifier (§4.2.1.2).
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _issuing_distribution_point(
    idp_url: str | None, scope: CrlScope
) -> x509.IssuingDistributionPoint | None:
    full_name: list[x509.GeneralName] | None = None
    if idp_url is not None:
        _check_url(idp_url)
        full_name = [x509.UniformResourceIdentifier(idp_url)]
    if full_name is None and scope is CrlScope.ALL:
        # RFC 5280 §5.2.5: the extension MUST NOT be an empty sequence.
        return None
    return x509.IssuingDistributionPoint(
        full_name=full_name,
        relative_name=None,
        only_contains_user_certs=scope is CrlScope.USER_CERTS,
        only_contains_ca_certs=scope is CrlScope.CA_CERTS,
        only_some_reasons=None,
        # A complete CRL for the issuer's own certificates: not indirect, no
        # attribute certificates.
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )


def _check_url(url: str) -> None:
    # RFC 5280 §4.2.1.13 and §5.2.5: the name is an IA5String URI that a relying
    # party can fetch the CRL from.
    parts = urlsplit(url) if url.isascii() else None
    if parts is None or parts.scheme not in _URL_SCHEMES or not parts.netloc:
        raise ValidationError(
            "crl.bad_url", f"the distribution point must be an http(s) or ldap URL, not {url!r}"
        )


def _with_entries(tbs: bytes, entries: bytes) -> bytes:
    # RFC 5280 §5.1: TBSCertList ::= SEQUENCE { version, signature, issuer, thisUpdate,
    # nextUpdate, revokedCertificates SEQUENCE OF ... OPTIONAL, crlExtensions [0] };
    # the list goes right before the extensions and is absent when empty.
    if not entries:
        return tbs
    fields = [field.encoding for field in children(whole(tbs))]
    at = next(i for i, field in enumerate(fields) if field[0] == _CRL_EXTENSIONS_TAG)
    fields.insert(at, _der_header(_SEQUENCE, len(entries)) + entries)
    return encode(_SEQUENCE, b"".join(fields))


def _revoked_certificates(revoked: Iterable[RevokedRow]) -> bytes:
    """The entries of ``revokedCertificates``, DER, sorted by serial (no outer header)."""
    rows = sorted(revoked, key=itemgetter(0))
    if not rows:
        return b""
    times: dict[dt.datetime, bytes] = {}
    encoded: list[bytes] = []
    previous = 0
    for index, (serial, revoked_at, reason) in enumerate(rows):
        if not index % _ENTRIES_BETWEEN_PAUSES:
            # A million entries take seconds of pure Python: hand the interpreter to
            # the process's other threads (the requests a server answers meanwhile)
            # now and then. Not too often: each pause can cost up to a switch interval
            # (5 ms) when they are busy, and at every 256 entries the build of a
            # million took half a minute beside an OCSP load.
            time.sleep(0)
        if not 0 < serial <= _MAX_SERIAL or isinstance(serial, bool):
            _check_serial(serial)
        if serial == previous:
            raise ValidationError(
                "crl.duplicate_serial", f"serial {serial:#x} is listed more than once"
            )
        previous = serial
        when = times.get(revoked_at)
        if when is None:
            when = times[revoked_at] = _der_time(revoked_at)
        extensions = _REASON_EXTENSIONS.get(reason)
        if extensions is None:
            raise ValidationError(
                "revocation.bad_reason",
                "removeFromCRL belongs in delta CRLs only (RFC 5280 §5.3.1)",
            )
        number = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
        # RFC 5280 §5.1: SEQUENCE { userCertificate INTEGER, revocationDate Time,
        # crlEntryExtensions Extensions OPTIONAL }; each part is shorter than 128 octets.
        content = b"%c%c%b%b%b" % (_INTEGER, len(number), number, when, extensions)
        encoded.append(b"%c%c%b" % (_SEQUENCE, len(content), content))
    return b"".join(encoded)


def _tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """``(tag, content start, end)`` of the DER element at ``offset``, without copying."""
    tag, first = data[offset], data[offset + 1]
    if first < 0x80:
        return tag, offset + 2, offset + 2 + first
    count = first & 0x7F
    if not 0 < count <= 4:
        raise DerError("bad DER length")
    start = offset + 2 + count
    end = start + int.from_bytes(data[offset + 2 : start], "big")
    if end > len(data):
        raise DerError("DER element runs past its container")
    return tag, start, end


def _offsets(content: bytes) -> array[int]:
    """Where each entry of an entry list starts."""
    out: array[int] = array("Q")
    append = out.append
    at, size = 0, len(content)
    while at < size:
        if not len(out) & _PAUSE_MASK:
            time.sleep(0)
        append(at)
        length = content[at + 1]
        at = at + 2 + length if length < 0x80 else _tlv(content, at)[2]
    if at != size:
        raise ValidationError("crl.malformed", "an entry runs past the entry list")
    return out


def _key_at(content: bytes, at: int) -> bytes:
    """The serial of the entry at ``at`` as its INTEGER's length and value octets."""
    _, start, _ = _tlv(content, at)
    if content[start] != _INTEGER:
        raise ValidationError("crl.malformed", "an entry does not start with its serial")
    return content[start + 1 : start + 2 + content[start + 1]]


def _entry_key(entry: bytes) -> bytes:
    return _key_at(entry, 0)


def _serial_octets(serial_hex: str) -> bytes:
    """A serial in hex as its minimal DER INTEGER value (RFC 5280 §4.1.2.2)."""
    digits = serial_hex.lstrip("0")
    if len(digits) & 1:
        digits = "0" + digits
    elif digits and digits[0] in _HIGH_NIBBLES:
        digits = "00" + digits  # the high bit set: a leading zero octet keeps it positive
    try:
        number = bytes.fromhex(digits)
    except ValueError:
        number = b""
    if not number or len(number) > 20 or not digits.isascii():
        raise ValidationError(
            "crl.bad_serial",
            f"serial {serial_hex!r} is not a positive hexadecimal number of at most 20 "
            "octets (RFC 5280 §4.1.2.2)",
        )
    return number


def _stored_time(revoked_at: str) -> bytes:
    """``YYYY-MM-DD HH:MM:SS`` (UTC) as the DER Time of RFC 5280 §5.1.2.6."""
    # Sliced, not parsed: a million revocations may each have a second of their own.
    if not isinstance(revoked_at, str) or len(revoked_at) != 19:
        revoked_at = "?" * 19
    digits = (
        revoked_at[0:4]
        + revoked_at[5:7]
        + revoked_at[8:10]
        + revoked_at[11:13]
        + revoked_at[14:16]
        + revoked_at[17:19]
    )
    separators = revoked_at[4] + revoked_at[7] + revoked_at[10] + revoked_at[13] + revoked_at[16]
    if (
        separators != "-- ::"
        or not (digits.isascii() and digits.isdigit())
        or not ("01" <= digits[4:6] <= "12" and "01" <= digits[6:8] <= "31")
        or not (digits[8:10] <= "23" and digits[10:12] <= "59" and digits[12:14] <= "59")
    ):
        raise ValidationError(
            "crl.bad_time", f"a revocation time must read YYYY-MM-DD HH:MM:SS, not {revoked_at!r}"
        )
    # UTCTime through 2049, GeneralizedTime from 2050 (as _der_time).
    if "1950" <= digits[:4] < "2050":
        return b"\x17\x0d" + digits[2:].encode() + b"Z"
    return b"\x18\x0f" + digits.encode() + b"Z"


def _der_header(tag: int, length: int) -> bytes:
    if length < 0x80:
        return bytes([tag, length])
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big")


def _der_time(when: dt.datetime) -> bytes:
    # RFC 5280 §5.1.2.6 (as §4.1.2.5): UTCTime through 2049, GeneralizedTime from
    # 2050, both in UTC with whole seconds.
    if when.tzinfo is not dt.UTC:
        _require_aware(when, "revoked_at")
        when = when.astimezone(dt.UTC)
    # Formatting the fields is several times cheaper than strftime.
    fields = (when.month, when.day, when.hour, when.minute, when.second)
    if 1950 <= when.year < 2050:
        return b"\x17\x0d%02d%02d%02d%02d%02d%02dZ" % (when.year % 100, *fields)
    return b"\x18\x0f%04d%02d%02d%02d%02d%02dZ" % (when.year, *fields)


def _reason_extensions(reason: RevocationReason) -> bytes:
    # RFC 5280 §5.3.1: the reason code extension is non-critical, and CRL issuers
    # SHOULD leave it out rather than use the reason code unspecified (0).
    if reason is RevocationReason.UNSPECIFIED:
        return b""
    code = encode(_OCTET_STRING, encode(_ENUMERATED, bytes([reason.code])))
    extension = encode(_SEQUENCE, encode(_OBJECT_IDENTIFIER, _CRL_REASON_OID) + code)
    return encode(_SEQUENCE, extension)


_ENTRIES_BETWEEN_PAUSES = 4096
#: ``index & _PAUSE_MASK == 0`` every 4,096 entries: as _ENTRIES_BETWEEN_PAUSES.
_PAUSE_MASK = 4095
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_HIGH_NIBBLES = frozenset("89ABCDEFabcdef")
_SEQUENCE = 0x30
_INTEGER = 0x02
_OCTET_STRING = 0x04
_ENUMERATED = 0x0A
_OBJECT_IDENTIFIER = 0x06
_CRL_EXTENSIONS_TAG = 0xA0
#: id-ce-cRLReasons, 2.5.29.21.
_CRL_REASON_OID = bytes([0x55, 0x1D, 0x15])
#: Each reason's crlEntryExtensions, encoded once; removeFromCRL has none (delta only).
_REASON_EXTENSIONS: dict[RevocationReason, bytes] = {
    reason: _reason_extensions(reason)
    for reason in RevocationReason
    if reason is not RevocationReason.REMOVE_FROM_CRL
}
_REASON_EXTENSIONS_BY_CODE: dict[int, bytes] = {
    reason.code: extensions for reason, extensions in _REASON_EXTENSIONS.items()
}


def _check_serial(serial: int) -> None:
    if isinstance(serial, bool) or not isinstance(serial, int) or not 0 < serial <= _MAX_SERIAL:
        raise ValidationError(
            "crl.bad_serial",
            "a serial number must be positive and at most 20 octets (RFC 5280 §4.1.2.2)",
        )


def _require_aware(value: dt.datetime, what: str) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError("crl.naive_time", f"{what} must be a timezone-aware datetime")
    # Whole seconds in UTC: X.509 times carry no fractions (RFC 5280 §4.1.2.5).
    return value.astimezone(dt.UTC).replace(microsecond=0)
