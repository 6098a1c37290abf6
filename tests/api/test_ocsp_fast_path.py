"""The ASGI layer in front of the application (OcspFastPath): it answers every OCSP
request it can take itself (from memory, else through the service in a worker thread)
and hands anything else to the application with the body it read; every answer
checked by pkilint."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from conftest import ALICE, make_csr
from fleetpki.api.metrics import Metrics
from fleetpki.api.status import OcspFastPath
from fleetpki.application import FleetPKI
from fleetpki.pki.ocsp import MAX_REQUEST_SIZE
from fleetpki.services import Actor
from fleetpki.services.certificates import IssueCommand
from support.pkilint import assert_lints_clean


class _Application:
    """The application behind the layer: records what reached it and answers 299."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.seen.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _call(
    layer: OcspFastPath, method: str, path: str, body: bytes, content_type: bytes
) -> tuple[int, dict[bytes, bytes], bytes]:
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)] or [b""]
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(b"content-type", content_type)],
    }
    asyncio.run(layer(scope, receive, send))
    start, answer = sent
    return start["status"], dict(start["headers"]), answer["body"]


@pytest.fixture
def issued(sqlite_fleet: FleetPKI) -> tuple[x509.Certificate, x509.Certificate]:
    fleet, actor = sqlite_fleet, Actor(ALICE)
    issuing = next(c for c in fleet.cas.list() if c.tier == "issuing")
    fleet.domains.register(
        actor, ca_id=issuing.id, template_id=None, name="dev-1", owners=[ALICE], requesters=[ALICE]
    )
    cert = fleet.certificates.issue(actor, IssueCommand(ca_id=issuing.id, csr=make_csr("dev-1")[1]))
    return cert.certificate.certificate, x509.load_der_x509_certificate(issuing.certificate_der)


def _request(leaf: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _good(der: bytes, nonce: bytes | None) -> None:
    assert_lints_clean("ocsp_response", der)
    response = ocsp.load_der_ocsp_response(der)
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    try:
        echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        echoed = None
    assert echoed == nonce


OCSP = b"application/ocsp-request"


def test_every_ocsp_request_is_answered_before_the_application(
    sqlite_fleet: FleetPKI, issued: tuple[x509.Certificate, x509.Certificate]
) -> None:
    leaf, issuer = issued
    application = _Application()
    layer = OcspFastPath(application, sqlite_fleet, Metrics(sqlite_fleet))
    # A cold cache (the database, in a worker thread), then from memory, with and
    # without a nonce, over POST and GET.
    for nonce in (None, b"\x01" * 16, None, b"\x02" * 16):
        status, headers, body = _call(layer, "POST", "/ocsp", _request(leaf, issuer, nonce), OCSP)
        assert status == 200
        assert headers[b"content-type"] == b"application/ocsp-response"
        assert headers[b"content-length"] == str(len(body)).encode()
        _good(body, nonce)
    encoded = base64.b64encode(_request(leaf, issuer, None)).decode()
    status, headers, body = _call(layer, "GET", f"/ocsp/{encoded}", b"", b"")
    assert status == 200 and b"etag" in headers
    _good(body, None)
    # A malformed request: malformedRequest inside an HTTP 200, as the routes answer.
    status, _, body = _call(layer, "POST", "/ocsp", b"\x30\x03junk", OCSP)
    assert status == 200
    assert ocsp.load_der_ocsp_response(body).response_status is (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )
    assert application.seen == []


def test_what_the_layer_does_not_take_reaches_the_application_with_its_body(
    sqlite_fleet: FleetPKI, issued: tuple[x509.Certificate, x509.Certificate]
) -> None:
    leaf, issuer = issued
    application = _Application()
    layer = OcspFastPath(application, sqlite_fleet, Metrics(sqlite_fleet))
    request = _request(leaf, issuer, None)
    too_large = b"\x30" * (MAX_REQUEST_SIZE + 5000)
    cases = [
        ("POST", "/ocsp", request, b"text/plain"),  # the route answers 415
        ("POST", "/ocsp", too_large, OCSP),  # past the size limit: the route refuses it
        ("PUT", "/ocsp", request, OCSP),
        ("GET", "/healthz", b"", b""),
    ]
    for method, path, body, content_type in cases:
        assert _call(layer, method, path, body, content_type)[0] == 299
    assert application.seen == [
        ("/ocsp", request),
        ("/ocsp", too_large),
        ("/ocsp", request),
        ("/healthz", b""),
    ]
