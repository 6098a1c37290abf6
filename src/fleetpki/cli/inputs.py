"""What the CLI reads from its user: durations, files and private keys."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from fleetpki.errors import ValidationError
from fleetpki.keystore import PrivateKey

__all__ = ["KEY_PASSPHRASE_ENV", "load_private_key", "parse_duration", "read_file"]

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 86400}
#: Where ``cert renew`` finds the passphrase of an encrypted device key.
KEY_PASSPHRASE_ENV = "FLEETPKI_DEVICE_KEY_PASSPHRASE"  # noqa: S105 (a variable name)


def parse_duration(text: str) -> dt.timedelta:
    """Parse ``7d``, ``12h``, ``30m``, ``2w`` or a plain number of days.

    Raises:
        ValidationError: ``cli.bad_duration``.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValidationError("cli.bad_duration", f"bad duration {text!r}: use e.g. 7d, 12h, 2w")
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def read_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``.

    Raises:
        ValidationError: ``cli.unreadable_file``, naming ``what`` and the path.
    """
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValidationError(
            "cli.unreadable_file", f"cannot read {what} {path}: {exc.strerror}"
        ) from None


def load_private_key(path: Path) -> PrivateKey:
    """A PEM private key; an encrypted one takes its passphrase from the environment.

    Raises:
        ValidationError: ``cli.unreadable_file`` or ``cli.bad_key``.
    """
    data = read_file(path, "key")
    passphrase = os.environ.get(KEY_PASSPHRASE_ENV)
    try:
        key = serialization.load_pem_private_key(
            data, password=passphrase.encode() if passphrase else None
        )
    except (ValueError, TypeError) as exc:
        raise ValidationError(
            "cli.bad_key",
            f"cannot load the private key {path} (encrypted? set {KEY_PASSPHRASE_ENV})",
        ) from exc
    if not isinstance(key, PrivateKey):
        raise ValidationError("cli.bad_key", f"unsupported key type in {path}")
    return key
