"""Etags of the hub's service API: opaque strings and the ``If-Match`` rule (ref §3.3)."""

from __future__ import annotations

import secrets

from fleetpki.errors import ConflictError

__all__ = ["check_if_match", "new_etag"]


def new_etag() -> str:
    """A fresh opaque etag (ref §3.3: opaque strings the SDK echoes back)."""
    return secrets.token_urlsafe(9)


def check_if_match(if_match: str | None, etag: str) -> None:
    """Apply ``If-Match`` (ref §3.3): quotes stripped, ``*`` matches anything.

    Raises:
        ConflictError: ``precondition.failed`` (HTTP 412) on a mismatch.
    """
    if if_match is None:
        return
    value = if_match.strip().removeprefix("W/")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if value in ("*", etag):
        return
    raise ConflictError("precondition.failed", "the If-Match etag does not match")
