"""The hub nodes on one database: who runs, known by the heartbeat each node writes.

Several hub processes (the workers of one ``fleetpki serve --workers N``, or servers on
several machines behind a TCP load balancer) share one database. Each is a *node* with
its own name (``hub_node``; a worker adds ``-w<slot>``), its own outbox consumer
(``hub:<name>``) and a row in ``hub_nodes`` whose heartbeat it renews every
:data:`HEARTBEAT_SECONDS` with the number of devices it holds. A node whose heartbeat
is younger than :data:`LIVE_SECONDS` is *live*: a direct method that reaches a process
without the device's session asks the live nodes (:mod:`fleetpki.services.hub_method_relay`),
and the service API's connected-device count adds up their counts.

A node that stopped for good (a machine removed, fewer workers) is forgotten by the
CA side's housekeeping once silent for :data:`DEPARTED_AFTER`: its row and its
consumer, so that the outbox stops keeping deliveries for it. Nothing is lost by
that: a node that starts again has no sessions yet, and each device it accepts is
authenticated against the database as it is then.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

from fleetpki.services.context import Clock
from fleetpki.services.outbox import HUB_SESSION_OPENED
from fleetpki.services.ports import Store
from fleetpki.store.hub_models import HubNode

__all__ = [
    "DEPARTED_AFTER",
    "HEARTBEAT_SECONDS",
    "LIVE_SECONDS",
    "HubNodeService",
    "NodeView",
    "node_consumer",
]

_log = logging.getLogger(__name__)

#: How often a running node renews its heartbeat.
HEARTBEAT_SECONDS = 2.0
#: A node whose heartbeat is younger than this is live.
LIVE_SECONDS = 3 * HEARTBEAT_SECONDS
#: A node silent for this long is forgotten, with its outbox consumer.
DEPARTED_AFTER = dt.timedelta(hours=1)


def node_consumer(node: str) -> str:
    """The outbox consumer of hub node ``node``."""
    return f"hub:{node}"


@dataclass(frozen=True, slots=True)
class NodeView:
    """A hub node as the others see it."""

    name: str
    instance: str
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    connected: int


def _view(node: HubNode) -> NodeView:
    return NodeView(node.name, node.instance, node.started_at, node.heartbeat_at, node.connected)


class HubNodeService:
    """Join, beat, leave; the live nodes; forgetting departed ones.

    Args:
        store: the database.
        clock: the source of "now".
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def join(self, name: str) -> str:
        """Record node ``name`` as running; returns this run's instance id.

        A live row of another instance under the same name means two processes share
        a name (each node needs its own ``hub_node``): logged, and taken over, since it
        is also what a node restarted after a crash sees.
        """
        instance = str(uuid.uuid4())
        now = self._clock()
        with self._store.transaction() as tx:
            node = tx.hub_nodes.get(name)
            if node is None:
                tx.hub_nodes.add(
                    HubNode(
                        name=name,
                        instance=instance,
                        started_at=now,
                        heartbeat_at=now,
                        connected=0,
                    )
                )
                return instance
            if now - node.heartbeat_at < dt.timedelta(seconds=LIVE_SECONDS):
                _log.warning(
                    "hub node %s: another process of that name beat %.1f s ago; if it still "
                    "runs, give each hub process its own hub_node (they would share its "
                    "deliveries)",
                    name,
                    (now - node.heartbeat_at).total_seconds(),
                )
            node.instance = instance
            node.started_at = now
            node.heartbeat_at = now
            node.connected = 0
        return instance

    def beat(self, name: str, instance: str, *, connected: int) -> list[str]:
        """Renew the heartbeat of ``name`` with its connected-device count; returns the
        names of the other live nodes.

        A row taken over by another instance is taken back (and logged): the node still
        runs, so it must stay reachable.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            node = tx.hub_nodes.get(name)
            if node is None:
                tx.hub_nodes.add(
                    HubNode(
                        name=name,
                        instance=instance,
                        started_at=now,
                        heartbeat_at=now,
                        connected=connected,
                    )
                )
            else:
                if node.instance != instance:
                    _log.warning("hub node %s: another process runs under this name", name)
                    node.instance = instance
                node.heartbeat_at = now
                node.connected = connected
            since = now - dt.timedelta(seconds=LIVE_SECONDS)
            return [n.name for n in tx.hub_nodes.beating_since(since) if n.name != name]

    def announce_session(self, name: str, client_id: str) -> int:
        """Tell every other node that node ``name`` accepted ``client_id``; the order of
        the announcement (its outbox event id: the higher, the newer session)."""
        with self._store.transaction() as tx:
            return tx.events.append(HUB_SESSION_OPENED, client_id, {"node": name}, at=self._clock())

    def leave(self, name: str, instance: str) -> None:
        """Remove the row of ``name`` if this instance still owns it (a clean stop)."""
        with self._store.transaction() as tx:
            node = tx.hub_nodes.get(name)
            if node is not None and node.instance == instance:
                tx.hub_nodes.delete(node)

    def live(self) -> list[NodeView]:
        """The nodes whose heartbeat is fresh, by name."""
        since = self._clock() - dt.timedelta(seconds=LIVE_SECONDS)
        with self._store.transaction() as tx:
            return [_view(n) for n in tx.hub_nodes.beating_since(since)]

    def forget_departed(self) -> list[str]:
        """Forget nodes silent for :data:`DEPARTED_AFTER` and their outbox consumers.

        Part of the CA side's housekeeping; returns the names forgotten.
        """
        before = self._clock() - DEPARTED_AFTER
        with self._store.transaction() as tx:
            gone = list(tx.hub_nodes.silent_before(before))
            for node in gone:
                tx.events.unregister_consumer(node_consumer(node.name))
                tx.hub_nodes.delete(node)
            names = [n.name for n in gone]
        for name in names:
            _log.info("hub node %s: silent for %s, forgotten with its deliveries", name, before)
        return names
