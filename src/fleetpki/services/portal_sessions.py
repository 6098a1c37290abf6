"""Portal sessions: signing in to the web portal (API token or OIDC), resuming, signing out.

A session's secret (256 random bits) lives only in the browser's cookie; the database
keeps its SHA-256 hash, as API tokens are kept, so a copy of the database cannot
resume anyone's session. A session lasts a fixed time from sign-in and ends at
sign-out; the principal is read again on every request, so an admin whose rights are
taken away loses them at the next page.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fleetpki.errors import AuthenticationError
from fleetpki.services.audit import write_audit
from fleetpki.services.ca_views import PrincipalView, principal_view
from fleetpki.services.context import Actor, Clock
from fleetpki.services.ports import Store
from fleetpki.services.principals import authenticated_token_in, ensure_principal_in
from fleetpki.store.models import PortalSession

__all__ = [
    "DEFAULT_SESSION_LIFETIME",
    "NewPortalSession",
    "PortalSessionService",
    "PortalSessionView",
    "csrf_token_for",
]

#: How long a portal session lasts from sign-in.
DEFAULT_SESSION_LIFETIME = dt.timedelta(hours=8)
_LAST_SEEN_RESOLUTION = dt.timedelta(minutes=1)
_CSRF_CONTEXT = b"fleetpki portal csrf v1"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def csrf_token_for(secret: str) -> str:
    """The CSRF token of the browser holding ``secret`` (a session's or a visitor's).

    Derived, not stored: an HMAC of the cookie's secret, so a page can only carry it
    if it was rendered for that browser, and nothing else needs keeping.
    """
    return hmac.new(secret.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class PortalSessionView:
    """A live session: who is signed in, how, and until when."""

    principal: PrincipalView
    method: str
    created_at: dt.datetime
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class NewPortalSession:
    """A session just started: ``secret`` goes into the cookie and is never stored."""

    secret: str
    session: PortalSessionView


class PortalSessionService:
    """Sign-in, resume and sign-out of portal sessions.

    Args:
        store: the database.
        clock: the source of "now".
        lifetime: how long a session lasts from sign-in.
    """

    def __init__(
        self, store: Store, clock: Clock, *, lifetime: dt.timedelta = DEFAULT_SESSION_LIFETIME
    ) -> None:
        self._store = store
        self._clock = clock
        self._lifetime = lifetime

    def _start(self, principal_id: str, method: str, now: dt.datetime) -> tuple[str, PortalSession]:
        secret = secrets.token_urlsafe(32)
        record = PortalSession(
            id_hash=_hash(secret),
            principal_id=principal_id,
            method=method,
            created_at=now,
            last_seen_at=now,
            expires_at=now + self._lifetime,
        )
        return secret, record

    def sign_in_with_token(self, token: str, *, source: str) -> NewPortalSession:
        """Start a session for the principal an API token belongs to, lasting at most
        until the token expires.

        Raises:
            AuthenticationError: ``auth.bad_token`` (unknown, expired or revoked).
        """
        now = self._clock()
        with self._store.transaction() as tx:
            principal, api_token = authenticated_token_in(tx, token.strip(), now=now)
            secret, record = self._start(principal.id, "token", now)
            # A session lasts no longer than the token it was started with.
            if api_token.expires_at is not None and api_token.expires_at < record.expires_at:
                record.expires_at = api_token.expires_at
            tx.portal_sessions.add(record)
            actor = Actor(principal.id, principal.is_admin, source)
            write_audit(
                tx,
                actor,
                "portal.sign_in",
                "principal",
                principal.id,
                at=now,
                details={"method": "token"},
            )
            view = PortalSessionView(
                principal_view(principal), record.method, record.created_at, record.expires_at
            )
            return NewPortalSession(secret, view)

    def sign_in_with_oidc(
        self, principal_id: str, display_name: str, *, source: str
    ) -> NewPortalSession:
        """Start a session for the principal an OIDC ID token named (created on first sight).

        The token itself is checked by the caller (signature, issuer, audience, nonce)
        before any unit of work opens, since the signing keys may be fetched.

        Raises:
            ValidationError: ``principal.bad_id``.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            principal = ensure_principal_in(tx, principal_id, display_name, now=now)
            secret, record = self._start(principal.id, "oidc", now)
            tx.portal_sessions.add(record)
            actor = Actor(principal.id, principal.is_admin, source)
            write_audit(
                tx,
                actor,
                "portal.sign_in",
                "principal",
                principal.id,
                at=now,
                details={"method": "oidc"},
            )
            view = PortalSessionView(
                principal_view(principal), record.method, record.created_at, record.expires_at
            )
            return NewPortalSession(secret, view)

    def resume(self, secret: str) -> PortalSessionView:
        """The session a cookie's secret opens, with its principal as it is now.

        Raises:
            AuthenticationError: ``portal.signed_out`` for an unknown or ended session,
                ``portal.session_expired`` once its time is up.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            record = tx.portal_sessions.get(_hash(secret))
            principal = tx.principals.get(record.principal_id) if record is not None else None
            if record is None or principal is None:
                raise AuthenticationError("portal.signed_out", "you are not signed in")
            if record.expires_at <= now:
                tx.portal_sessions.delete(record)
                raise AuthenticationError(
                    "portal.session_expired", "your session has expired; sign in again"
                )
            if now - record.last_seen_at > _LAST_SEEN_RESOLUTION:
                record.last_seen_at = now
            return PortalSessionView(
                principal_view(principal), record.method, record.created_at, record.expires_at
            )

    def sign_out(self, secret: str, *, source: str) -> bool:
        """End the session (and any that expired meanwhile); whether it was live."""
        now = self._clock()
        with self._store.transaction() as tx:
            tx.portal_sessions.delete_expired(now)
            record = tx.portal_sessions.get(_hash(secret))
            if record is None:
                return False
            tx.portal_sessions.delete(record)
            write_audit(
                tx,
                Actor(record.principal_id, source=source),
                "portal.sign_out",
                "principal",
                record.principal_id,
                at=now,
            )
            return True
