"""CRL, caIssuers and OCSP over real HTTPS, checked with openssl and pkilint."""

from __future__ import annotations

import base64
import ssl
import subprocess
from pathlib import Path
from urllib.parse import quote

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from conftest import make_csr
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.ca_views import CAView
from fleetpki.services.certificates import IssueCommand
from support.openssl import ocsp_query, verify_with_crl
from support.pkilint import assert_lints_clean
from support.server import LiveServer, start_server


def _ca(server: LiveServer, tier: str) -> CAView:
    return next(c for c in server.fleet.cas.list() if c.tier == tier)


def _issue(server: LiveServer, name: str, tmp: Path) -> tuple[str, Path]:
    fleet = server.fleet
    admin = Actor.local_admin()
    issuing = _ca(server, "issuing")
    fleet.domains.register(
        admin,
        ca_id=issuing.id,
        template_id=None,
        name=name,
        owners=[admin.principal_id],
        requesters=[admin.principal_id],
    )
    _, csr = make_csr(name)
    issued = fleet.certificates.issue(admin, IssueCommand(ca_id=issuing.id, csr=csr))
    path = tmp / f"{name}.pem"
    path.write_text(issued.pem)
    return issued.certificate.serial_hex, path


def _chain_files(server: LiveServer, tmp: Path) -> tuple[str, Path, Path]:
    issuing = _ca(server, "issuing")
    issuing_cert, root_cert = server.fleet.cas.chain(issuing.id)
    (tmp / "issuing.pem").write_bytes(issuing_cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "root.pem").write_bytes(root_cert.public_bytes(serialization.Encoding.PEM))
    return issuing.id, tmp / "issuing.pem", tmp / "root.pem"


def _revoke(server: LiveServer, serial: str) -> None:
    server.fleet.certificates.revoke(Actor.local_admin(), serial, RevocationReason.KEY_COMPROMISE)


def test_crl_is_cached_rebuilt_after_a_revocation_and_checked_by_openssl(tmp_path: Path) -> None:
    with start_server(tmp_path / "home") as server:
        good_serial, good = _issue(server, "dev-good", tmp_path)
        bad_serial, bad = _issue(server, "dev-bad", tmp_path)
        issuing_id, issuing_pem, root_pem = _chain_files(server, tmp_path)
        context = ssl.create_default_context(cafile=server.ca_bundle)
        with httpx.Client(base_url=server.base_url, verify=context) as http:
            first = http.get(f"/crl/{issuing_id}.crl")
            assert first.status_code == 200
            assert first.headers["content-type"] == "application/pkix-crl"
            assert "max-age=" in first.headers["cache-control"]
            again = http.get(f"/crl/{issuing_id}.crl")
            assert again.content == first.content  # served from the cache
            _revoke(server, bad_serial)
            # The first read after a revocation serves the previous CRL and starts the
            # rebuild in the background; wait for it, then read the new one.
            stale = http.get(f"/crl/{issuing_id}.crl")
            assert stale.status_code == 200
            server.fleet.crls.refresh(issuing_id)
            after = http.get(f"/crl/{issuing_id}.crl")
            root_crl = http.get(f"/crl/{_ca(server, 'root').id}.crl")
            ca_der = http.get(f"/ca/{issuing_id}.cer")
            assert ca_der.headers["content-type"] == "application/pkix-cert"
            assert x509.load_der_x509_certificate(ca_der.content) == x509.load_pem_x509_certificate(
                issuing_pem.read_bytes()
            )
            assert http.get("/crl/00000000-0000-4000-8000-000000000000.crl").status_code == 404

    before, crl = x509.load_der_x509_crl(first.content), x509.load_der_x509_crl(after.content)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    revoked = crl.get_revoked_certificate_by_serial_number(int(bad_serial, 16))
    assert revoked is not None
    assert crl.get_revoked_certificate_by_serial_number(int(good_serial, 16)) is None
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    assert idp.full_name[0].value == f"{server.base_url}/crl/{issuing_id}.crl"
    for der in (first.content, after.content, root_crl.content):
        assert_lints_clean("crl", der)

    crl_files = []
    for name, der in (("issuing.crl", after.content), ("root.crl", root_crl.content)):
        (tmp_path / name).write_bytes(der)
        crl_files.append(tmp_path / name)
    # -crl_check checks the leaf against the issuing CA's CRL; the issuing CA is
    # checked against the root's CRL the same way (openssl's -crl_check_all would
    # also want a CRL scope covering the self-signed root itself).
    ok = verify_with_crl(good, issuing_pem, root_pem, crls=crl_files[:1])
    assert ok.ok, ok.output
    refused = verify_with_crl(bad, issuing_pem, root_pem, crls=crl_files[:1])
    assert not refused.ok
    assert refused.error_code == 23, refused.output  # certificate revoked
    issuing_ok = verify_with_crl(issuing_pem, root_pem, crls=crl_files[1:])
    assert issuing_ok.ok, issuing_ok.output


def _openssl_ocsp(
    server: LiveServer, issuer: Path, root: Path, target: list[str], respout: Path
) -> str:
    """``openssl ocsp`` over HTTPS as a relying party runs it: a nonce, the answer verified.

    ``-CAfile`` serves both the TLS connection and the response's signature.
    """
    done = subprocess.run(
        [
            "openssl",
            "ocsp",
            "-issuer",
            str(issuer),
            *target,
            "-url",
            f"{server.base_url}/ocsp",
            "-CAfile",
            str(root),
            "-verify_other",
            str(issuer),
            "-respout",
            str(respout),
            "-resp_text",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout + done.stderr


def _request_for(
    cert: x509.Certificate, issuer: x509.Certificate, serial: int | None = None
) -> bytes:
    builder = ocsp.OCSPRequestBuilder()
    if serial is None:
        builder = builder.add_certificate(cert, issuer, hashes.SHA1())
    else:
        probe = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
        builder = builder.add_certificate_by_hash(
            probe.issuer_name_hash, probe.issuer_key_hash, serial, hashes.SHA1()
        )
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_ocsp_with_openssl_good_revoked_unknown_and_get(tmp_path: Path) -> None:
    with start_server(tmp_path / "home") as server:
        _, good = _issue(server, "dev-good", tmp_path)
        bad_serial, bad = _issue(server, "dev-bad", tmp_path)
        _, issuing_pem, root_pem = _chain_files(server, tmp_path)
        _revoke(server, bad_serial)

        outputs = {}
        for name, target in (
            ("good", ["-cert", str(good)]),
            ("revoked", ["-cert", str(bad)]),
            ("unknown", ["-serial", "0x3039"]),  # a serial this CA never issued
        ):
            respout = tmp_path / f"{name}.ocsp"
            outputs[name] = _openssl_ocsp(server, issuing_pem, root_pem, target, respout)
            out = outputs[name]
            assert "Response verify OK" in out, out
            # openssl sends a nonce by default and complains when it is not echoed.
            assert "WARNING: no nonce in response" not in out, out
            assert "Nonce Verify error" not in out, out
            assert "OCSP Nonce:" in out, out
            assert_lints_clean("ocsp_response", respout.read_bytes())
        assert f"{good}: good" in outputs["good"]
        assert f"{bad}: revoked" in outputs["revoked"]
        assert "Reason: keyCompromise" in outputs["revoked"]
        assert "0x3039: unknown" in outputs["unknown"]

        issuer = x509.load_pem_x509_certificate(issuing_pem.read_bytes())
        leaf = x509.load_pem_x509_certificate(good.read_bytes())
        context = ssl.create_default_context(cafile=server.ca_bundle)
        headers = {"Content-Type": "application/ocsp-request"}
        with httpx.Client(base_url=server.base_url, verify=context) as http:
            # A serial this CA never issued is "unknown" (RFC 6960 §2.2).
            unknown = http.post(
                "/ocsp", content=_request_for(leaf, issuer, serial=12345), headers=headers
            )
            assert unknown.status_code == 200
            assert unknown.headers["content-type"] == "application/ocsp-response"
            assert (
                ocsp.load_der_ocsp_response(unknown.content).certificate_status
                == ocsp.OCSPCertStatus.UNKNOWN
            )
            assert_lints_clean("ocsp_response", unknown.content)

            malformed_get = http.get("/ocsp/not-an-ocsp-request")
            assert malformed_get.status_code == 200
            status = ocsp.load_der_ocsp_response(malformed_get.content).response_status
            assert status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST

            garbage = http.post("/ocsp", content=b"\x30\x00", headers=headers)
            status = ocsp.load_der_ocsp_response(garbage.content).response_status
            assert status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
            wrong_type = http.post("/ocsp", content=b"x", headers={"Content-Type": "text/plain"})
            assert wrong_type.status_code == 415
            assert wrong_type.json()["code"] == "request.unsupported_media_type"

            # A certificate of another issuer (here: the leaf posing as one) is "unauthorized".
            other = http.post("/ocsp", content=_request_for(leaf, leaf), headers=headers)
            status = ocsp.load_der_ocsp_response(other.content).response_status
            assert status == ocsp.OCSPResponseStatus.UNAUTHORIZED


def _request_with_slashes(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A request (with a nonce) whose base64 holds "/" and "+", as many real ones do."""
    probe = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    for n in range(256):
        der = (
            ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(
                probe.issuer_name_hash, probe.issuer_key_hash, cert.serial_number, hashes.SHA1()
            )
            .add_extension(x509.OCSPNonce(bytes([n]) * 16), critical=False)
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        encoded = base64.b64encode(der).decode()
        if "/" in encoded and "+" in encoded:
            return der
    raise AssertionError("no nonce gave a base64 with / and +")


def test_ocsp_get_with_curl_url_encoded_and_raw_checked_by_openssl(tmp_path: Path) -> None:
    with start_server(tmp_path / "home") as server:
        _, good = _issue(server, "dev-good", tmp_path)
        _, issuing_pem, root_pem = _chain_files(server, tmp_path)
        issuer = x509.load_pem_x509_certificate(issuing_pem.read_bytes())
        leaf = x509.load_pem_x509_certificate(good.read_bytes())
        request = tmp_path / "request.der"
        request.write_bytes(_request_with_slashes(leaf, issuer))
        encoded = base64.b64encode(request.read_bytes()).decode()
        # RFC 6960 Appendix A.1: the URL-encoding of the base64; raw slashes work too.
        for name, path in (("encoded", quote(encoded, safe="")), ("raw", encoded)):
            response = tmp_path / f"{name}.ocsp"
            done = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "--path-as-is",
                    "--cacert",
                    str(server.ca_bundle),
                    "-o",
                    str(response),
                    "-w",
                    "%{http_code} %{content_type}",
                    f"{server.base_url}/ocsp/{path}",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.stdout == "200 application/ocsp-response", done.stdout + done.stderr
            # -reqin makes openssl check the nonce against the request that was sent.
            checked = ocsp_query(
                response, ca_file=root_pem, request=request, verify_other=issuing_pem
            )
            assert checked.verified, checked.output
            assert checked.nonce_ok, checked.output
            answer = ocsp.load_der_ocsp_response(response.read_bytes())
            assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
            assert_lints_clean("ocsp_response", response.read_bytes())
