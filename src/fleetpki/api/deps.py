"""What routes are handed: the fleetpki instance, the metrics and the caller's address."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

import anyio
import anyio.to_thread
from fastapi import Request
from starlette.applications import Starlette

from fleetpki.api.metrics import Metrics
from fleetpki.application import FleetPKI

__all__ = ["WRITER_THREADS", "client_source", "get_fleet", "get_metrics", "in_writer_thread"]

T = TypeVar("T")

#: Worker threads that run the write-heavy hot routes (issuance) at once.  Their work
#: holds the GIL nearly throughout and SQLite takes one writer at a time, so more
#: threads only contend: with one per request in flight (FastAPI's default pool has
#: 40), the hand-offs of the GIL and of the write lock cost more CPU than the work.
WRITER_THREADS = 2


def get_fleet(request: Request) -> FleetPKI:
    """The :class:`FleetPKI` the application was created with."""
    return cast(FleetPKI, request.app.state.fleet)


def get_metrics(request: Request) -> Metrics:
    """The application's metrics."""
    return cast(Metrics, request.app.state.metrics)


def client_source(request: Request) -> str:
    """Where a request came from, for the audit log."""
    return request.client.host if request.client else "unknown"


async def in_writer_thread(app: Starlette, work: Callable[[], T]) -> T:
    """Run ``work`` (the caller's whole blocking part: authentication and the use case)
    in one hop to a worker thread, at most :data:`WRITER_THREADS` at once per server.

    Args:
        app: the application (a route's ``request.app``, an ASGI layer's ``scope["app"]``),
            which keeps the limiter.
        work: what to run.
    """
    limiter = getattr(app.state, "writer_limiter", None)
    if limiter is None:
        # Made on first use: a limiter belongs to the running event loop.
        limiter = anyio.CapacityLimiter(WRITER_THREADS)
        app.state.writer_limiter = limiter
    return await anyio.to_thread.run_sync(work, limiter=limiter)
