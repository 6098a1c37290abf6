"""Device twins: tags, desired and reported properties with their versions (ref §1.5, §3.3).

Desired changes are sent to the connected device after the unit of work commits, by
whichever hub node holds its session (:class:`DesiredPatched`, told to every node by
:func:`fleetpki.services.hub_notices.tell_hub_nodes`); reported patches come from the
device over MQTT.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetpki.errors import ValidationError
from fleetpki.services.context import Clock
from fleetpki.services.hub_devices import HubDeviceView, device_view, require_device
from fleetpki.services.hub_etags import check_if_match, new_etag
from fleetpki.services.hub_notices import tell_hub_nodes
from fleetpki.services.hub_routing import EventRouting, route_twin_change_in
from fleetpki.services.notifications import DesiredPatched
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.store.hub_models import HubDevice

__all__ = ["HubTwinService", "TwinView", "twin_view"]


@dataclass(frozen=True, slots=True)
class TwinView:
    """A device twin (ref §3.2 "Twin fields"): the device entry and its properties.

    Attributes:
        device: the registry entry the twin belongs to.
        etag: the twin's etag (``device.etag`` is the identity's).
        tags / desired / reported: the documents, without ``$`` metadata.
    """

    device: HubDeviceView
    etag: str
    tags: dict[str, Any]
    desired: dict[str, Any]
    desired_version: int
    reported: dict[str, Any]
    reported_version: int


def twin_view(record: HubDevice) -> TwinView:
    """The view of a device's twin (copies, so later changes to the record do not leak)."""
    return TwinView(
        device=device_view(record),
        etag=record.twin_etag,
        tags=copy.deepcopy(record.tags),
        desired=copy.deepcopy(record.desired),
        desired_version=record.desired_version,
        reported=copy.deepcopy(record.reported),
        reported_version=record.reported_version,
    )


def _merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    # JSON merge patch (RFC 7396): null deletes, objects merge, anything else replaces.
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = _merge_patch(result[key], value)
        elif isinstance(value, Mapping):
            result[key] = _merge_patch({}, value)
        else:
            result[key] = value
    return result


def _strip_meta(properties: Mapping[str, Any] | None) -> dict[str, Any]:
    if properties is None:
        return {}
    if not isinstance(properties, Mapping):
        raise ValidationError("hub.bad_twin", "twin properties must be a JSON object")
    return {k: v for k, v in properties.items() if not k.startswith("$")}


def _twin_parts(document: Mapping[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    tags = document.get("tags")
    if tags is not None and not isinstance(tags, Mapping):
        raise ValidationError("hub.bad_twin", "twin tags must be a JSON object")
    properties = document.get("properties") or {}
    if not isinstance(properties, Mapping):
        raise ValidationError("hub.bad_twin", "twin properties must be a JSON object")
    desired = properties.get("desired")
    return (
        None if tags is None else dict(tags),
        None if desired is None else _strip_meta(desired),
    )


def patch_twin_in(
    tx: UnitOfWork,
    device_id: str,
    document: Mapping[str, Any],
    *,
    now: dt.datetime,
    if_match: str | None = None,
    routing: EventRouting | None = None,
) -> HubDevice:
    """:meth:`HubTwinService.patch` inside the caller's unit of work (returns the record)."""
    record = require_device(tx, device_id, for_update=True)
    check_if_match(if_match, record.twin_etag)
    tags, desired = _twin_parts(document)
    if tags is not None:
        record.tags = _merge_patch(record.tags, tags)
    if desired:
        record.desired = _merge_patch(record.desired, desired)
        record.desired_version += 1
        tell_hub_nodes(tx, DesiredPatched(device_id, dict(desired), record.desired_version), at=now)
        route_twin_change_in(
            tx,
            routing,
            device_id,
            op_type="updateTwin",
            version=record.desired_version,
            changed={"desired": {**desired, "$version": record.desired_version}},
            now=now,
        )
    record.twin_etag = new_etag()
    return record


def replace_twin_in(
    tx: UnitOfWork,
    device_id: str,
    document: Mapping[str, Any],
    *,
    now: dt.datetime,
    if_match: str | None = None,
    routing: EventRouting | None = None,
) -> HubDevice:
    """:meth:`HubTwinService.replace` inside the caller's unit of work (returns the record)."""
    record = require_device(tx, device_id, for_update=True)
    check_if_match(if_match, record.twin_etag)
    tags, desired = _twin_parts(document)
    record.tags = tags or {}
    new_desired = desired or {}
    if new_desired != record.desired:
        patch: dict[str, Any] = {k: None for k in record.desired if k not in new_desired}
        patch.update(new_desired)
        record.desired = new_desired
        record.desired_version += 1
        tell_hub_nodes(tx, DesiredPatched(device_id, patch, record.desired_version), at=now)
        route_twin_change_in(
            tx,
            routing,
            device_id,
            op_type="replaceTwin",
            version=record.desired_version,
            changed={"desired": {**new_desired, "$version": record.desired_version}},
            now=now,
        )
    record.twin_etag = new_etag()
    return record


def patch_reported_in(
    tx: UnitOfWork,
    device_id: str,
    patch: Mapping[str, Any],
    *,
    now: dt.datetime,
    routing: EventRouting | None = None,
) -> int:
    """:meth:`HubTwinService.patch_reported` inside the caller's unit of work."""
    if not isinstance(patch, Mapping):
        raise ValidationError("hub.bad_twin", "a reported patch must be a JSON object")
    record = require_device(tx, device_id, for_update=True)
    stripped = _strip_meta(patch)
    record.reported = _merge_patch(record.reported, stripped)
    record.reported_version += 1
    record.twin_etag = new_etag()
    record.last_activity_at = now
    route_twin_change_in(
        tx,
        routing,
        device_id,
        op_type="updateTwin",
        version=record.reported_version,
        changed={"reported": {**stripped, "$version": record.reported_version}},
        now=now,
    )
    return record.reported_version


class HubTwinService:
    """Device twins of the built-in hub (ref §3.3).

    Args:
        store: the database.
        clock: the source of "now".
        routing: which twin change events reach the built-in endpoint.
    """

    def __init__(self, store: Store, clock: Clock, routing: EventRouting | None = None) -> None:
        self._store = store
        self._clock = clock
        self._routing = routing

    def get(self, device_id: str) -> TwinView:
        """The twin of ``device_id``.

        Raises:
            NotFoundError: ``hub.device_not_found``.
        """
        with self._store.reading() as tx:
            return twin_view(require_device(tx, device_id))

    def list(self) -> list[TwinView]:
        """Every device's twin, by device id (``SELECT * FROM devices``)."""
        with self._store.reading() as tx:
            return [twin_view(r) for r in tx.hub_devices.list()]

    def patch(
        self, device_id: str, document: Mapping[str, Any], *, if_match: str | None = None
    ) -> TwinView:
        """Merge ``{"tags": .., "properties": {"desired": ..}}`` into the twin (ref §3.3).

        ``null`` deletes a key. A desired change bumps ``desired.$version`` and is sent
        to the connected device after commit. Reported properties cannot be set here.

        Raises:
            NotFoundError: ``hub.device_not_found``.
            ConflictError: ``precondition.failed``.
            ValidationError: ``hub.bad_twin``.
        """
        with self._store.transaction() as tx:
            record = patch_twin_in(
                tx,
                device_id,
                document,
                if_match=if_match,
                routing=self._routing,
                now=self._clock(),
            )
            return twin_view(record)

    def replace(
        self, device_id: str, document: Mapping[str, Any], *, if_match: str | None = None
    ) -> TwinView:
        """Replace the twin's tags and desired properties (ref §3.3 twin PUT).

        The device receives the new desired properties, with removed keys as ``null``.

        Raises:
            NotFoundError: ``hub.device_not_found``.
            ConflictError: ``precondition.failed``.
            ValidationError: ``hub.bad_twin``.
        """
        with self._store.transaction() as tx:
            record = replace_twin_in(
                tx,
                device_id,
                document,
                if_match=if_match,
                routing=self._routing,
                now=self._clock(),
            )
            return twin_view(record)

    def patch_reported(self, device_id: str, patch: Mapping[str, Any]) -> int:
        """Merge a device's reported-properties patch (ref §1.5); return the new ``$version``.

        Raises:
            NotFoundError: ``hub.device_not_found``.
            ValidationError: ``hub.bad_twin`` when the patch is not a JSON object.
        """
        with self._store.transaction() as tx:
            return patch_reported_in(tx, device_id, patch, now=self._clock(), routing=self._routing)
