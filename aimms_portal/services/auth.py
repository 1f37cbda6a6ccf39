"""Log-on, log-off and recognising the caller of a request.

A browser log-on is a random secret in an HttpOnly cookie; only its SHA-256 is stored.
A personal API token works the same way but is sent as ``Authorization: Bearer``.
Both are checked on every request. What a check reads (the token or log-on and its
user) is kept in an :class:`~aimms_portal.cache.ExactCache`, which every change to
those rows empties in every portal process; expiry is checked on every request, and
the last-used time is still written at most every :data:`TOUCH_INTERVAL`, by a request
that then reads the database again. So revoking a token or log-on, or disabling its
user, takes effect at once (see aimms_portal/cache.py for what "at once" means across
processes).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from aimms_portal.auth import passwords, tokens
from aimms_portal.cache import ExactCache
from aimms_portal.config import get_settings
from aimms_portal.errors import NotAuthenticated, PermissionDenied, TooManyRequests
from aimms_portal.models import ApiToken, AuditEvent, BrowserSession, Role, User, utcnow
from aimms_portal.services import audit

logger = logging.getLogger(__name__)

#: Last-seen and last-used times are written at most this often per log-on or token,
#: so that busy clients do not turn every read into a write.
TOUCH_INTERVAL = timedelta(seconds=60)
#: When the request that records a cached log-on's use fails, the next one tries after this.
TOUCH_RETRY_SECONDS = 5.0

WRONG_CREDENTIALS = "Wrong user name or password."


@dataclass(frozen=True)
class Caller:
    """Who sent a request, and how they proved it.

    ``scopes`` is ``None`` for a browser log-on (the user's full rights) and the token's
    scopes for an API token or an app session's token (``read`` and ``write``, never
    ``admin``). ``session_secret`` is set only for browser log-ons; the
    REST layer derives the CSRF token from it.
    """

    #: Shared with other requests of the same log-on (it comes from a cache): never
    #: change it; services take it as the actor and only read it.
    user: User
    scopes: frozenset[str] | None = None
    token_id: int | None = None
    session_secret: str | None = None
    #: Set when an app session's token made the call (it acts for the session's owner).
    app_session_id: int | None = None
    #: Values derived from this log-on and its user's rows and groups (e.g. an encoded
    #: answer), kept as long as the cached log-on: anything that changes those rows
    #: drops them. ``None`` when the caller did not come from the cache.
    memo: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def via_cookie(self) -> bool:
        return self.session_secret is not None


@dataclass(frozen=True)
class _LogOn:
    """A valid API token or browser log-on, as the database had it, ready to answer."""

    #: The caller of a token (the same object for every request); of a cookie, the
    #: fields but the secret, which is not kept here.
    caller: Caller
    #: POSIX times: when it expires, and when its use is to be written again.
    expires_at: float
    touch_at: float


#: ("token" | "cookie", SHA-256 of the secret) -> the log-on. Only valid log-ons of
#: active users are kept; unknown secrets are never cached (they cannot fill memory).
#: Groups and memberships too: what callers memoize may depend on them.
_log_ons: ExactCache[tuple[str, str], _LogOn] = ExactCache(
    "log-ons",
    tables=("users", "api_tokens", "browser_sessions", "groups", "memberships"),
    maxsize=20_000,
)


def _cached(kind: str, secret_hash: str) -> _LogOn | None:
    """The cached log-on, if it may answer now: not expired, its use recorded lately or
    being recorded by another request."""
    key = (kind, secret_hash)
    log_on = _log_ons.get(key)
    if log_on is None:
        return None
    now = time.time()
    if now >= log_on.expires_at:
        _log_ons.discard(key)
        return None  # the database path says why
    if now >= log_on.touch_at:
        # One request per process records the use (through the database path, which
        # also refreshes the entry); until then the others go on from the cache. If that
        # request fails, another one tries after a pause.
        claimed = replace(log_on, touch_at=now + TOUCH_RETRY_SECONDS)
        if _log_ons.swap(key, log_on, claimed):
            return None
    return log_on


def _remember(
    session: Session,
    kind: str,
    secret_hash: str,
    caller: Caller,
    *,
    expires_at: datetime,
    last_used_at: datetime | None,
    stamp: int | None,
) -> Caller:
    """Keep a log-on just checked once ``session`` commits; returns its caller."""
    memo: dict[str, Any] = {}
    cached = replace(caller, session_secret=None, memo=memo)
    touch_at = last_used_at + TOUCH_INTERVAL if last_used_at is not None else expires_at
    log_on = _LogOn(cached, expires_at.timestamp(), min(touch_at, expires_at).timestamp())
    _log_ons.put_after_commit(session, (kind, secret_hash), log_on, stamp)
    return replace(caller, memo=memo)


def cached_caller(*, token: str | None = None, session_secret: str | None = None) -> Caller | None:
    """The caller behind an API token or a browser log-on cookie from the cache alone;
    ``None`` when the database must be asked (:func:`caller_from_token`,
    :func:`caller_from_session`). Never raises: errors come from the database path."""
    if token is not None:
        log_on = _cached("token", tokens.hash_secret(token))
        if log_on is not None:
            return log_on.caller
    elif session_secret is not None:
        log_on = _cached("cookie", tokens.hash_secret(session_secret))
        if log_on is not None:
            cached = log_on.caller
            return Caller(user=cached.user, session_secret=session_secret, memo=cached.memo)
    return None


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
    raised, so it survives the caller's rollback. After too many failed attempts (see
    :func:`_refuse_guessing`) the password is not even checked.

    Raises:
        NotAuthenticated: unknown user or wrong password (one message for both).
        PermissionDenied: right password, but the account is disabled.
        TooManyRequests: too many failed log-ons for this name from this address, or
            from this address at all, within the failure window.
    """
    name = username.strip().lower()[:64]
    _refuse_guessing(session, name, source_ip)
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


def _refuse_guessing(session: Session, name: str, source_ip: str) -> None:
    """Refuse a log-on from an address that failed too often within the failure window,
    for this user name or for any (password guessing, password spraying).

    Counted from the audit log's failed log-ons, so every portal process sees the same
    count. The refusal is the same whether or not the user exists, and the user can
    still log on from elsewhere: one address cannot lock anyone out. The refusal is
    audited (as ``refused``, which does not count as a failure) and committed.
    """
    settings = get_settings()
    window = timedelta(minutes=settings.login_failure_window_minutes)
    now = utcnow()
    failures = select(AuditEvent.created_at).where(
        AuditEvent.action == "auth.login",
        AuditEvent.outcome == "failure",
        AuditEvent.source_ip == source_ip[:45],
        col(AuditEvent.created_at) > now - window,
    )
    for limit, statement, what in (
        (settings.login_failures_per_address, failures, "from this address"),
        (
            settings.login_failures_per_name,
            failures.where(AuditEvent.actor_name == name),
            "for this user name from this address",
        ),
    ):
        # the limit-th newest failure in the window: while it is there, so is the limit
        turn = session.exec(
            statement.order_by(col(AuditEvent.created_at).desc()).offset(limit - 1).limit(1)
        ).first()
        if turn is None:
            continue
        retry_after = max(1, math.ceil((turn + window - now).total_seconds()))
        audit.record(
            session,
            action="auth.login",
            actor_name=name,
            outcome="refused",
            source_ip=source_ip,
            detail=f"{limit} or more failed log-ons {what} within {window}",
        )
        session.commit()
        minutes = math.ceil(retry_after / 60)
        raise TooManyRequests(
            f"Too many failed log-ons {what}; try again in {minutes} "
            f"minute{'s' if minutes != 1 else ''}.",
            retry_after=retry_after,
            code="too_many_failures",
        )


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


def caller_from_session(session: Session, session_secret: str, *, cache: bool = True) -> Caller:
    """The caller behind a browser log-on cookie (from the cache when it may answer;
    ``cache=False``: from the database, after :func:`cached_caller` said no).

    Raises:
        NotAuthenticated: unknown, expired or revoked log-on, or a disabled user.
    """
    cached = cached_caller(session_secret=session_secret) if cache else None
    if cached is not None:
        return cached
    secret_hash = tokens.hash_secret(session_secret)
    stamp = _log_ons.stamp()
    row = session.exec(
        select(BrowserSession, User)
        .join(User, User.id == BrowserSession.user_id)  # type: ignore[arg-type]
        .where(BrowserSession.token_hash == secret_hash)
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
    return _remember(
        session,
        "cookie",
        secret_hash,
        Caller(user=user, session_secret=session_secret),
        expires_at=browser_session.expires_at,
        last_used_at=browser_session.last_seen_at,
        stamp=stamp,
    )


def effective_user(caller: Caller) -> User:
    """The user whose rights ``caller`` acts with: an admin's token without the
    ``admin`` scope (and an admin's app session) acts with at most publisher rights."""
    user = caller.user
    if caller.scopes is not None and "admin" not in caller.scopes and user.is_admin:
        return User.model_validate(user.model_dump() | {"role": Role.publisher.value})
    return user


def caller_from_token(session: Session, token: str, *, cache: bool = True) -> Caller:
    """The caller behind a personal API token (from the cache when it may answer;
    ``cache=False``: from the database, after :func:`cached_caller` said no).

    Raises:
        NotAuthenticated: unknown (forged), expired or revoked token, or a disabled user;
            the message says which, since the token itself proves nothing either way.
    """
    cached = cached_caller(token=token) if cache else None
    if cached is not None:
        return cached
    secret_hash = tokens.hash_secret(token)
    stamp = _log_ons.stamp()
    row = session.exec(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)  # type: ignore[arg-type]
        .where(ApiToken.token_hash == secret_hash)
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
    return _remember(
        session,
        "token",
        secret_hash,
        Caller(user=user, scopes=api_token.scope_set, token_id=api_token.id),
        expires_at=api_token.expires_at,
        last_used_at=api_token.last_used_at,
        stamp=stamp,
    )
