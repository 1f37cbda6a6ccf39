"""Two portal processes on one PostgreSQL database: what one changes, the other obeys
at once, although both answer log-on checks, groups and user lists from their caches.

Each portal is ``python -m aimms_portal.backend`` on a port of its own. Before a change
the test makes sure the other portal really answers from its cache: it changes the
user's full name behind the portals' backs (with triggers off, so no notification
goes out) and sees the old name come back. Then the change goes through one portal,
and the very next request to the other must see it.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest
from sqlalchemy.engine import make_url

from aimms_portal.models import Role, User
from tests.api.support import API, quick_user
from tests.helpers import PASSWORD, USE_SQLITE, bearer
from tests.servers import free_port
from tests.solving import PortalProcess

PATIENCE = 30.0
_probes = itertools.count()


@pytest.fixture
def portals(db: None, settings_env: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The addresses of two running portals on the test database."""
    if USE_SQLITE:
        pytest.skip("one process only on SQLite")
    processes = []
    for index in range(2):
        port = free_port()
        env = dict(os.environ) | {
            "AIMMS_PORTAL_PORT": str(port),
            "AIMMS_PORTAL_SESSIONS_DIR": str(tmp_path / f"sessions-{index}"),
        }
        processes.append(PortalProcess(env, tmp_path / f"portal-{index}.log", port))
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.wait_until_serving()
        yield processes[0].url, processes[1].url
    finally:
        for process in processes:
            process.stop()


def _silently_rename(database_url: str, user: User, full_name: str) -> None:
    url = make_url(database_url)
    conn = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SET session_replication_role = replica")  # no triggers
            cursor.execute("UPDATE users SET full_name = %s WHERE id = %s", (full_name, user.id))
    finally:
        conn.close()


def answer_from_cache(
    portal: str, user: User, database_url: str, **request: object
) -> httpx.Response:
    """Wait until ``portal`` answers ``GET /me`` for ``user`` from its cache; the answer."""
    deadline = time.monotonic() + PATIENCE
    with httpx.Client(base_url=portal, trust_env=False) as client:
        while True:
            before = client.get(f"{API}/me", **request)  # type: ignore[arg-type]
            assert before.status_code == 200, before.text
            _silently_rename(database_url, user, f"probe {next(_probes)}")
            after = client.get(f"{API}/me", **request)  # type: ignore[arg-type]
            assert after.status_code == 200, after.text
            if after.json()["full_name"] == before.json()["full_name"]:
                return after  # the database says otherwise: this came from the cache
            if time.monotonic() > deadline:
                raise AssertionError(f"{portal} never answered from its cache")
            time.sleep(0.05)


def _token(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def test_a_token_revoked_on_one_portal_is_refused_at_once_by_the_other(portals, database_url):
    one, other = portals
    ann = quick_user("ann")
    headers = bearer(ann, "read", "write")
    answer_from_cache(other, ann, database_url, headers=headers)

    listed = httpx.get(f"{one}{API}/tokens", headers=headers, trust_env=False).json()
    [token] = listed["items"]
    revoked = httpx.delete(f"{one}{API}/tokens/{token['id']}", headers=headers, trust_env=False)
    assert revoked.status_code == 204, revoked.text

    refused = httpx.get(f"{other}{API}/me", headers=headers, trust_env=False)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "token_revoked"


def test_a_user_disabled_on_one_portal_is_refused_at_once_by_the_other(portals, database_url):
    one, other = portals
    root = quick_user("root", Role.admin.value)
    ann = quick_user("ann")
    ann_token = bearer(ann, "read")
    answer_from_cache(other, ann, database_url, headers=ann_token)

    disabled = httpx.patch(
        f"{one}{API}/users/{ann.id}",
        json={"is_active": False},
        headers=bearer(root),
        trust_env=False,
    )
    assert disabled.status_code == 200, disabled.text

    refused = httpx.get(f"{other}{API}/me", headers=ann_token, trust_env=False)
    assert refused.status_code == 401, refused.text


def test_a_log_off_on_one_portal_ends_the_log_on_at_once_on_the_other(portals, database_url):
    one, other = portals
    ann = quick_user("ann")
    with httpx.Client(base_url=one, trust_env=False) as browser:
        login = browser.post(f"{API}/auth/login", json={"username": "ann", "password": PASSWORD})
        assert login.status_code == 200, login.text
        cookies = dict(browser.cookies)
        answer_from_cache(other, ann, database_url, cookies=cookies)

        logout = browser.post(
            f"{API}/auth/logout", headers={"X-CSRF-Token": login.json()["csrf_token"]}
        )
        assert logout.status_code == 204, logout.text

    with httpx.Client(base_url=other, trust_env=False, cookies=cookies) as client:
        refused = client.get(f"{API}/me")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "session_ended"


def test_role_group_and_user_changes_on_one_portal_show_at_once_on_the_other(portals, database_url):
    one, other = portals
    root = quick_user("root", Role.admin.value)
    boss = quick_user("boss", Role.admin.value)
    root_token, boss_token = bearer(root), bearer(boss)
    seen = answer_from_cache(other, boss, database_url, headers=boss_token)
    assert seen.json()["groups"] == ["everyone"]
    with httpx.Client(base_url=other, trust_env=False, headers=boss_token) as client:
        page = client.get(f"{API}/users", params={"limit": 50})
        assert page.status_code == 200 and page.json()["total"] == 2

    with httpx.Client(base_url=one, trust_env=False, headers=root_token) as admin:
        group = admin.post(f"{API}/groups", json={"name": "planners"}).json()
        added = admin.post(f"{API}/groups/{group['id']}/members", json={"user_id": boss.id})
        assert added.status_code in (200, 201, 204), added.text
        created = admin.post(
            f"{API}/users", json={"username": "carol", "password": "Correct-horse-9-battery"}
        )
        assert created.status_code == 201, created.text

    with httpx.Client(base_url=other, trust_env=False, headers=boss_token) as client:
        assert client.get(f"{API}/me").json()["groups"] == ["everyone", "planners"]
        page = client.get(f"{API}/users", params={"limit": 50}).json()
        assert [u["username"] for u in page["items"]] == ["boss", "carol", "root"]

    with httpx.Client(base_url=one, trust_env=False, headers=root_token) as admin:
        demoted = admin.patch(f"{API}/users/{boss.id}", json={"role": Role.user.value})
        assert demoted.status_code == 200, demoted.text

    with httpx.Client(base_url=other, trust_env=False, headers=boss_token) as client:
        refused = client.get(f"{API}/users", params={"limit": 50})
    assert refused.status_code == 403, refused.text
