"""Certificate signing requests: parsing and proof of possession (RFC 2986)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import NameOID

from fleetpki.errors import ValidationError
from fleetpki.keystore import PublicKey
from fleetpki.pki.keys import KeySpec, key_spec_of
from fleetpki.pki.names import SubjectAltName

__all__ = ["MAX_CSR_BYTES", "ParsedCSR", "parse_csr"]

#: A CSR larger than this is refused before parsing; real ones are under 4 KiB.
MAX_CSR_BYTES = 64 * 1024

# Hashes whose collisions are practical: a signature over them proves nothing
# (RFC 6194 for SHA-1, RFC 6151 for MD5). OpenSSL refuses to verify them, so without
# this check such a CSR would read as "no proof of possession", which misleads.
_WEAK_HASHES: dict[type[hashes.HashAlgorithm], str] = {hashes.SHA1: "SHA-1", hashes.MD5: "MD5"}


@dataclass(frozen=True, slots=True)
class ParsedCSR:
    """A CSR whose signature has been verified, with the parts issuance uses.

    Attributes:
        csr: the cryptography object.
        public_key: the subject public key.
        key_spec: the key's spec, or ``None`` when it is outside the supported set.
        common_name: the subject CN, or ``None`` when the subject has none.
        subject_alt_names: SANs from the extensionRequest attribute, in order.
    """

    csr: x509.CertificateSigningRequest
    public_key: PublicKey
    key_spec: KeySpec | None
    common_name: str | None
    subject_alt_names: tuple[SubjectAltName, ...]


def _load(data: bytes | str) -> x509.CertificateSigningRequest:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_CSR_BYTES:
        raise ValidationError("csr.too_large", f"the CSR is over {MAX_CSR_BYTES} bytes")
    stripped = raw.strip()
    try:
        if stripped.startswith(b"-----BEGIN"):
            if b"-----BEGIN NEW CERTIFICATE REQUEST-----" in stripped:
                # Old Netscape/Windows label for the same structure.
                stripped = stripped.replace(b"NEW CERTIFICATE REQUEST", b"CERTIFICATE REQUEST")
            return x509.load_pem_x509_csr(stripped)
        return x509.load_der_x509_csr(raw)
    except ValueError as exc:
        raise ValidationError(
            "csr.malformed", "the CSR is not a PEM or DER PKCS#10 request"
        ) from exc


def parse_csr(data: bytes | str) -> ParsedCSR:
    """Parse a PEM or DER CSR and verify its self-signature (proof of possession).

    Raises:
        ValidationError: ``csr.malformed``, ``csr.too_large``, ``csr.bad_signature``,
        ``csr.weak_signature_hash`` (signed with SHA-1 or MD5, named in the message),
        ``csr.unsupported_key`` (DSA or an unknown algorithm), ``csr.bad_subject``
        (several CNs), ``csr.unsupported_san``.
    """
    csr = _load(data)
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise ValidationError(
            "csr.unsupported_key", "the CSR's public key is not supported"
        ) from exc
    if isinstance(public_key, dsa.DSAPublicKey) or not isinstance(public_key, PublicKey):
        raise ValidationError("csr.unsupported_key", "the CSR's key algorithm is not supported")
    _refuse_weak_hash(csr)
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType) as exc:
        raise ValidationError("csr.bad_signature", "the CSR signature cannot be checked") from exc
    if not valid:
        # RFC 2986 §3: the signature over the request info is the proof that the
        # requester holds the private key.
        raise ValidationError(
            "csr.bad_signature", "the CSR signature does not verify (no proof of possession)"
        )
    try:
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError as exc:
        raise ValidationError("csr.bad_subject", "the CSR subject cannot be decoded") from exc
    if len(cns) > 1:
        raise ValidationError("csr.bad_subject", "the CSR subject has more than one CN")
    common_name = None
    if cns:
        value = cns[0].value
        common_name = value if isinstance(value, str) else value.decode("utf-8", "replace")
    sans: tuple[SubjectAltName, ...] = ()
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        pass
    except (ValueError, x509.DuplicateExtension) as exc:
        raise ValidationError("csr.malformed", "the CSR's extensions cannot be decoded") from exc
    else:
        sans = tuple(SubjectAltName.from_general_name(name) for name in ext.value)
    return ParsedCSR(
        csr=csr,
        public_key=public_key,
        key_spec=key_spec_of(public_key),
        common_name=common_name,
        subject_alt_names=sans,
    )


def _refuse_weak_hash(csr: x509.CertificateSigningRequest) -> None:
    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return  # an unknown algorithm: the signature check below refuses it
    name = _WEAK_HASHES.get(type(algorithm)) if algorithm is not None else None
    if name is not None:
        raise ValidationError(
            "csr.weak_signature_hash",
            f"the CSR is signed with {name}, a hash too weak to prove possession of the key; "
            "sign it with SHA-256 or stronger",
        )


def describe_key(key: PublicKey) -> str:
    """A short description of a public key for error messages (``RSA-1024``, ``EC secp521r1``)."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__.removesuffix("PublicKey")
