"""The delivery workers of the hub links: one consumer worker per stored link, kept in step.

``fleetpki serve`` runs one :class:`LinkWorkers`. It starts a
:class:`~fleetpki.services.delivery.ConsumerWorker` for each stored link, delivering the
link's events (:data:`~fleetpki.services.link_delivery.LINK_EVENT_TYPES`) through a
:class:`~fleetpki.services.link_delivery.LinkDelivery` and the link's connector, and
follows the links as they change: at once when this process adds, removes or trusts
(the bus's :class:`~fleetpki.services.notifications.HubLinksChanged`), and every
``resync`` seconds for changes made by another process (the CLI beside the server).
A link whose target or options changed gets a new worker; its pending deliveries stay
in the outbox across the switch.

It also puts pinned devices back on CA authentication once their revoked certificate
has expired (:meth:`LinkDelivery.release_expired_pins`), every ``pin_interval``
seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from fleetpki.connectors.connector import ConnectorError
from fleetpki.errors import FleetPKIError
from fleetpki.keystore import KeyStore
from fleetpki.services.context import Clock
from fleetpki.services.delivery import Backoff, ConsumerWorker, Handler
from fleetpki.services.events import EventBus
from fleetpki.services.hub_links import HubLinkService, LinkRuntime
from fleetpki.services.link_delivery import LINK_EVENT_TYPES, LinkDelivery, link_consumer
from fleetpki.services.notifications import HubLinksChanged, Notification
from fleetpki.services.ports import Store

__all__ = ["DEFAULT_MAX_ATTEMPTS", "LinkWorkers", "StartConsumer", "StopConsumer"]

_log = logging.getLogger(__name__)

#: Attempts before a delivery is given up on as failed (about 1.5 hours at the default
#: backoff, whose waits grow to five minutes).
DEFAULT_MAX_ATTEMPTS = 25

StartConsumer = Callable[..., ConsumerWorker]
StopConsumer = Callable[[ConsumerWorker], None]


@dataclass(slots=True)
class _Running:
    runtime: LinkRuntime
    worker: ConsumerWorker
    delivery: LinkDelivery


class LinkWorkers:
    """One delivery worker per hub link, started, replaced and stopped with the links.

    Args:
        links: the hub-link use cases (what to run, and each link's connector).
        store: the database (the deliveries read and record what they do).
        clock: the source of "now".
        bus: the application's event bus.
        keystore: custody of CA keys (a renewed CA's proof of possession).
        start_consumer / stop_consumer: the application's consumer workers
            (:meth:`fleetpki.application.FleetPKI.start_consumer`).
        max_attempts: attempts before a delivery is given up on as failed.
        backoff: the retry backoff.
        resync: seconds between looks at the stored links.
        pin_interval: seconds between releases of expired pins (and housekeeping).
        housekeeping: further periodic CA-side work run at the same pace (the
            retirement of drained CA generations).
    """

    def __init__(
        self,
        links: HubLinkService,
        store: Store,
        clock: Clock,
        bus: EventBus,
        keystore: KeyStore,
        *,
        start_consumer: StartConsumer,
        stop_consumer: StopConsumer,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff: Backoff | None = None,
        resync: float = 5.0,
        pin_interval: float = 60.0,
        housekeeping: Sequence[Callable[[], object]] = (),
    ) -> None:
        self._links = links
        self._keystore = keystore
        self._store = store
        self._clock = clock
        self._bus = bus
        self._start_consumer = start_consumer
        self._stop_consumer = stop_consumer
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._resync = resync
        self._pin_interval = pin_interval
        self._housekeeping = tuple(housekeeping)
        self._running: dict[str, _Running] = {}
        self._broken: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start a worker per link now, and follow the links in a thread of its own."""
        self._bus.subscribe(self._on_notification)
        self.sync()
        self._thread = threading.Thread(target=self._run, name="link-workers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following the links and stop every worker (deliveries stay pending)."""
        self._stopping.set()
        self._wake.set()
        self._bus.unsubscribe(self._on_notification)
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            running, self._running = list(self._running.values()), {}
        for entry in running:
            self._retire(entry)

    def _retire(self, entry: _Running) -> None:
        self._stop_consumer(entry.worker)
        entry.delivery.connector.close()

    @property
    def links(self) -> Collection[str]:
        """The names of the links that have a worker now."""
        with self._lock:
            return sorted(self._running)

    # -- following the links ------------------------------------------------------------

    def sync(self) -> None:
        """Start, replace or stop workers so that each stored link has one, as stored."""
        try:
            runtimes = {r.target.name: r for r in self._links.runtimes()}
        except FleetPKIError as exc:
            _log.error("hub links: cannot read the links: %s (%s)", exc.message, exc.code)
            return
        with self._lock:
            for name in [n for n in self._running if n not in runtimes]:
                self._retire(self._running.pop(name))
                _log.info("hub link %s: delivery stopped (the link was removed)", name)
            for name, runtime in runtimes.items():
                current = self._running.get(name)
                if current is not None and current.runtime == runtime:
                    continue
                if current is not None:
                    self._retire(self._running.pop(name))
                self._launch(runtime)

    def _launch(self, runtime: LinkRuntime) -> None:
        name = runtime.target.name
        try:
            connector = self._links.connector_for(runtime.connection)
        except (ConnectorError, FleetPKIError) as exc:
            error = f"{exc.message} ({exc.code})"
            if self._broken.get(name) != error:
                # Once per distinct error, not once per resync.
                _log.error("hub link %s: no delivery: %s", name, error)
                self._broken[name] = error
            return
        self._broken.pop(name, None)
        delivery = LinkDelivery(
            self._store, self._clock, runtime.target, connector, keystore=self._keystore
        )
        handler: Handler = delivery
        worker = self._start_consumer(
            link_consumer(name),
            LINK_EVENT_TYPES,
            handler,
            backoff=self._backoff,
            max_attempts=self._max_attempts,
        )
        self._running[name] = _Running(runtime, worker, delivery)
        azure = runtime.connection.azure
        _log.info(
            "hub link %s: delivering to %s (%d CA(s))",
            name,
            f"{azure.hub_name} at {azure.management_url}" if azure else "the built-in hub",
            len(runtime.target.ca_ids),
        )

    def release_expired_pins(self) -> int:
        """Release the expired pins of every running link; returns how many devices went back."""
        with self._lock:
            running = list(self._running.values())
        released = 0
        for entry in running:
            try:
                released += entry.delivery.release_expired_pins()
            except ConnectorError as exc:
                _log.warning(
                    "hub link %s: pins kept: %s (%s)",
                    entry.runtime.target.name,
                    exc.message,
                    exc.code,
                )
        return released

    def _on_notification(self, notification: Notification) -> None:
        if isinstance(notification, HubLinksChanged):
            self._wake.set()

    def _run(self) -> None:
        pins_due = time.monotonic()  # released at once on start
        while not self._stopping.is_set():
            if time.monotonic() >= pins_due:
                pins_due = time.monotonic() + self._pin_interval
                self._guarded(self.release_expired_pins)
                for step in self._housekeeping:
                    self._guarded(step)
            self._wake.wait(min(self._resync, max(pins_due - time.monotonic(), 0.0)))
            self._wake.clear()
            if not self._stopping.is_set():
                self._guarded(self.sync)

    @staticmethod
    def _guarded(step: Callable[[], object]) -> None:
        try:
            step()
        except Exception:  # a failing look must not end the loop
            _log.exception("hub links: %s failed", getattr(step, "__name__", "a step"))
