"""Managing users through the REST API: create, change, disable, passwords."""

from __future__ import annotations

import pytest
from sqlmodel import select

from aimms_portal.api.deps import SESSION_COOKIE
from aimms_portal.db import session_scope
from aimms_portal.models import Role, User
from tests.api.support import API, audit_events, browser, error, quick_user
from tests.helpers import PASSWORD, bearer, log_on

pytestmark = pytest.mark.sqlite

NEW_PASSWORD = "Another-horse-7-staple"


@pytest.fixture
def root(db: None) -> dict[str, str]:
    """Headers of an admin's token with every scope."""
    return bearer(quick_user("root", Role.admin.value))


def test_create_user_returns_201_without_secrets(client, root):
    body = {
        "username": "Ann.Lee",
        "password": NEW_PASSWORD,
        "role": "publisher",
        "email": "ann@example.org",
        "full_name": "Ann Lee",
    }
    response = client.post(f"{API}/users", json=body, headers=root)
    assert response.status_code == 201, response.text
    user = response.json()
    assert user["username"] == "ann.lee"  # names are kept in lower case
    assert (user["role"], user["email"], user["is_active"]) == (
        "publisher",
        "ann@example.org",
        True,
    )
    assert "password" not in response.text and "hash" not in response.text
    assert client.get(f"{API}/users/{user['id']}", headers=root).json() == user
    [event] = audit_events(action="user.create", actor_name="root")
    assert (event.actor_name, event.target_name, event.detail) == (
        "root",
        "ann.lee",
        "role=publisher",
    )


def test_the_new_user_can_log_on(client, root):
    body = {"username": "ann", "password": NEW_PASSWORD}
    assert client.post(f"{API}/users", json=body, headers=root).status_code == 201
    log_on(client, "ann", NEW_PASSWORD)
    assert client.get(f"{API}/me").json()["role"] == "user"


def test_a_taken_name_is_a_409_whatever_its_case(client, root):
    quick_user("ann")
    response = client.post(
        f"{API}/users", json={"username": "ANN", "password": NEW_PASSWORD}, headers=root
    )
    assert "ann" in error(response, 409, "name_taken")


@pytest.mark.parametrize(
    ("password", "missing"),
    [
        ("Sh0rt-pw", "at least 12 characters"),
        ("no-digits-in-here", "a digit"),
        ("NoSymbols1234567", "a symbol"),
        ("1234-5678-9012", "a letter"),
    ],
)
def test_weak_passwords_are_refused_naming_the_missing_rule(client, root, password, missing):
    response = client.post(
        f"{API}/users", json={"username": "ann", "password": password}, headers=root
    )
    message = error(response, 422, "weak_password")
    assert missing in message
    # only the rule that failed is named
    others = {"at least 12 characters", "a digit", "a symbol", "a letter"} - {missing}
    assert not [rule for rule in others if rule in message]
    with session_scope() as session:  # nothing half-written
        assert session.exec(select(User).where(User.username == "ann")).first() is None


def test_a_password_missing_every_rule_names_them_all(client, root):
    response = client.post(
        f"{API}/users", json={"username": "ann", "password": "   "}, headers=root
    )
    message = error(response, 422, "weak_password")
    for rule in ("at least 12 characters", "a letter", "a digit", "a symbol"):
        assert rule in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "a" * 65),
        ("password", "Aa1!" * 65),
        ("email", "a" * 250 + "@x.org"),
        ("full_name", "A" * 129),
        ("role", "r" * 17),
    ],
)
def test_over_long_fields_are_a_422_naming_the_field(client, root, field, value):
    body = {"username": "ann", "password": NEW_PASSWORD, field: value}
    message = error(client.post(f"{API}/users", json=body, headers=root), 422, "invalid_request")
    assert message.startswith(f"{field}:")
    assert "at most" in message


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"username": "a b", "password": NEW_PASSWORD}, "invalid_name"),
        ({"username": "-ann", "password": NEW_PASSWORD}, "invalid_name"),
        ({"username": "ann", "password": NEW_PASSWORD, "role": "root"}, "invalid_role"),
        ({"username": "ann", "password": NEW_PASSWORD, "email": "not-mail"}, "invalid_email"),
    ],
)
def test_bad_values_are_a_422_that_says_what_is_wrong(client, root, body, code):
    error(client.post(f"{API}/users", json=body, headers=root), 422, code)


def test_unknown_fields_are_a_422_naming_them(client, root):
    body = {"username": "ann", "password": NEW_PASSWORD, "is_admin": True}
    message = error(client.post(f"{API}/users", json=body, headers=root), 422, "invalid_request")
    assert "is_admin" in message


def test_malformed_json_is_a_400(client, root):
    response = client.post(
        f"{API}/users",
        content=b'{"username": "ann",',
        headers=root | {"Content-Type": "application/json"},
    )
    error(response, 400, "malformed_json")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/users/999", None),
        ("PATCH", "/users/999", {"full_name": "Nobody"}),
        ("POST", "/users/999/password", {"password": NEW_PASSWORD}),
    ],
)
def test_unknown_ids_are_a_404(client, root, method, path, body):
    response = client.request(method, API + path, json=body, headers=root)
    assert "999" in error(response, 404, "not_found")


@pytest.mark.parametrize("user_id", [0, -1, 2**31, 2**63, 2**70])
def test_impossible_ids_are_a_404_too(client, root, user_id):
    error(client.get(f"{API}/users/{user_id}", headers=root), 404, "not_found")
    error(client.get(f"{API}/tokens?user_id={user_id}", headers=root), 404, "not_found")


def test_a_non_numeric_id_is_a_422_naming_it(client, root):
    assert "user_id" in error(client.get(f"{API}/users/abc", headers=root), 422)


def test_list_users_filters_and_pages(client, root):
    quick_user("ann", Role.publisher.value)
    quick_user("bob", active=False)
    quick_user("carl")
    page = client.get(f"{API}/users?limit=2&offset=1", headers=root).json()
    assert [u["username"] for u in page["items"]] == ["bob", "carl"]
    assert (page["total"], page["limit"], page["offset"]) == (4, 2, 1)

    def names(query: str) -> list[str]:
        response = client.get(f"{API}/users?{query}", headers=root)
        assert response.status_code == 200, response.text
        return [u["username"] for u in response.json()["items"]]

    assert names("role=publisher") == ["ann"]
    assert names("active=false") == ["bob"]
    assert names("q=AR") == ["carl"]
    error(client.get(f"{API}/users?role=wizard", headers=root), 422, "invalid_role")
    error(client.get(f"{API}/users?limit=0", headers=root), 422, "invalid_request")
    error(client.get(f"{API}/users?limit=501", headers=root), 422, "invalid_request")


def test_patch_changes_role_email_and_name_and_audits_them(client, root):
    ann = quick_user("ann")
    response = client.patch(
        f"{API}/users/{ann.id}",
        json={"role": "publisher", "email": "ann@example.org", "full_name": "Ann Lee"},
        headers=root,
    )
    assert response.status_code == 200, response.text
    user = response.json()
    assert (user["role"], user["email"], user["full_name"]) == (
        "publisher",
        "ann@example.org",
        "Ann Lee",
    )
    [role_event] = audit_events(action="user.role")
    assert role_event.detail == "user -> publisher" and role_event.target_name == "ann"
    [update_event] = audit_events(action="user.update")
    assert "email" in update_event.detail and "full_name" in update_event.detail


def test_patch_refuses_a_bad_email_or_role_and_changes_nothing(client, root):
    ann = quick_user("ann")
    path = f"{API}/users/{ann.id}"
    error(client.patch(path, json={"email": "nope"}, headers=root), 422, "invalid_email")
    error(client.patch(path, json={"role": "owner"}, headers=root), 422, "invalid_role")
    user = client.get(path, headers=root).json()
    assert (user["email"], user["role"]) == ("", "user")


def test_disabling_a_user_ends_their_log_ons_and_tokens_at_once(client, root):
    ann = quick_user("ann")
    ann_token = bearer(ann)
    with browser() as ann_browser:
        log_on(ann_browser, "ann")
        assert ann_browser.get(f"{API}/me").status_code == 200
        assert client.get(f"{API}/me", headers=ann_token).status_code == 200

        response = client.patch(f"{API}/users/{ann.id}", json={"is_active": False}, headers=root)
        assert response.status_code == 200 and response.json()["is_active"] is False
        error(ann_browser.get(f"{API}/me"), 401)
        error(client.get(f"{API}/me", headers=ann_token), 401)
        # and she cannot log on again
        login = {"username": "ann", "password": PASSWORD}
        error(ann_browser.post(f"{API}/auth/login", json=login), 403, "account_disabled")
    assert [e.target_name for e in audit_events(action="user.disable")] == ["ann"]


def test_re_enabling_a_user_does_not_bring_back_their_tokens(client, root):
    ann = quick_user("ann")
    ann_token = bearer(ann)
    with browser() as ann_browser:
        log_on(ann_browser, "ann")
        old_cookie = ann_browser.cookies[SESSION_COOKIE]
        for active in (False, True):
            response = client.patch(
                f"{API}/users/{ann.id}", json={"is_active": active}, headers=root
            )
            assert response.status_code == 200

        error(client.get(f"{API}/me", headers=ann_token), 401, "token_revoked")
        error(ann_browser.get(f"{API}/me"), 401, "session_ended")
        log_on(ann_browser, "ann")  # a fresh log-on works again
        assert ann_browser.cookies[SESSION_COOKIE] != old_cookie
        assert ann_browser.get(f"{API}/me").status_code == 200
    assert [e.action for e in audit_events(target_name="ann")][-2:] == [
        "user.enable",
        "auth.login",
    ]


@pytest.mark.parametrize("change", [{"is_active": False}, {"role": "publisher"}, {"role": "user"}])
def test_admins_cannot_disable_or_demote_themselves(client, change):
    root = quick_user("root", Role.admin.value)
    headers = bearer(root)
    response = client.patch(f"{API}/users/{root.id}", json=change, headers=headers)
    error(response, 403, "self_lockout")
    me = client.get(f"{API}/me", headers=headers).json()
    assert (me["role"], me["is_active"]) == ("admin", True)


def test_admins_may_change_their_own_profile(client):
    root = quick_user("root", Role.admin.value)
    response = client.patch(
        f"{API}/users/{root.id}",
        json={"full_name": "Root", "role": "admin", "is_active": True},
        headers=bearer(root),
    )
    assert response.status_code == 200 and response.json()["full_name"] == "Root"


def test_reset_password_ends_the_targets_log_ons_and_the_new_one_works(client, root):
    ann = quick_user("ann")
    with browser() as ann_browser:
        log_on(ann_browser, "ann")
        response = client.post(
            f"{API}/users/{ann.id}/password", json={"password": NEW_PASSWORD}, headers=root
        )
        assert response.status_code == 204, response.text
        error(ann_browser.get(f"{API}/me"), 401, "session_ended")

        old = {"username": "ann", "password": PASSWORD}
        error(ann_browser.post(f"{API}/auth/login", json=old), 401, "wrong_credentials")
        log_on(ann_browser, "ann", NEW_PASSWORD)
        assert ann_browser.get(f"{API}/me").status_code == 200
    [event] = audit_events(action="user.password_reset")
    assert (event.actor_name, event.target_name) == ("root", "ann")


def test_reset_password_refuses_a_weak_one(client, root):
    ann = quick_user("ann")
    response = client.post(
        f"{API}/users/{ann.id}/password", json={"password": "password"}, headers=root
    )
    error(response, 422, "weak_password")
    log_on(client, "ann")  # the old password still works
    assert audit_events(action="user.password_reset") == []


def test_change_own_password(client, db):
    quick_user("ann")
    csrf = log_on(client, "ann")
    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert client.post(f"{API}/me/password", json=body, headers=csrf).status_code == 204
    with browser() as other:
        old = {"username": "ann", "password": PASSWORD}
        error(other.post(f"{API}/auth/login", json=old), 401, "wrong_credentials")
        log_on(other, "ann", NEW_PASSWORD)
    [event] = audit_events(action="user.password_change")
    assert (event.actor_name, event.source_ip) == ("ann", "203.0.113.7")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"current_password": "Wrong-horse-1-x", "new_password": NEW_PASSWORD},
            422,
            "wrong_password",
        ),
        ({"current_password": PASSWORD, "new_password": "short"}, 422, "weak_password"),
        ({"current_password": PASSWORD}, 422, "invalid_request"),
    ],
)
def test_change_own_password_refuses_bad_input(client, db, body, status, code):
    ann = quick_user("ann")
    error(client.post(f"{API}/me/password", json=body, headers=bearer(ann)), status, code)
    with browser() as other:
        log_on(other, "ann")  # unchanged
