"""CA keys in a PKCS#11 token (an HSM; SoftHSM2 in the tests), through python-pkcs11.

Keys are generated in the token, marked sensitive and not extractable (PKCS#11
v2.40 §4.9: ``CKA_SENSITIVE`` true, ``CKA_EXTRACTABLE`` false), and never leave it:
the token signs digests or TBS bytes, and :mod:`fleetpki.keystore.tbs` assembles
the signed DER. A key is known by ``pkcs11:<CKA_ID in hex>``; its objects carry the
label ``fleetpki-<id>``.

The token's session is the process's one logged-in session on it
(:mod:`fleetpki.keystore.token`), used under its lock.

Errors, all raised when the keystore is opened (``fleetpki serve`` and every
local command open it first), not at the first signature:
``keystore.module_missing``, ``keystore.token_missing``,
``keystore.token_ambiguous``, ``keystore.pin_missing``, ``keystore.bad_pin``,
``keystore.pin_locked``.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from fleetpki.errors import ConflictError, FleetPKIError, NotFoundError, ValidationError
from fleetpki.keystore.signer import PrivateKey, PublicKey, Signer, hash_for_key
from fleetpki.keystore.tbs import (
    basic_ocsp_response,
    ecdsa_der_signature,
    replace_ocsp_responder_key_hash,
    replace_signature,
    replace_signed_ocsp,
)
from fleetpki.keystore.token import TokenLogin, log_in, log_out, token_unavailable
from fleetpki.pki.keys import KeySpec

if TYPE_CHECKING:
    from pkcs11.types import SignMixin

__all__ = ["Pkcs11KeyStore", "Pkcs11Signer"]

_PREFIX = "pkcs11:"
_LABEL_PREFIX = "fleetpki-"
_ID_BYTES = 16

_CURVES: dict[KeySpec, tuple[str, ec.EllipticCurve]] = {
    KeySpec.EC_P256: ("secp256r1", ec.SECP256R1()),
    KeySpec.EC_P384: ("secp384r1", ec.SECP384R1()),
}
_RSA_BITS = {KeySpec.RSA_2048: 2048, KeySpec.RSA_3072: 3072, KeySpec.RSA_4096: 4096}
_RSA_MECHANISMS = {"sha256": Mechanism.SHA256_RSA_PKCS, "sha384": Mechanism.SHA384_RSA_PKCS}


# -- stand-in keys -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _StandIn:
    """A throwaway key of the real key's algorithm and a self-signed certificate of it.

    The builders sign with it so that the TBS names the right signature algorithm;
    its signature is then replaced (:mod:`fleetpki.keystore.tbs`). The certificate
    lets an OCSP builder be signed, whose responder must match the signing key.
    """

    key: PrivateKey
    certificate: x509.Certificate


def _stand_in_for(public_key: PublicKey) -> _StandIn:
    key: PrivateKey
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        key = ec.generate_private_key(public_key.curve)
    elif isinstance(public_key, rsa.RSAPublicKey):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValidationError("keystore.unsupported_key", "PKCS#11 CA keys are EC or RSA")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetpki stand-in")])
    start = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=1))
        .sign(key, hash_for_key(key))
    )
    return _StandIn(key, certificate)


# -- the signer ------------------------------------------------------------------------------


class Pkcs11Signer:
    """A CA key held in a PKCS#11 token; it signs what it is given, inside the token.

    Args:
        key_ref: the ``pkcs11:<id>`` reference of the key.
        private_key: the token's private key object.
        public_key: the public half, as ``cryptography`` sees it.
        login: the token session, used under its lock.
        stand_in: the throwaway key of the same algorithm (see :class:`_StandIn`).
    """

    def __init__(
        self,
        key_ref: str,
        private_key: SignMixin,
        public_key: PublicKey,
        login: TokenLogin,
        stand_in: _StandIn,
    ) -> None:
        self._key_ref = key_ref
        self._private = private_key
        self._public = public_key
        self._login = login
        self._stand_in = stand_in
        self._hash = hash_for_key(public_key)

    @property
    def key_ref(self) -> str:
        """The ``pkcs11:<id>`` reference of this key."""
        return self._key_ref

    def public_key(self) -> PublicKey:
        """The public half of the key (read from the token)."""
        return self._public

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """Sign a certificate builder in the token."""
        draft = builder.sign(self._stand_in.key, self._hash)
        der = draft.public_bytes(serialization.Encoding.DER)
        der = self._resign(der, draft.tbs_certificate_bytes)
        return x509.load_der_x509_certificate(der)

    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder
    ) -> x509.CertificateRevocationList:
        """Sign a CRL builder in the token."""
        draft = builder.sign(self._stand_in.key, self._hash)
        der = draft.public_bytes(serialization.Encoding.DER)
        der = self._resign(der, draft.tbs_certlist_bytes)
        return x509.load_der_x509_crl(der)

    def sign_ocsp(
        self, builder: ocsp.OCSPResponseBuilder, responder_cert: x509.Certificate
    ) -> ocsp.OCSPResponse:
        """Name ``responder_cert`` by key hash (RFC 6960 §4.2.2.3) and sign in the token.

        The builder is signed by the stand-in (it refuses a responder certificate that
        is not the signing key's), then the responder ID's key hash is replaced by the
        SHA-1 of ``responder_cert``'s key (§4.2.1 KeyHash, the same value as the RFC
        5280 §4.2.1.2 method-1 key identifier) and the new TBS is signed.
        """
        if responder_cert.public_key() != self._public:
            raise ValidationError(
                "ocsp.signer_mismatch", "the signer's key is not the responder certificate's key"
            )
        draft = builder.responder_id(
            ocsp.OCSPResponderEncoding.HASH, self._stand_in.certificate
        ).sign(self._stand_in.key, self._hash)
        key_hash = x509.SubjectKeyIdentifier.from_public_key(self._public).digest
        tbs = replace_ocsp_responder_key_hash(draft.tbs_response_bytes, key_hash)
        whole = draft.public_bytes(serialization.Encoding.DER)
        basic = self._resign(basic_ocsp_response(whole), tbs, replace_tbs=True)
        return ocsp.load_der_ocsp_response(replace_signed_ocsp(whole, basic))

    def require_protected(self) -> None:
        """Refuse a key that the token made extractable or not sensitive.

        A token may ignore a template's ``CKA_SENSITIVE`` / ``CKA_EXTRACTABLE``; the
        key is then no better than a file, so it is not used.

        Raises:
            ValidationError: ``keystore.key_not_protected``.
        """
        try:
            with self._login.lock:
                extractable = self._private[Attribute.EXTRACTABLE]
                sensitive = self._private[Attribute.SENSITIVE]
        except p11.PKCS11Error as exc:
            raise token_unavailable(exc) from exc
        if extractable or not sensitive:
            raise ValidationError(
                "keystore.key_not_protected",
                f"the token made {self._key_ref} extractable or not sensitive",
            )

    def _resign(self, der: bytes, tbs: bytes, *, replace_tbs: bool = False) -> bytes:
        signature = self._sign(tbs)
        self._check(signature, tbs)
        return replace_signature(der, signature, tbs=tbs if replace_tbs else None)

    def _sign(self, tbs: bytes) -> bytes:
        assert self._hash is not None  # EC and RSA keys only (_stand_in_for)
        try:
            with self._login.lock:
                if isinstance(self._public, ec.EllipticCurvePublicKey):
                    # Hash here, sign the digest in the token (CKM_ECDSA, PKCS#11 v2.40
                    # §2.3.6): every token has it, the hashing variants are optional.
                    digest = hashes.Hash(self._hash)
                    digest.update(tbs)
                    raw = self._private.sign(digest.finalize(), mechanism=Mechanism.ECDSA)
                    return ecdsa_der_signature(raw)
                mechanism = _RSA_MECHANISMS[self._hash.name]
                return self._private.sign(tbs, mechanism=mechanism)
        except p11.PKCS11Error as exc:
            raise token_unavailable(exc) from exc

    def _check(self, signature: bytes, tbs: bytes) -> None:
        # A token that signs with another key than the one it shows would publish
        # unverifiable certificates: check before anything leaves (cheap next to a
        # token round trip).
        assert self._hash is not None
        try:
            if isinstance(self._public, ec.EllipticCurvePublicKey):
                self._public.verify(signature, tbs, ec.ECDSA(self._hash))
            elif isinstance(self._public, rsa.RSAPublicKey):
                self._public.verify(signature, tbs, padding.PKCS1v15(), self._hash)
        except InvalidSignature:
            raise FleetPKIError(
                "keystore.bad_signature",
                f"the token's signature with {self._key_ref} does not verify",
            ) from None

    def __repr__(self) -> str:
        return f"Pkcs11Signer({self._key_ref!r})"


# -- the keystore ----------------------------------------------------------------------------


class Pkcs11KeyStore:
    """CA keys generated in, and never leaving, one PKCS#11 token.

    Build it with :meth:`open`, which loads the module, finds the token and logs in,
    so that a wrong configuration fails there.
    """

    #: Every signature is a call into the token (a network HSM may take milliseconds).
    signs_in_process = False

    def __init__(self, login: TokenLogin, label: str) -> None:
        self._login = login
        self._label = label
        self._signers: dict[str, Pkcs11Signer] = {}
        self._stand_ins: dict[tuple[str, int], _StandIn] = {}
        self._closed = False

    @classmethod
    def open(cls, module: str, token_label: str, pin: str) -> Pkcs11KeyStore:
        """Load ``module``, find the token labelled ``token_label`` and log in with ``pin``.

        Raises:
            ValidationError: ``keystore.module_missing``, ``keystore.token_ambiguous``,
                ``keystore.pin_missing``, ``keystore.bad_pin``, ``keystore.pin_locked``.
            NotFoundError: ``keystore.token_missing``.
        """
        if not pin:
            raise ValidationError("keystore.pin_missing", "the PKCS#11 PIN is empty")
        return cls(log_in(module, token_label, pin), token_label)

    @property
    def token_label(self) -> str:
        """The label of the token the keys are in."""
        return self._label

    def generate(self, spec: KeySpec) -> Signer:
        """Generate a key pair of ``spec`` in the token and return its signer.

        Raises:
            ValidationError: ``keystore.unsupported_key`` for Ed25519 (no CA key is).
            ConflictError: ``keystore.token_full`` (``CKR_DEVICE_MEMORY``) or
                ``keystore.key_generation_failed`` (the token failed otherwise, as
                SoftHSM2 does when its storage is full); nothing is stored then.
        """
        key_id = secrets.token_bytes(_ID_BYTES)
        key_ref = _PREFIX + key_id.hex()
        label = _LABEL_PREFIX + key_id.hex()
        private_template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }
        public_template: dict[Attribute, Any] = {Attribute.TOKEN: True, Attribute.VERIFY: True}
        options: dict[str, Any] = {
            "store": True,
            "id": key_id,
            "label": label,
            "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
            "private_template": private_template,
            "public_template": public_template,
        }
        session = self._login.session
        try:
            with self._login.lock:
                if spec in _CURVES:
                    curve = encode_named_curve_parameters(_CURVES[spec][0])
                    parameters = session.create_domain_parameters(
                        KeyType.EC, {Attribute.EC_PARAMS: curve}, local=True
                    )
                    parameters.generate_keypair(**options)
                elif spec in _RSA_BITS:
                    public_template[Attribute.PUBLIC_EXPONENT] = b"\x01\x00\x01"
                    session.generate_keypair(KeyType.RSA, _RSA_BITS[spec], **options)
                else:
                    raise ValidationError(
                        "keystore.unsupported_key",
                        f"fleetpki makes no {spec.value} keys in a PKCS#11 token",
                    )
        except p11.DeviceMemory:
            raise ConflictError(
                "keystore.token_full",
                f"PKCS#11 token {self._label!r} has no room for a new key; nothing was changed",
            ) from None
        except (p11.FunctionFailed, p11.GeneralError, p11.DeviceError) as exc:
            raise ConflictError(
                "keystore.key_generation_failed",
                f"PKCS#11 token {self._label!r} could not make and store a new key "
                f"({type(exc).__name__}; is it full?); nothing was changed",
            ) from exc
        except p11.PKCS11Error as exc:
            raise token_unavailable(exc) from exc
        try:
            signer = self._load(key_ref)
            signer.require_protected()
        except BaseException:
            self.discard(key_ref)
            raise
        return signer

    def signer(self, key_ref: str) -> Signer:
        """The signer of the key ``pkcs11:<id>`` in the token.

        Raises:
            NotFoundError: ``keystore.key_missing`` when the token has no such key.
        """
        cached = self._signers.get(key_ref)
        if cached is not None:
            return cached
        return self._load(key_ref)

    def discard(self, key_ref: str) -> None:
        """Destroy both objects of a key that was never used; missing ones are ignored."""
        self._signers.pop(key_ref, None)
        key_id = self._key_id(key_ref)
        with self._login.lock:
            try:
                for obj in list(self._login.session.get_objects({Attribute.ID: key_id})):
                    obj.destroy()
            except p11.PKCS11Error as exc:
                raise token_unavailable(exc) from exc

    def close(self) -> None:
        """Give up this keystore's share of the token session (the last one logs out)."""
        if not self._closed:
            self._closed = True
            self._signers.clear()
            log_out(self._login)

    def _key_id(self, key_ref: str) -> bytes:
        hex_id = key_ref.removeprefix(_PREFIX)
        try:
            if not key_ref.startswith(_PREFIX) or len(hex_id) != 2 * _ID_BYTES:
                raise ValueError(key_ref)
            return bytes.fromhex(hex_id)
        except ValueError:
            raise NotFoundError(
                "keystore.key_missing", f"unknown key reference {key_ref!r}"
            ) from None

    def _load(self, key_ref: str) -> Pkcs11Signer:
        key_id = self._key_id(key_ref)
        session = self._login.session

        def find(kind: ObjectClass) -> Any:
            return session.get_key(object_class=kind, id=key_id)

        try:
            with self._login.lock:
                private = find(ObjectClass.PRIVATE_KEY)
                public = _public_key_of(find(ObjectClass.PUBLIC_KEY))
        except (p11.NoSuchKey, p11.MultipleObjectsReturned) as exc:
            raise NotFoundError(
                "keystore.key_missing",
                f"PKCS#11 token {self._label!r} holds no single key pair {key_ref}",
            ) from exc
        except p11.PKCS11Error as exc:
            raise token_unavailable(exc) from exc
        signer = Pkcs11Signer(key_ref, private, public, self._login, self._stand_in(public))
        self._signers[key_ref] = signer
        return signer

    def _stand_in(self, public_key: PublicKey) -> _StandIn:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            kind = ("ec", public_key.curve.key_size)
        else:
            kind = ("rsa", 0)  # any RSA key makes sha256WithRSAEncryption
        stand_in = self._stand_ins.get(kind)
        if stand_in is None:
            stand_in = self._stand_ins[kind] = _stand_in_for(public_key)
        return stand_in

    def __repr__(self) -> str:
        return f"Pkcs11KeyStore(token={self._label!r})"


def _public_key_of(public: Any) -> PublicKey:
    """The ``cryptography`` public key of a token's public key object."""
    key_type = public[Attribute.KEY_TYPE]
    loaded: Any
    if key_type == KeyType.EC:
        loaded = serialization.load_der_public_key(encode_ec_public_key(public))
    elif key_type == KeyType.RSA:
        modulus = int.from_bytes(public[Attribute.MODULUS], "big")
        exponent = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
        loaded = rsa.RSAPublicNumbers(exponent, modulus).public_key()
    else:
        raise ValidationError("keystore.unsupported_key", f"unsupported key type {key_type!r}")
    if not isinstance(loaded, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValidationError("keystore.unsupported_key", "unsupported public key in the token")
    return loaded
