"""The encoded entry list of a CRL: from a store's plain rows, and the previous CRL's plus new ones."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest
from cryptography import x509

from fleetpki.errors import ValidationError
from fleetpki.pki.crl import RevokedList, StoredRevocation, build_crl
from fleetpki.pki.revocation import RevocationReason
from support.openssl import crl_verify, openssl
from support.pkilint import assert_lints_clean
from support.testca import MiniCA, make_ca

CRL_URL = "http://pki.example.test/crl/issuing.crl"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
HOUR = dt.timedelta(hours=1)
# One octet, a high bit that needs a leading zero octet, the 20-octet maximum.
EDGE_SERIALS = [1, 0x7F, 0x80, 0xFF, 0x100, 2**63, 2**127 + 5, 2**159 - 1]
CODES = [r.code for r in RevocationReason if r is not RevocationReason.REMOVE_FROM_CRL]


@pytest.fixture(scope="module", params=["p256", "rsa2048"])
def ca(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> MiniCA:
    return make_ca(tmp_path_factory.mktemp(f"ca-{request.param}"), request.param)


def _stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S")


def _rows(serials: list[int], *, year: int = 2026) -> list[StoredRevocation]:
    return [
        (
            format(serial, "X"),
            _stamp(
                dt.datetime(
                    year + index % 30,
                    1 + index % 12,
                    1 + index % 28,
                    index % 24,
                    index % 60,
                    (7 * index) % 60,
                )
            ),
            CODES[index % len(CODES)],
        )
        for index, serial in enumerate(serials)
    ]


def _crl(ca: MiniCA, listed: RevokedList, number: int = 1) -> bytes:
    return build_crl(
        ca.cert,
        ca.signer,
        [],
        crl_number=number,
        this_update=NOW - dt.timedelta(minutes=1),
        next_update=NOW + 24 * HOUR,
        idp_url=CRL_URL,
        listed=listed,
    )


def _listed(der: bytes) -> list[tuple[int, dt.datetime, int]]:
    out = []
    for entry in x509.load_der_x509_crl(der):
        try:
            flags = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            code = RevocationReason.from_reason_flags(flags).code
        except x509.ExtensionNotFound:
            code = 0
        out.append((entry.serial_number, entry.revocation_date_utc, code))
    return out


def _expected(rows: list[StoredRevocation]) -> list[tuple[int, dt.datetime, int]]:
    return sorted(
        (
            int(serial, 16),
            dt.datetime.strptime(when, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC),
            code,
        )
        for serial, when, code in rows
    )


def test_stored_rows_encode_as_build_crl_encodes_entries(ca: MiniCA, tmp_path: Path) -> None:
    serials = [*EDGE_SERIALS, *range(1000, 1200)]
    # Both UTCTime (through 2049) and GeneralizedTime (from 2050), RFC 5280 §5.1.2.6.
    rows = _rows(serials, year=2040)
    # Read in serial order, as the store reads them, and in any other order.
    in_order = sorted(rows, key=lambda row: int(row[0], 16))
    shuffled = list(rows)
    random.Random(5).shuffle(shuffled)
    der = _crl(ca, RevokedList.of_stored(in_order))
    assert RevokedList.of_stored(shuffled) == RevokedList.of_stored(in_order)
    assert _listed(der) == _expected(rows)
    # The same CRL as through the entry rows that build_crl takes.
    reference = build_crl(
        ca.cert,
        ca.signer,
        [],
        crl_number=1,
        this_update=NOW - dt.timedelta(minutes=1),
        next_update=NOW + 24 * HOUR,
        idp_url=CRL_URL,
        revoked_rows=[(s, w, RevocationReason(c)) for s, w, c in _expected(rows)],
    )
    assert RevokedList.of_crl(reference) == RevokedList.of_crl(der)
    assert len(RevokedList.of_crl(der)) == len(serials)
    path = tmp_path / "stored.crl"
    path.write_bytes(der)
    assert crl_verify(path, ca.pem)
    text = openssl("crl", "-inform", "DER", "-in", str(path), "-noout", "-text").stdout
    # openssl reads every entry, the serial with the high bit set among them.
    assert text.count("Serial Number: ") == len(serials)
    assert "Serial Number: 80\n" in text and "Key Compromise" in text
    assert_lints_clean("crl", der)


def test_the_next_crl_is_the_previous_ones_entries_with_the_new_in_their_places(
    ca: MiniCA, tmp_path: Path
) -> None:
    generator = random.Random(11)
    old = _rows(sorted({generator.getrandbits(120) | 1 for _ in range(3000)}))
    previous = _crl(ca, RevokedList.of_stored(old))
    # New serials before, between and after the listed ones, and two already listed
    # (read twice: once in the previous CRL, once as new), which stay listed once.
    fresh = _rows([1, 2**121, *sorted({generator.getrandbits(120) | 1 for _ in range(40)})])
    again = old[:1] + old[-1:]
    added = RevokedList.of_stored([*fresh, *again])
    following = _crl(ca, RevokedList.of_crl(previous).merged(added), number=2)
    assert _listed(following) == _expected(old + fresh)
    assert RevokedList.of_crl(previous).merged(RevokedList()) == RevokedList.of_crl(previous)
    assert RevokedList().merged(added) == added
    path = tmp_path / "next.crl"
    path.write_bytes(following)
    assert crl_verify(path, ca.pem)
    assert_lints_clean("crl", following)


def test_a_crl_without_entries_has_an_empty_list(ca: MiniCA) -> None:
    empty = _crl(ca, RevokedList())
    assert RevokedList.of_crl(empty) == RevokedList()
    assert len(x509.load_der_x509_crl(empty)) == 0
    assert_lints_clean("crl", empty)


@pytest.mark.parametrize(
    ("row", "code"),
    [
        (("0", "2026-12-04 10:00:00", 0), "crl.bad_serial"),
        (("", "2026-12-04 10:00:00", 0), "crl.bad_serial"),
        (("XYZ", "2026-12-04 10:00:00", 0), "crl.bad_serial"),
        (("1" + "0" * 40, "2026-12-04 10:00:00", 0), "crl.bad_serial"),
        (("A1", "2026-12-04T10:00:00", 0), "crl.bad_time"),
        (("A1", "2026-13-04 10:00:00", 0), "crl.bad_time"),
        (("A1", "2026-12-04 10:00", 0), "crl.bad_time"),
        (("A1", "2026-12-04 10:00:00", 8), "revocation.bad_reason"),
        (("A1", "2026-12-04 10:00:00", 7), "revocation.bad_reason"),
    ],
)
def test_bad_stored_rows_are_refused(row: StoredRevocation, code: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RevokedList.of_stored([("5", "2026-12-04 10:00:00", 1), row])
    assert caught.value.code == code


def test_a_serial_stored_twice_is_refused() -> None:
    for rows in (
        [("5", "2026-12-04 10:00:00", 1), ("05", "2026-12-04 11:00:00", 0)],
        [
            ("9", "2026-12-04 10:00:00", 1),
            ("5", "2026-12-04 10:00:00", 1),
            ("5", "2026-12-04 10:00:00", 1),
        ],
    ):
        with pytest.raises(ValidationError) as caught:
            RevokedList.of_stored(rows)
        assert caught.value.code == "crl.duplicate_serial"


def test_something_that_is_not_a_crl_is_refused() -> None:
    for der in (b"", b"\x30\x00", b"\x30\x05\x02\x01\x01", b"\x04\x00"):
        with pytest.raises(ValidationError) as caught:
            RevokedList.of_crl(der)
        assert caught.value.code == "crl.malformed"
