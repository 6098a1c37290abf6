"""Device authentication on connect: read the facts, ask the revocation source, apply the policy.

The MQTT server asks on every connect whether a TLS client certificate may connect as
an MQTT client id (X.509 device authentication, shared/reference/azure-iot-hub-protocol.md
§4.2). The decision is `fleetpki.hub.policy.DevicePolicy`'s; this service gathers its
inputs without holding the database during network I/O:

1. One short read unit of work: the device's registry entry, the hub's trust anchors
   (through `HubTrustService.trust_anchors`, which the application's cache serves),
   the policy's first step (CN, registry, authentication type, chain), and, when the
   verified issuer is one of fleetpki's own CAs, the certificate's status in
   fleetpki's certificate table.
2. The transaction is closed (its connection back in the pool).
3. For a foreign CA, the OCSP responder or CRL the leaf names is asked
   (`fleetpki.services.foreign_revocation.RevocationChecker`), with no session open.
4. The policy's second step decides.

Revocation goes further than Azure, which never checks it (§4.2).

A SAS token (symmetric-key devices, ref §3.1) needs no network: one short read unit of
work gathers the registry entry with the device's keys (opened from their seal,
`fleetpki.services.hub_device_keys`), and the policy decides (`DevicePolicy.admit_token`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from cryptography import x509

from fleetpki.hub.policy import (
    Admission,
    AuthenticatedDevice,
    AuthType,
    DevicePolicy,
    DeviceStatus,
    PresentedCertificate,
    PresentedToken,
    RegistryEntry,
    RevocationStatus,
    RevocationVerdict,
    TrustedCAs,
)
from fleetpki.services.foreign_revocation import RevocationChecker
from fleetpki.services.hub_device_keys import DeviceKeySeal
from fleetpki.services.hub_devices import device_keys
from fleetpki.services.hub_trust import HubTrustService
from fleetpki.services.ports import Store, UnitOfWork

__all__ = ["AuthenticatedDevice", "DeviceAuthenticator", "registry_entry"]

_log = logging.getLogger("fleetpki.hub.revocation")


class DeviceAuthenticator:
    """Authenticates connecting devices with the one hub policy; thread-safe.

    Built once per application, from its parts, and shared by every hub connection.

    Args:
        store: the database.
        policy: the decision (its revocation soft-fail choice included).
        revocation: the foreign-CA revocation checker (its CRL cache is this
            application's).
        trust: the hub's trusted CAs (their parsed anchors cached by the application).
        seal: opens sas devices' keys.
    """

    def __init__(
        self,
        store: Store,
        *,
        policy: DevicePolicy,
        revocation: RevocationChecker,
        trust: HubTrustService,
        seal: DeviceKeySeal,
    ) -> None:
        self._store = store
        self.policy = policy
        self.revocation = revocation
        self.trust = trust
        self.seal = seal

    def authenticate(
        self,
        leaf: x509.Certificate,
        chain: Sequence[x509.Certificate],
        client_id: str,
        now: dt.datetime,
    ) -> AuthenticatedDevice:
        """Decide whether ``leaf`` may connect as ``client_id`` (ref §4.2).

        Args:
            leaf: the TLS client certificate.
            chain: what the peer sent besides the leaf (a copy of the leaf is ignored).
            client_id: the MQTT client id, ``device`` or ``device/module``.
            now: the time of the check.

        Raises:
            AuthenticationError: ``hub.cn_mismatch``, ``hub.unknown_device``,
                ``hub.device_disabled``, ``hub.wrong_auth_type``, ``hub.untrusted_ca``,
                ``hub.ca_unverified``, ``hub.certificate_revoked``,
                ``hub.revocation_unknown`` (`fleetpki.hub.policy.Refusal`). The server
                answers CONNACK 5 to every one (ref §1.4).
        """
        presented = PresentedCertificate(leaf, tuple(chain), client_id)
        with self._store.reading() as tx:
            entry = registry_entry(tx, presented.device_id)
            admission, verdict = self.admit_in(tx, presented, entry, self.hub_trusted(tx), now)
        # The transaction is closed: a slow responder holds no database connection.
        return self.decide(admission, verdict, now)

    def hub_trusted(self, tx: UnitOfWork) -> TrustedCAs:
        """The hub's CAs, verified and not, as the policy takes them (in ``tx``)."""
        anchors = self.trust.trust_anchors(tx)
        return TrustedCAs(
            tuple(a.certificate for a in anchors.verified),
            tuple(a.certificate for a in anchors.unverified),
        )

    def admit_in(
        self,
        tx: UnitOfWork,
        presented: PresentedCertificate,
        entry: RegistryEntry | None,
        trusted: TrustedCAs,
        now: dt.datetime,
    ) -> tuple[Admission, RevocationVerdict | None]:
        """Step 1 inside the caller's read unit of work: the policy's admission, and the
        certificate table's verdict when the verified issuer is a fleetpki CA.

        The provisioning service calls this with an enrollment's facts in place of a
        registry entry, so a registration is checked by the same policy as a connect.

        Raises:
            AuthenticationError: the policy's refusals (`DevicePolicy.admit`).
        """
        admission = self.policy.admit(presented, entry, trusted, now)
        return admission, _fleetpki_verdict(tx, admission)

    def decide(
        self, admission: Admission, verdict: RevocationVerdict | None, now: dt.datetime
    ) -> AuthenticatedDevice:
        """Step 2, with no transaction open: ask a foreign CA's OCSP responder or CRL when
        no fleetpki record answered, then the policy's decision.

        Raises:
            AuthenticationError: ``hub.certificate_revoked``, ``hub.revocation_unknown``.
        """
        if verdict is None and admission.issuer is not None:
            verdict = self.revocation.verdict(admission.leaf, admission.issuer, now)
        device = self.policy.decide(admission, verdict)
        if verdict is not None and verdict.status is RevocationStatus.UNKNOWN:
            _log.warning(
                "hub: revocation status of serial %s from %s unknown; accepted (soft-fail)",
                device.certificate_serial,
                admission.issuer.subject.rfc4514_string() if admission.issuer else "?",
            )
        return device

    def authenticate_token(
        self, token: str, client_id: str, host: str, now: dt.datetime
    ) -> AuthenticatedDevice:
        """Decide whether a SAS token may connect as ``client_id`` (ref §3.1).

        Args:
            token: the CONNECT password.
            client_id: the MQTT client id.
            host: the CONNECT username's host (one of the hub's names).
            now: the time of the check.

        Raises:
            AuthenticationError: ``hub.sas_malformed``, ``hub.unknown_device``,
                ``hub.device_disabled``, ``hub.wrong_auth_type``, ``hub.sas_module``,
                ``hub.sas_policy_token``, ``hub.sas_wrong_resource``,
                ``hub.sas_expired``, ``hub.sas_bad_signature``
                (`fleetpki.hub.policy.Refusal`), ``hub.device_key_undecryptable``.
        """
        presented = PresentedToken(token, client_id, host)
        with self._store.reading() as tx:
            entry = registry_entry(tx, client_id.partition("/")[0], self.seal)
        return self.policy.admit_token(presented, entry, now)


def registry_entry(
    tx: UnitOfWork, device_id: str, seal: DeviceKeySeal | None = None
) -> RegistryEntry | None:
    """The policy's facts about ``device_id``; a sas device's keys only when ``seal`` is given."""
    if seal is None:
        facts = tx.hub_devices.auth_facts(device_id)
        if facts is None:
            return None
        found_id, status, auth_type, primary, secondary = facts
        return RegistryEntry(
            device_id=found_id,
            status=DeviceStatus(status),
            auth_type=AuthType(auth_type),
            thumbprints=frozenset(t for t in (primary, secondary) if t),
            symmetric_keys=(),
        )
    record = tx.hub_devices.get(device_id)
    if record is None:
        return None
    keys = device_keys(record, seal) if seal is not None else (None, None)
    return RegistryEntry(
        device_id=record.device_id,
        status=DeviceStatus(record.status),
        auth_type=AuthType(record.auth_type),
        thumbprints=frozenset(
            t for t in (record.primary_thumbprint, record.secondary_thumbprint) if t
        ),
        symmetric_keys=tuple(k for k in keys if k),
    )


def _fleetpki_verdict(tx: UnitOfWork, admission: Admission) -> RevocationVerdict | None:
    """The certificate table's verdict when the leaf's verified issuer is a fleetpki CA."""
    issuer_sha1 = admission.issuer_sha1
    if issuer_sha1 is None:
        return None
    found = tx.certificates.status_by_issuer(issuer_sha1, format(admission.leaf.serial_number, "X"))
    if found is None:
        return None
    ca_id, status = found
    return RevocationVerdict.from_fleetpki_record(ca_id, status)
