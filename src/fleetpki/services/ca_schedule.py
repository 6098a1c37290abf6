"""Scheduled CA work without a cron: renewal at a fraction of the lifetime, overdue links.

``fleetpki serve`` runs :meth:`CASchedule.renew_due` and :meth:`CASchedule.report_overdue`
every minute with the link workers' housekeeping. Automatic renewal is off unless
``ca_auto_renew_at`` is set (``0.8``: a CA is renewed once 80 % of its active
generation's lifetime has passed); each renewal is the same
:meth:`~fleetpki.services.ca_lifecycle.CALifecycleService.renew` an operator runs,
hubs first, with the key's age deciding the rekey. A generation that has waited for
a hub link past ``ca_link_deadline_hours`` is logged (again every hour while it waits);
the metric ``fleetpki_ca_pending_generation_age_seconds`` and ``fleetpki ca show`` show
it too.
"""

from __future__ import annotations

import datetime as dt
import logging

from fleetpki.errors import FleetPKIError
from fleetpki.services.ca_generations import PENDING, GenerationView, generation_of
from fleetpki.services.ca_lifecycle import CALifecycleService, RenewCommand
from fleetpki.services.context import LOCAL_ADMIN_ID, Actor, Clock
from fleetpki.services.ports import Store

__all__ = ["CASchedule"]

_log = logging.getLogger("fleetpki.ca")

#: An overdue generation is logged again after this long.
_REPORT_EVERY = dt.timedelta(hours=1)


class CASchedule:
    """The CA's periodic work (renewals due, links overdue), called by ``fleetpki serve``.

    Args:
        lifecycle: the renewal use cases.
        store: the database (read to find what is due).
        clock: the source of "now".
        auto_renew_at: the fraction of a generation's lifetime after which the CA is
            renewed; 0 turns automatic renewal off.
    """

    def __init__(
        self, lifecycle: CALifecycleService, store: Store, clock: Clock, *, auto_renew_at: float
    ) -> None:
        self._lifecycle = lifecycle
        self._store = store
        self._clock = clock
        self._auto_renew_at = auto_renew_at
        self._reported: dict[tuple[str, int], dt.datetime] = {}

    def due(self) -> list[str]:
        """The ids of the CAs whose active generation has passed the renewal fraction.

        Roots come first. A CA with a renewal waiting for hubs is not due; nor is an
        issuing CA whose parent expires before it, since a renewal capped at the
        parent's expiry would not last longer (renew the parent first).
        """
        if self._auto_renew_at <= 0:
            return []
        now = self._clock()
        due = []
        with self._store.transaction() as tx:
            for ca in tx.cas.all():  # roots first
                if ca.status != "active" or any(g.state == PENDING for g in ca.generations):
                    continue
                active = generation_of(ca, ca.generation)
                if active is None:
                    continue
                lifetime = active.not_after - active.not_before
                if now < active.not_before + lifetime * self._auto_renew_at:
                    continue
                if ca.parent_id is not None:
                    parent = tx.cas.get(ca.parent_id)
                    if parent is None or parent.not_after <= active.not_after:
                        _log.warning(
                            "CA %s (%s) is due for renewal but its parent expires first "
                            "(%s); renew the parent",
                            ca.name,
                            ca.id,
                            parent.not_after.isoformat() if parent else "missing",
                        )
                        continue
                due.append(ca.id)
        return due

    def renew_due(self) -> list[GenerationView]:
        """Renew every CA that is due (see :meth:`due`); returns the new generations."""
        actor = Actor(LOCAL_ADMIN_ID, is_admin=True, source="ca schedule")
        renewed = []
        for ca_id in self.due():
            try:
                generation = self._lifecycle.renew(actor, ca_id, RenewCommand())
            except FleetPKIError as exc:
                # A root rollover a moment ago re-certified this CA: it is no longer due.
                if exc.code != "ca.renewal_pending":
                    _log.warning("automatic renewal of CA %s failed: %s", ca_id, exc.message)
                continue
            _log.info(
                "renewed CA %s at %.0f %% of its lifetime: generation %d, %s",
                ca_id,
                self._auto_renew_at * 100,
                generation.number,
                generation.state,
            )
            renewed.append(generation)
        return renewed

    def report_overdue(self) -> list[GenerationView]:
        """Log every pending generation past the link deadline (hourly); returns them."""
        now = self._clock()
        overdue = [g for g in self._lifecycle.pending() if g.overdue]
        for generation in overdue:
            key = (generation.ca_id, generation.number)
            last = self._reported.get(key)
            if last is not None and now - last < _REPORT_EVERY:
                continue
            self._reported[key] = now
            _log.warning(
                "CA %s generation %d has waited %s for hub links %s (deadline %s); "
                "issuance stays on the previous generation until they hold it, or "
                "`fleetpki ca activate %s --force`",
                generation.ca_id,
                generation.number,
                _age(now - generation.created_at),
                ", ".join(generation.pending_links) or "-",
                _age(self._lifecycle.link_deadline),
                generation.ca_id,
            )
        return overdue


def _age(span: dt.timedelta) -> str:
    hours = int(span.total_seconds() // 3600)
    return f"{hours // 24} d {hours % 24} h" if hours >= 24 else f"{hours} h"
