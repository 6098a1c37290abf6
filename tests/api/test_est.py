"""EST (RFC 7030) over real TLS, driven by curl and openssl as the RFC's examples are."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor, authority, certificates, domains
from fleetpki.services.principals import add_principal, create_token
from support.openssl import verify
from support.pkilint import assert_lints_clean
from support.server import LiveServer, start_server

AGENT = "33333333-3333-4333-8333-333333333333"


def curl(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *map(str, args)], capture_output=True, timeout=60)


def certs_from(body: bytes) -> list[x509.Certificate]:
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))


def openssl_csr(tmp: Path, name: str, cn: str) -> Path:
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(tmp / f"{name}.key"),
            "-subj",
            f"/CN={cn}",
            "-outform",
            "DER",
            "-out",
            str(tmp / f"{name}.der"),
        ],
        check=True,
        capture_output=True,
    )
    # RFC 7030 §4.2.1: the body is the base64 of the DER PKCS#10.
    (tmp / f"{name}.b64").write_bytes(base64.encodebytes((tmp / f"{name}.der").read_bytes()))
    return tmp / f"{name}.b64"


@pytest.fixture
def est(tmp_path: Path):  # type: ignore[no-untyped-def]
    with start_server(tmp_path / "home") as server:
        fleet = server.fleet
        with fleet.transaction() as session:
            add_principal(session, Actor.local_admin(), AGENT, "factory line", now=fleet.now())
            token = create_token(session, Actor.local_admin(), AGENT, now=fleet.now()).secret
            issuing = next(c for c in authority.list_cas(session) if c.tier == "issuing")
            domains.register_domain(
                session,
                Actor.local_admin(),
                ca_id=issuing.id,
                template_id=None,
                name="dev-est",
                owners=[AGENT],
                requesters=[AGENT],
                now=fleet.now(),
            )
        yield server, token, issuing.id


def _enroll(
    server: LiveServer, token: str, body: Path, tmp: Path
) -> subprocess.CompletedProcess[bytes]:
    return curl(
        "--cacert",
        server.ca_bundle,
        "--user",
        f"{AGENT}:{token}",
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        f"@{body}",
        "-w",
        "\n%{http_code}",
        f"{server.base_url}/.well-known/est/simpleenroll",
    )


def _split(done: subprocess.CompletedProcess[bytes]) -> tuple[bytes, int]:
    body, _, code = done.stdout.rpartition(b"\n")
    return body, int(code)


def test_cacerts_simpleenroll_simplereenroll_with_curl(est, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, token, issuing_id = est
    cacerts = curl(
        "--cacert",
        server.ca_bundle,
        "-D",
        tmp_path / "headers",
        f"{server.base_url}/.well-known/est/cacerts",
    )
    headers = (tmp_path / "headers").read_text().lower()
    assert "content-type: application/pkcs7-mime" in headers
    assert "content-transfer-encoding: base64" in headers
    # PKCS#7 carries certificates as a SET, so their order is not meaningful.
    chain = sorted(certs_from(cacerts.stdout), key=lambda c: c.subject == c.issuer)
    assert [c.subject.rfc4514_string() for c in chain] == [
        "CN=fleetpki Issuing CA,O=fleetpki",
        "CN=fleetpki Root CA,O=fleetpki",
    ]
    printed = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-print_certs"],
        input=base64.b64decode(cacerts.stdout),
        capture_output=True,
        check=True,
    )
    assert b"subject=O = fleetpki, CN = fleetpki Issuing CA" in printed.stdout
    labelled = curl(
        "--cacert", server.ca_bundle, f"{server.base_url}/.well-known/est/{issuing_id}/cacerts"
    )
    assert set(certs_from(labelled.stdout)) == set(chain)
    (tmp_path / "issuing.pem").write_bytes(chain[0].public_bytes(Encoding.PEM))
    (tmp_path / "root.pem").write_bytes(chain[1].public_bytes(Encoding.PEM))

    body, code = _split(_enroll(server, token, openssl_csr(tmp_path, "dev", "dev-est"), tmp_path))
    assert code == 200, body
    (leaf,) = certs_from(body)
    assert leaf.subject.rfc4514_string() == "CN=dev-est"
    assert_lints_clean("certificate", leaf.public_bytes(Encoding.DER))
    (tmp_path / "dev.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
    checked = verify(
        tmp_path / "dev.pem", tmp_path / "issuing.pem", tmp_path / "root.pem", purpose="sslclient"
    )
    assert checked.ok, checked.output

    # simplereenroll: the current certificate is the only credential (TLS client auth).
    new_csr = openssl_csr(tmp_path, "dev2", "dev-est")
    renewed = curl(
        "--cacert",
        server.ca_bundle,
        "--cert",
        tmp_path / "dev.pem",
        "--key",
        tmp_path / "dev.key",
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        f"@{new_csr}",
        "-w",
        "\n%{http_code}",
        f"{server.base_url}/.well-known/est/simplereenroll",
    )
    body, code = _split(renewed)
    assert code == 200, body
    (new_leaf,) = certs_from(body)
    assert new_leaf.serial_number != leaf.serial_number
    with server.fleet.transaction() as session:
        record = certificates.get_certificate(session, format(new_leaf.serial_number, "X"))
        assert (
            record.renews_id
            == certificates.get_certificate(session, format(leaf.serial_number, "X")).id
        )

    # No client certificate: 401; a revoked one: refused.
    body, code = _split(
        curl(
            "--cacert",
            server.ca_bundle,
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            f"@{new_csr}",
            "-w",
            "\n%{http_code}",
            f"{server.base_url}/.well-known/est/simplereenroll",
        )
    )
    assert code == 401
    assert b"est.client_certificate_required" in body
    with server.fleet.transaction() as session:
        certificates.revoke(
            session,
            Actor.local_admin(),
            certificates.get_certificate(session, format(leaf.serial_number, "X")),
            RevocationReason.KEY_COMPROMISE,
            now=server.fleet.now(),
        )
    body, code = _split(
        curl(
            "--cacert",
            server.ca_bundle,
            "--cert",
            tmp_path / "dev.pem",
            "--key",
            tmp_path / "dev.key",
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            f"@{new_csr}",
            "-w",
            "\n%{http_code}",
            f"{server.base_url}/.well-known/est/simplereenroll",
        )
    )
    assert code == 401
    assert b"certificate.revoked" in body


@pytest.mark.parametrize(
    ("user", "cn", "content_type", "status", "code"),
    [
        (None, "dev-est", "application/pkcs10", 401, "auth.missing"),
        ("wrong-token", "dev-est", "application/pkcs10", 401, "auth.bad_token"),
        ("other-user", "dev-est", "application/pkcs10", 401, "auth.basic_user_mismatch"),
        ("agent", "not-registered", "application/pkcs10", 403, "domain.not_requester"),
        ("agent", "dev-est", "text/plain", 415, "request.unsupported_media_type"),
    ],
)
def test_simpleenroll_refusals_sign_nothing(
    est,
    tmp_path: Path,
    user: str | None,
    cn: str,  # type: ignore[no-untyped-def]
    content_type: str,
    status: int,
    code: str,
) -> None:
    server, token, _ = est
    body_file = openssl_csr(tmp_path, "r", cn)
    args: list[str | Path] = [
        "--cacert",
        server.ca_bundle,
        "-H",
        f"Content-Type: {content_type}",
        "--data-binary",
        f"@{body_file}",
        "-w",
        "\n%{http_code}",
    ]
    if user == "agent":
        args += ["--user", f"{AGENT}:{token}"]
    elif user == "wrong-token":
        args += ["--user", f"{AGENT}:fpk_not-a-real-token"]
    elif user == "other-user":
        args += ["--user", f"44444444-4444-4444-8444-444444444444:{token}"]
    with server.fleet.transaction() as session:
        before = len(
            certificates.list_certificates(
                session,
                Actor.local_admin(),
                certificates.CertificateQuery(),
                now=server.fleet.now(),
            )
        )
    body, got = _split(curl(*args, f"{server.base_url}/.well-known/est/simpleenroll"))
    assert got == status, body
    assert code.encode() in body
    with server.fleet.transaction() as session:
        after = len(
            certificates.list_certificates(
                session,
                Actor.local_admin(),
                certificates.CertificateQuery(),
                now=server.fleet.now(),
            )
        )
    assert after == before


def test_csrattrs_parse_with_openssl(est) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = est
    done = curl("--cacert", server.ca_bundle, f"{server.base_url}/.well-known/est/csrattrs")
    parsed = subprocess.run(
        ["openssl", "asn1parse", "-inform", "DER"],
        input=base64.b64decode(done.stdout),
        capture_output=True,
        check=True,
    )
    assert b"ecdsa-with-SHA256" in parsed.stdout
