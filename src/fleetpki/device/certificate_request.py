"""Device keys and certificate signing requests: CN and DNS SAN equal to the device id."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from fleetpki.errors import ValidationError
from fleetpki.keystore import PrivateKey
from fleetpki.pki.keys import KeySpec, generate_key, key_spec_of

__all__ = [
    "DEFAULT_DEVICE_KEY_SPEC",
    "DEVICE_KEY_SPECS",
    "MAX_DEVICE_ID_LENGTH",
    "check_device_id",
    "generate_device_key",
    "make_csr",
    "make_csr_pem",
]

#: Key types a device may have. Ed25519 is left out: the Azure device SDK's TLS 1.2 stack
#: and Azure IoT Hub do not accept Ed25519 client certificates.
DEVICE_KEY_SPECS = frozenset(
    {KeySpec.RSA_2048, KeySpec.RSA_3072, KeySpec.RSA_4096, KeySpec.EC_P256, KeySpec.EC_P384}
)
#: What `generate_device_key` makes when asked for nothing in particular.
DEFAULT_DEVICE_KEY_SPEC = KeySpec.EC_P256
#: Azure IoT Hub's limit on device ids (identity registry docs).
MAX_DEVICE_ID_LENGTH = 128

# Characters Azure IoT Hub allows in a device id besides ASCII letters and digits
# (learn.microsoft.com, iot-hub-devguide-identity-registry, "Device identity properties").
_ID_PUNCTUATION = frozenset("-.+%_#*?!(),=@$'")


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if Azure IoT Hub would accept it as a device id.

    Raises:
        ValidationError: ``device.bad_id`` for an empty id, one over 128 characters or one
        with a character outside ASCII letters, digits and ``- . + % _ # * ? ! ( ) , = @ $ '``.
    """
    if not 1 <= len(device_id) <= MAX_DEVICE_ID_LENGTH or not all(
        (ch.isascii() and ch.isalnum()) or ch in _ID_PUNCTUATION for ch in device_id
    ):
        raise ValidationError(
            "device.bad_id",
            "a device id has 1 to 128 ASCII letters, digits or - . + % _ # * ? ! ( ) , = @ $ '",
        )
    return device_id


def generate_device_key(spec: KeySpec = DEFAULT_DEVICE_KEY_SPEC) -> PrivateKey:
    """Generate a new device key of ``spec``.

    Raises:
        ValidationError: ``device.bad_key_type`` for a spec outside `DEVICE_KEY_SPECS`.
    """
    if spec not in DEVICE_KEY_SPECS:
        accepted = ", ".join(sorted(s.value for s in DEVICE_KEY_SPECS))
        raise ValidationError(
            "device.bad_key_type", f"a device key must be one of: {accepted} (not {spec.value})"
        )
    return generate_key(spec)


def make_csr(device_id: str, key: PrivateKey) -> x509.CertificateSigningRequest:
    """A CSR for ``device_id`` signed by ``key`` with SHA-256.

    The subject is ``CN=<device id>`` and the id is also the only SAN, as a DNS name;
    RSA keys sign with PKCS#1 v1.5, EC keys with ECDSA (RFC 2986, RFC 5758 §3.2).

    Raises:
        ValidationError: ``device.bad_id`` or ``device.bad_key_type``.
    """
    check_device_id(device_id)
    if key_spec_of(key) not in DEVICE_KEY_SPECS:
        raise ValidationError("device.bad_key_type", "the key is not a supported device key")
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(device_id)]),
            critical=False,
        )
    )
    return builder.sign(key, hashes.SHA256())


def make_csr_pem(device_id: str, key: PrivateKey) -> str:
    """`make_csr` as PEM text."""
    return make_csr(device_id, key).public_bytes(serialization.Encoding.PEM).decode()
