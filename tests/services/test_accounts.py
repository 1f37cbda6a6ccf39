"""Accounts at the service layer: names, the first admin, ending access, membership."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import col, select

from aimms_portal.auth import passwords
from aimms_portal.db import session_scope
from aimms_portal.errors import InvalidInput, PermissionDenied
from aimms_portal.models import ApiToken, BrowserSession, Role, User
from aimms_portal.services import accounts, auth, tokens
from tests.helpers import PASSWORD

_HOUR = timedelta(hours=1)

pytestmark = pytest.mark.sqlite


@pytest.mark.parametrize(
    ("name", "normalized"),
    [("Ann", "ann"), (" bob.smith ", "bob.smith"), ("a1", "a1"), ("x_y-z", "x_y-z")],
)
def test_names_are_normalized(name, normalized):
    assert accounts.normalize_name(name) == normalized


@pytest.mark.parametrize("name", ["a", "", "-ann", ".ann", "ann smith", "änn", "a" * 65, "a/b"])
def test_bad_names_are_refused(name):
    with pytest.raises(InvalidInput) as caught:
        accounts.normalize_name(name)
    assert caught.value.code == "invalid_name"


def test_generated_passwords_meet_the_policy():
    for _ in range(50):
        passwords.check_policy(accounts.generate_password())


def test_ensure_admin_creates_one_admin_once(db):
    with session_scope() as session:
        admin, generated = accounts.ensure_admin(session, username="root", password=None)
    assert admin.role == Role.admin.value and generated is not None
    passwords.check_policy(generated)
    assert passwords.verify_password(admin.password_hash, generated)
    with session_scope() as session:
        again, none = accounts.ensure_admin(session, username="other", password=PASSWORD)
        assert (again.id, none) == (admin.id, None)
        assert len(session.exec(select(User)).all()) == 1


def test_ensure_builtin_groups_is_idempotent(db):
    with session_scope() as session:
        accounts.ensure_builtin_groups(session)
        accounts.ensure_builtin_groups(session)
    with session_scope() as session:
        root = User(id=None, username="root", role=Role.admin.value)
        session.add(root)
        session.flush()
        page = accounts.list_groups(session, actor=root)
    assert [g.name for g in page.items] == ["everyone"]


def test_end_all_access_revokes_every_log_on_and_token(make_user):
    ann, bob = make_user("ann"), make_user("bob")
    with session_scope() as session:
        for user in (ann, bob):
            tokens.create_token(session, actor=user, name="ci", scopes=["read"])
    for _ in range(2):
        with session_scope() as session:
            auth.log_on(session, username="ann", password=PASSWORD, lifetime=_HOUR)
    with session_scope() as session:
        assert accounts.end_all_access(session, user_id=ann.id or 0) == 3
    with session_scope() as session:
        assert accounts.end_all_access(session, user_id=ann.id or 0) == 0  # nothing left
        live_tokens = session.exec(select(ApiToken).where(col(ApiToken.revoked_at).is_(None)))
        live_sessions = session.exec(
            select(BrowserSession).where(col(BrowserSession.revoked_at).is_(None))
        )
        live = ([t.user_id for t in live_tokens], live_sessions.all())
    assert live == ([bob.id], [])


def test_groups_of_lists_everyone_and_explicit_groups(make_user):
    root = make_user("root", role=Role.admin.value)
    ann = make_user("ann")
    with session_scope() as session:
        for name in ("zeta", "alpha", "other"):
            group = accounts.create_group(session, actor=root, name=name)
            if name != "other":
                accounts.add_member(
                    session, actor=root, group_id=group.id or 0, user_id=ann.id or 0
                )
    with session_scope() as session:
        assert [g.name for g in accounts.groups_of(session, user=ann)] == [
            "alpha",
            "everyone",
            "zeta",
        ]


def test_plain_users_cannot_use_admin_services(make_user):
    ann = make_user("ann")
    with session_scope() as session:
        for call in (
            lambda: accounts.list_users(session, actor=ann),
            lambda: accounts.create_group(session, actor=ann, name="mine"),
            lambda: accounts.reset_password(
                session, actor=ann, user_id=ann.id or 0, new_password=PASSWORD
            ),
        ):
            with pytest.raises(PermissionDenied):
                call()
