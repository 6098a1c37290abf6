"""The connector interface: the operations a CA performs on a hub, and their errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fleetpki.errors import FleetPKIError

__all__ = [
    "ConnectorError",
    "DeviceAuthentication",
    "HubConnector",
    "HubHealth",
    "ProofSigner",
    "TrustedCA",
    "check_replaceable",
]

#: Signs the proof-of-possession certificate for a verification code: given the code the
#: hub issued, returns the DER certificate with ``CN=<code>`` signed by the CA's key
#: (through the keystore's signer, so the key never leaves custody).
ProofSigner = Callable[[str], bytes]


class ConnectorError(FleetPKIError):
    """A hub refused or failed an operation.

    Args:
        code: a stable dotted code, e.g. ``link.unreachable``, ``link.throttled``,
            ``link.forbidden``, ``link.not_found``, ``link.conflict``.
        message: what happened, naming what is missing (the subscription, resource
            group or hub; the Azure role the credential lacks).
        transient: whether retrying later may succeed (network errors, 429, 5xx, an
            etag race); a permanent error fails the delivery at once.
        retry_after: seconds the hub asked to wait (``Retry-After``), when it said.
    """

    default_status = 502

    def __init__(
        self,
        code: str,
        message: str,
        *,
        transient: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(code, message)
        self.transient = transient
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class TrustedCA:
    """A CA certificate as the hub holds it.

    Attributes:
        name: the hub's name for it (Azure's certificate resource name).
        thumbprint: upper-case SHA-1 hex of the certificate, as Azure reports it.
        verified: whether proof of possession was accepted.
    """

    name: str
    thumbprint: str
    verified: bool


@dataclass(frozen=True, slots=True)
class DeviceAuthentication:
    """How a device is to authenticate: by its CA, or pinned to a certificate.

    ``thumbprint`` ``None`` means certificate-authority authentication; otherwise the
    device is selfSigned with that SHA-1 (upper-case hex) as its primary thumbprint.
    """

    thumbprint: str | None = None

    @property
    def is_certificate_authority(self) -> bool:
        """Whether the device authenticates through its CA's chain."""
        return self.thumbprint is None


@dataclass(frozen=True, slots=True)
class HubHealth:
    """The answer of a health check.

    Attributes:
        reachable: whether the hub answered.
        detail: a sentence for the operator (the hub's host name, or what failed).
    """

    reachable: bool
    detail: str


class HubConnector(Protocol):
    """What a CA does to one hub. Every method is idempotent and does network I/O only.

    Errors are `ConnectorError` (``transient`` tells the dispatcher to retry).
    """

    def trust_ca(self, name: str, certificate_pem: bytes, prove: ProofSigner) -> TrustedCA:
        """Upload the CA certificate under ``name`` and prove possession of its key.

        An already verified certificate with the same thumbprint is kept as it is; a
        different certificate under ``name`` is replaced (its etag read first).
        """
        ...

    def remove_ca(self, name: str) -> bool:
        """Remove the CA certificate ``name``; ``False`` when the hub had none."""
        ...

    def register_device(
        self, device_id: str, *, initial_twin: Mapping[str, Any] | None = None
    ) -> bool:
        """Create the device with certificate-authority authentication (kept if it exists).

        A device created here gets ``initial_twin`` (``{"tags", "properties": {"desired"}}``)
        as its twin. Returns whether the device was created.
        """
        ...

    def set_device_enabled(
        self, device_id: str, enabled: bool, *, reason: str | None = None
    ) -> bool:
        """Enable or disable the device; ``False`` when the hub has no such device."""
        ...

    def set_device_authentication(
        self, device_id: str, authentication: DeviceAuthentication
    ) -> bool:
        """Switch the device between CA and thumbprint authentication; ``False`` if absent."""
        ...

    def health(self) -> HubHealth:
        """Whether the hub answers, and what it says it is."""
        ...

    def close(self) -> None:
        """Release the connections and credentials this connector holds (idempotent)."""
        ...


def check_replaceable(name: str, held_subject: str, new_subject: str) -> None:
    """Refuse to replace the hub's certificate ``name`` unless it is the same CA's.

    A CA's certificate keeps its hub name across its generations, so a different
    certificate under the name with the same subject is an older generation, replaced
    by the new one. A different subject is someone else's certificate that happens to
    bear the name: replacing it would silently end that CA's trust.

    Raises:
        ConnectorError: ``link.certificate_name_taken`` (permanent).
    """
    if held_subject.strip() != new_subject.strip():
        raise ConnectorError(
            "link.certificate_name_taken",
            f"the hub holds another CA's certificate named {name!r} (subject "
            f"{held_subject!r}, not {new_subject!r}); nothing was changed: delete or rename "
            "that certificate in the hub, then trust again",
        )
