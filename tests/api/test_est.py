"""EST (RFC 7030) over real TLS, driven by curl and openssl as the RFC's examples are."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.certificates import CertificateQuery, IssueCommand
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
        fleet, admin = server.fleet, Actor.local_admin()
        fleet.principals.add(admin, AGENT, "factory line")
        token = fleet.principals.create_token(admin, AGENT).secret
        issuing = next(c for c in fleet.cas.list() if c.tier == "issuing")
        # "dev-est" is the device; the agent's own name lets it hold a certificate of its own.
        for name in ("dev-est", AGENT):
            fleet.domains.register(
                admin,
                ca_id=issuing.id,
                template_id=None,
                name=name,
                owners=[AGENT],
                requesters=[AGENT],
            )
        yield server, token, issuing.id


def _post(
    server: LiveServer,
    route: str,
    body: Path,
    *auth: str | Path,
    headers_file: Path | None = None,
    content_type: str = "application/pkcs10",
) -> tuple[bytes, int]:
    """POST a base64 CSR as RFC 7030's examples do; the body and the HTTP status."""
    dump: list[str | Path] = ["-D", headers_file] if headers_file is not None else []
    return _split(
        curl(
            "--cacert",
            server.ca_bundle,
            *auth,
            *dump,
            "-H",
            f"Content-Type: {content_type}",
            "--data-binary",
            f"@{body}",
            "-w",
            "\n%{http_code}",
            f"{server.base_url}/.well-known/est/{route}",
        )
    )


def _certificate_count(server: LiveServer) -> int:
    return len(server.fleet.certificates.search(Actor.local_admin(), CertificateQuery()))


def _serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "X")


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
    # RFC 7030 §4.1.3's answer, read exactly as its users do: curl | base64 -d | openssl.
    printed = subprocess.run(
        [
            "bash",
            "-o",
            "pipefail",
            "-c",
            'curl -sS --cacert "$1" "$2" | base64 -d | openssl pkcs7 -inform DER -print_certs',
            "est-cacerts",
            str(server.ca_bundle),
            f"{server.base_url}/.well-known/est/cacerts",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert b"subject=O = fleetpki, CN = fleetpki Issuing CA" in printed.stdout
    labelled = curl(
        "--cacert", server.ca_bundle, f"{server.base_url}/.well-known/est/{issuing_id}/cacerts"
    )
    assert set(certs_from(labelled.stdout)) == set(chain)
    (tmp_path / "issuing.pem").write_bytes(chain[0].public_bytes(Encoding.PEM))
    (tmp_path / "root.pem").write_bytes(chain[1].public_bytes(Encoding.PEM))

    basic = ("--user", f"{AGENT}:{token}")
    body, code = _post(server, "simpleenroll", openssl_csr(tmp_path, "dev", "dev-est"), *basic)
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
    current = ("--cert", tmp_path / "dev.pem", "--key", tmp_path / "dev.key")
    new_csr = openssl_csr(tmp_path, "dev2", "dev-est")
    count = _certificate_count(server)
    # RFC 7030 §4.2.2: the subject must be the current certificate's.
    other_subject = openssl_csr(tmp_path, "dev3", AGENT)
    body, code = _post(server, "simplereenroll", other_subject, *current)
    assert (code, b"renewal.subject_mismatch" in body) == (400, True), body
    assert _certificate_count(server) == count
    body, code = _post(server, "simplereenroll", new_csr, *current)
    assert code == 200, body
    (new_leaf,) = certs_from(body)
    assert new_leaf.serial_number != leaf.serial_number
    assert new_leaf.subject == leaf.subject
    assert_lints_clean("certificate", new_leaf.public_bytes(Encoding.DER))
    (tmp_path / "dev2.pem").write_bytes(new_leaf.public_bytes(Encoding.PEM))
    checked = verify(
        tmp_path / "dev2.pem", tmp_path / "issuing.pem", tmp_path / "root.pem", purpose="sslclient"
    )
    assert checked.ok, checked.output
    renewed = server.fleet.certificates.get(Actor.local_admin(), _serial(new_leaf))
    assert renewed.renews_serial == _serial(leaf)

    # No client certificate: 401; a revoked one: refused.
    body, code = _post(server, "simplereenroll", new_csr)
    assert code == 401
    assert b"est.client_certificate_required" in body
    server.fleet.certificates.revoke(
        Actor.local_admin(), _serial(leaf), RevocationReason.KEY_COMPROMISE
    )
    count = _certificate_count(server)
    body, code = _post(server, "simplereenroll", new_csr, *current)
    assert code == 401
    assert b"certificate.revoked" in body
    assert _certificate_count(server) == count


def _issue_via_service(server: LiveServer, cn: str, tmp: Path) -> tuple[Path, Path]:
    """The agent requests a certificate for ``cn`` (its own id, or a device's)."""
    body = openssl_csr(tmp, f"own-{cn}", cn)
    issuing = next(c for c in server.fleet.cas.list() if c.tier == "issuing")
    issued = server.fleet.certificates.issue(
        Actor(AGENT), IssueCommand(ca_id=issuing.id, csr=base64.b64decode(body.read_bytes()))
    )
    (tmp / f"own-{cn}.pem").write_text(issued.pem)
    return tmp / f"own-{cn}.pem", tmp / f"own-{cn}.key"


def test_simpleenroll_by_the_agents_own_client_certificate(est, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = est
    agent_pem, agent_key = _issue_via_service(server, AGENT, tmp_path)
    device_pem, device_key = _issue_via_service(server, "dev-est", tmp_path)
    csr = openssl_csr(tmp_path, "dev", "dev-est")
    body, code = _post(server, "simpleenroll", csr, "--cert", agent_pem, "--key", agent_key)
    assert code == 200, body
    (leaf,) = certs_from(body)
    assert leaf.subject.rfc4514_string() == "CN=dev-est"
    assert_lints_clean("certificate", leaf.public_bytes(Encoding.DER))
    record = server.fleet.certificates.get(Actor.local_admin(), _serial(leaf))
    assert record.requested_by == AGENT
    # A device's certificate, though the agent requested it, does not stand for the agent.
    count = _certificate_count(server)
    body, code = _post(server, "simpleenroll", csr, "--cert", device_pem, "--key", device_key)
    assert code == 401, body
    assert b"auth.certificate_not_a_credential" in body
    assert _certificate_count(server) == count


def test_simpleenroll_with_a_bearer_token(est, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, token, issuing_id = est
    csr = openssl_csr(tmp_path, "dev", "dev-est")
    bearer = ("-H", f"Authorization: Bearer {token}")
    body, code = _post(server, f"{issuing_id}/simpleenroll", csr, *bearer)
    assert code == 200, body
    (leaf,) = certs_from(body)
    assert_lints_clean("certificate", leaf.public_bytes(Encoding.DER))


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
    args: list[str | Path] = []
    if user == "agent":
        args += ["--user", f"{AGENT}:{token}"]
    elif user == "wrong-token":
        args += ["--user", f"{AGENT}:fpk_not-a-real-token"]
    elif user == "other-user":
        args += ["--user", f"44444444-4444-4444-8444-444444444444:{token}"]
    before = _certificate_count(server)
    body, got = _post(
        server,
        "simpleenroll",
        body_file,
        *args,
        headers_file=tmp_path / "h",
        content_type=content_type,
    )
    assert got == status, body
    assert code.encode() in body
    assert _certificate_count(server) == before
    if status == 401:
        # RFC 7030 §3.2.3: the client learns that HTTP Basic is accepted.
        challenges = (tmp_path / "h").read_text().lower()
        assert 'www-authenticate: basic realm="fleetpki est"' in challenges


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
