"""Prometheus metrics: issuances, refusals by code, revocations, latency, CA and leaf expiry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetpki.application import FleetPKI

__all__ = ["METRICS_CONTENT_TYPE", "LatencyMiddleware", "Metrics"]

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ExpiryCollector(Collector):
    """Reads expiry dates from the database at scrape time, so they are never stale."""

    def __init__(self, fleet: FleetPKI) -> None:
        self._fleet = fleet

    def collect(self) -> Iterator[Metric]:
        ca_family = GaugeMetricFamily(
            "fleetpki_ca_not_after_timestamp_seconds",
            "When each CA certificate expires (Unix time).",
            labels=["ca_id", "name", "tier", "status"],
        )
        leaf_family = GaugeMetricFamily(
            "fleetpki_nearest_leaf_not_after_timestamp_seconds",
            "When the valid leaf certificate that expires first expires (Unix time).",
        )
        days_family = GaugeMetricFamily(
            "fleetpki_ca_days_to_expiry",
            "Days until each CA's active certificate expires (negative once expired).",
            labels=["ca_id", "name", "tier"],
        )
        pending_family = GaugeMetricFamily(
            "fleetpki_ca_pending_generation_age_seconds",
            "How long a renewed CA generation has waited for its hub links (alert on it).",
            labels=["ca_id", "generation", "pending_links"],
        )
        summary = self._fleet.certificates.expiry_summary()
        now = self._fleet.now()
        for ca in summary.cas:
            ca_family.add_metric([ca.id, ca.name, ca.tier, ca.status], ca.not_after.timestamp())
            if ca.status == "active":
                days = (ca.not_after - now).total_seconds() / 86400
                days_family.add_metric([ca.id, ca.name, ca.tier], round(days, 3))
        for generation in self._fleet.ca_lifecycle.pending():
            pending_family.add_metric(
                [generation.ca_id, str(generation.number), ",".join(generation.pending_links)],
                (now - generation.created_at).total_seconds(),
            )
        yield days_family
        yield pending_family
        if summary.nearest_leaf_not_after is not None:
            leaf_family.add_metric([], summary.nearest_leaf_not_after.timestamp())
        yield ca_family
        yield leaf_family


class Metrics:
    """The metrics of one application, in a registry of its own.

    Args:
        fleet: the instance whose CAs and certificates the expiry gauges read.
    """

    def __init__(self, fleet: FleetPKI) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.issued = Counter(
            "fleetpki_certificates_issued",
            "Certificates issued, by how they were asked for.",
            ["kind"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "fleetpki_refusals",
            "Requests refused, by stable error code.",
            ["code"],
            registry=self.registry,
        )
        self.revocations = Counter(
            "fleetpki_revocations", "Certificates revoked.", ["reason"], registry=self.registry
        )
        self.latency = Histogram(
            "fleetpki_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.registry.register(_ExpiryCollector(fleet))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class LatencyMiddleware:
    """An ASGI middleware that observes each HTTP request's duration by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(
                method=scope["method"], route=template, status=str(status["code"])
            ).observe(time.perf_counter() - started)
