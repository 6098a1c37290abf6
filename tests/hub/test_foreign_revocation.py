"""Devices of foreign CAs: the hub asks their OCSP responder or reads their CRL, and fails closed.

The foreign CA is made here with cryptography, verified in the hub by proof of
possession, and serves its OCSP answers and CRL from a loopback HTTP server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from fleetpki.application import FleetPKI
from fleetpki.errors import AuthenticationError
from fleetpki.hub.protocol import Connect, encode
from fleetpki.hub.server import start_hub
from fleetpki.hub.store_backend import StoreHubBackend
from fleetpki.keystore import Signer
from fleetpki.keystore.files import FileSigner
from fleetpki.pki.crl import RevokedEntry, build_crl
from fleetpki.pki.extensions import crl_distribution_points, key_usage
from fleetpki.pki.ocsp import (
    CertificateStatus,
    build_ocsp_response,
    build_ocsp_signing_certificate,
    parse_ocsp_request,
)
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import foreign_revocation
from fleetpki.services.hub_authentication import DeviceAuthenticator
from fleetpki.services.hub_devices import DeviceSpec
from support.hub import issue_device
from support.hub_control import authenticator, issuing_ca
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
        self.crl_ca = ca  # whose name and key sign the CRL
        self.crl_next_update = NOW + dt.timedelta(hours=1)
        self.crl_idp_url: str | None = None
        self.ocsp_cert = ca.cert
        self.ocsp_signer: Signer = ca.signer
        self.ocsp_forger: ec.EllipticCurvePrivateKey | None = None
        self.ocsp_forger_cert: x509.Certificate | None = None
        #: When set, an OCSP request sets ``ocsp_asked`` and waits for ``ocsp_hold``.
        self.ocsp_hold: threading.Event | None = None
        self.ocsp_asked = threading.Event()
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
                    responder.crl_ca.cert,
                    responder.crl_ca.signer,
                    entries,
                    crl_number=responder.crl_requests,
                    this_update=NOW - dt.timedelta(minutes=1)
                    if responder.crl_next_update > NOW
                    else NOW - dt.timedelta(hours=3),
                    next_update=responder.crl_next_update,
                    idp_url=responder.crl_idp_url,
                )
                self._answer(body, "application/pkix-crl")

            def do_POST(self) -> None:
                responder.ocsp_requests += 1
                if responder.ocsp_hold is not None:
                    responder.ocsp_asked.set()
                    responder.ocsp_hold.wait(60)
                if not responder.ocsp_up:
                    self.send_response(503)
                    self.end_headers()
                    return
                der = self.rfile.read(int(self.headers["Content-Length"]))
                if responder.ocsp_forger is not None:
                    self._answer(
                        _forged_ocsp(der, responder.ocsp_forger, responder.ocsp_forger_cert),
                        "application/ocsp-response",
                    )
                    return
                request = parse_ocsp_request(der)
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
                    responder_cert=responder.ocsp_cert,
                    signer=responder.ocsp_signer,
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

        self.errors: list[str] = []

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                responder.errors.append(traceback.format_exc())

        self.server = Server(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _forged_ocsp(
    der: bytes, key: ec.EllipticCurvePrivateKey, signer_cert: x509.Certificate | None
) -> bytes:
    """A "good" answer for the request's CertID, signed by ``key``.

    ``signer_cert`` is the certificate sent along; by default a self-signed one with
    id-kp-OCSPSigning and the CA's name, which the CA never certified.
    """
    request = ocsp.load_der_ocsp_request(der)
    impostor = signer_cert or (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Foreign Factory CA")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Foreign Factory CA")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .sign(key, hashes.SHA256())
    )
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            issuer_name_hash=request.issuer_name_hash,
            issuer_key_hash=request.issuer_key_hash,
            serial_number=request.serial_number,
            algorithm=request.hash_algorithm,
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=NOW,
            next_update=NOW + dt.timedelta(hours=1),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, impostor)
        .certificates([impostor])
    )
    for extension in request.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.fixture
def foreign(tmp_path: Path) -> Iterator[Responder]:
    responder = Responder(make_ca(tmp_path, "p256", "Foreign Factory CA"))
    yield responder
    responder.stop()
    assert responder.errors == []  # every answer was the one the test meant to serve


@pytest.fixture
def hub(sqlite_fleet: FleetPKI) -> DeviceAuthenticator:
    """The hub's authenticator, with its own revocation checker (cache, holds) for one test."""
    return authenticator(sqlite_fleet)


def _trust(fleet: FleetPKI, ca: MiniCA) -> None:
    """Upload and verify the foreign CA by proof of possession, as its owner would."""
    fleet.hub_trust.upload("foreign", ca.cert.public_bytes(serialization.Encoding.DER))
    code = fleet.hub_trust.generate_verification_code("foreign").verification_code
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
    verified = fleet.hub_trust.verify("foreign", proof.public_bytes(serialization.Encoding.PEM))
    assert verified.is_verified


def _leaf(
    ca: MiniCA,
    device_id: str,
    *,
    ocsp_url: str | None,
    crl_url: str | None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    key = key or ec.generate_private_key(ec.SECP256R1())
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


def _authenticate(
    fleet: FleetPKI, hub: DeviceAuthenticator, leaf: x509.Certificate, device_id: str
) -> None:
    if device_id not in {d.device_id for d in fleet.hub_devices.list()}:
        fleet.hub_devices.put(DeviceSpec(device_id=device_id))
    hub.authenticate(leaf, [], device_id, fleet.now())


def _refused(
    fleet: FleetPKI, hub: DeviceAuthenticator, leaf: x509.Certificate, device_id: str
) -> str:
    with pytest.raises(AuthenticationError) as caught:
        _authenticate(fleet, hub, leaf, device_id)
    return caught.value.code


def test_ocsp_good_and_revoked(
    sqlite_fleet: FleetPKI, hub: DeviceAuthenticator, foreign: Responder
) -> None:
    _trust(sqlite_fleet, foreign.ca)
    leaf = _leaf(foreign.ca, "f-1", ocsp_url=f"{foreign.base}/ocsp", crl_url=None)
    _authenticate(sqlite_fleet, hub, leaf, "f-1")
    foreign.revoked.add(leaf.serial_number)
    assert _refused(sqlite_fleet, hub, leaf, "f-1") == "hub.certificate_revoked"
    assert foreign.ocsp_requests == 2


def test_crl_revocation_and_cache(
    sqlite_fleet: FleetPKI, hub: DeviceAuthenticator, foreign: Responder
) -> None:
    _trust(sqlite_fleet, foreign.ca)
    good = _leaf(foreign.ca, "f-good", ocsp_url=None, crl_url=f"{foreign.base}/crl")
    bad = _leaf(foreign.ca, "f-bad", ocsp_url=None, crl_url=f"{foreign.base}/crl")
    foreign.revoked.add(bad.serial_number)
    _authenticate(sqlite_fleet, hub, good, "f-good")
    assert _refused(sqlite_fleet, hub, bad, "f-bad") == "hub.certificate_revoked"
    _authenticate(sqlite_fleet, hub, good, "f-good")
    assert foreign.crl_requests == 1  # cached until its next update


def test_ocsp_down_falls_back_to_the_crl(
    sqlite_fleet: FleetPKI, hub: DeviceAuthenticator, foreign: Responder
) -> None:
    _trust(sqlite_fleet, foreign.ca)
    leaf = _leaf(foreign.ca, "f-2", ocsp_url=f"{foreign.base}/ocsp", crl_url=f"{foreign.base}/crl")
    foreign.ocsp_up = False
    foreign.revoked.add(leaf.serial_number)
    assert _refused(sqlite_fleet, hub, leaf, "f-2") == "hub.certificate_revoked"
    assert (foreign.ocsp_requests, foreign.crl_requests) == (1, 1)


def test_no_answer_fails_closed_unless_soft_fail(
    sqlite_fleet: FleetPKI, hub: DeviceAuthenticator, foreign: Responder
) -> None:
    _trust(sqlite_fleet, foreign.ca)
    leaf = _leaf(foreign.ca, "f-3", ocsp_url=f"{foreign.base}/ocsp", crl_url=None)
    foreign.ocsp_up = False
    assert _refused(sqlite_fleet, hub, leaf, "f-3") == "hub.revocation_unknown"
    _authenticate(sqlite_fleet, authenticator(sqlite_fleet, soft_fail=True), leaf, "f-3")


def test_a_crl_signed_by_another_key_is_refused(
    sqlite_fleet: FleetPKI, hub: DeviceAuthenticator, foreign: Responder, tmp_path: Path
) -> None:
    _trust(sqlite_fleet, foreign.ca)
    leaf = _leaf(foreign.ca, "f-4", ocsp_url=None, crl_url=f"{foreign.base}/crl")
    foreign.crl_ca = make_ca(tmp_path, "p256", "Foreign Factory CA")  # same name, other key
    assert _refused(sqlite_fleet, hub, leaf, "f-4") == "hub.revocation_unknown"
    foreign.crl_ca = foreign.ca
    _authenticate(sqlite_fleet, hub, leaf, "f-4")  # the genuine CRL, fetched again: not cached
    assert foreign.crl_requests == 2


def test_a_lapsed_crl_says_nothing(
    sqlite_fleet: FleetPKI, hub: DeviceAuthenticator, foreign: Responder
) -> None:
    # RFC 5280 §5.1.2.5: past its nextUpdate a CRL no longer describes the present.
    _trust(sqlite_fleet, foreign.ca)
    leaf = _leaf(foreign.ca, "f-4b", ocsp_url=None, crl_url=f"{foreign.base}/crl")
    foreign.crl_next_update = NOW - dt.timedelta(minutes=30)
    assert _refused(sqlite_fleet, hub, leaf, "f-4b") == "hub.revocation_unknown"
    foreign.crl_next_update = NOW + dt.timedelta(hours=1)
    _authenticate(sqlite_fleet, hub, leaf, "f-4b")
    assert foreign.crl_requests == 2


def test_a_leaf_naming_no_source_is_accepted(
    sqlite_fleet: FleetPKI, hub: DeviceAuthenticator, foreign: Responder
) -> None:
    _trust(sqlite_fleet, foreign.ca)
    _authenticate(sqlite_fleet, hub, _leaf(foreign.ca, "f-5", ocsp_url=None, crl_url=None), "f-5")
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

    hub = authenticator(sqlite_fleet, fetch=fetch)
    sqlite_fleet.hub_trust.trust_local_ca(issuing_ca(sqlite_fleet).id)
    files = issue_device(sqlite_fleet, "own-1", tmp_path)
    _authenticate(sqlite_fleet, hub, files.certificate, "own-1")
    assert calls == []


def test_a_delegated_responder_may_answer(
    sqlite_fleet: FleetPKI, hub: DeviceAuthenticator, foreign: Responder
) -> None:
    # RFC 6960 §4.2.2.2: a responder certificate the CA issued with id-kp-OCSPSigning.
    _trust(sqlite_fleet, foreign.ca)
    key = ec.generate_private_key(ec.SECP256R1())
    foreign.ocsp_cert = build_ocsp_signing_certificate(
        foreign.ca.cert,
        foreign.ca.signer,
        key.public_key(),
        NOW - dt.timedelta(minutes=10),
        NOW + dt.timedelta(days=1),
    )
    foreign.ocsp_signer = FileSigner("memory:responder", key)
    leaf = _leaf(foreign.ca, "f-6", ocsp_url=f"{foreign.base}/ocsp", crl_url=None)
    _authenticate(sqlite_fleet, hub, leaf, "f-6")
    foreign.revoked.add(leaf.serial_number)
    assert _refused(sqlite_fleet, hub, leaf, "f-6") == "hub.certificate_revoked"


@pytest.mark.parametrize("signer", ["impostor", "ca_issued_without_ocsp_signing"])
def test_an_ocsp_answer_signed_by_another_key_is_ignored(
    signer: str, sqlite_fleet: FleetPKI, hub: DeviceAuthenticator, foreign: Responder
) -> None:
    # RFC 6960 §4.2.2.2: only the CA, or a delegate it marked id-kp-OCSPSigning.
    _trust(sqlite_fleet, foreign.ca)
    leaf = _leaf(foreign.ca, "f-7", ocsp_url=f"{foreign.base}/ocsp", crl_url=f"{foreign.base}/crl")
    foreign.revoked.add(leaf.serial_number)
    foreign.ocsp_forger = ec.generate_private_key(ec.SECP256R1())
    if signer == "ca_issued_without_ocsp_signing":
        # Another device's certificate (clientAuth only) tries to vouch for this one.
        foreign.ocsp_forger_cert = _leaf(
            foreign.ca, "f-other", ocsp_url=None, crl_url=None, key=foreign.ocsp_forger
        )
    # The forged "good" is not believed; the CRL still says revoked.
    assert _refused(sqlite_fleet, hub, leaf, "f-7") == "hub.certificate_revoked"
    assert (foreign.ocsp_requests, foreign.crl_requests) == (1, 1)


def test_a_crl_for_another_distribution_point_is_not_used(
    sqlite_fleet: FleetPKI, hub: DeviceAuthenticator, foreign: Responder
) -> None:
    # RFC 5280 §6.3.3 (b)(2)(i): the CRL's issuing distribution point must name the
    # certificate's distribution point.
    _trust(sqlite_fleet, foreign.ca)
    leaf = _leaf(foreign.ca, "f-8", ocsp_url=None, crl_url=f"{foreign.base}/crl")
    foreign.crl_idp_url = f"{foreign.base}/other.crl"
    assert _refused(sqlite_fleet, hub, leaf, "f-8") == "hub.revocation_unknown"
    foreign.crl_idp_url = f"{foreign.base}/crl"
    _authenticate(sqlite_fleet, hub, leaf, "f-8")


def test_an_unreachable_source_is_held_briefly(
    sqlite_fleet: FleetPKI, hub: DeviceAuthenticator, foreign: Responder
) -> None:
    # One timeout per URL, not one per connecting device, while a responder is down.
    _trust(sqlite_fleet, foreign.ca)
    leaf = _leaf(foreign.ca, "f-9", ocsp_url=f"{foreign.base}/ocsp", crl_url=None)
    foreign.ocsp_up = False
    assert _refused(sqlite_fleet, hub, leaf, "f-9") == "hub.revocation_unknown"
    assert _refused(sqlite_fleet, hub, leaf, "f-9") == "hub.revocation_unknown"
    assert foreign.ocsp_requests == 1


def test_oversized_answers_are_failures(
    sqlite_fleet: FleetPKI,
    hub: DeviceAuthenticator,
    foreign: Responder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _trust(sqlite_fleet, foreign.ca)
    monkeypatch.setattr(foreign_revocation, "MAX_RESPONSE_SIZE", 64)
    leaf = _leaf(foreign.ca, "f-10", ocsp_url=None, crl_url=f"{foreign.base}/crl")
    assert _refused(sqlite_fleet, hub, leaf, "f-10") == "hub.revocation_unknown"
    assert foreign.crl_requests == 1


def _connack(port: int, files: Path, client_id: str) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(files / f"{client_id}.pem", files / f"{client_id}.key")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=20) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(
            encode(Connect(client_id, True, 60, f"localhost/{client_id}/?api-version=2021-04-12"))
        )
        return tls.recv(4)


def test_the_real_hub_refuses_a_revoked_foreign_device(
    sqlite_fleet: FleetPKI, foreign: Responder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _trust(sqlite_fleet, foreign.ca)
    key = ec.generate_private_key(ec.SECP256R1())
    leaves = {}
    for device_id in ("f-ok", "f-revoked"):
        leaf = _leaf(foreign.ca, device_id, ocsp_url=f"{foreign.base}/ocsp", crl_url=None, key=key)
        leaves[device_id] = leaf
        (tmp_path / f"{device_id}.pem").write_bytes(
            b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, foreign.ca.cert))
        )
        (tmp_path / f"{device_id}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        sqlite_fleet.hub_devices.put(DeviceSpec(device_id=device_id))
    foreign.revoked.add(leaves["f-revoked"].serial_number)

    async def scenario() -> tuple[bytes, bytes]:
        stop = await start_hub(sqlite_fleet, host="127.0.0.1", port=0, amqp_port=-1)
        try:
            port = stop.__self__.port  # type: ignore[attr-defined]
            ok = await asyncio.to_thread(_connack, port, tmp_path, "f-ok")
            revoked = await asyncio.to_thread(_connack, port, tmp_path, "f-revoked")
        finally:
            await stop()
        return ok, revoked

    ok, revoked = asyncio.run(scenario())
    assert ok == b"\x20\x02\x00\x00"
    assert revoked == b"\x20\x02\x00\x05"  # CONNACK 5, not authorized
    assert foreign.ocsp_requests == 2
    assert "hub.certificate_revoked" in caplog.text


def test_a_slow_responder_holds_no_database_connection(
    fleet: FleetPKI, foreign: Responder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 8: network I/O outside database transactions. A device connects to the real
    # hub while its CA's OCSP responder holds the answer; meanwhile no connection of the
    # fleet's pool may be checked out (the hub's outbox consumer, which also uses the
    # pool, is set to look only once an hour and is waited for).
    monkeypatch.setattr(foreign_revocation, "FETCH_TIMEOUT", 60.0)
    _trust(fleet, foreign.ca)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _leaf(foreign.ca, "f-slow", ocsp_url=f"{foreign.base}/ocsp", crl_url=None, key=key)
    (tmp_path / "f-slow.pem").write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, foreign.ca.cert))
    )
    (tmp_path / "f-slow.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    fleet.hub_devices.put(DeviceSpec(device_id="f-slow"))
    foreign.ocsp_hold = threading.Event()
    pool = fleet.db.engine.pool
    held: list[int] = []

    async def scenario() -> bytes:
        backend = StoreHubBackend(fleet, revocation_poll=3600)
        stop = await start_hub(fleet, host="127.0.0.1", port=0, backend=backend, amqp_port=-1)
        try:
            port = stop.__self__.port  # type: ignore[attr-defined]
            connack = asyncio.create_task(asyncio.to_thread(_connack, port, tmp_path, "f-slow"))
            assert await asyncio.to_thread(foreign.ocsp_asked.wait, 30)
            # The hub is inside the OCSP fetch now, and stays there until released.
            for _ in range(500):
                held.append(pool.checkedout())  # type: ignore[attr-defined]
                if held[-1] == 0:
                    break
                await asyncio.sleep(0.01)
            assert foreign.ocsp_hold is not None
            foreign.ocsp_hold.set()
            return await connack
        finally:
            await stop()

    assert asyncio.run(scenario()) == b"\x20\x02\x00\x00"  # accepted once the answer came
    assert held[-1] == 0, f"connections checked out during the OCSP fetch: {held}"
    assert foreign.ocsp_requests == 1
