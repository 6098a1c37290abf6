"""Live blocks: which sessions a revocation or a disabled device closes, and connects it refuses.

A block (a revoked certificate, a disabled or deleted device, a replaced symmetric
key) closes every live
session it matches at once. One that lands while a CONNECT of that device is being
authenticated (in a worker thread, against a database read just before) must refuse
that connect too: each block is stamped with an epoch, and a connect refuses itself
if a matching block came after the epoch it started in.
"""

from __future__ import annotations

from collections.abc import Callable

from fleetpki.hub.backend import (
    AuthenticatedDevice,
    CertificateRevoked,
    DeviceBlocked,
    DeviceKeysReplaced,
)

__all__ = ["BlockList"]


class BlockList:
    """The blocks that landed while connects were being authenticated; on the broker's loop."""

    def __init__(self) -> None:
        self._epoch = 0
        self._blocked: dict[str, int] = {}
        self._authenticating = 0

    def begin_connect(self) -> int:
        """A CONNECT starts being authenticated; returns the epoch to pass to `end_connect`."""
        self._authenticating += 1
        return self._epoch

    def end_connect(self, device: AuthenticatedDevice | None, epoch: int) -> str | None:
        """The authentication ended (``device`` if accepted): the reason to refuse it, if any.

        Returns ``hub.certificate_revoked``, ``hub.sas_key_replaced`` or
        ``hub.device_disabled`` when a matching block landed since ``epoch``, else ``None``.
        """
        self._authenticating -= 1
        reason = None
        if device is not None:
            for key, why in (
                (f"sha1:{device.certificate_sha1}", "hub.certificate_revoked"),
                (f"serial:{device.certificate_serial}", "hub.certificate_revoked"),
                (f"key:{device.device_id}:{device.key_id}", "hub.sas_key_replaced"),
                (f"device:{device.device_id}", "hub.device_disabled"),
            ):
                if self._blocked.get(key, -1) >= epoch:
                    reason = why
                    break
        if not self._authenticating:
            self._blocked.clear()
        return reason

    def block(
        self, event: CertificateRevoked | DeviceBlocked | DeviceKeysReplaced
    ) -> Callable[[AuthenticatedDevice], bool]:
        """Record ``event`` for connects in progress; return whether it matches a device."""
        self._epoch += 1
        keys: list[str] = []
        if isinstance(event, CertificateRevoked):
            sha1 = event.sha1.upper() if event.sha1 else None
            serial = event.serial.upper().lstrip("0") if event.serial else None
            if sha1:
                keys.append(f"sha1:{sha1}")
            if serial:
                keys.append(f"serial:{serial}")

            def matches(device: AuthenticatedDevice) -> bool:
                # A SAS session has no certificate: None never matches.
                return (sha1 is not None and device.certificate_sha1 == sha1) or (
                    serial is not None
                    and device.certificate_serial is not None
                    and device.certificate_serial.lstrip("0") == serial
                )
        elif isinstance(event, DeviceKeysReplaced):
            removed = event.key_ids
            keys.extend(f"key:{event.device_id}:{k}" for k in removed)

            def matches(device: AuthenticatedDevice) -> bool:
                return device.device_id == event.device_id and device.key_id in removed
        else:
            keys.append(f"device:{event.device_id}")

            def matches(device: AuthenticatedDevice) -> bool:
                return device.device_id == event.device_id

        if self._authenticating:
            for key in keys:
                self._blocked[key] = self._epoch
        return matches
