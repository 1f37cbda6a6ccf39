"""The authorization matrix: every REST route against every kind of caller.

The routes come from the app's own route table, so a route added later fails here
until it is entered in ``MATRIX`` with who may call it, and until it really checks.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts

from aimms_portal.api.app import create_api
from aimms_portal.db import session_scope
from aimms_portal.models import Role, User
from aimms_portal.packages import signing
from aimms_portal.services import accounts, app_access, cases, jobs, sessions, tokens
from tests import publishing
from tests.api.support import API, error, quick_user
from tests.helpers import PASSWORD, bearer

pytestmark = pytest.mark.sqlite

#: Routes that need no log-on, and the catch-all that answers 404 for unknown API paths.
OPEN = {
    "/healthz",
    "/readyz",
    "/metrics",
    f"{API}/openapi.json",
    f"{API}/docs",
    "/docs/oauth2-redirect",
    f"{API}/{{path:path}}",
    f"{API}/portal-key",
}

ANY, PUBLISHER, ADMIN, OWNER = "any", "publisher", "admin", "owner"
#: Rights on the world's app: bob may read and run it (through his group), pete wrote it.
APP_READ, APP_WRITE, APP_RUN = "app_read", "app_write", "app_run"
NEW_PASSWORD = "Another-horse-7-staple"

#: Who may call each route, and a body that route accepts (so no 422 hides a refusal).
#: ``any``: every user; ``publisher``: admins and publishers; ``admin``: admins only;
#: ``owner``: the owner of the object in the path (and admins); ``app_read``,
#: ``app_write`` and ``app_run``: holders of that right on the app in the path or the
#: body (and admins).
#: A body of ``UPLOAD`` sends the file the world made for that route.
UPLOAD: dict[str, Any] = {"upload": True}
MATRIX: dict[tuple[str, str], tuple[str, dict[str, Any] | None]] = {
    ("GET", f"{API}/me"): (ANY, None),
    ("POST", f"{API}/me/password"): (
        ANY,
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    ),
    ("GET", f"{API}/users"): (ADMIN, None),
    ("POST", f"{API}/users"): (ADMIN, {"username": "newbie", "password": NEW_PASSWORD}),
    ("GET", f"{API}/users/{{user_id}}"): (ADMIN, None),
    ("PATCH", f"{API}/users/{{user_id}}"): (ADMIN, {"full_name": "Bob Builder"}),
    ("POST", f"{API}/users/{{user_id}}/password"): (ADMIN, {"password": NEW_PASSWORD}),
    ("GET", f"{API}/groups"): (PUBLISHER, None),
    ("POST", f"{API}/groups"): (ADMIN, {"name": "planners"}),
    ("GET", f"{API}/groups/{{group_id}}"): (PUBLISHER, None),
    ("PATCH", f"{API}/groups/{{group_id}}"): (ADMIN, {"description": "night shift"}),
    ("DELETE", f"{API}/groups/{{group_id}}"): (ADMIN, None),
    ("GET", f"{API}/groups/{{group_id}}/members"): (PUBLISHER, None),
    ("POST", f"{API}/groups/{{group_id}}/members"): (ADMIN, {"user_id": "{ann_id}"}),
    ("DELETE", f"{API}/groups/{{group_id}}/members/{{user_id}}"): (ADMIN, None),
    ("GET", f"{API}/tokens"): (ANY, None),
    ("POST", f"{API}/tokens"): (ANY, {"name": "laptop"}),
    ("DELETE", f"{API}/tokens/{{token_id}}"): (OWNER, None),
    ("GET", f"{API}/audit"): (ADMIN, None),
    ("GET", f"{API}/signing-keys"): (ADMIN, None),
    ("POST", f"{API}/signing-keys"): (
        ADMIN,
        {"name": "second", "public_key": "{spare_key}"},
    ),
    ("DELETE", f"{API}/signing-keys/{{key_id}}"): (ADMIN, None),
    ("GET", f"{API}/runtimes"): (PUBLISHER, None),
    ("POST", f"{API}/runtimes"): (PUBLISHER, UPLOAD),
    ("GET", f"{API}/runtimes/{{name}}/{{version}}"): (PUBLISHER, None),
    ("DELETE", f"{API}/runtimes/{{name}}/{{version}}"): (PUBLISHER, None),
    ("POST", f"{API}/runtimes/delete-unused"): (PUBLISHER, {}),
    ("GET", f"{API}/apps"): (ANY, None),
    ("POST", f"{API}/apps"): (PUBLISHER, UPLOAD),
    ("GET", f"{API}/apps/{{name}}"): (APP_READ, None),
    ("DELETE", f"{API}/apps/{{name}}"): (APP_WRITE, None),
    ("GET", f"{API}/apps/{{name}}/icon"): (APP_READ, None),
    ("GET", f"{API}/apps/{{name}}/launch"): (APP_READ, None),
    ("GET", f"{API}/apps/{{name}}/releases"): (APP_READ, None),
    ("PATCH", f"{API}/apps/{{name}}/releases/{{version}}"): (APP_WRITE, {"hidden": True}),
    ("DELETE", f"{API}/apps/{{name}}/releases/{{version}}"): (APP_WRITE, None),
    ("PUT", f"{API}/apps/{{name}}/latest"): (APP_WRITE, {"version": "0.9"}),
    ("GET", f"{API}/apps/{{name}}/access"): (APP_WRITE, None),
    ("POST", f"{API}/apps/{{name}}/access"): (
        APP_WRITE,
        {"principal_type": "user", "principal_name": "ann", "right": "read"},
    ),
    ("DELETE", f"{API}/apps/{{name}}/access/{{grant_id}}"): (APP_WRITE, None),
    ("GET", f"{API}/apps/{{name}}/access/effective"): (APP_WRITE, None),
    ("POST", f"{API}/cases"): (ANY, UPLOAD),
    ("GET", f"{API}/cases"): (ANY, None),
    ("GET", f"{API}/cases/{{case_id}}"): (OWNER, None),
    ("GET", f"{API}/cases/{{case_id}}/content"): (OWNER, None),
    ("DELETE", f"{API}/cases/{{case_id}}"): (OWNER, None),
    ("POST", f"{API}/jobs"): (APP_RUN, {"app": "corpus-app", "procedure": "solve"}),
    ("GET", f"{API}/jobs"): (ANY, None),
    ("POST", f"{API}/jobs/delete"): (ANY, {}),
    ("GET", f"{API}/jobs/{{job_id}}"): (OWNER, None),
    ("GET", f"{API}/jobs/{{job_id}}/log"): (OWNER, None),
    ("POST", f"{API}/jobs/{{job_id}}/cancel"): (OWNER, None),
    ("DELETE", f"{API}/jobs/{{job_id}}"): (OWNER, None),
    ("POST", f"{API}/sessions"): (APP_RUN, {"app": "corpus-app", "kind": "desktop"}),
    ("GET", f"{API}/sessions"): (ANY, None),
    ("GET", f"{API}/sessions/export.csv"): (ANY, None),
    ("GET", f"{API}/sessions/{{session_id}}"): (OWNER, None),
    ("GET", f"{API}/sessions/{{session_id}}/log"): (OWNER, None),
    ("GET", f"{API}/sessions/{{session_id}}/events"): (OWNER, None),
    ("DELETE", f"{API}/sessions/{{session_id}}"): (OWNER, None),
}

#: Routes that act on another object of the world than the path's name says by default:
#: only a finished job can be deleted.
OBJECTS: dict[tuple[str, str], dict[str, str]] = {
    ("DELETE", f"{API}/jobs/{{job_id}}"): {"job_id": "finished_job_id"},
}

#: Path parameters that differ between resources (a runtime's name is not an app's).
FILL: dict[str, dict[str, str]] = {
    f"{API}/runtimes/": {"name": "corpus-runtime", "version": "0.5"},
    f"{API}/apps/": {"name": "corpus-app", "version": "0.9"},
}

#: Query parameters a route needs.
PARAMS: dict[tuple[str, str], dict[str, str]] = {
    ("GET", f"{API}/apps/{{name}}/access/effective"): {"user": "ann"},
    ("POST", f"{API}/cases"): {"name": "input.csv"},
}


def protected_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route that needs a log-on, from the route table."""
    found = set()
    for route in iter_route_contexts(create_api().routes):
        path = route.path or ""
        # the runner's routes take session tokens, not users (tests/api/test_runner.py);
        # the proxy answers browsers its own way (tests/api/test_proxy.py)
        if path in OPEN or path.startswith((f"{API}/auth/", f"{API}/runner/", "/s/")):
            continue
        for method in route.methods or ():
            if method != "HEAD":
                found.add((method, path))
    # deletions last, so that one wrongly allowed cannot hide what follows it
    return sorted(found, key=lambda r: (r[0] == "DELETE", r[1], r[0]))


ROUTES = protected_routes()
CHANGES = [r for r in ROUTES if r[0] != "GET"]
READS = [r for r in ROUTES if r[0] == "GET"]


def _level(route: tuple[str, str]) -> str:
    return MATRIX[route][0] if route in MATRIX else ANY


def _where(*levels: str) -> list[tuple[str, str]]:
    """The routes whose level is one of ``levels``."""
    return [r for r in ROUTES if _level(r) in levels]


def _route_id(route: tuple[str, str]) -> str:
    return f"{route[0]} {route[1]}"


#: Callers by name: whose token, with which scopes.
CALLERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "root": ("root", ("read", "write", "admin")),
    "root_without_admin_scope": ("root", ("read", "write")),
    "root_read_only": ("root", ("read", "admin")),
    "root_write_only": ("root", ("write", "admin")),
    "ann": ("ann", ("read", "write")),
    "pete": ("pete", ("read", "write")),
}


@dataclass
class World:
    """Users of every role, a group with bob in it, and a token of bob's."""

    users: dict[str, User]
    ids: dict[str, Any]
    bobs_token: str
    uploads: dict[tuple[str, str], tuple[Path, dict[str, str]]]
    _headers: dict[str, dict[str, str]] = field(default_factory=dict)

    def headers(self, who: str) -> dict[str, str]:
        if who == "bob":
            return {"Authorization": f"Bearer {self.bobs_token}"}
        if who not in self._headers:
            username, scopes = CALLERS[who]
            self._headers[who] = bearer(self.users[username], *scopes)
        return self._headers[who]

    def path(self, template: str, method: str = "GET") -> str:
        """The route template with this world's objects filled in."""
        fill = next((v for k, v in FILL.items() if template.startswith(k)), {})
        other = {k: self.ids[v] for k, v in OBJECTS.get((method, template), {}).items()}
        return template.format(**(self.ids | fill | other))

    def request(self, client: Any, route: tuple[str, str], who: str | None) -> Any:
        method, template = route
        path = self.path(template, method)
        body = MATRIX.get(route, (ANY, None))[1]
        headers = self.headers(who) if who else {}
        params = PARAMS.get(route)
        if body is UPLOAD:
            upload, extra = self.uploads[route]
            return client.request(
                method,
                path,
                content=upload.read_bytes(),
                params=params,
                headers=headers | extra | {"Content-Type": "application/octet-stream"},
            )
        if body is not None:
            body = {
                k: self.ids[v[1:-1]] if isinstance(v, str) and v.startswith("{") else v
                for k, v in body.items()
            }
        return client.request(method, path, json=body, params=params, headers=headers)

    def refusals(
        self, client: Any, routes: list[tuple[str, str]], who: str | None, status: int, code: str
    ) -> list[str]:
        """Call every route as ``who``; returns those that did not refuse as expected.

        A refused call changes nothing, so one world serves all the routes in turn.
        """
        wrong = []
        for route in routes:
            response = self.request(client, route, who)
            try:
                error(response, status, code)
            except AssertionError:
                wrong.append(f"{_route_id(route)}: {response.status_code} {response.text[:200]}")
        return wrong


@pytest.fixture
def world(db: None, tmp_path: Path) -> World:
    users = {
        "root": quick_user("root", Role.admin.value),
        "ann": quick_user("ann"),
        "pete": quick_user("pete", Role.publisher.value),
        "bob": quick_user("bob"),
    }
    root, bob = users["root"], users["bob"]
    with session_scope() as session:
        group = accounts.create_group(session, actor=root, name="staff")
        accounts.add_member(session, actor=root, group_id=group.id or 0, user_id=bob.id or 0)
        token, secret = tokens.create_token(
            session, actor=bob, name="bob", scopes=["read", "write"]
        )
    # publishing: a trusted key, a used and an unused runtime, pete's app with two
    # releases (0.9 and the latest, 1.0) that bob's group may read and run
    pete = users["pete"]
    key = publishing.trust_test_key(root)
    publishing.upload_runtime(pete, tmp_path, "1.0")
    publishing.upload_runtime(pete, tmp_path, "0.5")
    publishing.publish(pete, publishing.app_bundle(tmp_path, "0.9"))
    publishing.publish(pete, publishing.app_bundle(tmp_path, "1.0"))
    with session_scope() as session:
        for right in ("read", "run"):
            app_access.set_grant(
                session,
                actor=pete,
                name=publishing.APP_NAME,
                principal_type="group",
                principal_name="staff",
                right=right,
                effect="allow",
            )
        grant_id = app_access.list_grants(session, actor=pete, name=publishing.APP_NAME)[0]
    # a case of bob's, and a file to upload as one
    with session_scope() as session:
        bobs_case = cases.upload_case(session, actor=bob, name="bob.csv", source=[b"a,b\n1,2\n"])
    # a job of bob's that waits, and one that has finished
    with session_scope() as session:
        waiting = jobs.submit_job(session, actor=bob, app=publishing.APP_NAME, procedure="solve")
        done = jobs.submit_job(session, actor=bob, app=publishing.APP_NAME, procedure="solve")
        jobs.cancel_job(session, actor=bob, job_id=done.job.id or 0)
    # a desktop session of bob's (no launcher needed)
    bobs_session, _ = sessions.launch_session(actor=bob, app=publishing.APP_NAME, kind="desktop")
    case_file = tmp_path / "case.csv"
    case_file.write_bytes(b"x,y\n3,4\n")
    package, signature = publishing.runtime_package(tmp_path, "2.0")
    uploads = {
        ("POST", f"{API}/runtimes"): (
            package,
            {"X-Runtime-Signature": base64.b64encode(signature).decode()},
        ),
        ("POST", f"{API}/apps"): (publishing.app_bundle(tmp_path, "1.0", name="fresh-app"), {}),
        ("POST", f"{API}/cases"): (case_file, {}),
    }
    ids = {
        "user_id": bob.id or 0,
        "group_id": group.id or 0,
        "token_id": token.id or 0,
        "ann_id": users["ann"].id or 0,
        "key_id": key.id or 0,
        "spare_key": signing.generate_signing_key()[1],
        "grant_id": grant_id.grant.id or 0,
        "case_id": bobs_case.id or 0,
        "job_id": waiting.job.id or 0,
        "finished_job_id": done.job.id or 0,
        "session_id": bobs_session.session.id or 0,
    }
    return World(users=users, ids=ids, bobs_token=secret, uploads=uploads)


def test_every_route_is_in_the_matrix():
    missing = sorted(set(ROUTES) - set(MATRIX))
    stale = sorted(set(MATRIX) - set(ROUTES))
    assert not missing, f"routes with no entry in MATRIX (who may call them?): {missing}"
    assert not stale, f"MATRIX names routes that no longer exist: {stale}"


def test_anonymous_callers_get_401(client, world):
    assert ROUTES, "the route table came back empty"
    wrong = world.refusals(client, ROUTES, None, 401, "not_authenticated")
    assert not wrong, "\n".join(wrong)
    assert client.get(f"{API}/me").headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("route", ROUTES, ids=_route_id)
def test_the_right_caller_gets_through(client, world, route):
    caller = {
        ANY: "ann",
        PUBLISHER: "pete",
        ADMIN: "root",
        OWNER: "bob",
        APP_READ: "bob",
        APP_RUN: "bob",
        APP_WRITE: "pete",
    }[_level(route)]
    response = world.request(client, route, caller)
    assert response.status_code < 300, response.text


@pytest.mark.parametrize(
    ("who", "levels"),
    [
        ("ann", (ADMIN, PUBLISHER)),
        ("pete", (ADMIN,)),
        ("root_without_admin_scope", (ADMIN,)),
    ],
    ids=["user", "publisher", "admin-token-without-admin-scope"],
)
def test_the_wrong_role_gets_403(client, world, who, levels):
    routes = _where(*levels)
    assert routes
    wrong = world.refusals(client, routes, who, 403, "forbidden")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("route", _where(ANY, PUBLISHER), ids=_route_id)
def test_an_admin_token_without_the_admin_scope_keeps_publisher_rights(client, world, route):
    response = world.request(client, route, "root_without_admin_scope")
    assert response.status_code < 300, response.text


@pytest.mark.parametrize(
    ("who", "routes", "scope"),
    [("root_read_only", CHANGES, "write"), ("root_write_only", READS, "read")],
    ids=["changes-without-write", "reads-without-read"],
)
def test_a_token_without_the_needed_scope_gets_403(client, world, who, routes, scope):
    assert routes
    wrong = world.refusals(client, routes, who, 403, "insufficient_scope")
    assert not wrong, "\n".join(wrong)
    message = error(world.request(client, routes[0], who), 403)
    assert repr(scope) in message


@pytest.mark.parametrize("route", _where(OWNER, APP_READ, APP_WRITE, APP_RUN), ids=_route_id)
def test_another_users_object_is_not_found(client, world, route):
    error(world.request(client, route, "ann"), 404, "not_found")
    # and the object is untouched: bob's token still works
    assert client.get(f"{API}/me", headers=world.headers("bob")).status_code == 200


@pytest.mark.parametrize("route", _where(APP_WRITE), ids=_route_id)
def test_readers_of_an_app_may_not_change_it(client, world, route):
    error(world.request(client, route, "bob"), 403, "forbidden")


def test_admins_may_revoke_anyones_token(client, world):
    route = ("DELETE", f"{API}/tokens/{{token_id}}")
    assert world.request(client, route, "root").status_code == 204
    error(client.get(f"{API}/me", headers=world.headers("bob")), 401, "token_revoked")


def test_only_admins_list_another_users_tokens(client, world):
    path = f"{API}/tokens?user_id={world.ids['user_id']}"
    error(client.get(path, headers=world.headers("ann")), 403, "forbidden")
    listed = client.get(path, headers=world.headers("root"))
    assert listed.status_code == 200
    assert [t["id"] for t in listed.json()["items"]] == [world.ids["token_id"]]


def test_malformed_json_is_a_400_on_every_route_that_takes_a_body(client, world):
    with_body = [
        route for route in ROUTES if MATRIX.get(route, (ANY, None))[1] not in (None, UPLOAD, {})
    ]
    assert with_body
    headers = world.headers("root") | {"Content-Type": "application/json"}
    for method, template in with_body:
        response = client.request(
            method, world.path(template), content=b'{"name": ', headers=headers
        )
        error(response, 400, "malformed_json")
