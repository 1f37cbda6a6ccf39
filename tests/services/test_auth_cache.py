"""Log-on checks answered from the cache (PostgreSQL): still exact, expiry checked on
every request, the last use still written once a minute by one request."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from aimms_portal.db import session_scope
from aimms_portal.errors import NotAuthenticated
from aimms_portal.models import ApiToken, User, utcnow
from aimms_portal.services import auth, tokens
from tests.caching import caching, raw_connection, run_sql, settle

__all__ = ["caching"]  # a fixture

MINUTE = timedelta(minutes=1)


def _cached_token(make_user, database_url: str, **create: object) -> tuple[User, int, str]:
    """A token of ann's whose log-on check this process now answers from its cache."""
    ann = make_user("ann")
    with session_scope() as session:
        row, secret = tokens.create_token(session, actor=ann, name="ci", scopes=["read"], **create)  # type: ignore[arg-type]
    settle()
    with session_scope() as session:
        auth.caller_from_token(session, secret)
    # changed behind the cache's back (triggers off): a cached answer still says "Ann"
    with raw_connection(database_url, silent=True) as conn:
        run_sql(conn, "UPDATE users SET full_name = 'changed' WHERE id = %s", ann.id)
    caller = auth.cached_caller(token=secret)
    assert caller is not None and caller.user.full_name == ""
    return ann, row.id or 0, secret


def _later(monkeypatch: pytest.MonkeyPatch, delta: timedelta) -> None:
    """Move the clocks that log-on checks read forward by ``delta``."""
    now, then = time.time(), utcnow() + delta
    monkeypatch.setattr(auth.time, "time", lambda: now + delta.total_seconds())
    monkeypatch.setattr(auth, "utcnow", lambda: then)


def test_a_cached_token_is_checked_for_expiry_on_every_request(
    caching, make_user, database_url, monkeypatch
):
    _, _, secret = _cached_token(make_user, database_url, expires_in_days=1)
    _later(monkeypatch, timedelta(days=1, seconds=1))
    assert auth.cached_caller(token=secret) is None
    with pytest.raises(NotAuthenticated) as caught, session_scope() as session:
        auth.caller_from_token(session, secret)
    assert caught.value.code == "token_expired"


def test_one_request_records_the_use_of_a_cached_token_once_a_minute(
    caching, make_user, database_url, monkeypatch
):
    _, token_id, secret = _cached_token(make_user, database_url)
    long_ago = utcnow() - 5 * MINUTE
    with raw_connection(database_url) as conn:  # bookkeeping: no notification
        run_sql(conn, "UPDATE api_tokens SET last_used_at = %s", long_ago)
    assert auth.cached_caller(token=secret) is not None  # not due yet: nothing written

    _later(monkeypatch, MINUTE + timedelta(seconds=1))
    assert auth.cached_caller(token=secret) is None  # this request records the use ...
    others = auth.cached_caller(token=secret)  # ... the others go on from the cache
    assert others is not None and others.user.full_name == ""
    with session_scope() as session:
        auth.caller_from_token(session, secret, cache=False)
    with session_scope() as session:
        row = session.get(ApiToken, token_id)
        assert row is not None and row.last_used_at is not None
        assert row.last_used_at > long_ago + 4 * MINUTE
    # and the database's answer is cached again
    assert auth.cached_caller(token=secret) is not None


def test_a_revoked_token_is_refused_at_once_although_it_was_cached(
    caching, make_user, database_url
):
    ann, token_id, secret = _cached_token(make_user, database_url)
    with session_scope() as session:
        tokens.revoke_token(session, actor=ann, token_id=token_id)
    assert auth.cached_caller(token=secret) is None
    with pytest.raises(NotAuthenticated) as caught, session_scope() as session:
        auth.caller_from_token(session, secret)
    assert caught.value.code == "token_revoked"
