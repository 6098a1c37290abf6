"""Run by .venv-azure/bin/python: the unmodified azure-iot-hub SDK against fleetpki's hub.

Usage: python hub_sdk_script.py CONNECTION_STRING DEVICE_ID; prints one JSON object.
"""

import json
import sys

from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, QuerySpecification, Twin, TwinProperties
from msrest.exceptions import HttpOperationError


def status_of(call):
    try:
        call()
    except HttpOperationError as exc:
        body = exc.response.json()
        return [exc.response.status_code, json.loads(body["Message"])["errorCode"]]
    return "ok"


def main():
    connection_string, device_id = sys.argv[1], sys.argv[2]
    manager = IoTHubRegistryManager.from_connection_string(connection_string)
    out = {}
    created = manager.create_device_with_certificate_authority(device_id, "enabled")
    out["created"] = [created.device_id, created.status, created.authentication.type]
    out["create_again"] = status_of(
        lambda: manager.create_device_with_certificate_authority(device_id, "enabled")
    )
    device = manager.get_device(device_id)
    out["etag_stable"] = device.etag == created.etag
    out["update_stale"] = status_of(
        lambda: manager.update_device_with_certificate_authority(device_id, "stale", "disabled")
    )
    disabled = manager.update_device_with_certificate_authority(
        device_id, device.etag, "disabled", status_reason="maintenance"
    )
    out["disabled"] = [disabled.status, disabled.status_reason]
    out["status_updated_time_year"] = disabled.status_updated_time.year
    twin = manager.get_twin(device_id)
    patch = Twin(tags={"site": "lab"}, properties=TwinProperties(desired={"rate": 5}))
    updated = manager.update_twin(device_id, patch, twin.etag)
    out["twin"] = [updated.tags, updated.properties.desired]
    method = CloudToDeviceMethod(
        method_name="reboot", payload={"a": 1}, response_timeout_in_seconds=5
    )
    out["method_offline"] = status_of(lambda: manager.invoke_device_method(device_id, method))
    stats = manager.get_device_registry_statistics()
    out["stats"] = [
        stats.total_device_count,
        stats.enabled_device_count,
        stats.disabled_device_count,
    ]
    out["service_stats"] = manager.get_service_statistics().connected_device_count
    out["listed"] = [d.device_id for d in manager.get_devices(10)]
    result = manager.query_iot_hub(QuerySpecification(query="SELECT * FROM devices"))
    out["query"] = [t.device_id for t in result.items]
    manager.delete_device(device_id)
    out["after_delete"] = status_of(lambda: manager.get_device(device_id))
    print(json.dumps(out))


main()
