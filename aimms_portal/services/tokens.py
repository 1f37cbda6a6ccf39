"""Personal API tokens: create (shown once), list, revoke."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, col, select

from aimms_portal.auth import tokens as secrets
from aimms_portal.auth.access import Action, allowed, require
from aimms_portal.errors import InvalidInput, NotFound
from aimms_portal.models import ApiToken, User, utcnow
from aimms_portal.services import audit
from aimms_portal.services.accounts import get_user, valid_id
from aimms_portal.services.pagination import DEFAULT_LIMIT, Page, paginate

#: ``read`` allows safe (GET) requests, ``write`` state-changing ones; ``admin`` must be
#: present for admin routes, and only an admin can hold it.
SCOPES = ("read", "write", "admin")
MAX_LIFETIME_DAYS = 365


def create_token(
    session: Session,
    *,
    actor: User,
    name: str,
    scopes: list[str],
    expires_in_days: int = 90,
    source_ip: str = "",
) -> tuple[ApiToken, str]:
    """Create a token for ``actor``; returns the row and the token, which is never stored.

    Raises:
        InvalidInput: empty or over-long name, unknown scopes, ``admin`` for a non-admin,
            or a lifetime outside 1..365 days.
    """
    require(actor, Action.manage_own_tokens)
    name = name.strip()
    if not 1 <= len(name) <= 64:
        raise InvalidInput("A token name has 1 to 64 characters.", code="invalid_name")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(
            f"Scopes must be some of {', '.join(SCOPES)}"
            + (f"; unknown: {', '.join(unknown)}." if unknown else "."),
            code="invalid_scope",
        )
    if "admin" in scopes and not actor.is_admin:
        raise InvalidInput(
            "Only admins can create tokens with the admin scope.", code="invalid_scope"
        )
    if not 1 <= expires_in_days <= MAX_LIFETIME_DAYS:
        raise InvalidInput(
            f"A token expires after 1 to {MAX_LIFETIME_DAYS} days.", code="invalid_expiry"
        )

    token = secrets.new_api_token()
    row = ApiToken(
        user_id=actor.id or 0,
        name=name,
        prefix=token[: secrets.VISIBLE_PREFIX_LENGTH],
        token_hash=secrets.hash_secret(token),
        scopes=" ".join(s for s in SCOPES if s in scopes),
        expires_at=utcnow() + timedelta(days=expires_in_days),
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        action="token.create",
        actor=actor,
        target=row,
        source_ip=source_ip,
        detail=f"scopes={row.scopes} expires={row.expires_at:%Y-%m-%d}",
    )
    return row, token


def list_tokens(
    session: Session,
    *,
    actor: User,
    user_id: int | None = None,
    include_revoked: bool = False,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
) -> Page[ApiToken]:
    """The actor's tokens, newest first; admins may ask for another user's."""
    require(actor, Action.manage_own_tokens)
    owner_id = actor.id
    if user_id is not None and user_id != actor.id:
        owner_id = get_user(session, actor=actor, user_id=user_id).id
    statement = select(ApiToken).where(ApiToken.user_id == owner_id)
    if not include_revoked:
        statement = statement.where(col(ApiToken.revoked_at).is_(None))
    statement = statement.order_by(col(ApiToken.created_at).desc(), col(ApiToken.id).desc())
    return paginate(session, statement, limit=limit, offset=offset)


def revoke_token(session: Session, *, actor: User, token_id: int, source_ip: str = "") -> ApiToken:
    """Revoke a token at once. Revoking twice is harmless.

    Raises:
        NotFound: no such token, or it belongs to someone else and the actor is no admin;
            both get the same message, so token ids cannot be probed.
    """
    row = session.get(ApiToken, token_id) if valid_id(token_id) else None
    if row is None or not allowed(actor, Action.manage_token, row):
        raise NotFound(f"No token with id {token_id}.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        audit.record(session, action="token.revoke", actor=actor, target=row, source_ip=source_ip)
    return row
