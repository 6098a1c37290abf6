"""What routes are handed: the fleetpki instance, the metrics and the caller's address."""

from __future__ import annotations

from typing import cast

from fastapi import Request

from fleetpki.api.metrics import Metrics
from fleetpki.application import FleetPKI

__all__ = ["client_source", "get_fleet", "get_metrics"]


def get_fleet(request: Request) -> FleetPKI:
    """The :class:`FleetPKI` the application was created with."""
    return cast(FleetPKI, request.app.state.fleet)


def get_metrics(request: Request) -> Metrics:
    """The application's metrics."""
    return cast(Metrics, request.app.state.metrics)


def client_source(request: Request) -> str:
    """Where a request came from, for the audit log."""
    return request.client.host if request.client else "unknown"
