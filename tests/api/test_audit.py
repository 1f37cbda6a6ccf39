"""The audit log: every security-relevant action leaves an event; admins query them."""

from __future__ import annotations

from datetime import timedelta, timezone

import pytest

from aimms_portal.db import session_scope
from aimms_portal.models import AuditEvent, Role, utcnow
from tests.api.support import API, CLIENT_IP, error, quick_user
from tests.helpers import PASSWORD, bearer, log_on

pytestmark = pytest.mark.sqlite

NEW_PASSWORD = "Another-horse-7-staple"


def _events(client, headers, **params) -> list[dict]:
    response = client.get(f"{API}/audit", params={"limit": 500, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def test_every_security_relevant_action_leaves_an_event(client, db):
    quick_user("root", Role.admin.value)

    # log-on: a failure (unknown user), a failure (wrong password), a success
    for name, password in (("nobody", PASSWORD), ("root", "Wrong-horse-1-battery")):
        response = client.post(f"{API}/auth/login", json={"username": name, "password": password})
        error(response, 401, "wrong_credentials")
    csrf = log_on(client, "root")

    # users
    body = {"username": "ann", "password": PASSWORD}
    ann_id = client.post(f"{API}/users", json=body, headers=csrf).json()["id"]
    client.patch(f"{API}/users/{ann_id}", json={"role": "publisher"}, headers=csrf)
    client.post(f"{API}/users/{ann_id}/password", json={"password": NEW_PASSWORD}, headers=csrf)
    client.patch(f"{API}/users/{ann_id}", json={"is_active": False}, headers=csrf)
    client.patch(f"{API}/users/{ann_id}", json={"is_active": True}, headers=csrf)

    # groups and members
    group_id = client.post(f"{API}/groups", json={"name": "planners"}, headers=csrf).json()["id"]
    members = f"{API}/groups/{group_id}/members"
    client.post(members, json={"user_id": ann_id}, headers=csrf)
    client.delete(f"{members}/{ann_id}", headers=csrf)
    client.delete(f"{API}/groups/{group_id}", headers=csrf)

    # tokens, then log-off
    token_id = client.post(f"{API}/tokens", json={"name": "ci"}, headers=csrf).json()["id"]
    client.delete(f"{API}/tokens/{token_id}", headers=csrf)
    assert client.post(f"{API}/auth/logout", headers=csrf).status_code == 204

    events = _events(client, bearer(quick_user("auditor", Role.admin.value)))
    mine = [e for e in reversed(events) if e["actor_name"] in ("root", "nobody")]
    assert [(e["action"], e["outcome"]) for e in mine] == [
        ("auth.login", "failure"),
        ("auth.login", "failure"),
        ("auth.login", "success"),
        ("user.create", "success"),
        ("user.role", "success"),
        ("user.password_reset", "success"),
        ("user.disable", "success"),
        ("user.enable", "success"),
        ("group.create", "success"),
        ("group.member_add", "success"),
        ("group.member_remove", "success"),
        ("group.delete", "success"),
        ("token.create", "success"),
        ("token.revoke", "success"),
        ("auth.logout", "success"),
    ]
    assert {e["source_ip"] for e in mine} == {CLIENT_IP}
    unknown, wrong = mine[0], mine[1]
    assert (unknown["actor_name"], unknown["detail"], unknown["target_id"]) == (
        "nobody",
        "unknown user",
        "",
    )
    assert (wrong["actor_id"], wrong["detail"], wrong["target_name"]) == (
        None,
        "wrong password",
        "root",
    )
    assert all(e["actor_id"] is not None for e in mine[2:])
    assert mine[4]["detail"] == "user -> publisher"
    assert all(NEW_PASSWORD not in e["detail"] and PASSWORD not in e["detail"] for e in events)


def test_a_disabled_users_log_on_attempt_is_audited(client, db):
    quick_user("ann", active=False)
    response = client.post(f"{API}/auth/login", json={"username": "ann", "password": PASSWORD})
    error(response, 403, "account_disabled")
    events = _events(client, bearer(quick_user("root", Role.admin.value)), action="auth.")
    assert [(e["actor_name"], e["outcome"], e["detail"], e["source_ip"]) for e in events] == [
        ("ann", "failure", "account disabled", CLIENT_IP)
    ]


@pytest.fixture
def seeded(db: None) -> dict[str, int]:
    """Six events at known times in the past; returns their ids by name."""
    now = utcnow()
    rows = {
        "alice_login": ("auth.login", "alice", "success", now - timedelta(days=4)),
        "bob_failed": ("auth.login", "bob", "failure", now - timedelta(days=3)),
        "alice_logout": ("auth.logout", "alice", "success", now - timedelta(days=2)),
        "alice_creates": ("user.create", "alice", "success", now - timedelta(days=1, hours=2)),
        "odd_action": ("user_x.check", "bob", "success", now - timedelta(days=1, hours=1)),
        "recent": ("group.create", "carol", "success", now - timedelta(hours=1)),
    }
    ids = {}
    with session_scope() as session:
        for name, (action, actor, outcome, when) in rows.items():
            event = AuditEvent(action=action, actor_name=actor, outcome=outcome, created_at=when)
            session.add(event)
            session.flush()
            ids[name] = event.id or 0
    return ids


@pytest.fixture
def auditor(seeded: dict[str, int]) -> dict[str, str]:
    return bearer(quick_user("auditor", Role.admin.value))


def _names(client, auditor, seeded, **params) -> list[str]:
    by_id = {v: k for k, v in seeded.items()}
    return [by_id[e["id"]] for e in _events(client, auditor, **params) if e["id"] in by_id]


def test_events_come_newest_first(client, auditor, seeded):
    assert _names(client, auditor, seeded) == [
        "recent",
        "odd_action",
        "alice_creates",
        "alice_logout",
        "bob_failed",
        "alice_login",
    ]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"action": "auth."}, ["alice_logout", "bob_failed", "alice_login"]),
        ({"action": "auth.login"}, ["bob_failed", "alice_login"]),
        ({"action": "user_"}, ["odd_action"]),  # '_' is no wildcard
        ({"action": "%"}, []),
        ({"actor": "alice"}, ["alice_creates", "alice_logout", "alice_login"]),
        ({"outcome": "failure"}, ["bob_failed"]),
        ({"actor": "bob", "outcome": "success"}, ["odd_action"]),
    ],
)
def test_filters(client, auditor, seeded, params, expected):
    assert _names(client, auditor, seeded, **params) == expected


def test_since_and_until_bound_the_time(client, auditor, seeded):
    now = utcnow()
    since, until = now - timedelta(days=3, hours=1), now - timedelta(days=1)
    window = {"since": since.isoformat(), "until": until.isoformat()}
    assert _names(client, auditor, seeded, **window) == [
        "odd_action",
        "alice_creates",
        "alice_logout",
        "bob_failed",
    ]
    # a time with another zone means the same instant
    cest = since.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert cest.endswith("+02:00")
    assert _names(client, auditor, seeded, since=cest, until=window["until"])[-1] == "bob_failed"
    # a time without a zone is read as UTC
    naive = (now - timedelta(hours=2)).replace(tzinfo=None).isoformat()
    assert _names(client, auditor, seeded, since=naive) == ["recent"]
    # until excludes its own instant
    with session_scope() as session:
        event = session.get(AuditEvent, seeded["alice_logout"])
        assert event is not None
        moment = event.created_at.isoformat()
    assert _names(client, auditor, seeded, until=moment) == ["bob_failed", "alice_login"]


def test_the_audit_log_pages(client, auditor, seeded):
    response = client.get(f"{API}/audit?action=auth.&limit=2&offset=2", headers=auditor)
    page = response.json()
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 2)
    assert [e["id"] for e in page["items"]] == [seeded["alice_login"]]


@pytest.mark.parametrize(
    "query", ["outcome=maybe", "since=yesterday", "limit=0", "action=" + "a" * 65]
)
def test_bad_filters_are_a_422_naming_them(client, auditor, query):
    message = error(client.get(f"{API}/audit?{query}", headers=auditor), 422, "invalid_request")
    assert query.split("=")[0] in message


def test_only_admins_read_the_audit_log(client, seeded):
    error(client.get(f"{API}/audit", headers=bearer(quick_user("ann"))), 403, "forbidden")
    publisher = quick_user("pete", Role.publisher.value)
    error(client.get(f"{API}/audit", headers=bearer(publisher)), 403, "forbidden")
    root = quick_user("root", Role.admin.value)
    without_admin_scope = bearer(root, "read", "write")
    error(client.get(f"{API}/audit", headers=without_admin_scope), 403, "forbidden")
