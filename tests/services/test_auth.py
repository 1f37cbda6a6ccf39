"""Log-on, log-off and recognising callers at the service layer."""

from __future__ import annotations

from datetime import timedelta

import pytest
from argon2 import PasswordHasher
from sqlmodel import select

from aimms_portal.db import session_scope
from aimms_portal.errors import NotAuthenticated
from aimms_portal.models import ApiToken, AuditEvent, BrowserSession, User, utcnow
from aimms_portal.services import auth, tokens
from tests.helpers import PASSWORD

pytestmark = pytest.mark.sqlite

HOUR = timedelta(hours=1)


def _log_on(username: str = "ann", password: str = PASSWORD) -> str:
    with session_scope() as session:
        _, secret = auth.log_on(
            session, username=username, password=password, lifetime=HOUR, source_ip="127.0.0.9"
        )
    return secret


def test_a_failed_log_on_is_audited_even_though_the_unit_of_work_rolls_back(make_user):
    make_user("ann")
    with pytest.raises(NotAuthenticated), session_scope() as session:
        auth.log_on(session, username="ann", password="wrong", lifetime=HOUR, source_ip="::1")
    with session_scope() as session:
        [event] = session.exec(select(AuditEvent).where(AuditEvent.action == "auth.login")).all()
    assert (event.outcome, event.source_ip, event.detail) == ("failure", "::1", "wrong password")


def test_log_on_names_are_case_and_space_insensitive(make_user):
    make_user("ann")
    assert _log_on("  ANN ")


def test_an_expired_log_on_ends(make_user):
    make_user("ann")
    secret = _log_on()
    with session_scope() as session:
        row = session.exec(select(BrowserSession)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)
    with pytest.raises(NotAuthenticated) as caught, session_scope() as session:
        auth.caller_from_session(session, secret)
    assert caught.value.code == "session_ended"


def test_last_seen_is_written_at_most_once_a_minute(make_user):
    make_user("ann")
    secret = _log_on()
    long_ago = utcnow() - timedelta(minutes=5)
    with session_scope() as session:
        row = session.exec(select(BrowserSession)).one()
        row.last_seen_at = long_ago
        session.add(row)

    with session_scope() as session:
        assert auth.caller_from_session(session, secret).user.username == "ann"
    with session_scope() as session:
        seen = session.exec(select(BrowserSession)).one().last_seen_at
    assert seen > long_ago + timedelta(minutes=4)

    with session_scope() as session:
        auth.caller_from_session(session, secret)
    with session_scope() as session:
        assert session.exec(select(BrowserSession)).one().last_seen_at == seen


def test_last_used_is_written_at_most_once_a_minute(make_user):
    ann = make_user("ann")
    with session_scope() as session:
        row, secret = tokens.create_token(session, actor=ann, name="ci", scopes=["read"])
    with session_scope() as session:
        caller = auth.caller_from_token(session, secret)
    assert caller.scopes == frozenset({"read"}) and caller.token_id == row.id
    with session_scope() as session:
        first = session.get(ApiToken, row.id).last_used_at  # type: ignore[union-attr]
    assert first is not None
    with session_scope() as session:
        auth.caller_from_token(session, secret)
    with session_scope() as session:
        assert session.get(ApiToken, row.id).last_used_at == first  # type: ignore[union-attr]


def test_log_off_of_an_unknown_or_ended_log_on_is_ignored(make_user):
    make_user("ann")
    secret = _log_on()
    for _ in range(2):
        with session_scope() as session:
            auth.log_off(session, session_secret=secret)
    with session_scope() as session:
        auth.log_off(session, session_secret="never-issued")
        logouts = session.exec(select(AuditEvent).where(AuditEvent.action == "auth.logout")).all()
    assert len(logouts) == 1


def test_a_weak_old_hash_is_upgraded_at_log_on(make_user):
    ann = make_user("ann")
    weak = PasswordHasher(time_cost=1, memory_cost=8192).hash(PASSWORD)
    with session_scope() as session:
        user = session.get(User, ann.id)
        assert user is not None
        user.password_hash = weak
        session.add(user)
    _log_on()
    with session_scope() as session:
        upgraded = session.get(User, ann.id).password_hash  # type: ignore[union-attr]
    assert upgraded != weak and upgraded is not None and upgraded.startswith("$argon2id$")
    _log_on()  # and the upgraded hash still opens the account
