"""Devices of foreign CAs: the hub asks their OCSP responder or reads their CRL, and fails closed."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from fleetpki.errors import AuthenticationError
from fleetpki.pki.crl import RevokedEntry, build_crl
from fleetpki.pki.extensions import crl_distribution_points, key_usage
from fleetpki.pki.ocsp import CertificateStatus, build_ocsp_response, parse_ocsp_request
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import FleetPKI, authority, foreign_revocation, hub_registry, hub_trust
from fleetpki.services.hub_registry import DeviceSpec
from support.hub import issue_device
from support.testca import MiniCA, make_ca

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


class Responder:
    """A foreign CA's OCSP responder and CRL server on a loopback port."""

    def __init__(self, ca: MiniCA) -> None:
        self.ca = ca
        self.revoked: set[int] = set()
        self.crl_requests = 0
        self.ocsp_requests = 0
        self.ocsp_up = True
        self.crl_signer = ca.signer
        self.crl_next_update = NOW + dt.timedelta(hours=1)
        responder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                responder.crl_requests += 1
                entries = [
                    RevokedEntry(serial, NOW - dt.timedelta(minutes=5))
                    for serial in responder.revoked
                ]
                body = build_crl(
                    ca.cert,
                    responder.crl_signer,
                    entries,
                    crl_number=responder.crl_requests,
                    this_update=NOW - dt.timedelta(minutes=1)
                    if responder.crl_next_update > NOW
                    else NOW - dt.timedelta(hours=3),
                    next_update=responder.crl_next_update,
                    idp_url=None,
                )
                self._answer(body, "application/pkix-crl")

            def do_POST(self) -> None:
                responder.ocsp_requests += 1
                if not responder.ocsp_up:
                    self.send_response(503)
                    self.end_headers()
                    return
                request = parse_ocsp_request(self.rfile.read(int(self.headers["Content-Length"])))
                serial = request.cert_id.serial_number
                status = (
                    CertificateStatus.revoked(
                        NOW - dt.timedelta(minutes=5), RevocationReason.KEY_COMPROMISE
                    )
                    if serial in responder.revoked
                    else CertificateStatus.good()
                )
                body = build_ocsp_response(
                    request,
                    status,
                    issuer_cert=ca.cert,
                    responder_cert=ca.cert,
                    signer=ca.signer,
                    this_update=NOW,
                    next_update=NOW + dt.timedelta(hours=1),
                )
                self._answer(body, "application/ocsp-response")

            def _answer(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def foreign(tmp_path: Path) -> Iterator[Responder]:
    responder = Responder(make_ca(tmp_path, "p256", "Foreign Factory CA"))
    foreign_revocation.configure(soft_fail=False, fetch=None)
    yield responder
    responder.stop()
    foreign_revocation.configure(soft_fail=False)


def _trust(fleet: FleetPKI, ca: MiniCA) -> None:
    """Upload and verify the foreign CA by proof of possession, as its owner would."""
    with fleet.transaction() as session:
        hub_trust.upload_hub_ca(
            session, "foreign", ca.cert.public_bytes(serialization.Encoding.DER), now=fleet.now()
        )
        code = hub_trust.generate_verification_code(
            session, "foreign", now=fleet.now()
        ).verification_code
        assert code is not None
        key = ec.generate_private_key(ec.SECP256R1())
        proof = ca.signer.sign_certificate(
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)]))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(minutes=1))
            .not_valid_after(NOW + dt.timedelta(days=1))
        )
        hub_trust.verify_hub_ca(
            session, "foreign", proof.public_bytes(serialization.Encoding.PEM), now=fleet.now()
        )


def _leaf(
    ca: MiniCA, device_id: str, *, ocsp_url: str | None, crl_url: str | None
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if ocsp_url:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
                    )
                ]
            ),
            critical=False,
        )
    if crl_url:
        builder = builder.add_extension(crl_distribution_points(crl_url), critical=False)
    return ca.signer.sign_certificate(builder)


def _authenticate(fleet: FleetPKI, leaf: x509.Certificate, device_id: str) -> None:
    with fleet.transaction() as session:
        if device_id not in {d.device_id for d in hub_registry.list_devices(session)}:
            hub_registry.put_device(session, DeviceSpec(device_id=device_id), now=fleet.now())
    with fleet.transaction() as session:
        hub_registry.authenticate_device(session, leaf, [], device_id, fleet.now())


def _refused(fleet: FleetPKI, leaf: x509.Certificate, device_id: str) -> str:
    with pytest.raises(AuthenticationError) as caught:
        _authenticate(fleet, leaf, device_id)
    return caught.value.code


def test_ocsp_good_and_revoked(sqlite_fleet: FleetPKI, foreign: Responder) -> None:
    _trust(sqlite_fleet, foreign.ca)
    leaf = _leaf(foreign.ca, "f-1", ocsp_url=f"{foreign.base}/ocsp", crl_url=None)
    _authenticate(sqlite_fleet, leaf, "f-1")
    foreign.revoked.add(leaf.serial_number)
    assert _refused(sqlite_fleet, leaf, "f-1") == "hub.certificate_revoked"
    assert foreign.ocsp_requests == 2


def test_crl_revocation_and_cache(sqlite_fleet: FleetPKI, foreign: Responder) -> None:
    _trust(sqlite_fleet, foreign.ca)
    good = _leaf(foreign.ca, "f-good", ocsp_url=None, crl_url=f"{foreign.base}/crl")
    bad = _leaf(foreign.ca, "f-bad", ocsp_url=None, crl_url=f"{foreign.base}/crl")
    foreign.revoked.add(bad.serial_number)
    _authenticate(sqlite_fleet, good, "f-good")
    assert _refused(sqlite_fleet, bad, "f-bad") == "hub.certificate_revoked"
    _authenticate(sqlite_fleet, good, "f-good")
    assert foreign.crl_requests == 1  # cached until its next update


def test_ocsp_down_falls_back_to_the_crl(sqlite_fleet: FleetPKI, foreign: Responder) -> None:
    _trust(sqlite_fleet, foreign.ca)
    leaf = _leaf(foreign.ca, "f-2", ocsp_url=f"{foreign.base}/ocsp", crl_url=f"{foreign.base}/crl")
    foreign.ocsp_up = False
    foreign.revoked.add(leaf.serial_number)
    assert _refused(sqlite_fleet, leaf, "f-2") == "hub.certificate_revoked"
    assert (foreign.ocsp_requests, foreign.crl_requests) == (1, 1)


def test_no_answer_fails_closed_unless_soft_fail(
    sqlite_fleet: FleetPKI, foreign: Responder
) -> None:
    _trust(sqlite_fleet, foreign.ca)
    leaf = _leaf(foreign.ca, "f-3", ocsp_url=f"{foreign.base}/ocsp", crl_url=None)
    foreign.ocsp_up = False
    assert _refused(sqlite_fleet, leaf, "f-3") == "hub.revocation_unknown"
    foreign_revocation.configure(soft_fail=True)
    _authenticate(sqlite_fleet, leaf, "f-3")


def test_a_crl_signed_by_another_key_or_lapsed_says_nothing(
    sqlite_fleet: FleetPKI, foreign: Responder, tmp_path: Path
) -> None:
    _trust(sqlite_fleet, foreign.ca)
    leaf = _leaf(foreign.ca, "f-4", ocsp_url=None, crl_url=f"{foreign.base}/crl")
    impostor = make_ca(tmp_path, "p256", "Foreign Factory CA")  # same name, other key
    foreign.crl_signer = impostor.signer
    assert _refused(sqlite_fleet, leaf, "f-4") == "hub.revocation_unknown"
    foreign.crl_signer = foreign.ca.signer
    foreign.crl_next_update = NOW - dt.timedelta(minutes=30)
    assert _refused(sqlite_fleet, leaf, "f-4") == "hub.revocation_unknown"


def test_a_leaf_naming_no_source_is_accepted(sqlite_fleet: FleetPKI, foreign: Responder) -> None:
    _trust(sqlite_fleet, foreign.ca)
    _authenticate(sqlite_fleet, _leaf(foreign.ca, "f-5", ocsp_url=None, crl_url=None), "f-5")
    assert (foreign.ocsp_requests, foreign.crl_requests) == (0, 0)


def test_fleetpki_managed_cas_are_not_fetched(
    sqlite_fleet: FleetPKI, foreign: Responder, tmp_path: Path
) -> None:
    # Leaves of our own CAs name this server's OCSP and CRL URLs; the hub uses its
    # own records for them instead of calling itself.
    calls: list[str] = []

    def fetch(url: str, body: bytes | None) -> bytes:
        calls.append(url)
        return b""

    foreign_revocation.configure(fetch=fetch)
    with sqlite_fleet.transaction() as session:
        issuing = next(c for c in authority.list_cas(session) if c.tier == "issuing")
        hub_trust.trust_local_ca(session, sqlite_fleet.keystore, issuing.id, now=sqlite_fleet.now())
    files = issue_device(sqlite_fleet, "own-1", tmp_path)
    _authenticate(sqlite_fleet, files.certificate, "own-1")
    assert calls == []
