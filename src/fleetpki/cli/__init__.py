"""The ``fleetpki`` command-line interface (Typer and Rich)."""

from __future__ import annotations

from fleetpki.cli.main import app, main

__all__ = ["app", "main"]
