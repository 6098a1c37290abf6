"""Where the key passphrase lives: outside the home, so that reading the home is not enough.

The key passphrase encrypts the CA key files (:mod:`fleetpki.keystore.pkcs8`), the token
endpoint's signing key, the hub's shared-access keys and the hub links' secrets. It is
looked for, in this order:

1. ``$FLEETPKI_KEY_PASSPHRASE`` (a secret manager, a container's environment);
2. the systemd credential ``fleetpki-key-passphrase`` in ``$CREDENTIALS_DIRECTORY``
   (``LoadCredential=`` or ``LoadCredentialEncrypted=`` in the service's unit);
3. the file that ``key_passphrase_file`` in ``config.toml`` names;
4. ``HOME/key-passphrase``, where homes made before issue 14 keep it.

``fleetpki init`` uses the first two when they are there and writes nothing; otherwise it
generates a passphrase into ``--key-passphrase-file`` or, by default, into a new file
under ``$XDG_CONFIG_HOME/fleetpki/`` (``~/.config/fleetpki/``), outside the home, and
records its path as ``key_passphrase_file``. ``fleetpki serve`` warns when the
passphrase it found sits inside the home or can be read by other users
(:meth:`KeyPassphrase.warnings`).
"""

from __future__ import annotations

import enum
import os
import secrets
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fleetpki.errors import NotFoundError, ValidationError

__all__ = [
    "CREDENTIAL_NAME",
    "LEGACY_PASSPHRASE_FILE",
    "PASSPHRASE_ENV",
    "KeyPassphrase",
    "PassphraseOrigin",
    "PassphraseReader",
    "PassphraseSource",
    "create_passphrase",
    "default_passphrase_file",
    "find_passphrase",
]

#: Environment variable that, when set, holds the key passphrase.
PASSPHRASE_ENV = "FLEETPKI_KEY_PASSPHRASE"  # noqa: S105 (a variable name)
#: The name of the systemd credential (``LoadCredential=fleetpki-key-passphrase:...``).
CREDENTIAL_NAME = "fleetpki-key-passphrase"
#: Where homes made before issue 14 keep the passphrase: inside the home.
LEGACY_PASSPHRASE_FILE = "key-passphrase"  # noqa: S105 (a file name)
_CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"
_SUFFIX = ".key-passphrase"


class PassphraseOrigin(enum.Enum):
    """Where a passphrase came from."""

    ENVIRONMENT = "environment"
    CREDENTIAL = "systemd credential"
    FILE = "file"


@dataclass(frozen=True, slots=True)
class PassphraseSource:
    """Where the passphrase was found (never the passphrase itself).

    Attributes:
        origin: environment, systemd credential or file.
        path: the file read, for a credential or a file.
    """

    origin: PassphraseOrigin
    path: Path | None = None

    def describe(self) -> str:
        """A phrase for messages: ``$FLEETPKI_KEY_PASSPHRASE``, a credential, a path."""
        if self.origin is PassphraseOrigin.ENVIRONMENT:
            return f"${PASSPHRASE_ENV}"
        if self.origin is PassphraseOrigin.CREDENTIAL:
            return f"the systemd credential {CREDENTIAL_NAME} ({self.path})"
        return str(self.path)

    def inside(self, home: Path) -> bool:
        """Whether the passphrase is a file inside ``home``, beside the keys it protects."""
        if self.origin is not PassphraseOrigin.FILE or self.path is None:
            return False
        return self.path.resolve().is_relative_to(home.resolve())


@dataclass(frozen=True, slots=True)
class KeyPassphrase:
    """The passphrase and where it was found."""

    secret: bytes = field(repr=False)
    source: PassphraseSource

    def warnings(self, home: Path) -> list[str]:
        """What ``fleetpki serve`` warns about: inside the home, or readable by others."""
        found: list[str] = []
        path = self.source.path
        if self.source.inside(home):
            found.append(
                f"the key passphrase is in {path}, inside the home beside the keys it "
                "protects: whoever can read the home can decrypt them. Move the file out of "
                f"the home and name it as key_passphrase_file in {home / 'config.toml'}, or "
                f"give the passphrase as ${PASSPHRASE_ENV} or as the systemd credential "
                f"{CREDENTIAL_NAME} (docs/configuration.md, Key custody)"
            )
        if self.source.origin is PassphraseOrigin.FILE and path is not None:
            try:
                mode = stat.S_IMODE(path.stat().st_mode)
            except OSError:
                mode = 0
            if mode & 0o077:
                found.append(
                    f"the key passphrase file {path} can be read by other users "
                    f"(mode {mode:04o}); make it 0600"
                )
        return found


def default_passphrase_file(home: Path) -> Path:
    """A new file name for the passphrase of ``home``, outside it.

    Under ``$XDG_CONFIG_HOME/fleetpki/`` (``~/.config/fleetpki/`` when unset), named
    after the home with a random part, since its path is recorded in the home's
    configuration and one user may have several homes.
    """
    configured = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(configured) if os.path.isabs(configured) else Path.home() / ".config"
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in home.name) or "home"
    return base / "fleetpki" / f"{stem.lstrip('.-') or 'home'}-{secrets.token_hex(4)}{_SUFFIX}"


def _configured_path(home: Path, configured: str) -> Path | None:
    if not configured:
        return None
    path = Path(configured).expanduser()
    return path if path.is_absolute() else home / path


def _read(path: Path) -> bytes:
    secret = path.read_bytes().strip()
    if not secret:
        raise ValidationError(
            "keystore.passphrase_empty", f"the key passphrase file {path} is empty"
        )
    return secret


def _from_runtime() -> KeyPassphrase | None:
    """The passphrase the process was given: the environment, else a systemd credential."""
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env:
        return KeyPassphrase(from_env.encode(), PassphraseSource(PassphraseOrigin.ENVIRONMENT))
    directory = os.environ.get(_CREDENTIALS_DIRECTORY)
    if directory:
        credential = Path(directory) / CREDENTIAL_NAME
        if credential.is_file():
            return KeyPassphrase(
                _read(credential), PassphraseSource(PassphraseOrigin.CREDENTIAL, credential)
            )
    return None


def find_passphrase(home: Path, configured: str = "") -> KeyPassphrase:
    """The key passphrase of ``home``, from the first place that has it (module docstring).

    Args:
        home: the home folder.
        configured: ``key_passphrase_file`` from the configuration (relative to the home
            when not absolute); empty for none.

    Raises:
        NotFoundError: ``keystore.passphrase_missing`` when no place has it.
        ValidationError: ``keystore.passphrase_empty`` for an empty file.
    """
    given = _from_runtime()
    if given is not None:
        return given
    path = _configured_path(home, configured)
    if path is None:
        path = home / LEGACY_PASSPHRASE_FILE
    try:
        return KeyPassphrase(_read(path), PassphraseSource(PassphraseOrigin.FILE, path))
    except FileNotFoundError:
        pass
    raise NotFoundError(
        "keystore.passphrase_missing",
        f"no key passphrase: {path} is missing; set ${PASSPHRASE_ENV}, provide the systemd "
        f"credential {CREDENTIAL_NAME}, or restore the file",
    )


def create_passphrase(home: Path, configured: str = "") -> KeyPassphrase:
    """The passphrase for a new home: the one the process was given, else a new file.

    ``$FLEETPKI_KEY_PASSPHRASE`` or the systemd credential are used as they are (nothing
    is written). Otherwise ``configured`` is read when it exists (a file provisioned
    beforehand), or a random passphrase is written to it, or, without one, to a new
    :func:`default_passphrase_file`; folders made for it are 0700, the file 0600.

    Raises:
        ValidationError: ``keystore.passphrase_empty`` for an empty provisioned file.
        OSError: the file cannot be written.
    """
    given = _from_runtime()
    if given is not None:
        return given
    path = _configured_path(home, configured)
    if path is not None and path.exists():
        return KeyPassphrase(_read(path), PassphraseSource(PassphraseOrigin.FILE, path))
    path = path or default_passphrase_file(home)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return KeyPassphrase(secret, PassphraseSource(PassphraseOrigin.FILE, path.absolute()))


class PassphraseReader:
    """Finds the passphrase of a home when first asked, then keeps it.

    Called (``reader()``) it returns the secret, which is what the services that seal
    secrets take; :meth:`get` also says where it was found.

    Args:
        home: the home folder.
        configured: ``key_passphrase_file`` from the configuration.
    """

    def __init__(self, home: Path, configured: str = "") -> None:
        self._home = home
        self._configured = configured
        self._lock = threading.Lock()
        self._found: KeyPassphrase | None = None

    def get(self) -> KeyPassphrase:
        """The passphrase with its source (see :func:`find_passphrase` for the errors)."""
        with self._lock:
            if self._found is None:
                self._found = find_passphrase(self._home, self._configured)
            return self._found

    def __call__(self) -> bytes:
        """The secret."""
        return self.get().secret
