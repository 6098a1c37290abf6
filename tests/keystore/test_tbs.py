"""The DER re-signing of keystore/tbs.py, checked against cryptography's own signatures.

RSA PKCS#1 v1.5 signatures are deterministic, so a structure signed by a stand-in
key and re-signed over its TBS by the real key must be byte for byte what
cryptography makes when it signs with the real key itself.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from fleetpki.keystore.tbs import (
    DerError,
    basic_ocsp_response,
    ecdsa_der_signature,
    replace_ocsp_responder_key_hash,
    replace_signature,
    replace_signed_ocsp,
)

NOW = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tbs test")])
REAL = rsa.generate_private_key(public_exponent=65537, key_size=2048)
STAND_IN = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _rsa_sign(data: bytes) -> bytes:
    return REAL.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _certificate_builder(key: rsa.RSAPrivateKey = REAL) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(NAME)
        .issuer_name(NAME)
        .public_key(key.public_key())
        .serial_number(1234)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=30))
        # A long extension so that the outer length takes more than one octet.
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("a" * 60)] * 20), False)
    )


def test_a_re_signed_certificate_is_the_one_the_real_key_makes() -> None:
    builder = _certificate_builder()
    draft = builder.sign(STAND_IN, hashes.SHA256())
    der = replace_signature(
        draft.public_bytes(serialization.Encoding.DER), _rsa_sign(draft.tbs_certificate_bytes)
    )
    assert der == builder.sign(REAL, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_a_re_signed_crl_is_the_one_the_real_key_makes() -> None:
    revoked = x509.RevokedCertificateBuilder().serial_number(7).revocation_date(NOW).build()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(NAME)
        .last_update(NOW)
        .next_update(NOW + dt.timedelta(days=1))
        .add_revoked_certificate(revoked)
    )
    draft = builder.sign(STAND_IN, hashes.SHA256())
    der = replace_signature(
        draft.public_bytes(serialization.Encoding.DER), _rsa_sign(draft.tbs_certlist_bytes)
    )
    assert der == builder.sign(REAL, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_an_ocsp_response_gets_the_real_responder_key_hash_and_signature() -> None:
    real_cert = _certificate_builder().sign(REAL, hashes.SHA256())
    stand_in_cert = _certificate_builder(STAND_IN).sign(STAND_IN, hashes.SHA256())
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=real_cert,
        issuer=real_cert,
        algorithm=hashes.SHA1(),
        cert_status=ocsp.OCSPCertStatus.GOOD,
        this_update=NOW,
        next_update=NOW + dt.timedelta(hours=1),
        revocation_time=None,
        revocation_reason=None,
    )
    wanted = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, real_cert).sign(
        REAL, hashes.SHA256()
    )
    draft = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, stand_in_cert).sign(
        STAND_IN, hashes.SHA256()
    )
    key_hash = x509.SubjectKeyIdentifier.from_public_key(REAL.public_key()).digest
    tbs = replace_ocsp_responder_key_hash(draft.tbs_response_bytes, key_hash)
    assert tbs != draft.tbs_response_bytes
    whole = draft.public_bytes(serialization.Encoding.DER)
    basic = replace_signature(basic_ocsp_response(whole), _rsa_sign(tbs), tbs=tbs)
    der = replace_signed_ocsp(whole, basic)
    # producedAt is "now" in each builder's sign(), so compare all but that.
    resigned = ocsp.load_der_ocsp_response(der)
    assert resigned.responder_key_hash == wanted.responder_key_hash == key_hash
    REAL.public_key().verify(
        resigned.signature, resigned.tbs_response_bytes, padding.PKCS1v15(), hashes.SHA256()
    )
    assert resigned.serial_number == wanted.serial_number
    assert resigned.signature_algorithm_oid == wanted.signature_algorithm_oid


def test_a_raw_ecdsa_signature_becomes_the_der_that_verifies() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    der = key.sign(b"data", ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    raw = r.to_bytes(48, "big") + s.to_bytes(48, "big")  # PKCS#11's r || s
    assert ecdsa_der_signature(raw) == der
    key.public_key().verify(ecdsa_der_signature(raw), b"data", ec.ECDSA(hashes.SHA384()))


@pytest.mark.parametrize(
    "der",
    [b"", b"\x30\x05\x02\x01", b"\x02\x01\x00", b"\x30\x03\x02\x01\x00", b"\x30\x00\x00"],
    ids=["empty", "truncated", "not-a-sequence", "one-part", "trailing"],
)
def test_what_is_not_a_signed_structure_is_refused(der: bytes) -> None:
    with pytest.raises(DerError):
        replace_signature(der, b"sig")


def test_an_odd_raw_ecdsa_signature_is_refused() -> None:
    with pytest.raises(DerError):
        ecdsa_der_signature(b"\x01\x02\x03")
