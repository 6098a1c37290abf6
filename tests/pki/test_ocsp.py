"""OCSP: request parsing, signed responses, delegated responders, pkilint and openssl."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpki.errors import FleetPKIError, NotFoundError, ValidationError
from fleetpki.keystore.files import FileSigner
from fleetpki.pki.ocsp import (
    MAX_NONCE_LENGTH,
    CertId,
    CertificateStatus,
    OcspRequest,
    build_ocsp_error_response,
    build_ocsp_response,
    build_ocsp_signing_certificate,
    issuer_hashes,
    parse_ocsp_request,
    parse_ocsp_request_path,
    response_status_for,
)
from fleetpki.pki.revocation import RevocationReason
from support.openssl import ocsp_query, openssl, verify
from support.pkilint import assert_lints_clean
from support.testca import MiniCA, issue_leaf, make_ca, new_key

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
NONCE = bytes(range(16))
CERT_ID_HASHES = [hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()]
OPENSSL_UNNAMED = {
    RevocationReason.PRIVILEGE_WITHDRAWN: ("(UNKNOWN)",),
    RevocationReason.AA_COMPROMISE: ("(UNKNOWN)",),
}
REASONS = [
    r
    for r in RevocationReason
    if r not in (RevocationReason.UNSPECIFIED, RevocationReason.REMOVE_FROM_CRL)
]


# -- a tiny CA made with cryptography alone --------------------------------------------


@dataclass(frozen=True, slots=True)
class Responder:
    """Who signs: the CA itself or a delegate, and where openssl finds its certificate."""

    cert: x509.Certificate
    signer: FileSigner
    verify_other: Path


def load_pem(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def delegate(ca: MiniCA, directory: Path, kind: str = "p256") -> Responder:
    key = new_key(kind)
    cert = build_ocsp_signing_certificate(
        ca.cert, ca.signer, key.public_key(), NOW - 10 * MINUTE, NOW + 24 * HOUR
    )
    pem = directory / f"responder-{cert.serial_number:x}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Responder(cert, FileSigner("memory:responder", key), pem)


@pytest.fixture(scope="module", params=["p256", "rsa2048"])
def ca(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> MiniCA:
    return make_ca(tmp_path_factory.mktemp("ca"), request.param)


@pytest.fixture(scope="module")
def leaf(ca: MiniCA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return issue_leaf(ca, tmp_path_factory.mktemp("leaf"))


@pytest.fixture(scope="module", params=["ca", "delegated"])
def responder(
    request: pytest.FixtureRequest, ca: MiniCA, tmp_path_factory: pytest.TempPathFactory
) -> Responder:
    if request.param == "ca":
        # The CA signs itself; a client has its certificate from the chain.
        return Responder(ca.cert, ca.signer, ca.pem)
    return delegate(ca, tmp_path_factory.mktemp("responder"))


def request_der(
    leaf: Path,
    ca: MiniCA,
    *,
    algorithm: hashes.HashAlgorithm | None = None,
    nonce: bytes | None = NONCE,
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        load_pem(leaf), ca.cert, algorithm or hashes.SHA1()
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def respond(
    request: OcspRequest,
    status: CertificateStatus,
    ca: MiniCA,
    responder: Responder,
    *,
    next_update: dt.datetime | None = NOW + HOUR,
) -> bytes:
    return build_ocsp_response(
        request,
        status,
        issuer_cert=ca.cert,
        responder_cert=responder.cert,
        signer=responder.signer,
        this_update=NOW - MINUTE,
        next_update=next_update,
    )


STATUSES = {
    "good": CertificateStatus.good(),
    "revoked": CertificateStatus.revoked(NOW - HOUR, RevocationReason.KEY_COMPROMISE),
    "revoked-unspecified": CertificateStatus.revoked(NOW - HOUR),
    "unknown": CertificateStatus.unknown(),
}


# -- parsing requests ------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", CERT_ID_HASHES, ids=lambda a: a.name)
def test_parse_request_reads_cert_id(
    ca: MiniCA, leaf: Path, algorithm: hashes.HashAlgorithm
) -> None:
    made = ocsp.load_der_ocsp_request(request_der(leaf, ca, algorithm=algorithm))
    parsed = parse_ocsp_request(made.public_bytes(serialization.Encoding.DER))
    assert parsed == OcspRequest(
        CertId(
            algorithm.name,
            made.issuer_name_hash,
            made.issuer_key_hash,
            load_pem(leaf).serial_number,
        ),
        NONCE,
    )
    assert parsed.cert_id.names_issuer(ca.cert)
    assert issuer_hashes(ca.cert, algorithm.name) == (made.issuer_name_hash, made.issuer_key_hash)


def test_parse_request_without_nonce(ca: MiniCA, leaf: Path) -> None:
    assert parse_ocsp_request(request_der(leaf, ca, nonce=None)).nonce is None


@pytest.mark.parametrize("length", [1, MAX_NONCE_LENGTH])
def test_parse_request_accepts_rfc8954_nonce_lengths(ca: MiniCA, leaf: Path, length: int) -> None:
    nonce = b"\x5a" * length
    assert parse_ocsp_request(request_der(leaf, ca, nonce=nonce)).nonce == nonce


@pytest.mark.parametrize("length", [0, MAX_NONCE_LENGTH + 1, 128])
def test_parse_request_refuses_bad_nonce_lengths(ca: MiniCA, leaf: Path, length: int) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_ocsp_request(request_der(leaf, ca, nonce=b"\x5a" * length))
    assert caught.value.code == "ocsp.bad_nonce"
    assert response_status_for(caught.value) is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_parse_request_made_by_openssl(ca: MiniCA, leaf: Path, tmp_path: Path) -> None:
    out = tmp_path / "req.der"
    done = openssl("ocsp", "-issuer", ca.pem, "-cert", leaf, "-reqout", out)
    assert done.returncode == 0, done.stderr
    parsed = parse_ocsp_request(out.read_bytes())
    assert parsed.cert_id.hash_algorithm == "sha1"  # openssl's default CertID hash
    assert parsed.cert_id.serial_number == load_pem(leaf).serial_number
    assert parsed.cert_id.names_issuer(ca.cert)
    assert parsed.nonce is not None  # openssl adds one by default
    assert 1 <= len(parsed.nonce) <= MAX_NONCE_LENGTH


def test_parse_refuses_multi_certificate_request(ca: MiniCA, tmp_path: Path) -> None:
    out = tmp_path / "req.der"
    done = openssl("ocsp", "-issuer", ca.pem, "-serial", "5", "-serial", "6", "-reqout", out)
    assert done.returncode == 0, done.stderr
    with pytest.raises(ValidationError) as caught:
        parse_ocsp_request(out.read_bytes())
    assert caught.value.code == "ocsp.malformed_request"


def test_parse_refuses_md5_cert_id(ca: MiniCA, tmp_path: Path) -> None:
    out = tmp_path / "req.der"
    done = openssl("ocsp", "-md5", "-issuer", ca.pem, "-serial", "5", "-no_nonce", "-reqout", out)
    assert done.returncode == 0, done.stderr
    with pytest.raises(ValidationError) as caught:
        parse_ocsp_request(out.read_bytes())
    assert caught.value.code == "ocsp.unsupported_hash"
    assert response_status_for(caught.value) is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_parse_refuses_unknown_critical_extension(ca: MiniCA, leaf: Path) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    der = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(load_pem(leaf), ca.cert, hashes.SHA1())
        .add_extension(unknown, critical=True)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    with pytest.raises(ValidationError) as caught:
        parse_ocsp_request(der)
    assert caught.value.code == "ocsp.malformed_request"


def test_parse_ignores_unknown_noncritical_extension(ca: MiniCA, leaf: Path) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    der = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(load_pem(leaf), ca.cert, hashes.SHA1())
        .add_extension(unknown, critical=False)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    assert parse_ocsp_request(der).nonce is None


@pytest.mark.parametrize(
    "der",
    [b"", b"\x00", b"\x30\x00", b"\x30\x80\x00\x00", b"not der at all", b"\x30" * 20000],
    ids=["empty", "zero", "empty-sequence", "indefinite", "text", "too-large"],
)
def test_parse_refuses_garbage(der: bytes) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_ocsp_request(der)
    assert caught.value.code == "ocsp.malformed_request"


def test_parse_refuses_truncated_request(ca: MiniCA, leaf: Path) -> None:
    der = request_der(leaf, ca)
    for cut in range(len(der)):
        with pytest.raises(ValidationError):
            parse_ocsp_request(der[:cut])


def _encodings(der: bytes) -> dict[str, str]:
    standard = base64.b64encode(der).decode()
    return {
        "rfc6960": quote(standard, safe=""),
        "plain": standard,
        "leading-slash": "/" + quote(standard, safe=""),
        "urlsafe-unpadded": base64.urlsafe_b64encode(der).decode().rstrip("="),
    }


@pytest.mark.parametrize("encoding", ["rfc6960", "plain", "leading-slash", "urlsafe-unpadded"])
def test_parse_get_path(ca: MiniCA, leaf: Path, encoding: str) -> None:
    der = request_der(leaf, ca)
    assert parse_ocsp_request_path(_encodings(der)[encoding]) == parse_ocsp_request(der)


@pytest.mark.parametrize("path", ["", "!!!!", "%zz", "MA==", "a" * 100_000, "%C3%A9"])
def test_parse_get_path_refuses_garbage(path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_ocsp_request_path(path)
    assert caught.value.code == "ocsp.malformed_request"


# Hypothesis: the parsers let nothing but ValidationError out, whatever they get.
_SAMPLE_REQUEST = (
    ocsp.OCSPRequestBuilder()
    .add_certificate_by_hash(b"\x01" * 20, b"\x02" * 20, 12345, hashes.SHA1())
    .add_extension(x509.OCSPNonce(NONCE), critical=False)
    .build()
    .public_bytes(serialization.Encoding.DER)
)


def _parse_or_refuse(der: bytes) -> None:
    code: str | None = None
    try:
        parsed = parse_ocsp_request(der)
    except ValidationError as error:
        code = error.code
    else:
        assert isinstance(parsed, OcspRequest)
        assert parsed.nonce is None or 1 <= len(parsed.nonce) <= MAX_NONCE_LENGTH
    assert code in {None, "ocsp.malformed_request", "ocsp.bad_nonce", "ocsp.unsupported_hash"}


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_parse_arbitrary_bytes(der: bytes) -> None:
    _parse_or_refuse(der)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(_SAMPLE_REQUEST) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    )
)
def test_parse_mutated_request(edits: list[tuple[int, int]]) -> None:
    mutated = bytearray(_SAMPLE_REQUEST)
    for index, value in edits:
        mutated[index] = value
    _parse_or_refuse(bytes(mutated))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parse_arbitrary_get_path(path: str) -> None:
    with contextlib.suppress(ValidationError):
        parse_ocsp_request_path(path)


# -- building responses ----------------------------------------------------------------


@pytest.mark.parametrize("status", list(STATUSES), ids=str)
@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256()], ids=lambda a: a.name)
def test_response_lints_clean(
    ca: MiniCA, leaf: Path, responder: Responder, status: str, algorithm: hashes.HashAlgorithm
) -> None:
    request = parse_ocsp_request(request_der(leaf, ca, algorithm=algorithm))
    der = respond(request, STATUSES[status], ca, responder)
    assert_lints_clean("ocsp_response", der, include_warnings=True)


@pytest.mark.parametrize(
    ("status", "openssl_status"),
    [
        ("good", "good"),
        ("revoked", "revoked"),
        ("revoked-unspecified", "revoked"),
        ("unknown", "unknown"),
    ],
)
@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256()], ids=lambda a: a.name)
def test_openssl_verifies_response(
    ca: MiniCA,
    leaf: Path,
    responder: Responder,
    tmp_path: Path,
    status: str,
    openssl_status: str,
    algorithm: hashes.HashAlgorithm,
) -> None:
    request = parse_ocsp_request(request_der(leaf, ca, algorithm=algorithm))
    response = tmp_path / "resp.der"
    response.write_bytes(respond(request, STATUSES[status], ca, responder))
    result = ocsp_query(
        response,
        ca_file=ca.pem,
        issuer=ca.pem,
        cert=leaf,
        cert_id_hash=algorithm.name,
    )
    assert result.verified, result.output
    assert result.returncode == 0, result.output
    assert result.status == openssl_status
    expected = STATUSES[status]
    if status == "revoked":
        assert result.reason == "keyCompromise"
    else:
        assert result.reason is None  # unspecified: the optional reason is left out
    assert (result.revocation_time is not None) == (expected.revoked_at is not None)


@pytest.mark.parametrize("reason", REASONS, ids=str)
def test_openssl_prints_each_reason_by_its_rfc_name(
    ca: MiniCA, leaf: Path, tmp_path: Path, reason: RevocationReason
) -> None:
    request = parse_ocsp_request(request_der(leaf, ca))
    response = tmp_path / "resp.der"
    own = Responder(ca.cert, ca.signer, ca.pem)
    response.write_bytes(respond(request, CertificateStatus.revoked(NOW - HOUR, reason), ca, own))
    result = ocsp_query(response, ca_file=ca.pem, issuer=ca.pem, cert=leaf)
    assert result.verified, result.output
    assert result.status == "revoked"
    # OpenSSL before 3.2 has no names for codes 9 and 10 and prints "(UNKNOWN)".
    assert result.reason in {str(reason), *OPENSSL_UNNAMED.get(reason, ())}, result.output
    parsed = ocsp.load_der_ocsp_response(response.read_bytes())
    assert parsed.revocation_reason is reason.to_reason_flags()


def test_openssl_checks_echoed_nonce(
    ca: MiniCA, leaf: Path, responder: Responder, tmp_path: Path
) -> None:
    # The request comes from openssl itself, with its own random nonce.
    request_file = tmp_path / "req.der"
    done = openssl("ocsp", "-issuer", ca.pem, "-cert", leaf, "-reqout", request_file)
    assert done.returncode == 0, done.stderr
    request = parse_ocsp_request(request_file.read_bytes())
    response = tmp_path / "resp.der"
    response.write_bytes(respond(request, CertificateStatus.good(), ca, responder))
    result = ocsp_query(
        response, ca_file=ca.pem, request=request_file, verify_other=responder.verify_other
    )
    assert result.verified, result.output
    assert result.nonce_ok, result.output
    assert result.returncode == 0, result.output


def test_openssl_notices_a_wrong_nonce(ca: MiniCA, leaf: Path, tmp_path: Path) -> None:
    request_file = tmp_path / "req.der"
    request_file.write_bytes(request_der(leaf, ca, nonce=b"asked"))
    answered = parse_ocsp_request(request_der(leaf, ca, nonce=b"other"))
    response = tmp_path / "resp.der"
    own = Responder(ca.cert, ca.signer, ca.pem)
    response.write_bytes(respond(answered, CertificateStatus.good(), ca, own))
    result = ocsp_query(response, ca_file=ca.pem, request=request_file, verify_other=ca.pem)
    assert not result.nonce_ok


def test_response_fields(ca: MiniCA, leaf: Path, responder: Responder) -> None:
    request = parse_ocsp_request(request_der(leaf, ca, algorithm=hashes.SHA256()))
    status = CertificateStatus.revoked(NOW - HOUR, RevocationReason.SUPERSEDED)
    response = ocsp.load_der_ocsp_response(respond(request, status, ca, responder))
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    # RFC 6960 §4.2.2.3: responder ID by the SHA-1 hash of the responder's key.
    key_hash = x509.SubjectKeyIdentifier.from_public_key(responder.cert.public_key()).digest
    assert response.responder_key_hash == key_hash
    assert response.responder_name is None
    # The CertID is echoed as asked, with the request's hash algorithm.
    assert isinstance(response.hash_algorithm, hashes.SHA256)
    assert response.issuer_name_hash == request.cert_id.issuer_name_hash
    assert response.issuer_key_hash == request.cert_id.issuer_key_hash
    assert response.serial_number == request.cert_id.serial_number
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == NOW - HOUR
    assert response.revocation_reason is x509.ReasonFlags.superseded
    assert response.this_update_utc == NOW - MINUTE
    assert response.next_update_utc == NOW + HOUR
    nonce = response.extensions.get_extension_for_class(x509.OCSPNonce)
    assert nonce.value.nonce == NONCE
    assert not nonce.critical
    # A delegate's certificate travels with the response; the CA's own does not.
    expected_certs = [] if responder.cert == ca.cert else [responder.cert]
    assert response.certificates == expected_certs


def test_response_without_nonce_or_next_update(
    ca: MiniCA, leaf: Path, responder: Responder
) -> None:
    request = parse_ocsp_request(request_der(leaf, ca, nonce=None))
    der = respond(request, CertificateStatus.good(), ca, responder, next_update=None)
    response = ocsp.load_der_ocsp_response(der)
    assert len(response.extensions) == 0
    assert response.next_update_utc is None
    assert_lints_clean("ocsp_response", der, include_warnings=True)


def test_response_for_another_issuer_is_unauthorized(
    ca: MiniCA, leaf: Path, tmp_path: Path
) -> None:
    other = make_ca(tmp_path, "p256")  # the same name as `ca`, another key
    request = parse_ocsp_request(request_der(leaf, ca))
    assert not request.cert_id.names_issuer(other.cert)
    with pytest.raises(ValidationError) as caught:
        respond(
            request, CertificateStatus.good(), other, Responder(other.cert, other.signer, other.pem)
        )
    assert caught.value.code == "ocsp.unauthorized"
    assert response_status_for(caught.value) is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_response_refuses_responders_that_may_not_answer(
    ca: MiniCA, leaf: Path, tmp_path: Path
) -> None:
    request = parse_ocsp_request(request_der(leaf, ca))
    # A plain device certificate of the same CA: no id-kp-OCSPSigning.
    device_key = ec.generate_private_key(ec.SECP256R1())
    device = ca.signer.sign_certificate(
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
        .issuer_name(ca.cert.subject)
        .public_key(device_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + HOUR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    # A delegate of another CA.
    stranger = delegate(make_ca(tmp_path, "p256", "Other CA"), tmp_path)
    for responder in (Responder(device, FileSigner("d", device_key), ca.pem), stranger):
        with pytest.raises(ValidationError) as caught:
            respond(request, CertificateStatus.good(), ca, responder)
        assert caught.value.code == "ocsp.bad_responder"


def test_response_refuses_signer_without_responder_key(
    ca: MiniCA, leaf: Path, tmp_path: Path
) -> None:
    request = parse_ocsp_request(request_der(leaf, ca))
    helper = delegate(ca, tmp_path)
    with pytest.raises(ValidationError) as caught:
        respond(request, CertificateStatus.good(), ca, Responder(helper.cert, ca.signer, ca.pem))
    assert caught.value.code == "ocsp.signer_mismatch"


def test_response_refuses_expired_responder(ca: MiniCA, leaf: Path) -> None:
    request = parse_ocsp_request(request_der(leaf, ca))
    key = ec.generate_private_key(ec.SECP256R1())
    old = build_ocsp_signing_certificate(
        ca.cert, ca.signer, key.public_key(), NOW - 3 * HOUR, NOW - 2 * HOUR
    )
    with pytest.raises(ValidationError) as caught:
        respond(request, CertificateStatus.good(), ca, Responder(old, FileSigner("k", key), ca.pem))
    assert caught.value.code == "ocsp.responder_not_valid"


@pytest.mark.parametrize(
    ("this_update", "next_update"),
    [
        (NOW, NOW),
        (NOW, NOW - MINUTE),
        (NOW.replace(tzinfo=None), NOW + HOUR),
        (NOW, (NOW + HOUR).replace(tzinfo=None)),
    ],
)
def test_response_refuses_bad_times(
    ca: MiniCA, leaf: Path, this_update: dt.datetime, next_update: dt.datetime
) -> None:
    request = parse_ocsp_request(request_der(leaf, ca))
    with pytest.raises(ValidationError) as caught:
        build_ocsp_response(
            request,
            CertificateStatus.good(),
            issuer_cert=ca.cert,
            responder_cert=ca.cert,
            signer=ca.signer,
            this_update=this_update,
            next_update=next_update,
        )
    assert caught.value.code == "ocsp.bad_validity"


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        ((ocsp.OCSPCertStatus.GOOD, NOW, None), "ocsp.bad_status"),
        ((ocsp.OCSPCertStatus.UNKNOWN, None, RevocationReason.SUPERSEDED), "ocsp.bad_status"),
        ((ocsp.OCSPCertStatus.REVOKED, None, RevocationReason.SUPERSEDED), "ocsp.bad_status"),
        (
            (ocsp.OCSPCertStatus.REVOKED, NOW.replace(tzinfo=None), RevocationReason.SUPERSEDED),
            "ocsp.bad_status",
        ),
        ((ocsp.OCSPCertStatus.REVOKED, NOW, None), "ocsp.bad_status"),
        ((ocsp.OCSPCertStatus.REVOKED, NOW, 1), "ocsp.bad_status"),
        (
            (ocsp.OCSPCertStatus.REVOKED, NOW, RevocationReason.REMOVE_FROM_CRL),
            "revocation.bad_reason",
        ),
        (("good", None, None), "ocsp.bad_status"),
    ],
)
def test_certificate_status_refuses(arguments: tuple[object, object, object], code: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CertificateStatus(*arguments)  # type: ignore[arg-type]
    assert caught.value.code == code


# -- unsuccessful responses ------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "openssl_text"),
    [
        (
            ValidationError("ocsp.malformed_request", "x"),
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
            "malformedrequest (1)",
        ),
        (
            ValidationError("ocsp.bad_nonce", "x"),
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
            "malformedrequest (1)",
        ),
        (
            ValidationError("ocsp.unsupported_hash", "x"),
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
            "malformedrequest (1)",
        ),
        (
            ValidationError("ocsp.unauthorized", "x"),
            ocsp.OCSPResponseStatus.UNAUTHORIZED,
            "unauthorized (6)",
        ),
        (
            ValidationError("ocsp.bad_responder", "x"),
            ocsp.OCSPResponseStatus.INTERNAL_ERROR,
            "internalerror (2)",
        ),
        (
            NotFoundError("keystore.key_missing", "x"),
            ocsp.OCSPResponseStatus.INTERNAL_ERROR,
            "internalerror (2)",
        ),
    ],
)
def test_error_responses(
    tmp_path: Path, error: FleetPKIError, status: ocsp.OCSPResponseStatus, openssl_text: str
) -> None:
    assert response_status_for(error) is status
    der = build_ocsp_error_response(status)
    assert ocsp.load_der_ocsp_response(der).response_status is status
    assert_lints_clean("ocsp_response", der, include_warnings=True)
    path = tmp_path / "err.der"
    path.write_bytes(der)
    done = openssl("ocsp", "-respin", path, "-resp_text", "-noverify")
    assert f"Responder Error: {openssl_text}" in done.stdout + done.stderr


def test_error_response_cannot_be_successful() -> None:
    with pytest.raises(ValidationError) as caught:
        build_ocsp_error_response(ocsp.OCSPResponseStatus.SUCCESSFUL)
    assert caught.value.code == "ocsp.bad_status"


# -- delegated responder certificates --------------------------------------------------


@pytest.mark.parametrize("kind", ["p256", "rsa2048"])
def test_signing_certificate_profile(ca: MiniCA, tmp_path: Path, kind: str) -> None:
    helper = delegate(ca, tmp_path, kind)
    cert = helper.cert
    assert_lints_clean(
        "certificate", cert.public_bytes(serialization.Encoding.DER), include_warnings=True
    )
    extensions = cert.extensions
    eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    assert not extensions.get_extension_for_class(x509.OCSPNoCheck).critical
    constraints = extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    key_usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value.digital_signature
    assert not key_usage.value.key_cert_sign
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert cert.issuer == ca.cert.subject
    assert cert.subject.rfc4514_string() == "CN=fleetpki Test CA OCSP Responder"
    cert.verify_directly_issued_by(ca.cert)
    # openssl's own check for a delegated OCSP responder certificate.
    result = verify(helper.verify_other, ca.pem, purpose="ocsphelper")
    assert result.ok, result.output


def test_signing_certificate_with_chosen_subject_and_serial(ca: MiniCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ocsp.example.test")])
    cert = build_ocsp_signing_certificate(
        ca.cert, ca.signer, key.public_key(), NOW, NOW + HOUR, subject=subject, serial_number=77
    )
    assert (cert.subject, cert.serial_number) == (subject, 77)


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        (NOW, NOW),
        (NOW + HOUR, NOW),
        (NOW - 48 * HOUR, NOW + HOUR),  # before the CA
        (NOW, NOW + 365 * 24 * HOUR),  # after the CA
        (NOW.replace(tzinfo=None), NOW + HOUR),
    ],
)
def test_signing_certificate_refuses_bad_validity(
    ca: MiniCA, not_before: dt.datetime, not_after: dt.datetime
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValidationError) as caught:
        build_ocsp_signing_certificate(ca.cert, ca.signer, key.public_key(), not_before, not_after)
    assert caught.value.code == "ocsp.bad_validity"


def test_signing_certificate_refuses_wrong_ca_key(ca: MiniCA, tmp_path: Path) -> None:
    other = make_ca(tmp_path, "p256")
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValidationError) as caught:
        build_ocsp_signing_certificate(ca.cert, other.signer, key.public_key(), NOW, NOW + HOUR)
    assert caught.value.code == "ocsp.signer_mismatch"


def test_signing_certificate_refuses_end_entity_issuer(ca: MiniCA, leaf: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValidationError) as caught:
        build_ocsp_signing_certificate(load_pem(leaf), ca.signer, key.public_key(), NOW, NOW + HOUR)
    assert caught.value.code == "ocsp.issuer_not_ca"


def test_issuer_hashes_refuses_unknown_algorithm(ca: MiniCA) -> None:
    with pytest.raises(ValidationError) as caught:
        issuer_hashes(ca.cert, "md5")
    assert caught.value.code == "ocsp.unsupported_hash"
