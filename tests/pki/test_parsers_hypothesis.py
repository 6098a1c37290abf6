"""Hypothesis on the parsers: CSRs, names, key specs, EKUs, key usages and durations."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetpki.errors import FleetPKIError, ValidationError
from fleetpki.pki import KeySpec, KeyUsageName, SanType, SubjectAltName, parse_csr, parse_eku
from fleetpki.pki.names import is_dns_name, validate_domain_name

_KEY = ec.generate_private_key(ec.SECP256R1())
_DEVICE_CHARS = "abcXYZ019-.+%_#*?!(),=@$'"


@given(st.binary(max_size=2048))
def test_csr_parser_refuses_random_bytes_with_a_stable_code(data: bytes) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_csr(data)
    assert caught.value.code.startswith("csr.")


@given(st.text(max_size=300))
def test_csr_parser_refuses_random_text(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_csr("-----BEGIN CERTIFICATE REQUEST-----\n" + text)


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(cn=st.text(alphabet=_DEVICE_CHARS, min_size=1, max_size=64))
def test_csr_round_trip_keeps_the_common_name(cn: str) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(_KEY, hashes.SHA256())
    )
    for encoded in (
        csr.public_bytes(serialization.Encoding.PEM),
        csr.public_bytes(serialization.Encoding.DER),
    ):
        parsed = parse_csr(encoded)
        assert parsed.common_name == cn
        assert parsed.key_spec is KeySpec.EC_P256


@settings(max_examples=40)
@given(st.binary(min_size=1, max_size=64))
def test_flipping_a_signature_byte_is_caught(flip: bytes) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")]))
        .sign(_KEY, hashes.SHA256())
    )
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    position = len(der) - 1 - (flip[0] % 8)
    der[position] ^= flip[-1] or 1
    with pytest.raises(ValidationError) as caught:
        parse_csr(bytes(der))
    assert caught.value.code in {"csr.bad_signature", "csr.malformed"}


@given(st.text(alphabet=_DEVICE_CHARS, min_size=1, max_size=128))
def test_device_ids_from_the_azure_set_are_accepted(name: str) -> None:
    assert validate_domain_name(name) == name


@given(st.text(min_size=0, max_size=200))
def test_domain_validation_accepts_or_refuses_with_its_code(name: str) -> None:
    try:
        validate_domain_name(name)
    except ValidationError as exc:
        assert exc.code == "domain.invalid_name"
    else:
        assert 1 <= len(name) <= 128 and name.isascii() and " " not in name


@given(
    st.from_regex(
        r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?)*\.[a-z]{2,6}",
        fullmatch=True,
    )
)
def test_fully_qualified_names_are_dns_names(name: str) -> None:
    assert is_dns_name(name)
    assert SubjectAltName(SanType.DNS, name).to_general_name() == x509.DNSName(name)


@given(st.text(max_size=80))
def test_san_conversion_never_raises_anything_but_a_validation_error(value: str) -> None:
    for san_type in SanType:
        try:
            SubjectAltName(san_type, value).to_general_name()
        except ValidationError as exc:
            assert exc.code == "san.invalid"


@pytest.mark.parametrize(
    "name", ["localhost", "dev1", "3f2a1b4c-1234-4cde-9abc-0123456789ab", "a.b", "-a.com", "x..com"]
)
def test_single_labels_and_bad_labels_are_not_dns_names(name: str) -> None:
    assert not is_dns_name(name)


@given(st.text(max_size=40))
def test_closed_sets_refuse_unknown_values_with_codes(text: str) -> None:
    for parse in (KeySpec.parse, KeyUsageName.parse, parse_eku):
        try:
            parse(text)
        except FleetPKIError as exc:
            assert exc.code in {"key.unknown_type", "template.bad_key_usage", "template.bad_eku"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Digital Signature", KeyUsageName.DIGITAL_SIGNATURE),
        ("keyEncipherment", KeyUsageName.KEY_ENCIPHERMENT),
        ("non_repudiation", KeyUsageName.NON_REPUDIATION),
    ],
)
def test_key_usage_spellings(text: str, expected: KeyUsageName) -> None:
    assert KeyUsageName.parse(text) is expected
