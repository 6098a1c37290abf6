"""The CLI's shared context: the home, ``--server`` and the opened application, in ``ctx.obj``."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import typer

from fleetpki.application import FleetPKI
from fleetpki.client import Client
from fleetpki.errors import ValidationError
from fleetpki.settings import Settings, resolve_home

__all__ = ["CliContext", "UsageProblem", "cli_context"]


class UsageProblem(ValidationError):
    """A command was asked for something it cannot do as called (exit status 2, like Click's)."""


@dataclass(slots=True)
class CliContext:
    """What every command shares, built once by the root command from its options.

    Attributes:
        home: the ``--home`` option (``None``: ``$FLEETPKI_HOME``, else ``~/.fleetpki``).
        server / token / ca_bundle: ``--server`` and how to reach it.
    """

    home: Path | None = None
    server: str | None = None
    token: str | None = None
    ca_bundle: Path | None = None
    _resources: ExitStack = field(default_factory=ExitStack, repr=False)
    _fleet: FleetPKI | None = field(default=None, repr=False)

    def home_path(self, override: Path | None = None) -> Path:
        """The home folder: ``override`` (a command's own ``--home``), else the root's."""
        return resolve_home(override or self.home)

    def client(self) -> Client | None:
        """The client for ``--server``, or ``None`` to act on the local home.

        Raises:
            ValidationError: ``cli.token_required`` with ``--server`` but no token.
        """
        if not self.server:
            return None
        if not self.token:
            raise ValidationError(
                "cli.token_required", "--server needs a token: use --token or set FLEETPKI_TOKEN"
            )
        client = Client(self.server, self.token, verify=self.ca_bundle or True)
        return self._resources.enter_context(client)

    def require_local(self, command: str) -> None:
        """Refuse ``command`` under ``--server``: it has no API route and acts on a home.

        Raises:
            UsageProblem: ``cli.local_only``.
        """
        if self.server:
            raise UsageProblem(
                "cli.local_only",
                f"`fleetpki {command}` has no API route and cannot run with --server "
                "(or FLEETPKI_SERVER); run it on the server's home without --server",
            )

    def fleet(self, command: str) -> FleetPKI:
        """The local home's application, opened once and closed when the command ends.

        Raises:
            UsageProblem: ``cli.local_only`` under ``--server``.
            NotFoundError: ``home.not_initialized``.
        """
        self.require_local(command)
        if self._fleet is None:
            self._fleet = self.open(Settings.load(self.home_path()))
        return self._fleet

    def open(
        self,
        settings: Settings,
        *,
        database_wait: float = 0.0,
        on_database_wait: Callable[[str], None] | None = None,
    ) -> FleetPKI:
        """Open an application for ``settings``, closed when the command ends (the
        database arguments are :meth:`FleetPKI.open`'s)."""
        fleet = FleetPKI.open(
            settings, database_wait=database_wait, on_database_wait=on_database_wait
        )
        self._resources.callback(fleet.close)
        return fleet

    def close(self) -> None:
        """Close the client and the application (the root command calls this on exit)."""
        self._resources.close()
        self._fleet = None


def cli_context(ctx: typer.Context) -> CliContext:
    """The :class:`CliContext` the root command put in ``ctx.obj``.

    A command run on its own (a sub-app in a test) gets a fresh default context.
    """
    found = ctx.find_object(CliContext)
    if found is None:
        found = CliContext()
        ctx.obj = found
        ctx.call_on_close(found.close)
    return found
