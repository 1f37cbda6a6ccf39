"""Groups and memberships through the REST API."""

from __future__ import annotations

import pytest
from sqlmodel import select

from aimms_portal.db import session_scope
from aimms_portal.models import Membership, Role
from tests.api.support import API, audit_events, error, quick_user
from tests.helpers import bearer

pytestmark = pytest.mark.sqlite


@pytest.fixture
def root(db: None) -> dict[str, str]:
    """Headers of an admin's token with every scope."""
    return bearer(quick_user("root", Role.admin.value))


def _group_id(client, root, name: str) -> int:
    response = client.post(f"{API}/groups", json={"name": name}, headers=root)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _everyone_id(client, root) -> int:
    [everyone] = client.get(f"{API}/groups?q=everyone", headers=root).json()["items"]
    assert everyone["builtin"] is True
    return int(everyone["id"])


def test_create_read_and_describe_a_group(client, root):
    response = client.post(
        f"{API}/groups", json={"name": "Planners", "description": "Day shift"}, headers=root
    )
    assert response.status_code == 201, response.text
    group = response.json()
    assert (group["name"], group["description"], group["builtin"]) == (
        "planners",
        "Day shift",
        False,
    )
    assert client.get(f"{API}/groups/{group['id']}", headers=root).json() == group

    changed = client.patch(
        f"{API}/groups/{group['id']}", json={"description": "Night shift"}, headers=root
    )
    assert changed.status_code == 200 and changed.json()["description"] == "Night shift"
    assert [e.action for e in audit_events(target_type="group")] == [
        "group.create",
        "group.update",
    ]


def test_a_taken_group_name_is_a_409(client, root):
    _group_id(client, root, "planners")
    response = client.post(f"{API}/groups", json={"name": "PLANNERS"}, headers=root)
    error(response, 409, "name_taken")
    error(client.post(f"{API}/groups", json={"name": "everyone"}, headers=root), 409)


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [
        ({"name": "no spaces"}, "invalid_name", "group name"),
        ({"name": "g" * 65}, "invalid_request", "name"),
        ({"name": "ok", "description": "d" * 256}, "invalid_request", "description"),
        ({"name": "ok", "builtin": True}, "invalid_request", "builtin"),
        ({}, "invalid_request", "name"),
    ],
)
def test_bad_group_bodies_are_a_422_that_says_what_is_wrong(client, root, body, code, named):
    message = error(client.post(f"{API}/groups", json=body, headers=root), 422, code)
    assert named in message
    assert audit_events(action="group.create") == []


def test_groups_are_listed_by_name_a_page_at_a_time(client, root):
    names = [f"team-{n}" for n in "gfedcba"]
    for name in names:
        _group_id(client, root, name)
    expected = sorted([*names, "everyone"])

    seen = []
    for offset in (0, 3, 6):
        response = client.get(f"{API}/groups?limit=3&offset={offset}", headers=root)
        assert response.status_code == 200, response.text
        page = response.json()
        assert (page["total"], page["limit"], page["offset"]) == (8, 3, offset)
        seen += [g["name"] for g in page["items"]]
    assert seen == expected
    assert client.get(f"{API}/groups?offset=8", headers=root).json()["items"] == []
    assert client.get(f"{API}/groups?q=TEAM-A", headers=root).json()["total"] == 1
    error(client.get(f"{API}/groups?offset=-1", headers=root), 422, "invalid_request")


def test_members_are_added_listed_and_removed(client, root):
    group_id = _group_id(client, root, "planners")
    ann, bob = quick_user("ann"), quick_user("bob")
    members = f"{API}/groups/{group_id}/members"
    for user in (bob, ann, ann):  # adding twice is harmless
        response = client.post(members, json={"user_id": user.id}, headers=root)
        assert response.status_code == 204, response.text

    listed = client.get(members, headers=root).json()
    assert [u["username"] for u in listed["items"]] == ["ann", "bob"]
    assert listed["total"] == 2
    assert "planners" in client.get(f"{API}/me", headers=bearer(ann)).json()["groups"]

    assert client.delete(f"{members}/{ann.id}", headers=root).status_code == 204
    assert [u["username"] for u in client.get(members, headers=root).json()["items"]] == ["bob"]
    error(client.delete(f"{members}/{ann.id}", headers=root), 404, "not_found")
    assert client.get(f"{API}/me", headers=bearer(ann)).json()["groups"] == ["everyone"]

    added = audit_events(action="group.member_add")
    assert [e.detail for e in added] == ["user=bob", "user=ann"]
    [removed] = audit_events(action="group.member_remove")
    assert (removed.target_name, removed.detail) == ("planners", f"user_id={ann.id}")


def test_members_page_too(client, root):
    group_id = _group_id(client, root, "planners")
    for name in ("ann", "bob", "carl"):
        user = quick_user(name)
        client.post(f"{API}/groups/{group_id}/members", json={"user_id": user.id}, headers=root)
    page = client.get(f"{API}/groups/{group_id}/members?limit=2&offset=2", headers=root).json()
    assert [u["username"] for u in page["items"]] == ["carl"]
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 2)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/groups/999", None),
        ("PATCH", "/groups/999", {"description": "x"}),
        ("DELETE", "/groups/999", None),
        ("GET", "/groups/999/members", None),
        ("POST", "/groups/999/members", {"user_id": 1}),
        ("DELETE", "/groups/999/members/1", None),
    ],
)
def test_unknown_groups_are_a_404(client, root, method, path, body):
    response = client.request(method, API + path, json=body, headers=root)
    assert "999" in error(response, 404, "not_found")


@pytest.mark.parametrize("bad_id", [0, -1, 2**31, 2**63, 2**70])
def test_impossible_ids_are_a_404_too(client, root, bad_id):
    group_id = _group_id(client, root, "planners")
    error(client.get(f"{API}/groups/{bad_id}", headers=root), 404, "not_found")
    members = f"{API}/groups/{group_id}/members"
    error(client.post(members, json={"user_id": bad_id}, headers=root), 404, "not_found")
    error(client.delete(f"{members}/{bad_id}", headers=root), 404, "not_found")


def test_adding_an_unknown_user_is_a_404(client, root):
    group_id = _group_id(client, root, "planners")
    response = client.post(f"{API}/groups/{group_id}/members", json={"user_id": 999}, headers=root)
    assert "999" in error(response, 404, "not_found")
    assert audit_events(action="group.member_add") == []


def test_everyone_cannot_be_deleted_or_get_explicit_members(client, root):
    everyone = _everyone_id(client, root)
    ann = quick_user("ann")
    quick_user("gone", active=False)
    error(client.delete(f"{API}/groups/{everyone}", headers=root), 409, "builtin")
    response = client.post(
        f"{API}/groups/{everyone}/members", json={"user_id": ann.id}, headers=root
    )
    error(response, 409, "builtin")
    # every active user is a member without a membership row
    members = client.get(f"{API}/groups/{everyone}/members", headers=root).json()
    assert [u["username"] for u in members["items"]] == ["ann", "root"]
    with session_scope() as session:
        assert session.exec(select(Membership)).all() == []
    assert client.get(f"{API}/groups/{everyone}", headers=root).status_code == 200


def test_deleting_a_group_removes_its_memberships(client, root):
    group_id = _group_id(client, root, "planners")
    keep_id = _group_id(client, root, "keepers")
    ann = quick_user("ann")
    for gid in (group_id, keep_id):
        client.post(f"{API}/groups/{gid}/members", json={"user_id": ann.id}, headers=root)

    assert client.delete(f"{API}/groups/{group_id}", headers=root).status_code == 204
    error(client.get(f"{API}/groups/{group_id}", headers=root), 404)
    with session_scope() as session:
        rows = session.exec(select(Membership)).all()
    assert [(m.group_id, m.user_id) for m in rows] == [(keep_id, ann.id)]
    assert client.get(f"{API}/me", headers=bearer(ann)).json()["groups"] == [
        "everyone",
        "keepers",
    ]
    [event] = audit_events(action="group.delete")
    assert (event.actor_name, event.target_name) == ("root", "planners")
