"""How the CLI presents answers: tables that never fold ids, ``--output json``, files."""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

__all__ = [
    "Output",
    "OutputOption",
    "console",
    "err_console",
    "fmt_iso",
    "fmt_time",
    "print_fields",
    "print_json",
    "print_table",
    "table",
    "write_out",
]

# Messages are never wrapped (an error is one line) and nothing is truncated.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class Output(enum.StrEnum):
    """The ``--output`` formats, as ``az`` names them."""

    TABLE = "table"
    JSON = "json"


OutputOption = Annotated[
    Output,
    typer.Option(
        "--output",
        "-o",
        case_sensitive=False,
        help="table, or json with the field names of the HTTP API.",
    ),
]


def table(*columns: str, wrap: Iterable[str] = ()) -> Table:
    """A table whose columns are never wrapped, except the free-text ones in ``wrap``.

    Ids, serials, thumbprints, times and states stay on one line, however narrow the
    terminal or a pipe (80 columns): ``print_table`` widens the output rather than cut
    them, since ids exist to be copied into the next command.
    """
    wrapping = set(wrap)
    result = Table(box=box.SIMPLE_HEAD)
    for column in columns:
        if column in wrapping:
            result.add_column(column, overflow="fold")
        else:
            result.add_column(column, no_wrap=True)
    return result


def _fit_columns(rows: Table) -> int:
    # Rich's own minimum is the longest word of each column; a column that must not
    # wrap needs its longest line instead.
    options = console.options.update_width(100_000)
    needed = Measurement.get(console, options, rows).minimum
    for column in rows.columns:
        sizes = [Measurement.get(console, options, c) for c in (column.header, *column.cells)]
        if column.no_wrap:
            needed += max(m.maximum for m in sizes) - max(m.minimum for m in sizes)
        else:
            # Rich shares the width out evenly when it must shrink; the floor keeps
            # each word of a free-text column whole.
            column.min_width = max(m.minimum for m in sizes)
    return needed


def print_table(rows: Table) -> None:
    """Print ``rows`` no narrower than its one-line columns need (80 columns or a pipe)."""
    needed = _fit_columns(rows)
    if needed <= console.width:
        console.print(rows)
        return
    # Console.print clamps its width to the console's, so a wider console prints this
    # table; a terminal then wraps the long lines, which keeps every id whole.
    wide = Console(
        file=console.file,
        width=needed,
        soft_wrap=True,
        force_terminal=console.is_terminal,
        no_color=not console.is_terminal,
    )
    wide.print(rows)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout, plain (no colours), for scripts."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def print_fields(rows: Sequence[tuple[str, object]]) -> None:
    """Print ``name  value`` lines, names right-aligned; values are never wrapped."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        console.print(f"{name:>{width}}  {value}", highlight=False)


def fmt_time(value: dt.datetime | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SSZ`` (empty for none)."""
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_iso(value: str | None) -> str:
    """An API time (ISO 8601) as :func:`fmt_time` shows it."""
    if not value:
        return ""
    return fmt_time(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))


def write_out(text: str, out: Path | None, *, mode: int = 0o644) -> None:
    """Write ``text`` to ``out`` (and say so on stderr), or to stdout without one."""
    if out is None:
        sys.stdout.write(text)
        return
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    err_console.print(f"wrote {out}")
