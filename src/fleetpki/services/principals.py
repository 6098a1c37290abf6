"""Principals and API tokens: who may call fleetpki, with tokens stored only as hashes."""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from fleetpki.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDenied,
    ValidationError,
)
from fleetpki.services.audit import write_audit
from fleetpki.services.ca_views import PrincipalView, principal_view
from fleetpki.services.context import Actor, Clock
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.services.ports.ca import TokenHolder
from fleetpki.store.models import ApiToken, Principal

__all__ = [
    "PRINCIPAL_TYPES",
    "TOKEN_PREFIX",
    "NewToken",
    "PrincipalService",
    "TokenView",
    "authenticate_token_in",
    "authenticated_token_in",
    "ensure_principal_in",
    "holder_view",
    "principal_record",
    "token_view",
    "validate_principal_id",
]

#: Every fleetpki API token starts with this, so that secret scanners can find leaks.
TOKEN_PREFIX = "fpk_"  # noqa: S105 (a public prefix, not a secret)
PRINCIPAL_TYPES = frozenset({"User", "ServicePrincipal", "Group", "Device"})
_LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def validate_principal_id(principal_id: str) -> str:
    """Return the canonical (lower-case) GUID form of an Entra-style object id.

    Raises:
        ValidationError: ``principal.bad_id`` when it is not a GUID.
    """
    try:
        return str(uuid.UUID(principal_id.strip()))
    except (ValueError, AttributeError):
        raise ValidationError(
            "principal.bad_id", f"principal id {principal_id!r} is not a GUID (an Entra object id)"
        ) from None


def _hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough (no dictionary to guess
    # from); the hash is what is stored and looked up.
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token just created: the secret is shown once and never stored."""

    token_id: str
    secret: str
    principal_id: str
    expires_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class TokenView:
    """An API token as its owner and admins see it: never the secret nor its hash.

    Attributes:
        prefix: the secret's first characters (``fpk_`` and four more), to tell tokens
            apart as secret scanners report them.
    """

    token_id: str
    principal_id: str
    name: str
    prefix: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


def token_view(token: ApiToken) -> TokenView:
    """The view of a stored token."""
    return TokenView(
        token_id=token.id,
        principal_id=token.principal_id,
        name=token.name,
        prefix=token.prefix,
        created_at=token.created_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
        last_used_at=token.last_used_at,
    )


# -- code shared by use cases: runs inside the caller's unit of work ---------------------


def principal_record(tx: UnitOfWork, principal_id: str) -> Principal:
    """The principal with this id (caller's unit of work).

    Raises:
        ValidationError: ``principal.bad_id``.
        NotFoundError: ``principal.not_found``.
    """
    pid = validate_principal_id(principal_id)
    principal = tx.principals.get(pid)
    if principal is None:
        raise NotFoundError(
            "principal.not_found", f"no principal {pid}; add it with `principal add`"
        )
    return principal


def ensure_principal_in(
    tx: UnitOfWork, principal_id: str, friendly_name: str, *, now: dt.datetime
) -> Principal:
    """The principal, created on first sight (OIDC callers, EZCA owner lists; caller's unit).

    Raises:
        ValidationError: ``principal.bad_id``.
    """
    pid = validate_principal_id(principal_id)
    principal = tx.principals.get(pid)
    if principal is None:
        principal = Principal(
            id=pid,
            friendly_name=(friendly_name.strip() or pid)[:200],
            principal_type="User",
            is_admin=False,
            created_at=now,
        )
        tx.principals.add(principal)
    return principal


def _add_principal(
    tx: UnitOfWork,
    actor: Actor,
    principal_id: str,
    friendly_name: str,
    *,
    principal_type: str,
    is_admin: bool,
    now: dt.datetime,
) -> Principal:
    if not actor.is_admin:
        raise PermissionDenied("principal.admin_required", "only admins may add principals")
    pid = validate_principal_id(principal_id)
    if principal_type not in PRINCIPAL_TYPES:
        raise ValidationError(
            "principal.bad_type",
            f"principal type must be one of {', '.join(sorted(PRINCIPAL_TYPES))}",
        )
    name = friendly_name.strip()
    if not name or len(name) > 200:
        raise ValidationError("principal.bad_name", "a friendly name must be 1-200 characters")
    if tx.principals.get(pid) is not None:
        raise ConflictError("principal.exists", f"principal {pid} already exists")
    principal = Principal(
        id=pid, friendly_name=name, principal_type=principal_type, is_admin=is_admin, created_at=now
    )
    tx.principals.add(principal)
    write_audit(
        tx,
        actor,
        "principal.add",
        "principal",
        pid,
        at=now,
        details={"friendly_name": name, "type": principal_type, "admin": is_admin},
    )
    return principal


def _create_token(
    tx: UnitOfWork,
    actor: Actor,
    principal_id: str,
    *,
    name: str,
    lifetime: dt.timedelta | None,
    now: dt.datetime,
) -> NewToken:
    principal = principal_record(tx, principal_id)
    if not actor.is_admin and actor.principal_id != principal.id:
        raise PermissionDenied("token.not_allowed", "only admins may create tokens for others")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        id=str(uuid.uuid4()),
        principal_id=principal.id,
        name=name[:200],
        token_hash=_hash_token(secret),
        prefix=secret[: len(TOKEN_PREFIX) + 4],
        created_at=now,
        expires_at=now + lifetime if lifetime else None,
    )
    tx.tokens.add(token)
    write_audit(
        tx,
        actor,
        "token.create",
        "principal",
        principal.id,
        at=now,
        details={"token_id": token.id, "name": token.name},
    )
    return NewToken(token.id, secret, principal.id, token.expires_at)


def authenticate_token_in(tx: UnitOfWork, secret: str, *, now: dt.datetime) -> TokenHolder:
    """The token ``secret`` is, with its principal, if it is valid now: the one check of
    API tokens (every route, the hub's management APIs, the portal's sign-in).

    Its use is recorded (at minute resolution, :func:`_last_use_due`).

    Raises:
        AuthenticationError: ``auth.bad_token`` (unknown, expired or revoked).
    """
    if not secret.startswith(TOKEN_PREFIX):
        raise AuthenticationError("auth.bad_token", "the bearer token is not valid")
    digest = _hash_token(secret)
    holder = tx.tokens.holder(digest)
    # The index lookup already matched; compare again in constant time for form's sake.
    if holder is None or not hmac.compare_digest(holder.token_hash, digest):
        raise AuthenticationError("auth.bad_token", "the bearer token is not valid")
    if holder.revoked_at is not None or (
        holder.expires_at is not None and holder.expires_at <= now
    ):
        raise AuthenticationError("auth.bad_token", "the bearer token has expired or was revoked")
    if not holder.principal_exists:
        raise AuthenticationError("auth.bad_token", "the bearer token is not valid")
    if _last_use_due(holder.last_used_at, now):
        tx.tokens.mark_used(holder.token_id, now)
    return holder


def authenticated_token_in(
    tx: UnitOfWork, secret: str, *, now: dt.datetime
) -> tuple[Principal, ApiToken]:
    """The principal an API token belongs to, and the token (valid now), as records.

    Raises:
        AuthenticationError: ``auth.bad_token`` (unknown, expired or revoked).
    """
    holder = authenticate_token_in(tx, secret, now=now)
    principal = tx.principals.get(holder.principal_id)
    token = tx.tokens.get(holder.token_id)
    if principal is None or token is None:
        raise AuthenticationError("auth.bad_token", "the bearer token is not valid")
    return principal, token


def _last_use_due(last_used_at: dt.datetime | None, now: dt.datetime) -> bool:
    """Whether a token's use ``now`` is to be recorded.

    At minute resolution: a write on every request would serialise all authenticated
    requests on the database's write lock.
    """
    return last_used_at is None or now - last_used_at > _LAST_USED_RESOLUTION


def holder_view(holder: TokenHolder) -> PrincipalView:
    """The view of a token holder's principal."""
    assert holder.principal_created_at is not None
    return PrincipalView(
        holder.principal_id,
        holder.friendly_name,
        holder.principal_type,
        holder.is_admin,
        holder.principal_created_at,
    )


# -- the use cases -----------------------------------------------------------------------


class PrincipalService:
    """Principals and their API tokens.

    Args:
        store: the database.
        clock: the source of "now".
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def add(
        self,
        actor: Actor,
        principal_id: str,
        friendly_name: str,
        *,
        principal_type: str = "User",
        is_admin: bool = False,
    ) -> PrincipalView:
        """Register a principal. Only admins may.

        Raises:
            PermissionDenied: ``principal.admin_required``.
            ValidationError: ``principal.bad_id``, ``principal.bad_type``, ``principal.bad_name``.
            ConflictError: ``principal.exists``.
        """
        with self._store.transaction() as tx:
            principal = _add_principal(
                tx,
                actor,
                principal_id,
                friendly_name,
                principal_type=principal_type,
                is_admin=is_admin,
                now=self._clock(),
            )
            return principal_view(principal)

    def ensure(self, principal_id: str, friendly_name: str) -> PrincipalView:
        """The principal, created on first sight (an OIDC caller).

        Raises:
            ValidationError: ``principal.bad_id``.
        """
        with self._store.transaction() as tx:
            return principal_view(
                ensure_principal_in(tx, principal_id, friendly_name, now=self._clock())
            )

    def get(self, principal_id: str) -> PrincipalView:
        """One principal.

        Raises:
            ValidationError: ``principal.bad_id``.
            NotFoundError: ``principal.not_found``.
        """
        with self._store.transaction() as tx:
            return principal_view(principal_record(tx, principal_id))

    def list(self) -> builtins.list[PrincipalView]:
        """Every principal, by friendly name."""
        with self._store.transaction() as tx:
            return [principal_view(p) for p in tx.principals.all()]

    def create_token(
        self,
        actor: Actor,
        principal_id: str,
        *,
        name: str = "api",
        lifetime: dt.timedelta | None = None,
    ) -> NewToken:
        """Create an API token for a principal (admins, or the principal for itself).

        Raises:
            PermissionDenied: ``token.not_allowed``.
            NotFoundError: ``principal.not_found``.
        """
        with self._store.transaction() as tx:
            return _create_token(
                tx, actor, principal_id, name=name, lifetime=lifetime, now=self._clock()
            )

    def tokens(self, actor: Actor, principal_id: str | None = None) -> builtins.list[TokenView]:
        """API tokens, oldest first: an admin's of one principal (every one by default),
        anyone else's own.

        Raises:
            PermissionDenied: ``token.not_allowed`` for another principal's, not an admin.
        """
        if not actor.is_admin:
            if principal_id not in (None, actor.principal_id):
                raise PermissionDenied("token.not_allowed", "only admins see others' tokens")
            principal_id = actor.principal_id
        with self._store.reading() as tx:
            return [token_view(t) for t in tx.tokens.of_principal(principal_id)]

    def revoke_token(self, actor: Actor, token_id: str) -> TokenView:
        """Revoke an API token (admins, or its principal): it authenticates nothing from
        now on, and the principal's portal sessions signed in with a token end.

        Revoking a revoked token changes nothing and returns it as it is.

        Raises:
            NotFoundError: ``token.not_found`` (also for another principal's token, so
            that strangers cannot probe which ids exist).
        """
        now = self._clock()
        with self._store.transaction() as tx:
            try:
                key = str(uuid.UUID(token_id))
            except ValueError:
                key = None
            token = tx.tokens.get(key) if key is not None else None
            if token is None or not (actor.is_admin or actor.principal_id == token.principal_id):
                raise NotFoundError("token.not_found", f"no token {token_id}")
            if token.revoked_at is None:
                token.revoked_at = now
                ended = tx.portal_sessions.delete_started_with_token(token.principal_id)
                write_audit(
                    tx,
                    actor,
                    "token.revoke",
                    "principal",
                    token.principal_id,
                    at=now,
                    details={"token_id": token.id, "portal_sessions_ended": ended},
                )
            return token_view(token)

    def authenticate_token(self, secret: str) -> PrincipalView:
        """The principal a bearer API token belongs to.

        Raises:
            AuthenticationError: ``auth.bad_token`` for unknown, expired or revoked tokens.
        """
        now = self._clock()
        # Read without the write lock; only a use to record (once a minute) writes.
        with self._store.reading() as tx:
            found = tx.tokens.holder(_hash_token(secret))
            if found is None or not _last_use_due(found.last_used_at, now):
                return holder_view(authenticate_token_in(tx, secret, now=now))
        with self._store.transaction() as tx:
            return holder_view(authenticate_token_in(tx, secret, now=now))
