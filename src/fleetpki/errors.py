"""The one error hierarchy of fleetpki: stable codes, HTTP statuses and safe messages.

Every refusal that reaches a user carries a stable, dotted code (``csr.bad_signature``)
that clients may match on, an HTTP status taken from one table, and a message that is
safe to show: it never contains key material, tokens or internal details.  The internal
cause, when there is one, is chained with ``raise ... from`` and only logged.

Domain code raises these; only the API layer turns them into HTTP answers
(``application/problem+json``) and only the CLI turns them into one-line messages.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConflictError",
    "FleetPKIError",
    "InternalError",
    "NotFoundError",
    "PermissionDenied",
    "ThrottledError",
    "UnavailableError",
    "ValidationError",
    "http_status_for",
]


class FleetPKIError(Exception):
    """Base of every error fleetpki raises on purpose.

    Args:
        code: the stable dotted code, for example ``csr.weak_key``.
        message: a human sentence, safe to show to the caller.
    """

    #: HTTP status used when a code has no entry of its own in ``_STATUS_BY_CODE``.
    default_status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status that this error maps to."""
        return http_status_for(self)

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class ValidationError(FleetPKIError):
    """The input is malformed or breaks a policy (HTTP 400 or 422)."""


class AuthenticationError(FleetPKIError):
    """The caller did not prove who it is (HTTP 401)."""

    default_status = 401


class PermissionDenied(FleetPKIError):
    """The caller is known but may not do this (HTTP 403)."""

    default_status = 403


class NotFoundError(FleetPKIError):
    """The object named does not exist (HTTP 404)."""

    default_status = 404


class ConflictError(FleetPKIError):
    """The change conflicts with the current state (HTTP 409)."""

    default_status = 409


class ThrottledError(FleetPKIError):
    """The caller asked too often; it may try again after ``retry_after`` seconds (HTTP 429).

    Args:
        code: the stable code.
        message: a safe sentence.
        retry_after: whole seconds to wait (``Retry-After``).
    """

    default_status = 429

    def __init__(self, code: str, message: str, *, retry_after: int) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after


class InternalError(FleetPKIError):
    """Something failed that should not have: a bug or a broken component (HTTP 500).

    Its message is generic; the cause is only logged, with the request id the caller
    was given.
    """

    default_status = 500


class UnavailableError(FleetPKIError):
    """A component the request needs is down for now, the database above all (HTTP 503).

    Nothing was changed; the same request may succeed once the component is back, and
    fleetpki reconnects by itself. The cause is only logged, with the request id.
    """

    default_status = 503


# Codes whose status differs from their class's default.  Kept in one table so that
# the API's answers can be read off in one place.
_STATUS_BY_CODE: dict[str, int] = {
    "request.too_large": 413,
    "request.unsupported_media_type": 415,
    "precondition.failed": 412,
    "home.exists": 409,
    "link.certificate_name_taken": 409,
    # A CA key's token that stops answering, or signs wrongly, is the server's fault.
    "keystore.token_unavailable": 503,
    "keystore.bad_signature": 500,
}


def http_status_for(error: FleetPKIError) -> int:
    """Return the HTTP status for ``error``: its code's entry, else its own default.

    The default is the class's, unless the instance carries one of its own (a refusal
    by the HTTP layer, such as 405, keeps the status it was raised with).
    """
    return _STATUS_BY_CODE.get(error.code, error.default_status)
