"""PostgreSQL crashes while devices send QoS 1 telemetry: no PUBACKed message is lost.

A PUBACK means "stored durably" (MQTT 3.1.1 §4.3.2, docs/hub.md). paho devices publish
numbered messages over TLS to a real ``fleetpki serve`` in a loop while the test crashes
its PostgreSQL server (``pg_ctl stop -m immediate``, a private cluster) and starts it
again, twice. The devices stay connected throughout; afterwards every message that got
its PUBACK is in the database, and every message sent got one.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.mqtt_device import WAIT, Device, wait_until
from support.postgres import start_postgres
from support.serve_process import PreparedHome, prepare_home, serve_process

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DEVICES = ("sender-0", "sender-1")
RESTARTS = 2
# After a crash the hub retries its held batch with backoff (up to 2 s apart), and on a
# loaded machine the restarted PostgreSQL, the server and both paho devices share two
# cores with other test runs: the waits that follow a restart are given more time than
# WAIT (they timed out once at 20 s under load). A bound, not a timing assertion.
AFTER_RESTART_WAIT = 3 * WAIT


class _Sender:
    """A paho device publishing numbered QoS 1 messages, recording which were PUBACKed."""

    def __init__(self, prepared: PreparedHome, device_id: str) -> None:
        self.device = Device(prepared.mqtt_port, prepared.ca_bundle, prepared.devices[device_id])
        self.device_id = device_id
        self.lock = threading.Lock()
        self.bodies: dict[int, str] = {}  # paho message id -> body, until its PUBACK
        self.early: set[int] = set()  # ids PUBACKed before publish() returned them
        self.sent: list[str] = []
        self.acked: set[str] = set()
        self.device.client.on_publish = self._on_publish

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, *_: Any) -> None:
        with self.lock:
            body = self.bodies.pop(mid, None)
            if body is not None:
                self.acked.add(body)
            else:
                self.early.add(mid)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def run(self, stop: threading.Event) -> None:
        topic = f"devices/{self.device_id}/messages/events/"
        number = 0
        while not stop.is_set():
            with self.lock:
                # Few in flight: the loop waits for PUBACKs rather than queue thousands.
                waiting = len(self.bodies)
            if waiting >= 20:
                time.sleep(0.01)
                continue
            body = f"{self.device_id}-{number}"
            number += 1
            # Not under self.lock: paho runs on_publish holding its own message lock,
            # which publish() takes too, so holding ours across it deadlocked the two
            # threads (the test's timeouts). A PUBACK that comes before publish()
            # returns is kept by id in `early`.
            info = self.device.client.publish(topic, body.encode(), qos=1)
            with self.lock:
                self.sent.append(body)
                if info.mid in self.early:
                    self.early.discard(info.mid)
                    self.acked.add(body)
                else:
                    self.bodies[info.mid] = body


def _stored(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as connection:
        rows = connection.execute("SELECT body FROM hub_messages").fetchall()
    return {bytes(body).decode() for (body,) in rows}


def test_no_pubacked_message_is_lost_when_postgresql_crashes(
    tmp_path: Path, key_passphrase: None
) -> None:
    server = start_postgres(tmp_path / "pg")
    try:
        prepared = prepare_home(tmp_path, server.create_database("telemetry"), DEVICES)
        stop = threading.Event()
        with serve_process(prepared):
            senders = [_Sender(prepared, device_id) for device_id in DEVICES]
            for sender in senders:
                assert sender.device.connect() == 0
            threads = [threading.Thread(target=s.run, args=(stop,), daemon=True) for s in senders]
            for thread in threads:
                thread.start()
            try:
                for _ in range(RESTARTS):
                    before = [s.acked_count() for s in senders]
                    wait_until(
                        lambda b=before: all(
                            s.acked_count() >= n + 50 for s, n in zip(senders, b, strict=True)
                        ),
                        "PUBACKs",
                        seconds=AFTER_RESTART_WAIT,
                    )
                    server.halt(mode="immediate")
                    time.sleep(1.0)  # messages arrive while the database is away
                    server.resume()
                before = [s.acked_count() for s in senders]
                wait_until(
                    lambda: all(
                        s.acked_count() >= n + 50 for s, n in zip(senders, before, strict=True)
                    ),
                    "PUBACKs after the last restart",
                    seconds=AFTER_RESTART_WAIT,
                )
            finally:
                stop.set()
                for thread in threads:
                    thread.join(WAIT)
            # Every message sent is acknowledged in the end, on the same connections.
            wait_until(
                lambda: all(not s.bodies for s in senders),
                "the last PUBACKs",
                seconds=AFTER_RESTART_WAIT,
            )
            assert not any(s.device.disconnected.is_set() for s in senders)
            assert all(s.device.connack.empty() for s in senders)  # no reconnect
            for sender in senders:
                sender.device.close()
        stored = _stored(server.dsn_for("telemetry"))
    finally:
        server.stop()
    for sender in senders:
        assert sender.acked == set(sender.sent)
        assert sender.acked - stored == set(), "PUBACKed but not stored"
        assert len(sender.acked) >= (RESTARTS + 1) * 50
