"""Recording, reading and purging the audit log at the service layer."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import col, select

from aimms_portal.db import session_scope
from aimms_portal.errors import PermissionDenied
from aimms_portal.models import AuditEvent, Role, User, utcnow
from aimms_portal.services import audit

pytestmark = pytest.mark.sqlite


def _add(action: str, age: timedelta) -> None:
    with session_scope() as session:
        session.add(AuditEvent(action=action, created_at=utcnow() - age))


def _actions() -> list[str]:
    with session_scope() as session:
        return list(session.exec(select(AuditEvent.action).order_by(col(AuditEvent.id))).all())


def test_purge_removes_only_events_older_than_the_retention(db):
    _add("ancient", timedelta(days=400))
    _add("just_too_old", timedelta(days=30, minutes=1))
    _add("just_young_enough", timedelta(days=29, hours=23))
    _add("fresh", timedelta(0))
    with session_scope() as session:
        assert audit.purge_expired(session, retention_days=30) == 2
    assert _actions() == ["just_young_enough", "fresh"]
    with session_scope() as session:
        assert audit.purge_expired(session, retention_days=30) == 0
    assert _actions() == ["just_young_enough", "fresh"]


def test_record_cuts_over_long_values_instead_of_failing(db):
    with session_scope() as session:
        audit.record(
            session,
            action="auth.login",
            actor_name="x" * 300,
            target_name="t" * 300,
            source_ip="1" * 100,
            detail="d" * 5000,
            outcome="failure",
        )
    with session_scope() as session:
        [event] = session.exec(select(AuditEvent)).all()
    assert (len(event.actor_name), len(event.target_name)) == (64, 128)
    assert (len(event.source_ip), len(event.detail)) == (45, 1000)


def test_record_copies_the_target_by_value(db):
    with session_scope() as session:
        user = User(username="ann", role=Role.user.value)
        session.add(user)
        session.flush()
        audit.record(session, action="user.create", target=user)
        user_id = user.id
    with session_scope() as session:
        session.delete(session.get(User, user_id))
    with session_scope() as session:
        [event] = session.exec(select(AuditEvent)).all()
    assert (event.target_type, event.target_id, event.target_name) == ("user", str(user_id), "ann")


def test_only_admins_list_events(db):
    with session_scope() as session:
        publisher = User(id=5, username="pete", role=Role.publisher.value)
        with pytest.raises(PermissionDenied):
            audit.list_events(session, actor=publisher)
