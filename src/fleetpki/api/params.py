"""Bounds and parsers shared by the routes' parameters: nothing a client sends reaches the
database or ``int()`` unchecked.

SQLite's INTEGER and PostgreSQL's BIGINT hold signed 64-bit values; a larger Python int
raises ``OverflowError`` deep in the driver, which would be a 500. Every integer query,
path and header parameter is therefore bounded, and header values that carry numbers
(``x-ms-continuation``, ``Last-Event-ID``) are read with :func:`parse_counter`, which
takes ASCII digits only: ``str.isdigit`` accepts ``"²"``, which ``int()`` refuses.
"""

from __future__ import annotations

import re

__all__ = ["INT64_MAX", "parse_counter"]

#: The largest value a database integer column holds (signed 64-bit).
INT64_MAX = 2**63 - 1

_ASCII_DIGITS = re.compile(r"[0-9]{1,19}")


def parse_counter(value: str | None, *, maximum: int = INT64_MAX) -> int | None:
    """A non-negative integer written in ASCII digits, at most ``maximum``; else ``None``.

    ``None`` (or an empty string) gives ``None`` too: callers decide whether a missing
    value and a malformed one mean the same.
    """
    if not value or not _ASCII_DIGITS.fullmatch(value):
        return None
    number = int(value)
    return number if number <= maximum else None
