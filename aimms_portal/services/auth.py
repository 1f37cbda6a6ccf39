"""Log-on, log-off and recognising the caller of a request.

A browser log-on is a random secret in an HttpOnly cookie; only its SHA-256 is stored.
A personal API token works the same way but is sent as ``Authorization: Bearer``.
Both are looked up on every request, so revoking one (or disabling its user) takes
effect at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import Session, select

from aimms_portal.auth import passwords, tokens
from aimms_portal.errors import NotAuthenticated, PermissionDenied
from aimms_portal.models import ApiToken, BrowserSession, User, utcnow
from aimms_portal.services import audit

logger = logging.getLogger(__name__)

#: Last-seen and last-used times are written at most this often per log-on or token,
#: so that busy clients do not turn every read into a write.
TOUCH_INTERVAL = timedelta(seconds=60)

WRONG_CREDENTIALS = "Wrong user name or password."


@dataclass(frozen=True)
class Caller:
    """Who sent a request, and how they proved it.

    ``scopes`` is ``None`` for a browser log-on (the user's full rights) and the token's
    scopes for an API token or an app session's token (``read`` and ``write``, never
    ``admin``). ``session_secret`` is set only for browser log-ons; the
    REST layer derives the CSRF token from it.
    """

    user: User
    scopes: frozenset[str] | None = None
    token_id: int | None = None
    session_secret: str | None = None
    #: Set when an app session's token made the call (it acts for the session's owner).
    app_session_id: int | None = None

    @property
    def via_cookie(self) -> bool:
        return self.session_secret is not None


def log_on(
    session: Session,
    *,
    username: str,
    password: str,
    lifetime: timedelta,
    source_ip: str = "",
    user_agent: str = "",
) -> tuple[User, str]:
    """Check a user name and password and open a browser log-on.

    Returns the user and the cookie secret. The check costs the same whether or not
    the user exists. A failed attempt is audited and committed before the error is
    raised, so it survives the caller's rollback.

    Raises:
        NotAuthenticated: unknown user or wrong password (one message for both).
        PermissionDenied: right password, but the account is disabled.
    """
    name = username.strip().lower()[:64]
    user = session.exec(select(User).where(User.username == name)).first()
    password_ok = passwords.verify_password(user.password_hash if user else None, password[:256])

    if user is None or not password_ok:
        audit.record(
            session,
            action="auth.login",
            actor_name=name,
            target=user,
            outcome="failure",
            source_ip=source_ip,
            detail="unknown user" if user is None else "wrong password",
        )
        session.commit()
        raise NotAuthenticated(WRONG_CREDENTIALS, code="wrong_credentials")
    if not user.is_active:
        audit.record(
            session,
            action="auth.login",
            actor=user,
            target=user,
            outcome="failure",
            source_ip=source_ip,
            detail="account disabled",
        )
        session.commit()
        raise PermissionDenied("This account is disabled.", code="account_disabled")

    if user.password_hash and passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
    secret = tokens.new_secret()
    now = utcnow()
    session.add(
        BrowserSession(
            user_id=user.id or 0,
            token_hash=tokens.hash_secret(secret),
            expires_at=now + lifetime,
            source_ip=source_ip[:45],
            user_agent=user_agent[:255],
        )
    )
    user.last_login_at = now
    session.add(user)
    audit.record(session, action="auth.login", actor=user, target=user, source_ip=source_ip)
    return user, secret


def log_off(session: Session, *, session_secret: str, source_ip: str = "") -> None:
    """Revoke the browser log-on behind ``session_secret``; unknown secrets are ignored."""
    browser_session = session.exec(
        select(BrowserSession).where(
            BrowserSession.token_hash == tokens.hash_secret(session_secret)
        )
    ).first()
    if browser_session is None or browser_session.revoked_at is not None:
        return
    browser_session.revoked_at = utcnow()
    session.add(browser_session)
    user = session.get(User, browser_session.user_id)
    audit.record(session, action="auth.logout", actor=user, target=user, source_ip=source_ip)


def caller_from_session(session: Session, session_secret: str) -> Caller:
    """The caller behind a browser log-on cookie.

    Raises:
        NotAuthenticated: unknown, expired or revoked log-on, or a disabled user.
    """
    row = session.exec(
        select(BrowserSession, User)
        .join(User, User.id == BrowserSession.user_id)  # type: ignore[arg-type]
        .where(BrowserSession.token_hash == tokens.hash_secret(session_secret))
    ).first()
    now = utcnow()
    if row is None:
        raise NotAuthenticated("Please log on.", code="not_authenticated")
    browser_session, user = row
    if browser_session.revoked_at is not None or browser_session.expires_at <= now:
        raise NotAuthenticated("Your log-on has ended; please log on again.", code="session_ended")
    if not user.is_active:
        raise NotAuthenticated("This account is disabled.", code="account_disabled")
    if now - browser_session.last_seen_at > TOUCH_INTERVAL:
        browser_session.last_seen_at = now
        session.add(browser_session)
    return Caller(user=user, session_secret=session_secret)


def caller_from_token(session: Session, token: str) -> Caller:
    """The caller behind a personal API token.

    Raises:
        NotAuthenticated: unknown (forged), expired or revoked token, or a disabled user;
            the message says which, since the token itself proves nothing either way.
    """
    row = session.exec(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)  # type: ignore[arg-type]
        .where(ApiToken.token_hash == tokens.hash_secret(token))
    ).first()
    if row is None:
        raise NotAuthenticated("The API token is not valid.", code="invalid_token")
    api_token, user = row
    now = utcnow()
    if api_token.revoked_at is not None:
        raise NotAuthenticated("The API token was revoked.", code="token_revoked")
    if api_token.expires_at <= now:
        raise NotAuthenticated("The API token has expired.", code="token_expired")
    if not user.is_active:
        raise NotAuthenticated("This account is disabled.", code="account_disabled")
    if api_token.last_used_at is None or now - api_token.last_used_at > TOUCH_INTERVAL:
        api_token.last_used_at = now
        session.add(api_token)
    return Caller(user=user, scopes=api_token.scope_set, token_id=api_token.id)
