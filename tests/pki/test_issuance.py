"""The issuance pipeline: a table of good and bad CSRs, checked with openssl and pkilint."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetpki.errors import FleetPKIError, PermissionDenied, ValidationError
from fleetpki.keystore import FileKeyStore
from fleetpki.pki import (
    CAUrls,
    IssuanceRequest,
    Issuer,
    KeySpec,
    KeyUsageName,
    SanType,
    SubjectAltName,
    Template,
    build_root_ca,
    build_subordinate_ca,
    ca_name,
    generate_key,
    issue_certificate,
    parse_csr,
)
from fleetpki.pki.profile import ALL_LEAF_KEY_SPECS
from support.openssl import verify
from support.pkilint import assert_lints_clean

# openssl verify checks against the real clock, so "now" is the real time.
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
URL = "https://127.0.0.1:8443"
REGISTERED = {"dev-001", "sensor-7.devices.example.com", "gw.example.com"}


@pytest.fixture(scope="module", params=[KeySpec.EC_P256, KeySpec.RSA_2048], ids=lambda s: s.value)
def chain(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    """A root (P-384) and an issuing CA of the parametrised key type, with PEM files."""
    tmp = tmp_path_factory.mktemp("chain")
    keystore = FileKeyStore(tmp / "keys", b"test passphrase")
    root_signer = keystore.generate(KeySpec.EC_P384)
    root = build_root_ca(
        root_signer, ca_name("Test Root", "fleetpki tests"), now=NOW - dt.timedelta(days=1)
    )
    signer = keystore.generate(request.param)
    issuing = build_subordinate_ca(
        root,
        root_signer,
        signer,
        ca_name("Test Issuing", "fleetpki tests"),
        now=NOW - dt.timedelta(days=1),
        urls=CAUrls(f"{URL}/crl/root.crl", f"{URL}/ca/root.cer"),
    )
    (tmp / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (tmp / "issuing.pem").write_bytes(issuing.public_bytes(serialization.Encoding.PEM))
    issuer = Issuer(issuing, signer, f"{URL}/crl/i.crl", f"{URL}/ocsp", f"{URL}/ca/i.cer")
    return {"issuer": issuer, "dir": tmp, "root": root, "issuing": issuing}


def _csr(
    cn: str | None,
    key: object = None,
    sans: list[x509.GeneralName] | None = None,
    algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, algorithm or hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def _issue(
    chain: dict[str, object], csr: bytes, template: Template | None = None, **kwargs: object
):  # type: ignore[no-untyped-def]
    request = IssuanceRequest(csr=parse_csr(csr), **kwargs)  # type: ignore[arg-type]
    return issue_certificate(
        request,
        template or Template("00000000-0000-4000-8000-000000000001"),
        chain["issuer"],
        may_request=REGISTERED.__contains__,
        now=NOW,  # type: ignore[arg-type]
    )


def _check_with_peers(chain: dict[str, object], issued: object, tmp_path: Path) -> None:
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(issued.pem)  # type: ignore[attr-defined]
    tmp = chain["dir"]
    result = verify(leaf, tmp / "issuing.pem", tmp / "root.pem", purpose="sslclient")  # type: ignore[operator]
    assert result.ok, result.output
    assert_lints_clean("certificate", issued.der)  # type: ignore[attr-defined]


GOOD = [
    pytest.param(lambda: _csr("dev-001"), {}, id="ec-p256 device id"),
    pytest.param(lambda: _csr("dev-001", rsa.generate_private_key(65537, 2048)), {}, id="rsa-2048"),
    pytest.param(
        lambda: _csr("dev-001", ec.generate_private_key(ec.SECP384R1()), algorithm=hashes.SHA384()),
        {},
        id="ec-p384",
    ),
    pytest.param(
        lambda: _csr("dev-001", sans=[x509.DNSName("dev-001")]),
        {},
        id="device id as DNS SAN folds into CN",
    ),
    pytest.param(lambda: _csr("sensor-7.devices.example.com"), {}, id="DNS CN gets a SAN"),
    pytest.param(lambda: _csr(None, sans=[x509.DNSName("gw.example.com")]), {}, id="SAN only"),
    pytest.param(lambda: _csr("dev-001"), {"validity_days": 10}, id="10 days"),
    pytest.param(
        lambda: _csr("dev-001"),
        {"key_usages": (KeyUsageName.KEY_ENCIPHERMENT, KeyUsageName.DIGITAL_SIGNATURE)},
        id="EZCA RSA default usages on an EC key",
    ),
]


@pytest.mark.parametrize(("make", "kwargs"), GOOD)
def test_good_requests_issue_clean_certificates(
    chain: dict[str, object], make, kwargs, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    issued = _issue(chain, make(), **kwargs)
    cert = issued.certificate
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).critical
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).critical
    assert 0 < cert.serial_number < 2**160
    assert issued.not_after <= chain["issuing"].not_valid_after_utc  # type: ignore[attr-defined]
    _check_with_peers(chain, issued, tmp_path)


def test_defaults_follow_the_profile(chain: dict[str, object]) -> None:
    rsa_issued = _issue(chain, _csr("dev-001", rsa.generate_private_key(65537, 2048)))
    ku = rsa_issued.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment
    ec_issued = _issue(chain, _csr("dev-001"))
    ku = ec_issued.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_encipherment
    eku = ec_issued.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ec_issued.not_after - ec_issued.not_before == dt.timedelta(days=365, minutes=1)
    aia = ec_issued.certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    assert [d.access_location.value for d in aia.value] == [f"{URL}/ocsp", f"{URL}/ca/i.cer"]
    cdp = ec_issued.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert cdp.value[0].full_name[0].value == f"{URL}/crl/i.crl"
    ski = ec_issued.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    aki = ec_issued.certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    issuing_ski = chain["issuing"].extensions.get_extension_for_class(x509.SubjectKeyIdentifier)  # type: ignore[attr-defined]
    assert aki.value.key_identifier == issuing_ski.value.digest
    assert ski.value.digest


def test_a_csr_made_by_openssl_req(chain: dict[str, object], tmp_path: Path) -> None:
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-newkey",
            "rsa:4096",
            "-nodes",
            "-sha256",
            "-keyout",
            str(tmp_path / "k.pem"),
            "-subj",
            "/CN=dev-001",
            "-addext",
            "subjectAltName=DNS:dev-001",
            "-out",
            str(tmp_path / "r.csr"),
        ],
        check=True,
        capture_output=True,
    )
    issued = _issue(chain, (tmp_path / "r.csr").read_bytes(), validity_days=10)
    assert issued.common_name == "dev-001"
    _check_with_peers(chain, issued, tmp_path)


def _tampered_signature() -> bytes:
    der = x509.load_pem_x509_csr(_csr("dev-001")).public_bytes(serialization.Encoding.DER)
    return der[:-4] + bytes(b ^ 0xFF for b in der[-4:])


def _rsa_1024() -> bytes:
    key = rsa.generate_private_key(65537, 1024)
    return _csr("dev-001", key)


BAD = [
    pytest.param(_tampered_signature, {}, ValidationError, "csr.bad_signature", id="bad signature"),
    pytest.param(_rsa_1024, {}, ValidationError, "csr.weak_key", id="rsa-1024"),
    pytest.param(
        lambda: _csr("dev-001", ec.generate_private_key(ec.SECP521R1()), algorithm=hashes.SHA512()),
        {},
        ValidationError,
        "csr.unsupported_key",
        id="curve P-521",
    ),
    pytest.param(
        lambda: _csr("dev-001", ec.generate_private_key(ec.SECP256K1())),
        {},
        ValidationError,
        "csr.unsupported_key",
        id="curve secp256k1",
    ),
    pytest.param(
        lambda: _csr("not-registered"),
        {},
        PermissionDenied,
        "domain.not_requester",
        id="CN not registered",
    ),
    pytest.param(
        lambda: _csr("dev-001", sans=[x509.DNSName("evil.example.com")]),
        {},
        PermissionDenied,
        "domain.not_requester",
        id="SAN not registered",
    ),
    pytest.param(
        lambda: _csr("dev-001", sans=[x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]),
        {},
        PermissionDenied,
        "domain.not_requester",
        id="IP SAN not registered",
    ),
    pytest.param(
        lambda: _csr("dev-001", sans=[x509.DNSName("other-device")]),
        {},
        ValidationError,
        "san.invalid",
        id="single-label DNS SAN",
    ),
    pytest.param(
        lambda: _csr("dev-001"),
        {"validity_days": 366},
        ValidationError,
        "template.validity_exceeded",
        id="validity too long",
    ),
    pytest.param(
        lambda: _csr("dev-001"),
        {"validity_days": 0},
        ValidationError,
        "request.bad_validity",
        id="zero validity",
    ),
    pytest.param(lambda: _csr(None), {}, ValidationError, "csr.no_names", id="no names"),
    pytest.param(
        lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        {},
        ValidationError,
        "csr.malformed",
        id="garbage PEM",
    ),
    pytest.param(
        lambda: b"\x30\x03\x02\x01\x00", {}, ValidationError, "csr.malformed", id="garbage DER"
    ),
    pytest.param(
        lambda: _csr("dev-001"),
        {"ekus": ("1.3.6.1.5.5.7.3.3",)},
        ValidationError,
        "template.eku_not_allowed",
        id="codeSigning EKU",
    ),
    pytest.param(
        lambda: _csr("dev-001"),
        {"key_usages": (KeyUsageName.KEY_ENCIPHERMENT,)},
        ValidationError,
        "template.key_usage_mismatch",
        id="only keyEncipherment on EC",
    ),
]


@pytest.mark.parametrize(("make", "kwargs", "error", "code"), BAD)
def test_bad_requests_are_refused_and_sign_nothing(
    chain: dict[str, object],
    make,
    kwargs,
    error: type[FleetPKIError],
    code: str,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signed: list[object] = []
    signer = chain["issuer"].signer  # type: ignore[attr-defined]
    original = signer.sign_certificate
    monkeypatch.setattr(signer, "sign_certificate", lambda b: signed.append(b) or original(b))
    with pytest.raises(error) as caught:
        _issue(chain, make(), **kwargs)
    assert caught.value.code == code
    assert signed == []


def test_ed25519_only_where_the_template_allows(chain: dict[str, object], tmp_path: Path) -> None:
    key = generate_key(KeySpec.ED25519)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-001")]))
        .sign(key, None)
        .public_bytes(serialization.Encoding.PEM)
    )  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as caught:
        _issue(chain, csr)
    assert caught.value.code == "template.key_type_not_allowed"
    template = Template(
        "00000000-0000-4000-8000-000000000002", allowed_key_specs=ALL_LEAF_KEY_SPECS
    )
    issued = _issue(chain, csr, template)
    _check_with_peers(chain, issued, tmp_path)


def test_validity_is_capped_at_the_ca_expiry(chain: dict[str, object]) -> None:
    issuing = chain["issuing"]
    late = issuing.not_valid_after_utc - dt.timedelta(days=3)  # type: ignore[attr-defined]
    request = IssuanceRequest(csr=parse_csr(_csr("dev-001")), validity_days=30)
    issued = issue_certificate(
        request,
        Template("00000000-0000-4000-8000-000000000001"),
        chain["issuer"],
        may_request=REGISTERED.__contains__,
        now=late,
    )  # type: ignore[arg-type]
    assert issued.not_after == issuing.not_valid_after_utc  # type: ignore[attr-defined]


def test_domain_restrictions(chain: dict[str, object]) -> None:
    template = Template(
        "00000000-0000-4000-8000-000000000003", domain_restrictions=("*.example.com",)
    )
    with pytest.raises(ValidationError) as caught:
        _issue(chain, _csr("dev-001"), template)
    assert caught.value.code == "template.domain_restricted"
    issued = _issue(chain, _csr("gw.example.com"), template)
    assert issued.subject_alt_names == (SubjectAltName(SanType.DNS, "gw.example.com"),)
