"""Use cases: one service class per noun, built by :class:`fleetpki.application.FleetPKI`.

Each service owns its unit of work: CAs and templates, certificates (issuance, renewal,
revocation), domains, principals and tokens, revocation status (CRL and OCSP), audit, the
outbox's delivery, and the built-in hub's devices, twins, messages, methods and trust.
"""

from __future__ import annotations

from fleetpki.services.context import LOCAL_ADMIN_ID, Actor, Clock, system_clock

__all__ = ["LOCAL_ADMIN_ID", "Actor", "Clock", "system_clock"]
