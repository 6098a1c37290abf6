"""CRLs: RFC 5280 §5 structure, pkilint, and openssl as the relying party."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from fleetpki.errors import ValidationError
from fleetpki.pki.crl import CachedCrl, CrlScope, RevokedEntry, build_crl
from fleetpki.pki.revocation import RevocationReason
from support.openssl import crl_verify, verify, verify_with_crl
from support.pkilint import assert_lints_clean
from support.testca import MiniCA, issue_leaf, key_usage, make_ca

CRL_URL = "http://pki.example.test/crl/issuing.crl"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
HOUR = dt.timedelta(hours=1)

REASONS_IN_FULL_CRLS = [r for r in RevocationReason if r is not RevocationReason.REMOVE_FROM_CRL]


def serial_of(pem: Path) -> int:
    return x509.load_pem_x509_certificate(pem.read_bytes()).serial_number


@pytest.fixture(scope="module", params=["p256", "rsa2048"])
def ca(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> MiniCA:
    return make_ca(tmp_path_factory.mktemp("ca"), request.param)


def crl_for(
    ca: MiniCA,
    entries: list[RevokedEntry],
    *,
    number: int = 1,
    idp_url: str | None = CRL_URL,
    scope: CrlScope | None = None,
) -> bytes:
    return build_crl(
        ca.cert,
        ca.signer,
        entries,
        crl_number=number,
        this_update=NOW - dt.timedelta(minutes=1),
        next_update=NOW + 24 * HOUR,
        idp_url=idp_url,
        scope=scope,
    )


def write(path: Path, der: bytes) -> Path:
    path.write_bytes(der)
    return path


# -- pkilint ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entries",
    [
        [],
        [RevokedEntry(0x1234, NOW - HOUR)],
        [RevokedEntry(2 + i, NOW - HOUR, reason) for i, reason in enumerate(REASONS_IN_FULL_CRLS)],
        [RevokedEntry(2**159 - 1, NOW - HOUR, RevocationReason.KEY_COMPROMISE)],
    ],
    ids=["empty", "unspecified", "every-reason", "largest-serial"],
)
@pytest.mark.parametrize("scope", list(CrlScope))
def test_crl_lints_clean(ca: MiniCA, entries: list[RevokedEntry], scope: CrlScope) -> None:
    assert_lints_clean("crl", crl_for(ca, entries, scope=scope), include_warnings=True)


def test_crl_without_idp_lints_clean(ca: MiniCA) -> None:
    der = crl_for(ca, [RevokedEntry(7, NOW)], idp_url=None, scope=CrlScope.ALL)
    assert_lints_clean("crl", der, include_warnings=True)


def test_crl_far_future_times_lint_clean(ca: MiniCA) -> None:
    # RFC 5280 §5.1.2.4: GeneralizedTime from 2050 on.
    later = dt.datetime(2050, 1, 2, tzinfo=dt.UTC)
    der = build_crl(
        ca.cert,
        ca.signer,
        [RevokedEntry(9, later)],
        crl_number=3,
        this_update=later,
        next_update=later + HOUR,
        idp_url=CRL_URL,
    )
    assert_lints_clean("crl", der, include_warnings=True)


# -- structure -------------------------------------------------------------------------


def test_crl_carries_rfc5280_extensions(ca: MiniCA) -> None:
    crl = x509.load_der_x509_crl(crl_for(ca, [], number=42))
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber)
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert crl.issuer == ca.cert.subject
    assert aki.value.key_identifier == ca_ski.digest
    assert not aki.critical
    assert number.value.crl_number == 42
    assert not number.critical
    assert idp.critical
    assert idp.value.full_name == [x509.UniformResourceIdentifier(CRL_URL)]
    assert idp.value.only_contains_user_certs
    assert not idp.value.only_contains_ca_certs
    assert not idp.value.indirect_crl
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]


def test_crl_times_are_whole_utc_seconds(ca: MiniCA) -> None:
    this_update = dt.datetime(
        2030, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))
    )
    crl = x509.load_der_x509_crl(
        build_crl(
            ca.cert,
            ca.signer,
            [],
            crl_number=1,
            this_update=this_update,
            next_update=this_update + HOUR,
            idp_url=None,
        )
    )
    assert crl.last_update_utc == dt.datetime(2030, 5, 6, 5, 8, 9, tzinfo=dt.UTC)
    assert crl.next_update_utc == dt.datetime(2030, 5, 6, 6, 8, 9, tzinfo=dt.UTC)


def test_entries_are_sorted_with_reason_codes(ca: MiniCA) -> None:
    entries = [
        RevokedEntry(30, NOW - HOUR, RevocationReason.SUPERSEDED),
        RevokedEntry(10, NOW - 2 * HOUR),
        RevokedEntry(20, NOW - 3 * HOUR, RevocationReason.KEY_COMPROMISE),
    ]
    crl = x509.load_der_x509_crl(crl_for(ca, entries))
    assert [entry.serial_number for entry in crl] == [10, 20, 30]
    by_serial = {entry.serial_number: entry for entry in crl}
    # RFC 5280 §5.3.1: no reason code extension for unspecified.
    assert len(by_serial[10].extensions) == 0
    reason = by_serial[20].extensions.get_extension_for_class(x509.CRLReason)
    assert reason.value.reason is x509.ReasonFlags.key_compromise
    assert not reason.critical
    assert by_serial[30].revocation_date_utc == NOW - HOUR


@pytest.mark.parametrize(
    ("scope", "user_only", "ca_only"),
    [
        (CrlScope.ALL, False, False),
        (CrlScope.USER_CERTS, True, False),
        (CrlScope.CA_CERTS, False, True),
    ],
)
def test_scope_sets_idp_flags(ca: MiniCA, scope: CrlScope, user_only: bool, ca_only: bool) -> None:
    crl = x509.load_der_x509_crl(crl_for(ca, [], scope=scope))
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    assert (idp.only_contains_user_certs, idp.only_contains_ca_certs) == (user_only, ca_only)


def test_no_idp_when_no_url_and_full_scope(ca: MiniCA) -> None:
    # RFC 5280 §5.2.5: an empty issuing distribution point is forbidden.
    crl = x509.load_der_x509_crl(crl_for(ca, [], idp_url=None, scope=CrlScope.ALL))
    with pytest.raises(x509.ExtensionNotFound):
        crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)


@pytest.mark.parametrize(
    ("path_length", "expected"),
    [(0, CrlScope.USER_CERTS), (1, CrlScope.ALL), (None, CrlScope.ALL)],
)
def test_scope_for_issuer(tmp_path: Path, path_length: int | None, expected: CrlScope) -> None:
    issuer = make_ca(tmp_path, "p256", path_length=path_length)
    assert CrlScope.for_issuer(issuer.cert) is expected


# -- openssl as relying party ----------------------------------------------------------


def test_openssl_accepts_crl_signature(ca: MiniCA, tmp_path: Path) -> None:
    crl = write(tmp_path / "ca.crl", crl_for(ca, [RevokedEntry(5, NOW - HOUR)]))
    assert crl_verify(crl, ca.pem)


def test_openssl_rejects_crl_from_another_ca(ca: MiniCA, tmp_path: Path) -> None:
    other = make_ca(tmp_path, "p256")  # same name as `ca`, another key
    crl = write(tmp_path / "other.crl", crl_for(other, []))
    assert not crl_verify(crl, ca.pem)


def test_openssl_passes_unrevoked_leaf(ca: MiniCA, tmp_path: Path) -> None:
    leaf = issue_leaf(ca, tmp_path, crl_url=CRL_URL)
    crl = write(tmp_path / "ca.crl", crl_for(ca, [RevokedEntry(serial_of(leaf) + 1, NOW - HOUR)]))
    result = verify_with_crl(leaf, ca.pem, crls=[crl])
    assert result.ok, result.output


@pytest.mark.parametrize("reason", REASONS_IN_FULL_CRLS, ids=str)
def test_openssl_flags_revoked_leaf(ca: MiniCA, tmp_path: Path, reason: RevocationReason) -> None:
    leaf = issue_leaf(ca, tmp_path, crl_url=CRL_URL)
    crl = write(
        tmp_path / "ca.crl", crl_for(ca, [RevokedEntry(serial_of(leaf), NOW - HOUR, reason)])
    )
    assert verify(leaf, ca.pem).ok
    result = verify_with_crl(leaf, ca.pem, crls=[crl])
    assert not result.ok
    assert result.error_code == 23, result.output  # X509_V_ERR_CERT_REVOKED
    assert result.error == "certificate revoked"


def test_openssl_ignores_crl_for_another_distribution_point(ca: MiniCA, tmp_path: Path) -> None:
    # RFC 5280 §6.3.3 (b)(2)(i): the IDP name must match the certificate's CRL DP,
    # so a CRL published under another URL does not cover the leaf.
    leaf = issue_leaf(ca, tmp_path, crl_url=CRL_URL)
    der = crl_for(ca, [RevokedEntry(serial_of(leaf), NOW)], idp_url="http://elsewhere.test/x.crl")
    result = verify_with_crl(leaf, ca.pem, crls=[write(tmp_path / "ca.crl", der)])
    assert result.error_code == 44, result.output  # X509_V_ERR_DIFFERENT_CRL_SCOPE


def test_openssl_ignores_ca_only_crl_for_a_leaf(ca: MiniCA, tmp_path: Path) -> None:
    leaf = issue_leaf(ca, tmp_path, crl_url=CRL_URL)
    der = crl_for(ca, [RevokedEntry(serial_of(leaf), NOW)], scope=CrlScope.CA_CERTS)
    result = verify_with_crl(leaf, ca.pem, crls=[write(tmp_path / "ca.crl", der)])
    assert result.error_code == 44, result.output


# -- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"crl_number": -1}, "crl.bad_number"),
        ({"crl_number": 2**159}, "crl.bad_number"),
        ({"crl_number": True}, "crl.bad_number"),
        ({"next_update": NOW - dt.timedelta(minutes=1)}, "crl.bad_validity"),
        ({"next_update": NOW - HOUR}, "crl.bad_validity"),
        ({"this_update": NOW.replace(tzinfo=None)}, "crl.naive_time"),
        ({"next_update": (NOW + HOUR).replace(tzinfo=None)}, "crl.naive_time"),
        ({"idp_url": "ftp://pki.example.test/x.crl"}, "crl.bad_url"),
        ({"idp_url": "pki.example.test/x.crl"}, "crl.bad_url"),
        ({"idp_url": "http://pki.exämple.test/x.crl"}, "crl.bad_url"),
        ({"idp_url": "http:///x.crl"}, "crl.bad_url"),
        (
            {"revoked": [RevokedEntry(5, NOW), RevokedEntry(5, NOW - HOUR)]},
            "crl.duplicate_serial",
        ),
        (
            {"revoked": [RevokedEntry(5, NOW, RevocationReason.REMOVE_FROM_CRL)]},
            "revocation.bad_reason",
        ),
    ],
)
def test_build_crl_refuses(ca: MiniCA, changes: dict[str, object], code: str) -> None:
    arguments: dict[str, object] = {
        "revoked": [],
        "crl_number": 1,
        "this_update": NOW - dt.timedelta(minutes=1),
        "next_update": NOW + HOUR,
        "idp_url": CRL_URL,
    } | changes
    with pytest.raises(ValidationError) as caught:
        build_crl(ca.cert, ca.signer, **arguments)  # type: ignore[arg-type]
    assert caught.value.code == code


def test_build_crl_refuses_another_key(ca: MiniCA, tmp_path: Path) -> None:
    other = make_ca(tmp_path, "p256")
    with pytest.raises(ValidationError) as caught:
        build_crl(
            ca.cert,
            other.signer,
            [],
            crl_number=1,
            this_update=NOW,
            next_update=NOW + HOUR,
            idp_url=None,
        )
    assert caught.value.code == "crl.signer_mismatch"


def test_build_crl_refuses_ca_without_crl_sign(tmp_path: Path) -> None:
    issuer = make_ca(tmp_path, "p256", usage=key_usage(key_cert_sign=True))
    with pytest.raises(ValidationError) as caught:
        crl_for(issuer, [])
    assert caught.value.code == "crl.issuer_cannot_sign_crl"


def test_build_crl_refuses_end_entity_issuer(ca: MiniCA, tmp_path: Path) -> None:
    leaf = x509.load_pem_x509_certificate(issue_leaf(ca, tmp_path, crl_url=CRL_URL).read_bytes())
    with pytest.raises(ValidationError) as caught:
        build_crl(
            leaf,
            ca.signer,
            [],
            crl_number=1,
            this_update=NOW,
            next_update=NOW + HOUR,
            idp_url=None,
        )
    assert caught.value.code == "crl.issuer_not_ca"


@pytest.mark.parametrize(
    ("serial", "revoked_at", "reason", "code"),
    [
        (0, NOW, RevocationReason.UNSPECIFIED, "crl.bad_serial"),
        (-5, NOW, RevocationReason.UNSPECIFIED, "crl.bad_serial"),
        (2**159, NOW, RevocationReason.UNSPECIFIED, "crl.bad_serial"),
        (True, NOW, RevocationReason.UNSPECIFIED, "crl.bad_serial"),
        (5, NOW.replace(tzinfo=None), RevocationReason.UNSPECIFIED, "crl.naive_time"),
        (5, NOW, "keyCompromise", "revocation.bad_reason"),
    ],
)
def test_revoked_entry_refuses(
    serial: int, revoked_at: dt.datetime, reason: object, code: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        RevokedEntry(serial, revoked_at, reason)  # type: ignore[arg-type]
    assert caught.value.code == code


def test_revoked_entry_is_frozen() -> None:
    entry = RevokedEntry(5, NOW)
    with pytest.raises(AttributeError):
        entry.serial = 6  # type: ignore[misc]


# -- the cache helper ------------------------------------------------------------------


def test_cached_crl_reads_its_der(ca: MiniCA) -> None:
    der = crl_for(ca, [], number=7)
    cached = CachedCrl.from_der(der)
    assert cached.der == der
    assert cached.crl_number == 7
    assert cached.this_update == NOW - dt.timedelta(minutes=1)
    assert cached.next_update == NOW + 24 * HOUR
    assert cached.is_fresh(NOW)
    assert not cached.is_fresh(NOW + 24 * HOUR - dt.timedelta(minutes=4))
    assert not cached.mark_stale().is_fresh(NOW)
    assert not cached.stale


@pytest.mark.parametrize("der", [b"", b"\x30\x00", b"not a crl"])
def test_cached_crl_refuses_garbage(der: bytes) -> None:
    with pytest.raises(ValidationError) as caught:
        CachedCrl.from_der(der)
    assert caught.value.code == "crl.malformed"


# -- revocation reasons ----------------------------------------------------------------

RFC5280_REASONS = [
    ("unspecified", 0),
    ("keyCompromise", 1),
    ("cACompromise", 2),
    ("affiliationChanged", 3),
    ("superseded", 4),
    ("cessationOfOperation", 5),
    ("certificateHold", 6),
    ("removeFromCRL", 8),
    ("privilegeWithdrawn", 9),
    ("aACompromise", 10),
]


@pytest.mark.parametrize(("name", "code"), RFC5280_REASONS)
def test_reason_parses_from_name_and_code(name: str, code: int) -> None:
    reason = RevocationReason.parse(name)
    assert reason is RevocationReason.parse(code)
    assert reason is RevocationReason.parse(name.upper())
    assert reason is RevocationReason.parse(reason)
    assert (reason.code, reason.rfc_name, str(reason)) == (code, name, name)


def test_reasons_are_exactly_rfc5280s() -> None:
    assert [(reason.rfc_name, reason.code) for reason in RevocationReason] == RFC5280_REASONS


@pytest.mark.parametrize(
    "value", [7, 11, -1, True, "", "key_compromise", "keyCompromised", "7", 1.0, None]
)
def test_reason_refuses_unknown(value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        RevocationReason.parse(value)  # type: ignore[arg-type]
    assert caught.value.code == "revocation.bad_reason"


@pytest.mark.parametrize("reason", list(RevocationReason), ids=str)
def test_reason_round_trips_through_reason_flags(reason: RevocationReason) -> None:
    flags = reason.to_reason_flags()
    assert isinstance(flags, x509.ReasonFlags)
    assert RevocationReason.from_reason_flags(flags) is reason


# -- the DER encoder of revokedCertificates --------------------------------------------

# Serials of every length an encoder can get wrong: one octet, a high bit that needs a
# leading zero octet, and the 20-octet maximum (RFC 5280 §4.1.2.2).
EDGE_SERIALS = [1, 0x7F, 0x80, 0xFF, 0x100, 2**63, 2**127 + 5, 2**159 - 1]


def test_many_entries_read_back_as_built_through_cryptography_and_openssl(
    ca: MiniCA, tmp_path: Path
) -> None:
    entries = [
        RevokedEntry(
            serial=serial,
            # Both UTCTime (through 2049) and GeneralizedTime (from 2050), RFC 5280 §5.1.2.6.
            revoked_at=dt.datetime(2049 + index % 3, 12, 31, 23, 59, index % 60, tzinfo=dt.UTC),
            reason=REASONS_IN_FULL_CRLS[index % len(REASONS_IN_FULL_CRLS)],
        )
        for index, serial in enumerate([*EDGE_SERIALS, *range(1000, 1300)])
    ]
    # Half as entries, the rest as plain rows, the form the CRL publisher reads from the store.
    der = build_crl(
        ca.cert,
        ca.signer,
        entries[:150],
        crl_number=7,
        this_update=NOW - dt.timedelta(minutes=1),
        next_update=NOW + 24 * HOUR,
        idp_url=CRL_URL,
        revoked_rows=[(e.serial, e.revoked_at, e.reason) for e in entries[150:]],
    )
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(ca.cert.public_key())
    listed = list(crl)
    assert [entry.serial_number for entry in listed] == sorted(e.serial for e in entries)
    by_serial = {entry.serial: entry for entry in entries}
    for revoked in listed:
        entry = by_serial[revoked.serial_number]
        assert revoked.revocation_date_utc == entry.revoked_at
        if entry.reason is RevocationReason.UNSPECIFIED:
            assert len(revoked.extensions) == 0
        else:
            reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
            assert reason == entry.reason.to_reason_flags()
    assert crl_verify(write(tmp_path / "many.crl", der), ca.pem)
    assert_lints_clean("crl", der)


def test_rows_are_checked_as_entries_are(ca: MiniCA) -> None:
    for row, code in [
        ((0, NOW, RevocationReason.UNSPECIFIED), "crl.bad_serial"),
        ((2**159, NOW, RevocationReason.UNSPECIFIED), "crl.bad_serial"),
        ((5, NOW.replace(tzinfo=None), RevocationReason.UNSPECIFIED), "crl.naive_time"),
        ((5, NOW, RevocationReason.REMOVE_FROM_CRL), "revocation.bad_reason"),
    ]:
        with pytest.raises(ValidationError) as caught:
            build_crl(
                ca.cert,
                ca.signer,
                [],
                crl_number=1,
                this_update=NOW,
                next_update=NOW + HOUR,
                idp_url=CRL_URL,
                revoked_rows=[row],
            )
        assert caught.value.code == code


def test_a_row_that_repeats_an_entry_is_refused(ca: MiniCA) -> None:
    with pytest.raises(ValidationError) as caught:
        build_crl(
            ca.cert,
            ca.signer,
            [RevokedEntry(5, NOW)],
            crl_number=1,
            this_update=NOW,
            next_update=NOW + HOUR,
            idp_url=CRL_URL,
            revoked_rows=[(5, NOW, RevocationReason.SUPERSEDED)],
        )
    assert caught.value.code == "crl.duplicate_serial"
