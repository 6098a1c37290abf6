"""Nonce responses assembled around a signed response's parts (pki/ocsp_prepared.py):
the same ResponseData bytes as OCSPResponseBuilder makes, pkilint-clean, verified by
``openssl ocsp`` with the nonce matched, for a CA signing itself and for a delegate."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp

from fleetpki.keystore.der import DerError
from fleetpki.keystore.files import FileSigner
from fleetpki.pki.ocsp import (
    CertificateStatus,
    OcspRequest,
    OcspResponder,
    build_ocsp_error_response,
    build_ocsp_signing_certificate,
    parse_ocsp_request,
)
from fleetpki.pki.ocsp_prepared import PreparedResponse
from fleetpki.pki.revocation import RevocationReason
from support.openssl import ocsp_query, openssl
from support.pkilint import assert_lints_clean
from support.testca import MiniCA, issue_leaf, make_ca, new_key

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
HOUR = dt.timedelta(hours=1)
STATUSES = {
    "good": CertificateStatus.good(),
    "revoked": CertificateStatus.revoked(NOW - HOUR, RevocationReason.KEY_COMPROMISE),
    "revoked-unspecified": CertificateStatus.revoked(NOW - HOUR),
}


@dataclass(frozen=True, slots=True)
class Signing:
    """A responder ready to sign, and the PEM that openssl finds its certificate in."""

    responder: OcspResponder
    verify_other: Path


@pytest.fixture(scope="module", params=["p256", "rsa2048"])
def ca(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> MiniCA:
    return make_ca(tmp_path_factory.mktemp("ca"), request.param)


@pytest.fixture(scope="module")
def leaf(ca: MiniCA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return issue_leaf(ca, tmp_path_factory.mktemp("leaf"))


@pytest.fixture(scope="module", params=["ca", "delegated"])
def signing(
    request: pytest.FixtureRequest, ca: MiniCA, tmp_path_factory: pytest.TempPathFactory
) -> Signing:
    if request.param == "ca":
        return Signing(OcspResponder.create(ca.cert, ca.cert, ca.signer), ca.pem)
    key = new_key("p256")
    cert = build_ocsp_signing_certificate(
        ca.cert, ca.signer, key.public_key(), NOW - HOUR, NOW + 24 * HOUR
    )
    pem = tmp_path_factory.mktemp("delegate") / "responder.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    signer = FileSigner("memory:responder", key)
    return Signing(OcspResponder.create(ca.cert, cert, signer), pem)


def _request(leaf: Path, ca: MiniCA, nonce: bytes | None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        x509.load_pem_x509_certificate(leaf.read_bytes()), ca.cert, hashes.SHA1()
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _prepared(signing: Signing, request: OcspRequest, status: CertificateStatus) -> bytes:
    return signing.responder.respond(
        OcspRequest(request.cert_id), status, this_update=NOW, next_update=NOW + HOUR
    )


@pytest.mark.parametrize("status", list(STATUSES))
def test_the_response_data_is_what_the_builder_signs(
    ca: MiniCA, leaf: Path, signing: Signing, status: str
) -> None:
    nonce = b"\x42" * 16
    request = parse_ocsp_request(_request(leaf, ca, nonce))
    built = ocsp.load_der_ocsp_response(
        signing.responder.respond(
            request, STATUSES[status], this_update=NOW, next_update=NOW + HOUR
        )
    )
    prepared = PreparedResponse.of(
        _prepared(signing, request, STATUSES[status]), signing.responder.signer
    )
    made = prepared.with_nonce(nonce, built.produced_at_utc)
    assert_lints_clean("ocsp_response", made, include_warnings=True)
    response = ocsp.load_der_ocsp_response(made)
    # Byte for byte what cryptography's builder signs, producedAt equal.
    assert response.tbs_response_bytes == built.tbs_response_bytes
    assert response.signature_algorithm_oid == built.signature_algorithm_oid
    assert response.certificates == built.certificates
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).critical is False


@pytest.mark.parametrize("status", ["good", "revoked"])
@pytest.mark.parametrize("length", [1, 16, 32])
def test_openssl_verifies_it_and_matches_its_own_nonce(
    ca: MiniCA, leaf: Path, signing: Signing, tmp_path: Path, status: str, length: int
) -> None:
    request_file = tmp_path / "req.der"
    if length == 16:
        # openssl's own request, with its own random nonce (16 octets by default).
        done = openssl("ocsp", "-issuer", ca.pem, "-cert", leaf, "-reqout", request_file)
        assert done.returncode == 0, done.stderr
    else:
        request_file.write_bytes(_request(leaf, ca, bytes(range(1, length + 1))))
    request = parse_ocsp_request(request_file.read_bytes())
    assert request.nonce is not None and len(request.nonce) == length
    prepared = PreparedResponse.of(
        _prepared(signing, request, STATUSES[status]), signing.responder.signer
    )
    response = tmp_path / "resp.der"
    response.write_bytes(prepared.with_nonce(request.nonce, dt.datetime.now(dt.UTC)))
    assert_lints_clean("ocsp_response", response.read_bytes(), include_warnings=True)
    checked = ocsp_query(
        response, ca_file=ca.pem, request=request_file, verify_other=signing.verify_other
    )
    assert checked.verified, checked.output
    assert checked.nonce_ok, checked.output
    assert checked.returncode == 0, checked.output
    by_cert = ocsp_query(
        response, ca_file=ca.pem, issuer=ca.pem, cert=leaf, verify_other=signing.verify_other
    )
    assert by_cert.status == status, by_cert.output


def test_another_nonce_fails_openssl_check(
    ca: MiniCA, leaf: Path, signing: Signing, tmp_path: Path
) -> None:
    request_file = tmp_path / "req.der"
    request_file.write_bytes(_request(leaf, ca, b"asked"))
    request = parse_ocsp_request(request_file.read_bytes())
    prepared = PreparedResponse.of(
        _prepared(signing, request, STATUSES["good"]), signing.responder.signer
    )
    response = tmp_path / "resp.der"
    response.write_bytes(prepared.with_nonce(b"other", dt.datetime.now(dt.UTC)))
    checked = ocsp_query(
        response, ca_file=ca.pem, request=request_file, verify_other=signing.verify_other
    )
    assert not checked.nonce_ok, checked.output
    assert checked.returncode != 0


def test_each_nonce_response_is_signed_anew(ca: MiniCA, leaf: Path, signing: Signing) -> None:
    request = parse_ocsp_request(_request(leaf, ca, None))
    prepared = PreparedResponse.of(
        _prepared(signing, request, STATUSES["good"]), signing.responder.signer
    )
    produced = dt.datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=dt.UTC)
    first = ocsp.load_der_ocsp_response(prepared.with_nonce(b"\x01" * 8, produced))
    second = ocsp.load_der_ocsp_response(prepared.with_nonce(b"\x02" * 8, produced))
    assert first.tbs_response_bytes != second.tbs_response_bytes
    assert first.produced_at_utc == produced.replace(microsecond=0)
    key = signing.responder.responder_cert.public_key()
    for response in (first, second):
        hashed = response.signature_hash_algorithm
        assert hashed is not None
        # Verifies against the responder's key (raises otherwise).
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashed))
        else:
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), hashed)


@pytest.mark.parametrize(
    "response",
    [
        b"",
        b"\x30\x00",
        build_ocsp_error_response(ocsp.OCSPResponseStatus.MALFORMED_REQUEST),
    ],
    ids=["empty", "empty-sequence", "unsuccessful"],
)
def test_only_a_signed_successful_response_is_prepared(ca: MiniCA, response: bytes) -> None:
    with pytest.raises(DerError):
        PreparedResponse.of(response, ca.signer)


def test_a_response_with_extensions_is_not_prepared(
    ca: MiniCA, leaf: Path, signing: Signing
) -> None:
    # One made for a nonce already carries responseExtensions: not a template.
    request = parse_ocsp_request(_request(leaf, ca, b"\x09" * 16))
    nonced = signing.responder.respond(
        request, STATUSES["good"], this_update=NOW, next_update=NOW + HOUR
    )
    with pytest.raises(DerError):
        PreparedResponse.of(nonced, signing.responder.signer)
