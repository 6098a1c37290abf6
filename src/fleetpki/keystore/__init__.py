"""Custody of CA private keys behind one signer interface.

The rest of fleetpki never holds a CA private key object directly: a new key is
generated in the keystore (:meth:`KeyStore.generate`), and the keystore gives a
:class:`Signer` by key reference, which is handed the builder to sign. The default
backend keeps each key as a PKCS#8 PEM file encrypted with scrypt (:mod:`.files`,
:mod:`.pkcs8`) under the key passphrase, which lives outside the home
(:mod:`.passphrase`); the PKCS#11 backend (:mod:`.pkcs11`, an HSM, SoftHSM2 in the
tests) keeps it in a token and is imported only when configured, since it loads
python-pkcs11.
"""

from __future__ import annotations

from fleetpki.keystore.files import FileKeyStore, load_key_file, write_key_file
from fleetpki.keystore.passphrase import (
    KeyPassphrase,
    PassphraseOrigin,
    PassphraseReader,
    PassphraseSource,
    create_passphrase,
    find_passphrase,
)
from fleetpki.keystore.signer import KeyStore, PrivateKey, PublicKey, Signer, hash_for_key

__all__ = [
    "FileKeyStore",
    "KeyPassphrase",
    "KeyStore",
    "PassphraseOrigin",
    "PassphraseReader",
    "PassphraseSource",
    "PrivateKey",
    "PublicKey",
    "Signer",
    "create_passphrase",
    "find_passphrase",
    "hash_for_key",
    "load_key_file",
    "write_key_file",
]
