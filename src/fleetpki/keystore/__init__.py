"""Custody of CA private keys behind one signer interface.

The rest of fleetpki never holds a CA private key object directly: it asks the
keystore for a :class:`Signer` by key reference and hands it the builder to sign.
The default backend keeps each key as an encrypted PKCS#8 PEM file; a PKCS#11
backend (an HSM, SoftHSM in tests) can implement the same protocol later.
"""

from __future__ import annotations

from fleetpki.keystore.files import FileKeyStore, load_or_create_passphrase
from fleetpki.keystore.signer import KeyStore, PrivateKey, PublicKey, Signer, hash_for_key

__all__ = [
    "FileKeyStore",
    "KeyStore",
    "PrivateKey",
    "PublicKey",
    "Signer",
    "hash_for_key",
    "load_or_create_passphrase",
]
