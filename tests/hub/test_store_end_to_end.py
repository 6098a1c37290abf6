"""The hub on the real store, end to end: services, proof of possession, paho over TLS, revocation.

Nothing here touches the hub's internals: devices are registered and CAs trusted
through the control-plane services (or the HTTP API), telemetry is read back from the
database through the message service, and certificates are revoked through the
revocation service and through ``POST /v1/certificates/{serial}/revoke``.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import select

from fleetpki.application import FleetPKI
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.hub_devices import DeviceSpec
from fleetpki.services.hub_sas import make_sas_token
from fleetpki.store.models import EventDeliveryRecord, OutboxEvent
from support.database import raw_session
from support.hub import issue_device, start_hub_thread
from support.hub_control import issuing_ca
from support.mqtt_device import WAIT, Device, connect_once, wait_until
from support.server import start_server


def _register(fleet: FleetPKI, device_id: str) -> None:
    fleet.hub_devices.put(DeviceSpec(device_id))


def _trust_issuing_ca(fleet: FleetPKI) -> str:
    """Trust the issuing CA by proof of possession; return the hub CA's name."""
    return fleet.hub_trust.trust_local_ca(issuing_ca(fleet).id).name


def _revocation_events(fleet: FleetPKI, serial: str) -> list[str]:
    """The hub node's delivery states of the revocation events for ``serial``."""
    with raw_session(fleet) as session:
        query = (
            select(EventDeliveryRecord.status)
            .join(OutboxEvent, OutboxEvent.id == EventDeliveryRecord.event_id)
            .where(
                OutboxEvent.event_type == "certificate.revoked",
                OutboxEvent.subject_id == serial,
                EventDeliveryRecord.consumer == "hub:builtin",
            )
        )
        return list(session.scalars(query))


def test_register_trust_telemetry_revoke_through_the_services(
    sqlite_fleet: FleetPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = sqlite_fleet
    _register(fleet, "e2e-1")
    files = issue_device(fleet, "e2e-1", tmp_path)
    # A long poll: the outbox row can only be delivered promptly by the wake on commit.
    with start_hub_thread(fleet, trust=False, revocation_poll=3600) as hub:
        # No CA trusted yet; trusting one applies to the next connection, no restart.
        assert connect_once(hub.port, hub.ca_file, files) == 5
        wait_until(lambda: "hub.untrusted_ca" in caplog.text, "the untrusted-CA log line")
        _trust_issuing_ca(fleet)

        device = Device(hub.port, hub.ca_file, files)
        try:
            assert device.connect() == 0
            topic = "devices/e2e-1/messages/events/%24.mid=m-1&%24.ct=application%2Fjson&zone=a%2Bb"
            device.client.publish(topic, b'{"t": 20.5}', qos=1).wait_for_publish(WAIT)
            # The PUBACK came back, so the message is in the database already.
            (stored,) = fleet.hub_messages.list_telemetry(device_id="e2e-1")
            assert stored.body == b'{"t": 20.5}'
            assert stored.system_properties == {
                "message-id": "m-1",
                "content-type": "application/json",
            }
            assert stored.properties == {"zone": "a+b"}

            serial = format(files.certificate.serial_number, "X")
            revoked = fleet.certificates.revoke(
                Actor.local_admin(), serial, RevocationReason.KEY_COMPROMISE
            )
            assert device.disconnected.wait(WAIT)
            wait_until(lambda: not hub.broker.is_connected("e2e-1"), "the session to close")
            wait_until(
                lambda: _revocation_events(fleet, revoked.serial_hex) == ["done"],
                "the outbox consumer to deliver the revocation",
            )
        finally:
            device.close()
        assert connect_once(hub.port, hub.ca_file, files) == 5
        wait_until(lambda: "hub.certificate_revoked" in caplog.text, "the revocation log line")


def test_a_deleted_hub_ca_refuses_new_connections_without_a_restart(
    sqlite_fleet: FleetPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = sqlite_fleet
    _register(fleet, "e2e-2")
    files = issue_device(fleet, "e2e-2", tmp_path)
    with start_hub_thread(fleet, trust=False) as hub:
        name = _trust_issuing_ca(fleet)
        assert connect_once(hub.port, hub.ca_file, files) == 0
        fleet.hub_trust.delete(name)
        assert connect_once(hub.port, hub.ca_file, files) == 5
        wait_until(lambda: "hub.untrusted_ca" in caplog.text, "the untrusted-CA log line")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_fleetpki_serve_direct_method_and_v1_revoke_close_the_session(
    tmp_path: Path, key_passphrase: None
) -> None:
    mqtt_port = _free_port()  # start_server does not report the hub's port
    with start_server(tmp_path / "home", mqtt_port=mqtt_port) as live:
        fleet = live.fleet
        _trust_issuing_ca(fleet)
        _register(fleet, "e2e-3")
        files = issue_device(fleet, "e2e-3", tmp_path)
        key = fleet.hub_sas.policy_keys("iothubowner").primary
        host = f"localhost:{live.port}"
        sas = make_sas_token(host, "iothubowner", key, int(time.time()) + 3600)

        device = Device(mqtt_port, live.ca_bundle, files)
        try:
            assert device.connect() == 0
            subscribed = threading.Event()
            device.client.on_subscribe = lambda *_: subscribed.set()
            device.client.subscribe("$iothub/methods/POST/#", qos=0)
            assert subscribed.wait(WAIT)

            def answer(client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
                rid = message.topic.split("$rid=")[1]
                client.publish(f"$iothub/methods/res/200/?$rid={rid}", b'{"done": true}', qos=1)

            device.client.on_message = answer
            context = ssl.create_default_context(cafile=live.ca_bundle)
            with httpx.Client(base_url=f"https://{host}", verify=context, timeout=WAIT) as http:
                response = http.post(
                    "/twins/e2e-3/methods",
                    params={"api-version": "2021-04-12"},
                    headers={"Authorization": sas},
                    json={"methodName": "reboot", "payload": {}, "responseTimeoutInSeconds": 10},
                )
                assert response.status_code == 200, response.text
                assert response.json() == {"status": 200, "payload": {"done": True}}
                statistics = http.get(
                    "/statistics/service",
                    params={"api-version": "2021-04-12"},
                    headers={"Authorization": sas},
                )
                assert statistics.json() == {"connectedDeviceCount": 1}

                serial = format(files.certificate.serial_number, "X")
                revoked = http.post(
                    f"/v1/certificates/{serial}/revoke",
                    headers={"Authorization": f"Bearer {live.admin_token}"},
                    json={"reason": "keyCompromise"},
                )
                assert revoked.status_code == 200, revoked.text
            assert device.disconnected.wait(WAIT)
        finally:
            device.close()
        assert connect_once(mqtt_port, live.ca_bundle, files) == 5
