"""The test helpers that lint with pkilint and verify with openssl can fail when they should."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from support.openssl import crl_verify, ocsp_query, verify, verify_with_crl
from support.pkilint import (
    assert_lints_clean,
    lint,
    lint_certificate,
    lint_crl,
    lint_ocsp_response,
)
from support.testca import key_usage

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
HOUR = dt.timedelta(hours=1)
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Lint Test CA")])
CA_SKI = x509.SubjectKeyIdentifier.from_public_key(CA_KEY.public_key())


def _certificate(
    *,
    ca: bool,
    key_usage: x509.KeyUsage,
    serial: int = 0x1234,
    ski: bool = True,
    self_signed: bool = False,
) -> x509.Certificate:
    key = CA_KEY if self_signed else ec.generate_private_key(ec.SECP256R1())
    subject = (
        CA_NAME if self_signed else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "subject")])
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(CA_NAME)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + 24 * HOUR)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(CA_SKI), critical=False
        )
    )
    if ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    return builder.sign(CA_KEY, hashes.SHA256())


CA_CERT = _certificate(
    ca=True,
    key_usage=key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
    self_signed=True,
)


def _leaf(**changes: object) -> x509.Certificate:
    arguments: dict[str, object] = {
        "ca": False,
        "key_usage": key_usage(digital_signature=True),
    } | changes
    return _certificate(**arguments)  # type: ignore[arg-type]


def _with_serial_octet(cert: x509.Certificate, octet: int) -> bytes:
    # Patch the one-octet serial 1 in the DER (version [0] then INTEGER 1): the
    # signature no longer matches, which pkilint does not look at, and
    # cryptography refuses to build a serial that is zero or negative.
    der = cert.public_bytes(DER)
    marker = b"\xa0\x03\x02\x01\x02\x02\x01\x01"
    assert der.count(marker) == 1
    return der.replace(marker, marker[:-1] + bytes([octet]))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- pkilint ---------------------------------------------------------------------------


@pytest.mark.parametrize("cert", [CA_CERT, _leaf()], ids=["ca", "end-entity"])
def test_well_formed_certificates_lint_clean(cert: x509.Certificate) -> None:
    assert lint_certificate(cert.public_bytes(DER), include_warnings=True) == []
    assert_lints_clean("certificate", cert.public_bytes(DER), include_warnings=True)


@pytest.mark.parametrize(
    ("der", "code"),
    [
        (
            _leaf(key_usage=key_usage(digital_signature=True, key_cert_sign=True)).public_bytes(
                DER
            ),
            "pkix.ee_certificate_keycertsign_keyusage_set",
        ),
        # pkilint tells CA from end entity by basicConstraints by itself.
        (
            _certificate(ca=True, key_usage=key_usage(digital_signature=True)).public_bytes(DER),
            "pkix.ca_certificate_keycertsign_keyusage_not_set",
        ),
        (_with_serial_octet(_leaf(serial=1), 0x00), "pkix.certificate_serial_number_out_of_range"),
        (_with_serial_octet(_leaf(serial=1), 0xFF), "pkix.certificate_serial_number_out_of_range"),
        (b"\x30\x03\x02\x01\x00", "certificate.load_failed"),
        (b"not DER", "certificate.load_failed"),
    ],
    ids=[
        "ee-keycertsign",
        "ca-without-keycertsign",
        "zero-serial",
        "negative-serial",
        "bad-asn1",
        "not-der",
    ],
)
def test_broken_certificates_have_findings(der: bytes, code: str) -> None:
    findings = lint_certificate(der)
    assert any(code in finding for finding in findings), findings
    with pytest.raises(pytest.fail.Exception, match=code):
        assert_lints_clean("certificate", der)


def test_warnings_only_when_asked() -> None:
    der = _leaf(ski=False).public_bytes(DER)  # RFC 5280 §4.2.1.2: SHOULD have a SKI
    assert lint_certificate(der) == []
    assert_lints_clean("certificate", der)
    findings = lint_certificate(der, include_warnings=True)
    assert findings == ["WARNING pkix.certificate_skid_end_entity_missing @ certificate"]
    with pytest.raises(pytest.fail.Exception, match="skid_end_entity_missing"):
        assert_lints_clean("certificate", der, include_warnings=True)


def test_crl_without_number_and_aki_has_findings() -> None:
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(CA_NAME)
        .last_update(NOW)
        .next_update(NOW + HOUR)
        .sign(CA_KEY, hashes.SHA256())
    )
    findings = lint_crl(crl.public_bytes(DER))
    assert any("pkix.crl_number_missing" in finding for finding in findings), findings
    assert any("pkix.authority_key_identifier_missing" in finding for finding in findings)
    assert lint("crl", crl.public_bytes(DER)) == findings


def _ocsp_response(
    *, this_update: dt.datetime, next_update: dt.datetime, certs: list[x509.Certificate]
) -> bytes:
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            _leaf(),
            CA_CERT,
            hashes.SHA1(),
            ocsp.OCSPCertStatus.GOOD,
            this_update,
            next_update,
            None,
            None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, CA_CERT)
    )
    if certs:
        builder = builder.certificates(certs)
    return builder.sign(CA_KEY, hashes.SHA256()).public_bytes(DER)


def test_well_formed_ocsp_response_lints_clean() -> None:
    der = _ocsp_response(this_update=NOW, next_update=NOW + HOUR, certs=[])
    assert lint_ocsp_response(der, include_warnings=True) == []


def test_ocsp_response_with_negative_validity_has_findings() -> None:
    der = _ocsp_response(this_update=NOW, next_update=NOW - HOUR, certs=[])
    findings = lint_ocsp_response(der)
    assert any("pkix.ocsp_negative_validity_period" in finding for finding in findings), findings


def test_ocsp_response_embedded_certificates_are_linted() -> None:
    broken = _leaf(key_usage=key_usage(digital_signature=True, key_cert_sign=True))
    der = _ocsp_response(this_update=NOW, next_update=NOW + HOUR, certs=[broken])
    findings = lint_ocsp_response(der)
    assert any(
        finding.startswith("certs[0] ERROR pkix.ee_certificate_keycertsign_keyusage_set")
        for finding in findings
    ), findings
    assert lint_ocsp_response(der, lint_certs=False) == []


def test_unsuccessful_ocsp_response_lints_clean() -> None:
    der = ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.INTERNAL_ERROR
    ).public_bytes(DER)
    assert lint_ocsp_response(der, include_warnings=True) == []


def test_garbage_ocsp_response_is_fatal() -> None:
    assert lint_ocsp_response(b"\x30\x00")[0].startswith("FATAL ocsp_response.load_failed")


def test_lint_refuses_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown document kind"):
        lint("csr", b"")  # type: ignore[arg-type]


# -- openssl ---------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    leaf = _leaf()
    revoked_leaf = _leaf(serial=0x5678)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(CA_NAME)
        .last_update(NOW - HOUR)
        .next_update(NOW + HOUR)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(CA_SKI), critical=False
        )
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(0x5678)
            .revocation_date(NOW - HOUR)
            .build()
        )
        .sign(CA_KEY, hashes.SHA256())
    )
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = (
        x509.CertificateBuilder()
        .subject_name(CA_NAME)
        .issuer_name(CA_NAME)
        .public_key(other_key.public_key())
        .serial_number(99)
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + HOUR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(other_key, hashes.SHA256())
    )
    return {
        "ca": _write(tmp_path / "ca.pem", CA_CERT.public_bytes(PEM)),
        "other_ca": _write(tmp_path / "other-ca.pem", other_ca.public_bytes(PEM)),
        "leaf": _write(tmp_path / "leaf.pem", leaf.public_bytes(PEM)),
        "revoked_leaf": _write(tmp_path / "revoked.pem", revoked_leaf.public_bytes(PEM)),
        "crl_der": _write(tmp_path / "ca.crl", crl.public_bytes(DER)),
        "crl_pem": _write(tmp_path / "ca-crl.pem", crl.public_bytes(PEM)),
    }


def test_verify_accepts_and_refuses(files: dict[str, Path]) -> None:
    assert verify(files["leaf"], files["ca"]).ok
    refused = verify(files["leaf"], files["other_ca"])
    assert not refused.ok
    assert refused.error_code is not None
    assert refused.error


def test_verify_with_crl_flags_revoked(files: dict[str, Path]) -> None:
    for crl in (files["crl_der"], files["crl_pem"]):
        assert verify_with_crl(files["leaf"], files["ca"], crls=[crl]).ok
        result = verify_with_crl(files["revoked_leaf"], files["ca"], crls=[crl])
        assert (result.ok, result.error_code, result.error) == (False, 23, "certificate revoked")


def test_only_the_crl_check_flags_revoked(files: dict[str, Path]) -> None:
    assert verify(files["revoked_leaf"], files["ca"]).ok


def test_crl_verify(files: dict[str, Path]) -> None:
    assert crl_verify(files["crl_der"], files["ca"])
    assert crl_verify(files["crl_pem"], files["ca"])
    assert not crl_verify(files["crl_der"], files["other_ca"])


def test_ocsp_query_reports_unverifiable_response(files: dict[str, Path], tmp_path: Path) -> None:
    response = _write(
        tmp_path / "resp.der", _ocsp_response(this_update=NOW, next_update=NOW + HOUR, certs=[])
    )
    trusted = ocsp_query(response, ca_file=files["ca"], issuer=files["ca"], cert=files["leaf"])
    assert trusted.verified, trusted.output
    untrusted = ocsp_query(
        response, ca_file=files["other_ca"], issuer=files["other_ca"], serial=0x1234
    )
    assert not untrusted.verified
    assert untrusted.returncode != 0


@pytest.mark.parametrize(
    "arguments",
    [{}, {"issuer": Path("ca.pem")}, {"issuer": Path("a"), "serial": 1, "cert": Path("b")}],
)
def test_ocsp_query_needs_one_certificate(arguments: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="name the certificate"):
        ocsp_query(Path("resp.der"), ca_file=Path("ca.pem"), **arguments)  # type: ignore[arg-type]
