"""The access-control rules: which role may do which action on what."""

from __future__ import annotations

import pytest

from aimms_portal.auth.access import Action, allowed, app_rights, require
from aimms_portal.errors import NotFound, PermissionDenied
from aimms_portal.models import ApiToken, AppGrant, Role, User

pytestmark = pytest.mark.sqlite

A = Action
#: What each role may do without an object. Every action must appear for every role,
#: so a new action cannot slip in without someone deciding who gets it.
EXPECTED: dict[str, dict[Action, bool]] = {
    Role.admin.value: {action: True for action in Action},
    Role.publisher.value: {
        A.manage_users: False,
        A.list_groups: True,
        A.manage_groups: False,
        A.read_audit: False,
        A.manage_own_tokens: True,
        A.manage_token: False,
        A.manage_signing_keys: False,
        A.manage_runtimes: True,
        A.create_app: True,
    },
    Role.user.value: {
        A.manage_users: False,
        A.list_groups: False,
        A.manage_groups: False,
        A.read_audit: False,
        A.manage_own_tokens: True,
        A.manage_token: False,
        A.manage_signing_keys: False,
        A.manage_runtimes: False,
        A.create_app: False,
    },
}


def _user(role: str, *, user_id: int = 1, active: bool = True) -> User:
    return User(id=user_id, username=f"{role}{user_id}", role=role, is_active=active)


def _token(owner_id: int) -> ApiToken:
    return ApiToken(id=7, user_id=owner_id, name="t", prefix="apt_", token_hash="0", scopes="read")


def test_every_action_is_decided_for_every_role():
    assert set(EXPECTED) == {r.value for r in Role}
    for role, table in EXPECTED.items():
        assert set(table) == set(Action), f"{role}: {set(Action) ^ set(table)}"


@pytest.mark.parametrize(
    ("role", "action", "expected"),
    [(role, action, ok) for role, table in EXPECTED.items() for action, ok in table.items()],
    ids=lambda v: str(v),
)
def test_roles_allow_exactly_their_actions(role, action, expected):
    assert allowed(_user(role), action) is expected


@pytest.mark.parametrize("role", [r.value for r in Role])
@pytest.mark.parametrize("action", list(Action))
def test_inactive_users_may_do_nothing(role, action):
    user = _user(role, active=False)
    assert allowed(user, action) is False
    assert allowed(user, action, _token(owner_id=user.id or 0)) is False
    with pytest.raises(PermissionDenied):
        require(user, action)


@pytest.mark.parametrize("action", list(Action))
def test_nobody_may_do_nothing(action):
    assert allowed(None, action) is False


def test_an_unknown_role_may_do_nothing():
    for action in Action:
        assert allowed(_user("superuser"), action) is False


@pytest.mark.parametrize("role", [Role.user.value, Role.publisher.value])
def test_users_manage_their_own_tokens_only(role):
    me = _user(role, user_id=1)
    assert allowed(me, A.manage_token, _token(owner_id=1)) is True
    assert allowed(me, A.manage_token, _token(owner_id=2)) is False
    assert allowed(me, A.manage_token, _user("user", user_id=1)) is False  # not a token
    assert allowed(me, A.manage_token) is False


def test_admins_manage_anyones_token():
    assert allowed(_user(Role.admin.value), A.manage_token, _token(owner_id=2)) is True


def test_require_hides_other_peoples_objects_as_not_found():
    with pytest.raises(NotFound):
        require(_user(Role.user.value, user_id=1), A.manage_token, _token(owner_id=2))
    require(_user(Role.user.value, user_id=1), A.manage_token, _token(owner_id=1))


def test_require_refuses_a_role_with_permission_denied():
    with pytest.raises(PermissionDenied) as caught:
        require(_user(Role.publisher.value), A.manage_groups)
    assert caught.value.code == "forbidden"
    require(_user(Role.publisher.value), A.list_groups)
    with pytest.raises(PermissionDenied):
        require(None, A.manage_own_tokens)


# -- rights on one app -------------------------------------------------------------------


def _grant(gid: int, kind: str, pid: int, right: str, effect: str) -> AppGrant:
    return AppGrant(
        id=gid, app_id=1, principal_type=kind, principal_id=pid, right=right, effect=effect
    )


def test_no_grant_no_right():
    rights = app_rights(_user("user"), [], [10])
    assert not any(d.allowed for d in rights.values())
    assert rights["run"].reason == "no grant"


def test_group_allow_gives_the_right_and_names_the_grant():
    grants = [_grant(5, "group", 10, "run", "allow")]
    rights = app_rights(_user("user"), grants, [10], {("group", 10): "planners"})
    assert rights["run"].allowed and rights["run"].grant_id == 5
    assert rights["run"].reason == "allow to group 'planners'"
    assert not rights["read"].allowed and not rights["write"].allowed


def test_deny_beats_allow_from_any_principal():
    grants = [
        _grant(1, "user", 1, "run", "allow"),
        _grant(2, "group", 10, "run", "deny"),
        _grant(3, "group", 11, "run", "allow"),
    ]
    decision = app_rights(_user("user"), grants, [10, 11])["run"]
    assert not decision.allowed and decision.grant_id == 2


def test_grants_to_others_do_not_count():
    grants = [_grant(1, "user", 2, "read", "allow"), _grant(2, "group", 99, "read", "allow")]
    assert not app_rights(_user("user", user_id=1), grants, [10])["read"].allowed


def test_admins_hold_every_right_and_inactive_users_none():
    deny_all = [_grant(i, "user", 1, r, "deny") for i, r in enumerate(("read", "write", "run"))]
    assert all(d.allowed for d in app_rights(_user("admin"), deny_all, []).values())
    allow = [_grant(1, "user", 1, "read", "allow")]
    assert not app_rights(_user("user", active=False), allow, [])["read"].allowed
