"""Headless Chromium for the portal's tests: Debian's build, driven by Playwright for Python.

Playwright's own browser download is not used (nor reachable here): the browser is the
system's ``/usr/bin/chromium`` (``scripts/ensure-system-deps.sh`` installs it). Every
page a test visits can be saved as a screenshot, at 1280 or 390 px wide, into
``$FLEETPKI_PORTAL_SCREENSHOTS`` (``make portal-screenshots`` points it at
``docs/portal/``) or else into the test's temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

__all__ = ["CHROMIUM", "DESKTOP", "PHONE", "Screenshots", "chromium", "new_context"]

CHROMIUM = "/usr/bin/chromium"
#: The widths the portal is checked at.
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
#: How long a test waits for something to appear on a page (never a timing assertion).
WAIT_MS = 20_000


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Debian Chromium under Playwright.

    A machine without it fails the test with what to run (never a skip).
    """
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the portal's browser tests need Debian's Chromium at {CHROMIUM}: run "
            "`make system-deps` (scripts/ensure-system-deps.sh installs it with apt-get)"
        )
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # Tests run as root in a container: Chromium's sandbox needs user namespaces.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            browser.close()


def new_context(
    browser: Browser, *, width: int = DESKTOP["width"], javascript: bool = True
) -> BrowserContext:
    """A fresh browser profile (no cookies) that accepts the test server's certificate;
    ``javascript=False`` turns scripts off, as some people browse.

    The server's certificate chains to the test home's own root, which this throwaway
    profile cannot be told to trust; the connection is still TLS, so Secure cookies work.
    """
    context = browser.new_context(
        viewport={"width": width, "height": DESKTOP["height"]},
        ignore_https_errors=True,
        timezone_id="Europe/Berlin",
        locale="en-GB",
        java_script_enabled=javascript,
    )
    context.set_default_timeout(WAIT_MS)
    return context


class Screenshots:
    """Saves full-page screenshots by name, and remembers what was saved."""

    def __init__(self, fallback: Path) -> None:
        chosen = os.environ.get("FLEETPKI_PORTAL_SCREENSHOTS")
        self.folder = Path(chosen) if chosen else fallback
        self.folder.mkdir(parents=True, exist_ok=True)
        self.saved: list[Path] = []

    def save(self, page: Page, name: str) -> Path:
        """Screenshot ``page`` as ``<name>.png``."""
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.saved.append(path)
        return path
