"""A throwaway SoftHSM2 (Debian's ``softhsm2``) for the PKCS#11 keystore tests.

SoftHSM reads ``$SOFTHSM2_CONF`` and scans its token folder once, when a process
first initialises the module; so every token a test session needs is made here,
before any test loads the module, and the variable stays set for the session.

One token can be made to run out of space: its folder is a small tmpfs mounted by
the tests (root only; :attr:`SoftHsm.fillable` says whether that worked), which
:meth:`SoftHsm.fill` fills with a file until the filesystem refuses more bytes.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetpki.application import FleetPKI, init_home
from fleetpki.services.authority import HierarchySpec
from fleetpki.settings import DEFAULT_PKCS11_MODULE, PKCS11_PIN_ENV, Settings

__all__ = [
    "FULL_TOKEN",
    "PIN",
    "SO_PIN",
    "TOKEN",
    "SoftHsm",
    "hsm_fleet_fixture",
    "hsm_settings",
    "pin_fixture",
    "softhsm_fixture",
    "start_softhsm",
]

TOKEN = "fleetpki-test"
FULL_TOKEN = "fleetpki-full"
PIN = "4242-user"
SO_PIN = "4242-so"
_TMPFS_SIZE = "2m"
_FILLER = "zz-filler.bin"


def _util(*args: str) -> str:
    binary = shutil.which("softhsm2-util")
    if binary is None:
        raise RuntimeError("softhsm2-util is missing: run scripts/ensure-system-deps.sh")
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"softhsm2-util {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout


@dataclass
class SoftHsm:
    """The SoftHSM2 configuration, its tokens and the PIN of both.

    Attributes:
        conf: the ``softhsm2.conf`` that ``$SOFTHSM2_CONF`` names.
        module: the PKCS#11 module path.
        full_token_dir: the folder of the token that can be filled.
        fillable: whether that folder is its own small filesystem.
    """

    conf: Path
    module: str
    full_token_dir: Path
    fillable: bool

    def fill(self) -> None:
        """Fill the fillable token's filesystem to the last byte."""
        assert self.fillable
        fd = os.open(self.full_token_dir / _FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            chunk = b"\0" * 65536
            while chunk:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk = chunk[: len(chunk) // 2]
        finally:
            os.close(fd)

    def empty(self) -> None:
        """Give the fillable token its free space back."""
        (self.full_token_dir / _FILLER).unlink(missing_ok=True)

    def stop(self) -> None:
        """Unmount the small filesystem (lazily: the module may still hold it open)."""
        if self.fillable:
            subprocess.run(["umount", "-l", str(self.full_token_dir)], check=False)


def _mount_tmpfs(folder: Path) -> bool:
    """Move ``folder``'s files onto a small tmpfs mounted over it; False if not allowed."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    saved = folder.with_name(folder.name + ".saved")
    shutil.copytree(folder, saved)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={_TMPFS_SIZE},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        shutil.rmtree(saved)
        return False
    for item in saved.iterdir():
        shutil.copy2(item, folder / item.name)
    shutil.rmtree(saved)
    return True


def start_softhsm(tmp_dir: Path) -> SoftHsm:
    """Make a SoftHSM2 configuration with two tokens under ``tmp_dir`` and point to it.

    Sets ``$SOFTHSM2_CONF`` for this process (and the programs it starts).
    """
    tokens = tmp_dir / "tokens"
    tokens.mkdir(mode=0o700)
    conf = tmp_dir / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    _util("--init-token", "--free", "--label", TOKEN, "--so-pin", SO_PIN, "--pin", PIN)
    before = set(tokens.iterdir())
    _util("--init-token", "--free", "--label", FULL_TOKEN, "--so-pin", SO_PIN, "--pin", PIN)
    (full_dir,) = set(tokens.iterdir()) - before
    return SoftHsm(conf, DEFAULT_PKCS11_MODULE, full_dir, _mount_tmpfs(full_dir))


def hsm_settings(home: Path, hsm: SoftHsm, token: str = TOKEN) -> Settings:
    """Settings of a new home on SQLite whose CA keys are in ``token``."""
    return Settings.default_for(home).with_changes(
        keystore="pkcs11", pkcs11_module=hsm.module, pkcs11_token=token
    )


@pytest.fixture(name="softhsm", scope="session")
def softhsm_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """SoftHSM2 with the test tokens, for the whole session."""
    hsm = start_softhsm(tmp_path_factory.mktemp("softhsm"))
    try:
        yield hsm
    finally:
        hsm.stop()


@pytest.fixture(name="pin")
def pin_fixture(monkeypatch: pytest.MonkeyPatch) -> str:
    """The tokens' user PIN, given to fleetpki through ``$FLEETPKI_PKCS11_PIN``."""
    monkeypatch.setenv(PKCS11_PIN_ENV, PIN)
    return PIN


@pytest.fixture(name="hsm_fleet")
def hsm_fleet_fixture(
    tmp_path: Path, softhsm: SoftHsm, pin: str, key_passphrase: None
) -> Iterator[FleetPKI]:
    """An initialised fleetpki whose root and issuing CA keys are in the test token."""
    app = init_home(hsm_settings(tmp_path / "home", softhsm), HierarchySpec()).app
    yield app
    app.close()
