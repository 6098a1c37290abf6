"""Use cases: domains, issuance, renewal, revocation, CAs, principals, audit and outbox.

:class:`FleetPKI` bundles what the use cases need (settings, database, keystore,
clock) for the entry points: the CLI and the HTTP API build one and call the
functions of the modules here inside its transactions.
"""

from __future__ import annotations

from fleetpki.services.app import FleetPKI, init_home
from fleetpki.services.context import LOCAL_ADMIN_ID, Actor, Clock, system_clock

__all__ = ["LOCAL_ADMIN_ID", "Actor", "Clock", "FleetPKI", "init_home", "system_clock"]
