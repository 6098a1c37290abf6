"""Device symmetric keys at rest: sealed with Fernet under a key derived from the passphrase.

A sas device's token is checked by recomputing its HMAC, which needs the key itself,
so device keys cannot be stored as hashes. They are sealed, as the service policies'
keys are (`fleetpki.services.hub_sas`), with a key derived by HKDF (its own ``info``)
from the home's key passphrase, the secret that protects the CA keys. The passphrase
is read once, when a key is first sealed or opened, so a hub without sas devices
never reads it.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fleetpki.errors import AuthenticationError

__all__ = ["DeviceKeySeal"]

_HKDF_INFO = b"fleetpki hub device symmetric keys v1"


class DeviceKeySeal:
    """Seals and opens device keys; thread-safe, one per application.

    Args:
        secret: returns the home's key passphrase (called once, when first needed).
    """

    def __init__(self, secret: Callable[[], bytes]) -> None:
        self._load_secret = secret
        self._fernet: Fernet | None = None
        self._lock = threading.Lock()

    def _cipher(self) -> Fernet:
        with self._lock:
            if self._fernet is None:
                key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
                raw = key.derive(self._load_secret())
                self._fernet = Fernet(base64.urlsafe_b64encode(raw))
            return self._fernet

    def seal(self, key: str) -> str:
        """The sealed form of a base64 device key, to store."""
        return self._cipher().encrypt(key.encode()).decode()

    def open(self, sealed: str) -> str:
        """The device key a `seal` call returned.

        Raises:
            AuthenticationError: ``hub.device_key_undecryptable`` when the passphrase
                changed since the key was sealed.
        """
        try:
            return self._cipher().decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise AuthenticationError(
                "hub.device_key_undecryptable", "the device's keys cannot be decrypted"
            ) from None
