"""A real OpenID provider for tests: the npm package ``oidc-provider`` on the machine's Node.js.

``scripts/ensure-oidc-provider.sh`` installs it outside the repository; `start_provider`
runs ``tests/support/oidc_provider.mjs`` on a free loopback port with one public client
(PKCE required) and the package's development login page, where any login name signs in
as the account of that name.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["Provider", "provider_dir", "start_provider"]

_ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = Path(__file__).with_name("oidc_provider.mjs")
_INSTALL = _ROOT / "scripts" / "ensure-oidc-provider.sh"


@dataclass(frozen=True, slots=True)
class Provider:
    """A running provider: its issuer URL and the client id it knows."""

    issuer: str
    client_id: str


def provider_dir() -> Path:
    """Where the provider is installed (installing it first if needed)."""
    done = subprocess.run(["bash", str(_INSTALL)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot install oidc-provider: {done.stderr.strip()}")
    where = subprocess.run(
        ["bash", str(_INSTALL), "--print-dir"], capture_output=True, text=True, check=True
    )
    return Path(where.stdout.strip())


@contextmanager
def start_provider(port: int, client_id: str, redirect_uri: str) -> Iterator[Provider]:
    """Run the provider on ``127.0.0.1:port`` until the block ends."""
    directory = provider_dir()
    process = subprocess.Popen(
        ["node", str(_SCRIPT), str(directory), str(port), client_id, redirect_uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("listening "):
            process.kill()
            _, err = process.communicate(timeout=10)
            pytest.fail(f"oidc-provider did not start: {line}{err}")
        yield Provider(line.split(" ", 1)[1].strip(), client_id)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
