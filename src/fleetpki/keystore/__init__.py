"""Custody of CA private keys behind one signer interface.

The rest of fleetpki never holds a CA private key object directly: a new key is
generated in the keystore (:meth:`KeyStore.generate`), and the keystore gives a
:class:`Signer` by key reference, which is handed the builder to sign. The default
backend keeps each key as an encrypted PKCS#8 PEM file (:mod:`.files`); the PKCS#11
backend (:mod:`.pkcs11`, an HSM, SoftHSM2 in the tests) keeps it in a token and is
imported only when configured, since it loads python-pkcs11.
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
