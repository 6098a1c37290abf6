"""The HTTP API: EZCA-compatible routes, the native /v1 API, health and metrics."""

from __future__ import annotations

from fleetpki.api.app import MAX_BODY_BYTES, create_app

__all__ = ["MAX_BODY_BYTES", "create_app"]
