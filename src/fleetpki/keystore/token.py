"""A PKCS#11 token's one logged-in session per process, and the PIN that opens it.

PKCS#11 state is per process, not per object: ``C_Initialize`` is called once per
process per module (python-pkcs11 keeps one loaded module per path), and a login
holds for every session of the process on that token (PKCS#11 v2.40 §5.4, §5.6);
logging out of one session logs out of all. So the process keeps one logged-in
session per token, shared by reference count between the keystores that open it
(two application objects in one process, as in the tests): :func:`log_in` and
:func:`log_out`. The first opener's PIN is checked by the token; a later opener's
PIN is compared with it, since the token cannot be asked again while the process
is logged in. The session is used under its lock: PKCS#11 sessions are not for
concurrent use (§5.6), so signatures on one token are serialised within a process.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pkcs11
from pkcs11 import exceptions as p11

from fleetpki.errors import FleetPKIError, NotFoundError, ValidationError
from fleetpki.settings import PKCS11_PIN_ENV

if TYPE_CHECKING:
    from pkcs11 import _pkcs11 as native

__all__ = ["TokenLogin", "log_in", "log_out", "read_pin", "token_unavailable"]


def read_pin(pin_file: str = "") -> str:
    """The token's user PIN: ``$FLEETPKI_PKCS11_PIN``, else the first line of ``pin_file``.

    Raises:
        ValidationError: ``keystore.pin_missing`` when neither gives a PIN.
    """
    from_env = os.environ.get(PKCS11_PIN_ENV)
    if from_env:
        return from_env
    if pin_file:
        try:
            lines = Path(pin_file).expanduser().read_text().splitlines()
        except OSError as exc:
            raise ValidationError(
                "keystore.pin_missing", f"cannot read the PKCS#11 PIN file {pin_file}: {exc}"
            ) from exc
        pin = lines[0].strip() if lines else ""
        if pin:
            return pin
    raise ValidationError(
        "keystore.pin_missing",
        f"no PKCS#11 PIN: set {PKCS11_PIN_ENV} or pkcs11_pin_file in config.toml",
    )


@dataclass(eq=False)
class TokenLogin:
    """The one logged-in session of this process on a token, and who uses it."""

    key: tuple[str, bytes]
    session: pkcs11.Session
    pin_digest: bytes
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 1


_registry_lock = threading.Lock()
_logins: dict[tuple[str, bytes], TokenLogin] = {}


def _pin_digest(pin: str) -> bytes:
    return hashlib.sha256(b"fleetpki pkcs11 pin\0" + pin.encode()).digest()


def _module(path: str) -> native.lib:
    # python-pkcs11 keeps one loaded, initialised module per path for the process.
    if not Path(path).is_file():
        raise ValidationError(
            "keystore.module_missing",
            f"PKCS#11 module {path} does not exist (Debian: apt-get install softhsm2, "
            "or set pkcs11_module to your HSM vendor's library)",
        )
    try:
        module = pkcs11.lib(path)
    except p11.PKCS11Error as exc:
        raise ValidationError(
            "keystore.module_missing", f"cannot load the PKCS#11 module {path}: {exc}"
        ) from exc
    return module


def _token(module: native.lib, path: str, label: str) -> pkcs11.Token:
    if not label:
        raise ValidationError(
            "keystore.token_missing", "no PKCS#11 token label: set pkcs11_token in config.toml"
        )
    try:
        return module.get_token(token_label=label)
    except p11.NoSuchToken:
        raise NotFoundError(
            "keystore.token_missing", f"no PKCS#11 token labelled {label!r} in {path}"
        ) from None
    except p11.MultipleTokensReturned:
        raise ValidationError(
            "keystore.token_ambiguous", f"more than one PKCS#11 token is labelled {label!r}"
        ) from None


def _log_in(token: pkcs11.Token, label: str, pin: str) -> pkcs11.Session:
    try:
        return token.open(rw=True, user_pin=pin)
    except p11.PinIncorrect:
        raise ValidationError(
            "keystore.bad_pin", f"the PIN of PKCS#11 token {label!r} is wrong"
        ) from None
    except p11.PinLocked:
        raise ValidationError(
            "keystore.pin_locked", f"the PIN of PKCS#11 token {label!r} is locked"
        ) from None
    except p11.UserAlreadyLoggedIn:
        # Someone else in this process logged in: its sessions are ours too (§5.6).
        return token.open(rw=True)
    except p11.PKCS11Error as exc:
        raise ValidationError(
            "keystore.token_missing", f"cannot open PKCS#11 token {label!r}: {exc!r}"
        ) from exc


def log_in(path: str, label: str, pin: str) -> TokenLogin:
    with _registry_lock:
        module = _module(path)
        token = _token(module, path, label)
        key = (path, token.serial)
        login = _logins.get(key)
        if login is not None:
            if not hmac.compare_digest(login.pin_digest, _pin_digest(pin)):
                raise ValidationError(
                    "keystore.bad_pin", f"the PIN of PKCS#11 token {label!r} is wrong"
                )
            login.users += 1
            return login
        login = TokenLogin(key, _log_in(token, label, pin), _pin_digest(pin))
        _logins[key] = login
        return login


def log_out(login: TokenLogin) -> None:
    with _registry_lock:
        login.users -= 1
        if login.users > 0:
            return
        _logins.pop(login.key, None)
    # The token may have gone away: then nothing is left to release.
    with login.lock, contextlib.suppress(p11.PKCS11Error):
        login.session.close()  # logs the process out of the token


def token_unavailable(exc: p11.PKCS11Error) -> FleetPKIError:
    return FleetPKIError("keystore.token_unavailable", f"the PKCS#11 token did not answer: {exc!r}")
