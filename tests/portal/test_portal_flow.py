"""The portal in a real browser: the tutorial's operator, from sign-in to revocation.

``fleetpki serve`` (API, portal and MQTT hub) runs on free ports; headless Debian
Chromium under Playwright signs in with an API token, links the built-in hub and trusts
the issuing CA in one click, registers a domain (the link registers the device in the
hub), watches a real MQTT device's telemetry arrive over server-sent events, sends it a
cloud-to-device message, revokes its certificate from the certificate's page and sees
the device disabled and its session closed, and signs out. Every page is saved as a
screenshot (tests/support/browser.py).
"""

from __future__ import annotations

import json
import queue
import re
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from playwright.sync_api import Locator, Page, expect

from fleetpki.api.background import free_port
from fleetpki.services import Actor
from support.browser import PHONE, Screenshots, chromium, new_context
from support.hub import DeviceFiles
from support.mqtt_device import WAIT, Device, connect_once, wait_until
from support.server import LiveServer, start_server

pytestmark = pytest.mark.slow

DEVICE = "sensor-7"
LINK = "factory-hub"


def _sign_in_with_token(page: Page, server: LiveServer, token: str) -> None:
    page.goto(server.base_url + "/")
    expect(page).to_have_url(re.compile(r"/portal/signin\?next=%2F$"))
    page.get_by_label("API token", exact=True).fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


def _notice(page: Page) -> Locator:
    """The sentence a finished action leaves on the page it leads to."""
    return page.locator("main > p.notice[role=status]")


def _nav(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(name)


def _download(page: Page, name: str) -> Path:
    """Click the download link ``name`` and return where the browser saved the file."""
    with page.expect_download() as download:
        page.get_by_role("link", name=name, exact=True).click()
    path = download.value.path()
    assert download.value.failure() is None
    return Path(path)


def _issue(server: LiveServer, folder: Path) -> tuple[DeviceFiles, str]:
    """The device's key, and a certificate for it through /v1 (as an enrollment agent would)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE)]))
        .sign(key, hashes.SHA256())
    )
    answer = httpx.post(
        server.base_url + "/v1/certificates",
        json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode(), "domain": DEVICE},
        headers={"Authorization": f"Bearer {server.admin_token}"},
        verify=ssl.create_default_context(cafile=str(server.ca_bundle)),
    )
    assert answer.status_code == 201, answer.text
    issued = answer.json()
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "device.pem", folder / "device.key"
    cert_path.write_text(issued["chain_pem"])
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    leaf = x509.load_pem_x509_certificate(issued["certificate"]["certificate_pem"].encode())
    return DeviceFiles(DEVICE, cert_path, key_path, leaf), issued["certificate"]["serial"]


def test_operator_links_trusts_watches_and_revokes(tmp_path: Path) -> None:
    shots = Screenshots(tmp_path / "screenshots")
    mqtt_port = free_port()
    with start_server(tmp_path / "home", mqtt_port=mqtt_port) as server, chromium() as browser:
        fleet = server.fleet
        issuing = next(ca for ca in fleet.cas.list() if ca.tier == "issuing")
        context = new_context(browser)
        page = context.new_page()
        console_errors: list[str] = []
        page.on(
            "console",
            lambda m: (
                console_errors.append(f"{m.text} ({m.location.get('url')}, on {page.url})")
                if m.type == "error"
                else None
            ),
        )

        # -- sign in ----------------------------------------------------------------------
        answer = page.goto(server.base_url + "/portal/signin")
        assert answer is not None
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        shots.save(page, "signin")
        _sign_in_with_token(page, server, server.admin_token)
        session = next(c for c in context.cookies() if c["name"] == "__Host-fleetpki-session")
        assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"

        # -- link the built-in hub, trust the issuing CA in one click -------------------------
        _nav(page, "Hubs")
        add = page.get_by_role("region", name="Add a hub link")
        add.get_by_label("Link name").fill(LINK)
        add.get_by_label(f"{issuing.name} (issuing)").check()
        expect(
            add.get_by_label("Disable the IoT device when its certificate is revoked")
        ).to_be_checked()
        add.get_by_label("Register the device in the hub when its domain is registered").check()
        add.get_by_role("button", name="Add link").click()
        expect(_notice(page)).to_have_text("The hub link is added.")
        page.get_by_role("button", name=f"Trust {issuing.name} in {LINK}").click()
        expect(_notice(page)).to_contain_text("The CA is trusted in the hub")
        link_card = page.locator(f"#link-{LINK}")
        expect(
            link_card.get_by_role("button", name=f"Trust {issuing.name} in {LINK}")
        ).to_have_text("Trust again")
        assert any(c.is_verified for c in fleet.hub_trust.list())

        # -- register the device's domain: the link registers it in the hub -------------------
        _nav(page, "Domains")
        register = page.get_by_role("region", name="Register a domain")
        register.get_by_label("Device id or DNS name").fill(DEVICE)
        register.get_by_role("button", name="Register").click()
        expect(_notice(page)).to_have_text("The domain is registered.")
        expect(page.get_by_role("heading", name=DEVICE)).to_be_visible()
        shots.save(page, "domain")
        wait_until(lambda: any(d.device_id == DEVICE for d in fleet.hub_devices.list()), "device")
        _nav(page, "Domains")
        shots.save(page, "domains")

        # -- a real device connects with its certificate and sends telemetry ----------------
        files, serial = _issue(server, tmp_path / "device")
        device = Device(mqtt_port, server.ca_bundle, files)
        c2d: queue.Queue[bytes] = queue.Queue()
        device.client.on_message = lambda _c, _u, message: c2d.put(message.payload)
        assert device.connect() == 0
        device.client.subscribe(f"devices/{DEVICE}/messages/devicebound/#", qos=1)
        try:
            _nav(page, "Devices")
            page.get_by_role("link", name=DEVICE).click()
            expect(page.locator("#live-state")).to_have_text(re.compile("^live"))
            for n in range(5):
                body = {"temperature": 20.5 + n, "humidity": 40 + n, "n": n}
                device.client.publish(
                    f"devices/{DEVICE}/messages/events/", json.dumps(body), qos=1
                ).wait_for_publish(WAIT)
            table = page.locator("table#telemetry tbody")
            expect(table.locator("tr")).to_have_count(5)
            expect(table.locator("tr").last).to_contain_text('"temperature": 24.5')
            expect(page.locator("#chart-legend")).to_contain_text("temperature: 24.5")
            expect(page.locator("#chart-legend")).to_contain_text("humidity: 44")
            # Reloaded, the page shows what the hub stored, and the live connection.
            page.reload()
            expect(table.locator("tr")).to_have_count(5)
            expect(page.locator("#connection-state")).to_contain_text("Connected")

            # -- send it a cloud-to-device message -------------------------------------------
            page.get_by_label("Body", exact=True).fill("reboot at 03:00")
            page.get_by_label("Properties", exact=True).fill("kind=maintenance")
            page.get_by_role("button", name="Send").click()
            expect(_notice(page)).to_have_text("The cloud-to-device message is queued.")
            assert c2d.get(timeout=WAIT) == b"reboot at 03:00"
            expect(page.locator("table#telemetry tbody tr")).to_have_count(5)
            shots.save(page, "device")

            # -- find the certificate, see what revoking does, revoke it ---------------------
            _nav(page, "Certificates")
            page.get_by_label("Subject contains").fill("sensor")
            page.get_by_role("button", name="Search").click()
            results = page.locator("#results tbody tr")
            expect(results).to_have_count(1)
            shots.save(page, "certificates")
            results.get_by_role("link", name=DEVICE).click()
            expect(page.get_by_role("heading", name=re.compile(f"^{DEVICE}"))).to_be_visible()
            expect(
                page.get_by_text("subjectAltName").or_(page.get_by_text("keyUsage"))
            ).not_to_have_count(0)
            page.get_by_role("link", name="Revoke…").click()
            effect = page.locator("table.effect")
            expect(effect).to_contain_text(f"link {LINK} (builtin)")
            expect(effect).to_contain_text("disables the device")
            expect(effect).to_contain_text("closes the device's live session")
            shots.save(page, "revoke")
            page.get_by_label("Reason (RFC 5280)").select_option("keyCompromise")
            page.get_by_label("I understand that the device loses access as shown above").check()
            page.get_by_role("button", name="Revoke the certificate").click()
            expect(_notice(page)).to_have_text("The certificate is revoked.")
            assert device.disconnected.wait(WAIT), "the live session was not closed"
            assert fleet.certificates.get(Actor.local_admin(), serial).status == "revoked"

            # The link disables the device; the page shows its delivery once done.
            wait_until(lambda: fleet.hub_devices.get(DEVICE).status == "disabled", "disabled")
            page.reload()
            expect(page.locator("table.effect")).to_contain_text("done")
            shots.save(page, "certificate")
            with_chain = _download(page, "Download with chain").read_bytes()
            leaf, *cas = x509.load_pem_x509_certificates(with_chain)
            assert leaf.serial_number == int(serial, 16) and len(cas) == 2
            page.goto(f"{server.base_url}/portal/devices/{DEVICE}")
            expect(page.locator("#device-status")).to_have_text("disabled")
            expect(page.locator("#connection-state")).to_contain_text("Disconnected")
            assert connect_once(mqtt_port, server.ca_bundle, files) == 5, (
                "the revoked certificate was let in again"
            )
        finally:
            device.close()

        # -- the other pages, at both widths ----------------------------------------------
        _nav(page, "Devices")
        expect(page.get_by_role("cell", name="disabled")).to_be_visible()
        shots.save(page, "devices")
        _nav(page, "Hubs")
        expect(page.locator(f"#link-{LINK}")).to_contain_text("0 pending")
        shots.save(page, "hubs")
        _nav(page, "CAs")
        expect(page.get_by_role("list", name="CA hierarchy")).to_contain_text(issuing.name)
        shots.save(page, "cas")
        page.get_by_role("link", name=issuing.name).click()
        expect(page.get_by_role("heading", name="Generations")).to_be_visible()
        shots.save(page, "ca")
        # Downloads: the CA certificate, its chain to the root, and its CRL with the
        # device's certificate on it.
        ca_pem = _download(page, "Download certificate").read_bytes()
        assert x509.load_pem_x509_certificate(ca_pem).serial_number == int(issuing.serial_hex, 16)
        chain = x509.load_pem_x509_certificates(_download(page, "Download chain").read_bytes())
        assert [c.subject.rfc4514_string() for c in chain][-1] == chain[-1].issuer.rfc4514_string()
        assert len(chain) == 2
        crl = x509.load_der_x509_crl(_download(page, "Download CRL").read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
        # Renew: a second generation appears.
        page.get_by_role("button", name=f"Renew {issuing.name}").click()
        expect(_notice(page)).to_have_text("The CA has a new generation.")
        generations = page.get_by_role("region", name="Generations").locator("tbody tr")
        expect(generations).to_have_count(2)
        assert len(fleet.ca_lifecycle.generations(issuing.id)) == 2
        _nav(page, "Audit log")
        page.get_by_label("Action").fill("certificate")
        page.get_by_role("button", name="Filter").click()
        expect(page.locator("tbody")).to_contain_text("certificate.revoke")
        expect(page.locator("tbody")).not_to_contain_text("domain.register")
        shots.save(page, "audit")
        _nav(page, "Dashboard")
        expect(page.get_by_role("region", name="Hub links")).to_contain_text(LINK)
        shots.save(page, "dashboard")

        phone = new_context(browser, width=PHONE["width"])
        small = phone.new_page()
        _sign_in_with_token(small, server, server.admin_token)
        shots.save(small, "dashboard-390")
        # Nothing is wider than the phone's screen, on any page.
        wide = "document.documentElement.scrollWidth"
        assert small.evaluate(wide) <= PHONE["width"]
        for path in (
            f"/portal/certificates/{serial}",
            f"/portal/devices/{DEVICE}",
            f"/portal/cas/{issuing.id}",
            "/portal/hubs",
            "/portal/domains",
            "/portal/certificates",
            "/portal/audit",
            "/portal/devices",
        ):
            small.goto(server.base_url + path)
            expect(small.get_by_role("heading", level=1)).to_be_visible()
            assert small.evaluate(wide) <= PHONE["width"], path
            if path.startswith(("/portal/certificates/", "/portal/devices/")):
                shots.save(small, path.split("/")[2].removesuffix("s") + "-390")
        phone.close()

        # -- sign out: the session is over, its cookie opens nothing ------------------------
        old = next(c for c in context.cookies() if c["name"] == "__Host-fleetpki-session")
        page.get_by_role("button", name="Sign out").click()
        expect(_notice(page)).to_have_text("You are signed out.")
        context.add_cookies([old])
        page.goto(server.base_url + "/portal/certificates")
        expect(page).to_have_url(re.compile(r"/portal/signin\?next="))
        assert console_errors == [], console_errors
        context.close()
    assert all(path.stat().st_size > 0 for path in shots.saved)
