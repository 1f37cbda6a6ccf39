"""Per-app access rights end to end through REST: grants to users and groups decide what
the catalogue shows, who may publish, and the effective-rights endpoint explains why.

The matrix of which route needs which right is in test_authorization.py; here it is how
grants combine: deny wins across users and groups, no grant means no access (reported
as not found), write lets a plain user publish releases of that app only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from aimms_portal.db import session_scope
from aimms_portal.models import EVERYONE, AppGrant, Role
from tests import publishing
from tests.api.support import API, error, quick_user
from tests.helpers import bearer

pytestmark = pytest.mark.sqlite

APP = publishing.APP_NAME


class World:
    """pete published corpus-app 1.0; bob is in groups staff and night; ann in none."""

    def __init__(self, client: Any, folder: Path) -> None:
        self.client = client
        self.folder = folder
        root_user = quick_user("root", Role.admin.value)
        self.pete_user = quick_user("pete", Role.publisher.value)
        self.bob_user = quick_user("bob")
        self.root = bearer(root_user)
        self.pete = bearer(self.pete_user)
        self.bob = bearer(self.bob_user)
        self.ann = bearer(quick_user("ann"))
        publishing.trust_test_key(root_user)
        publishing.upload_runtime(self.pete_user, folder, "1.0")
        self.publish(self.pete, "1.0")
        self.groups = {name: self.group(name, "bob") for name in ("staff", "night")}

    def group(self, name: str, *members: str) -> int:
        response = self.client.post(f"{API}/groups", json={"name": name}, headers=self.root)
        assert response.status_code == 201, response.text
        group_id = int(response.json()["id"])
        for member in members:
            user_id = self.user_id(member)
            added = self.client.post(
                f"{API}/groups/{group_id}/members", json={"user_id": user_id}, headers=self.root
            )
            assert added.status_code == 204, added.text
        return group_id

    def user_id(self, username: str) -> int:
        users = self.client.get(f"{API}/users", params={"q": username}, headers=self.root).json()
        return next(int(u["id"]) for u in users["items"] if u["username"] == username)

    def publish(self, headers: dict[str, str], version: str, name: str = APP) -> Any:
        bundle = publishing.app_bundle(self.folder / f"{name}-{version}", version, name=name)
        return self.client.post(f"{API}/apps", content=bundle.read_bytes(), headers=headers)

    def grant(self, kind: str, who: str, right: str, effect: str = "allow", app: str = APP) -> int:
        response = self.client.post(
            f"{API}/apps/{app}/access",
            json={"principal_type": kind, "principal_name": who, "right": right, "effect": effect},
            headers=self.pete,
        )
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def catalogue(self, headers: dict[str, str]) -> list[str]:
        response = self.client.get(f"{API}/apps", headers=headers)
        assert response.status_code == 200, response.text
        return [a["name"] for a in response.json()]

    def sees(self, headers: dict[str, str]) -> bool:
        """Whether the app is there for this caller: in the catalogue and by name, agreeing."""
        listed = APP in self.catalogue(headers)
        response = self.client.get(f"{API}/apps/{APP}", headers=headers)
        if listed:
            assert response.status_code == 200, response.text
        else:
            error(response, 404, "not_found")
        return listed

    def explain(self, headers: dict[str, str], user: str) -> Any:
        return self.client.get(
            f"{API}/apps/{APP}/access/effective", params={"user": user}, headers=headers
        )


@pytest.fixture
def world(client: Any, settings_env: Path) -> World:
    return World(client, settings_env)


# -- deny beats allow ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grants", "visible"),
    [
        ([("group", "staff", "allow")], True),
        ([("user", "bob", "allow")], True),
        ([("group", EVERYONE, "allow")], True),
        ([("group", "staff", "allow"), ("user", "bob", "deny")], False),
        ([("user", "bob", "allow"), ("group", "staff", "deny")], False),
        ([("group", "staff", "allow"), ("group", "night", "deny")], False),
        ([("group", EVERYONE, "allow"), ("group", "night", "deny")], False),
        ([("user", "bob", "allow"), ("group", EVERYONE, "deny")], False),
        ([("group", "staff", "deny"), ("user", "ann", "allow")], False),
    ],
    ids=lambda v: "+".join(f"{e}-{k}-{w}" for k, w, e in v) if isinstance(v, list) else str(v),
)
def test_deny_beats_allow_across_users_and_groups(world, grants, visible):
    for kind, who, effect in grants:
        world.grant(kind, who, "read", effect)

    assert world.sees(world.bob) is visible
    # asked as admin: a deny to everyone denies the publisher too
    decision = world.explain(world.root, "bob").json()["rights"]["read"]
    assert decision["allowed"] is visible
    if not visible:
        assert decision["reason"].startswith("deny to ")


def test_a_deny_hides_the_app_at_once_and_lifting_it_shows_it_again(world):
    world.grant("group", "staff", "read")
    world.grant("group", "staff", "run")
    assert world.sees(world.bob)
    assert world.client.get(f"{API}/apps/{APP}/launch", headers=world.bob).status_code == 200

    deny = world.grant("user", "bob", "read", "deny")

    assert not world.sees(world.bob)
    # a denied reader cannot launch either, and the app stays unnamed to him
    error(world.client.get(f"{API}/apps/{APP}/launch", headers=world.bob), 404)
    removed = world.client.delete(f"{API}/apps/{APP}/access/{deny}", headers=world.pete)
    assert removed.status_code == 204
    assert world.sees(world.bob)


def test_a_deny_to_everyone_hides_the_app_from_its_publisher_too(world):
    world.grant("group", EVERYONE, "read", "deny")

    # the publisher's own allow loses; only admins still see the app (and can lift it)
    assert not world.sees(world.pete)
    assert world.catalogue(world.root) == [APP]
    grants = world.client.get(f"{API}/apps/{APP}/access", headers=world.root).json()
    [deny] = [g["id"] for g in grants if g["effect"] == "deny"]
    lifted = world.client.delete(f"{API}/apps/{APP}/access/{deny}", headers=world.root)
    assert lifted.status_code == 204
    assert world.sees(world.pete)


def test_a_later_grant_for_the_same_right_replaces_the_earlier(world):
    first = world.grant("user", "bob", "read", "deny")
    second = world.grant("user", "bob", "read", "allow")

    assert first == second
    assert world.sees(world.bob)
    grants = world.client.get(f"{API}/apps/{APP}/access", headers=world.pete).json()
    assert [(g["principal_name"], g["right"], g["effect"]) for g in grants if g["id"] == first] == [
        ("bob", "read", "allow")
    ]


# -- no grant, no access ------------------------------------------------------------------------


def test_without_a_grant_the_app_does_not_exist_for_a_user(world):
    assert world.catalogue(world.bob) == []
    for path in ("", "/releases", "/icon", "/launch", "/access", "/access/effective?user=bob"):
        error(world.client.get(f"{API}/apps/{APP}{path}", headers=world.bob), 404, "not_found")
    # the same answer as for an app that does not exist at all
    unknown = error(world.client.get(f"{API}/apps/no-such-app", headers=world.bob), 404)
    assert unknown == error(world.client.get(f"{API}/apps/{APP}", headers=world.bob), 404).replace(
        APP, "no-such-app"
    )
    # admins see everything without a grant
    assert world.catalogue(world.root) == [APP]


@pytest.mark.parametrize("right", ["run", "write"])
def test_a_right_without_read_does_not_reveal_the_app(world, right):
    world.grant("user", "bob", right)

    assert not world.sees(world.bob)
    # no route answers differently from an app that does not exist
    error(world.client.get(f"{API}/apps/{APP}/launch", headers=world.bob), 404, "not_found")
    error(world.client.get(f"{API}/apps/{APP}/access", headers=world.bob), 404, "not_found")
    refused = error(world.publish(world.bob, "2.0"), 403, "forbidden")
    assert APP not in refused
    # the explanation agrees: the right was granted, but counts only with read
    decision = world.explain(world.pete, "bob").json()["rights"][right]
    assert decision == {"allowed": False, "reason": "no read right (no grant)", "grant_id": None}


# -- write lets a plain user publish ------------------------------------------------------------


def test_write_lets_a_user_publish_releases_of_that_app_only(world):
    world.publish(world.pete, "1.0", name="other-app")
    world.grant("user", "bob", "read")
    world.grant("user", "bob", "write")
    world.grant("user", "bob", "read", app="other-app")
    grants_before = len(world.client.get(f"{API}/apps/{APP}/access", headers=world.pete).json())

    published = world.publish(world.bob, "2.0")

    assert published.status_code == 201, published.text
    assert published.json()["published_by"] == "bob" and published.json()["latest"]
    # publishing to an app gives no new grants
    grants = world.client.get(f"{API}/apps/{APP}/access", headers=world.pete).json()
    assert len(grants) == grants_before
    # a new app needs the publisher role; another app needs write on it
    new_app = world.publish(world.bob, "1.0", name="bobs-app")
    error(new_app, 403, "forbidden")
    assert "write" in error(world.publish(world.bob, "2.0", name="other-app"), 403, "forbidden")
    assert sorted(world.catalogue(world.bob)) == [APP, "other-app"]
    with session_scope() as session:
        assert session.exec(select(AppGrant).where(AppGrant.principal_id == 0)).all() == []


def test_a_user_without_write_anywhere_may_not_publish(world):
    world.grant("user", "bob", "read")
    world.grant("user", "bob", "run")

    response = world.publish(world.bob, "2.0")

    assert "publisher role, or the write right" in error(response, 403, "forbidden")


def test_a_denied_write_stops_a_publisher_too(world):
    world.grant("group", "staff", "write")
    world.grant("group", "staff", "read")
    assert world.publish(world.bob, "2.0").status_code == 201

    world.grant("user", "bob", "write", "deny")

    error(world.publish(world.bob, "3.0"), 403, "forbidden")
    versions = [
        r["version"]
        for r in world.client.get(f"{API}/apps/{APP}/releases", headers=world.pete).json()
    ]
    assert versions == ["2.0", "1.0"]


# -- the effective-rights endpoint --------------------------------------------------------------


def test_effective_rights_name_the_grant_that_decided(world):
    allow_read = world.grant("group", "staff", "read")
    deny_run = world.grant("group", "night", "run", "deny")
    world.grant("user", "bob", "run")

    response = world.explain(world.pete, "bob")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "app": APP,
        "user": "bob",
        "rights": {
            "read": {"allowed": True, "reason": "allow to group 'staff'", "grant_id": allow_read},
            "write": {"allowed": False, "reason": "no grant", "grant_id": None},
            "run": {"allowed": False, "reason": "deny to group 'night'", "grant_id": deny_run},
        },
    }
    admin = world.explain(world.pete, "root").json()["rights"]
    assert all(d["allowed"] and d["grant_id"] is None for d in admin.values())
    assert admin["read"]["reason"] == "admins hold every right"
    publisher = world.explain(world.pete, "pete").json()["rights"]
    assert publisher["write"]["reason"] == "allow to user 'pete'"


def test_users_may_ask_about_themselves_but_not_about_others(world):
    world.grant("group", "staff", "read")

    mine = world.explain(world.bob, "BOB")  # names are case-insensitive
    assert mine.status_code == 200, mine.text
    assert mine.json()["user"] == "bob" and mine.json()["rights"]["read"]["allowed"]
    # a reader is told he lacks write; who cannot read learns nothing
    assert "write" in error(world.explain(world.bob, "pete"), 403, "forbidden")
    error(world.explain(world.ann, "ann"), 404, "not_found")
    error(world.explain(world.ann, "bob"), 404, "not_found")
    # writers (and admins) may ask about anyone
    assert world.explain(world.pete, "ann").json()["rights"]["read"]["reason"] == "no grant"
    assert world.explain(world.root, "bob").status_code == 200
    error(world.explain(world.pete, "nobody"), 422, "unknown_user")


# -- groups -------------------------------------------------------------------------------------


def test_deleting_a_group_removes_its_grants(world):
    world.grant("group", "night", "read")
    world.grant("group", "staff", "run")
    assert world.sees(world.bob)

    deleted = world.client.delete(f"{API}/groups/{world.groups['night']}", headers=world.root)

    assert deleted.status_code == 204, deleted.text
    assert not world.sees(world.bob)
    grants = world.client.get(f"{API}/apps/{APP}/access", headers=world.pete).json()
    assert [
        (g["principal_name"], g["right"]) for g in grants if g["principal_type"] == "group"
    ] == [("staff", "run")]
    with session_scope() as session:
        orphans = session.exec(
            select(AppGrant).where(
                col(AppGrant.principal_type) == "group",
                col(AppGrant.principal_id) == world.groups["night"],
            )
        ).all()
    assert orphans == []
    # a new group of the same name (on SQLite possibly even the same id) inherits nothing
    world.group("night", "bob")
    assert not world.sees(world.bob)


def test_leaving_a_group_ends_its_rights(world):
    world.grant("group", "staff", "read")
    assert world.sees(world.bob)
    bob_id = world.user_id("bob")

    removed = world.client.delete(
        f"{API}/groups/{world.groups['staff']}/members/{bob_id}", headers=world.root
    )

    assert removed.status_code == 204
    assert not world.sees(world.bob)
