"""``fleetpki demo``: the certificate lifecycle, step by step, in a temporary home.

Each step is a function that does real work through the services (nothing is
simulated) and returns a one-line result; the runner times it, shows progress
and ends with a table.  A failing step stops the demo with a non-zero status.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from rich.console import Console
from rich.table import Table

from fleetpki.errors import FleetPKIError
from fleetpki.keystore import PrivateKey
from fleetpki.pki.certtoken import make_certificate_token
from fleetpki.pki.chain import verify_client_chain
from fleetpki.pki.keys import KeySpec, generate_key
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import (
    Actor,
    FleetPKI,
    authority,
    certificates,
    domains,
    init_home,
    principals,
)
from fleetpki.services.certificates import IssueCommand
from fleetpki.services.outbox import pending_events
from fleetpki.settings import Settings

__all__ = ["DemoState", "Step", "run_demo"]


@dataclass
class DemoState:
    """What the steps share."""

    home: Path
    app: FleetPKI | None = None
    owner: str = field(default_factory=lambda: str(uuid.uuid4()))
    device_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    key: PrivateKey | None = None
    certificate: x509.Certificate | None = None
    pem: str = ""
    serial: str = ""
    issuing_id: str = ""

    def fleet(self) -> FleetPKI:
        """The opened fleetpki instance."""
        assert self.app is not None
        return self.app


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the story."""

    title: str
    run: Callable[[DemoState], str]


def _csr(device_id: str, key: PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(device_id)]), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def _create_ca(state: DemoState) -> str:
    result = init_home(Settings.default_for(state.home))
    state.app = result.app
    state.issuing_id = result.issuing.id
    return (
        f"root {result.root.key_spec}, issuing {result.issuing.key_spec}, "
        f"template max {result.template.max_validity_days} days"
    )


def _register(state: DemoState) -> str:
    fleet = state.fleet()
    with fleet.transaction() as session:
        principals.add_principal(
            session, Actor.local_admin(), state.owner, "demo enrollment agent", now=fleet.now()
        )
        domains.register_domain(
            session,
            Actor(state.owner, source="demo"),
            ca_id=state.issuing_id,
            template_id=None,
            name=state.device_id,
            owners=[state.owner],
            requesters=[state.owner],
            now=fleet.now(),
        )
    return f"device id {state.device_id}"


def _issue(state: DemoState) -> str:
    fleet = state.fleet()
    state.key = generate_key(KeySpec.RSA_4096)
    with fleet.transaction() as session:
        record, issued = certificates.issue(
            session,
            Actor(state.owner, source="demo"),
            fleet.keystore,
            fleet.urls,
            IssueCommand(
                ca_id=state.issuing_id, csr=_csr(state.device_id, state.key), validity_days=10
            ),
            now=fleet.now(),
        )
    state.certificate, state.pem, state.serial = issued.certificate, issued.pem, record.serial_hex
    return f"RSA-4096 key, serial {record.serial_hex[:16]}…, 10 days"


def _verify(state: DemoState) -> str:
    fleet = state.fleet()
    with fleet.transaction() as session:
        chain = authority.ca_chain(session, authority.get_ca(session, state.issuing_id))
    assert state.certificate is not None
    verified = verify_client_chain(state.certificate, chain[:-1], chain[-1:], now=fleet.now())
    return f"chain of {len(verified)} verifies to the root as a TLS client"


def _renew(state: DemoState) -> str:
    fleet = state.fleet()
    assert state.certificate is not None
    assert state.key is not None
    audience = fleet.settings.certificate_token_audience
    token = make_certificate_token(state.certificate, state.key, audience=audience, now=fleet.now())
    new_key = generate_key(KeySpec.RSA_4096)
    with fleet.transaction() as session:
        record, issued = certificates.renew_with_token(
            session,
            fleet.keystore,
            fleet.urls,
            token=token,
            certificate_pem=state.pem,
            csr=_csr(state.device_id, new_key),
            validity_days=None,
            audience=audience,
            now=fleet.now(),
        )
    old = state.serial
    state.key, state.certificate, state.pem, state.serial = (
        new_key,
        issued.certificate,
        issued.pem,
        record.serial_hex,
    )
    return f"new serial {record.serial_hex[:16]}… renews {old[:16]}…, new key"


def _revoke(state: DemoState) -> str:
    fleet = state.fleet()
    with fleet.transaction() as session:
        record = certificates.get_certificate(session, state.serial)
        certificates.revoke(
            session,
            Actor(state.owner, source="demo"),
            record,
            RevocationReason.KEY_COMPROMISE,
            now=fleet.now(),
        )
    with fleet.transaction() as session:
        events = pending_events(session, now=fleet.now())
    return f"keyCompromise; {len(events)} outbox event(s) for hubs"


STEPS = [
    Step("create the CA hierarchy", _create_ca),
    Step("register the device id as a domain", _register),
    Step("issue the device certificate from its CSR", _issue),
    Step("verify the chain", _verify),
    Step("renew with the current certificate", _renew),
    Step("revoke the certificate", _revoke),
]


def run_demo(console: Console | None = None, home: Path | None = None) -> int:
    """Run every step; print a table of steps, results and timings; return an exit status."""
    console = console or Console()
    results: list[tuple[str, str, float, bool]] = []
    with tempfile.TemporaryDirectory(prefix="fleetpki-demo-") as scratch:
        state = DemoState(home=home or Path(scratch) / "home")
        try:
            for step in STEPS:
                with console.status(f"{step.title}…"):
                    start = time.perf_counter()
                    try:
                        outcome, ok = step.run(state), True
                    except (FleetPKIError, AssertionError, ValueError) as exc:
                        outcome, ok = f"FAILED: {exc}", False
                    elapsed = time.perf_counter() - start
                results.append((step.title, outcome, elapsed, ok))
                mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
                console.print(
                    f"{mark} {step.title}: {outcome} [dim]({elapsed * 1000:.0f} ms)[/dim]"
                )
                if not ok:
                    break
        finally:
            if state.app is not None:
                state.app.close()
    table = Table(title=f"fleetpki demo, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z")
    table.add_column("step")
    table.add_column("result")
    table.add_column("time", justify="right")
    for title, outcome, elapsed, ok in results:
        table.add_row(title, outcome if ok else f"[red]{outcome}[/red]", f"{elapsed * 1000:.0f} ms")
    console.print(table)
    return 0 if all(ok for *_, ok in results) and len(results) == len(STEPS) else 1
