"""OCSP over real HTTPS with the response cache: RFC 5019 §6.2 headers on GET, 304 for
a held ETag, fresh signatures for nonces, a revocation seen by the next request; every
response checked by ``openssl ocsp`` and pkilint."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from conftest import make_csr
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.certificates import IssueCommand
from fleetpki.services.revocation_status import OCSP_LIFETIME
from support.openssl import ocsp_query
from support.pkilint import assert_lints_clean
from support.server import LiveServer, start_server

OCSP_REQUEST = {"Content-Type": "application/ocsp-request"}


def _issue(server: LiveServer, name: str, tmp: Path) -> tuple[str, x509.Certificate]:
    fleet, admin = server.fleet, Actor.local_admin()
    issuing = next(c for c in fleet.cas.list() if c.tier == "issuing")
    fleet.domains.register(
        admin,
        ca_id=issuing.id,
        template_id=None,
        name=name,
        owners=[admin.principal_id],
        requesters=[admin.principal_id],
    )
    issued = fleet.certificates.issue(admin, IssueCommand(ca_id=issuing.id, csr=make_csr(name)[1]))
    issuing_cert, root_cert = fleet.cas.chain(issuing.id)
    (tmp / "issuing.pem").write_bytes(issuing_cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "root.pem").write_bytes(root_cert.public_bytes(serialization.Encoding.PEM))
    return issued.certificate.serial_hex, issued.certificate.certificate


def _request(leaf: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


class _Checker:
    """Checks each response with ``openssl ocsp -respin -reqin`` and pkilint."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._count = 0

    def status(self, request: bytes, response: httpx.Response) -> str:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/ocsp-response"
        self._count += 1
        request_file = self._tmp / f"request-{self._count}.der"
        response_file = self._tmp / f"response-{self._count}.der"
        request_file.write_bytes(request)
        response_file.write_bytes(response.content)
        checked = ocsp_query(
            response_file,
            ca_file=self._tmp / "root.pem",
            request=request_file,
            verify_other=self._tmp / "issuing.pem",
        )
        assert checked.verified, checked.output
        assert checked.nonce_ok, checked.output
        assert_lints_clean("ocsp_response", response.content)
        # With -reqin openssl checks the signature and nonce but prints no status line.
        status = ocsp.load_der_ocsp_response(response.content).certificate_status
        return status.name.lower()


def _get_path(request: bytes) -> str:
    return "/ocsp/" + base64.b64encode(request).decode()


def test_get_carries_rfc5019_caching_headers_and_answers_304_for_the_etag(
    tmp_path: Path,
) -> None:
    with start_server(tmp_path / "home") as server:
        _, leaf = _issue(server, "dev-1", tmp_path)
        issuer = x509.load_pem_x509_certificate((tmp_path / "issuing.pem").read_bytes())
        request = _request(leaf, issuer)
        check = _Checker(tmp_path)
        context = ssl.create_default_context(cafile=server.ca_bundle)
        with httpx.Client(base_url=server.base_url, verify=context) as http:
            first = http.get(_get_path(request))
            again = http.get(_get_path(request))
            held = http.get(_get_path(request), headers={"If-None-Match": first.headers["etag"]})
            other_tag = http.get(_get_path(request), headers={"If-None-Match": '"elsewhere"'})
            posted = http.post("/ocsp", content=request, headers=OCSP_REQUEST)

    assert check.status(request, first) == "good"
    response = ocsp.load_der_ocsp_response(first.content)
    assert response.this_update_utc is not None and response.next_update_utc is not None
    # RFC 5019 §6.2: max-age up to nextUpdate, Expires = nextUpdate, Last-Modified =
    # thisUpdate, an ETag; no-transform and must-revalidate as §6.2's example has them.
    directives = [d.strip() for d in first.headers["cache-control"].split(",")]
    assert directives[0] == "public"
    assert {"no-transform", "must-revalidate"} <= set(directives)
    max_age = int(next(d for d in directives if d.startswith("max-age=")).split("=")[1])
    assert 0 < max_age <= OCSP_LIFETIME.total_seconds()
    assert parsedate_to_datetime(first.headers["expires"]) == response.next_update_utc
    assert parsedate_to_datetime(first.headers["last-modified"]) == response.this_update_utc
    assert first.headers["etag"].startswith('"')
    # The same signed bytes and validator for every client until the answer changes.
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    assert held.status_code == 304
    assert held.content == b""
    assert held.headers["etag"] == first.headers["etag"]
    assert "content-type" not in held.headers
    assert other_tag.status_code == 200
    assert other_tag.content == first.content
    # POST answers carry no HTTP caching headers (RFC 5019 §5: POST is not cached) but
    # are the same cached response.
    assert posted.content == first.content
    assert "etag" not in posted.headers
    assert "cache-control" not in posted.headers


def test_nonce_requests_get_fresh_signatures_and_no_caching_headers(tmp_path: Path) -> None:
    with start_server(tmp_path / "home") as server:
        _, leaf = _issue(server, "dev-1", tmp_path)
        issuer = x509.load_pem_x509_certificate((tmp_path / "issuing.pem").read_bytes())
        check = _Checker(tmp_path)
        context = ssl.create_default_context(cafile=server.ca_bundle)
        plain = _request(leaf, issuer)
        with httpx.Client(base_url=server.base_url, verify=context) as http:
            cached = http.post("/ocsp", content=plain, headers=OCSP_REQUEST)
            answers = []
            for nonce in (b"\x11" * 16, b"\x22" * 16):
                request = _request(leaf, issuer, nonce)
                for response in (
                    http.post("/ocsp", content=request, headers=OCSP_REQUEST),
                    http.get(_get_path(request)),
                ):
                    assert check.status(request, response) == "good"
                    assert "etag" not in response.headers
                    assert "cache-control" not in response.headers
                    echoed = ocsp.load_der_ocsp_response(response.content).extensions
                    assert echoed.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
                    answers.append(response.content)
            after = http.post("/ocsp", content=plain, headers=OCSP_REQUEST)
    assert check.status(plain, cached) == "good"
    assert len(set(answers)) == len(answers)  # each signed anew (ECDSA: never equal)
    assert after.content == cached.content  # the cached answer untouched by them


def test_a_revocation_changes_the_next_answer_and_its_etag(tmp_path: Path) -> None:
    with start_server(tmp_path / "home") as server:
        serial, leaf = _issue(server, "dev-1", tmp_path)
        issuer = x509.load_pem_x509_certificate((tmp_path / "issuing.pem").read_bytes())
        check = _Checker(tmp_path)
        plain, nonced = _request(leaf, issuer), _request(leaf, issuer, b"\x33" * 16)
        context = ssl.create_default_context(cafile=server.ca_bundle)
        with httpx.Client(base_url=server.base_url, verify=context) as http:
            before = http.get(_get_path(plain))
            assert http.post("/ocsp", content=plain, headers=OCSP_REQUEST).content == (
                before.content
            )
            revoked_at = dt.datetime.now(dt.UTC)
            server.fleet.certificates.revoke(
                Actor.local_admin(), serial, RevocationReason.KEY_COMPROMISE
            )
            held = http.get(_get_path(plain), headers={"If-None-Match": before.headers["etag"]})
            posted = http.post("/ocsp", content=plain, headers=OCSP_REQUEST)
            with_nonce = http.post("/ocsp", content=nonced, headers=OCSP_REQUEST)
    assert check.status(plain, before) == "good"
    # The ETag the client held no longer matches: the new answer, not a 304.
    assert check.status(plain, held) == "revoked"
    assert held.headers["etag"] != before.headers["etag"]
    assert check.status(plain, posted) == "revoked"
    assert posted.content == held.content
    assert check.status(nonced, with_nonce) == "revoked"
    revocation = ocsp.load_der_ocsp_response(held.content).revocation_time_utc
    assert revocation is not None
    assert abs(revocation - revoked_at) < dt.timedelta(minutes=5)
