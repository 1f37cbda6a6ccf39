"""WebUI sessions through the proxy, with real runner and app processes: launch, work
through the proxy (HTTP streamed both ways, WebSockets), who gets through (forged
credentials too), apps that never answer, crash or stop answering, seats (per user, for
the portal, the last one raced for), idle culling and what keeps a session alive, the
longest lifetime, usage figures, terminate, and the ended-session page."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime

import httpx
import pytest
import websockets
from sqlmodel import select

from aimms_portal import config
from aimms_portal.api import proxy
from aimms_portal.api.app import create_api
from aimms_portal.db import session_scope
from aimms_portal.errors import Conflict, Gone, NotAuthenticated, NotFound, PortalError
from aimms_portal.models import AppSession, RuntimeVersion, SigningKey, User
from aimms_portal.packages import pack_app
from aimms_portal.services import app_access, apps, sessions, signing_keys, tokens
from aimms_portal.storage import get_storage
from tests.api.support import error, quick_user
from tests.api.test_upstream import Handler, Served, answer, read_request, serving
from tests.helpers import PASSWORD, run_async
from tests.solving import (
    MANIFEST,
    PROCEDURES_PY,
    SOLVER_APP,
    SolvePortal,
    backend_processes,
    process_alive,
    runner_pid,
    solver_bundle,
)


def _browser(portal: SolvePortal, user: User) -> httpx.Client:
    """An HTTP client logged on as ``user`` with the portal's cookie, like a owner."""
    client = httpx.Client(base_url=portal.url, timeout=30, trust_env=False)
    logged = client.post(
        "/api/v1/auth/login", json={"username": user.username, "password": PASSWORD}
    )
    assert logged.status_code == 200, logged.text
    client.headers["X-CSRF-Token"] = logged.json()["csrf_token"]
    return client


@pytest.fixture
def owner(solve_portal: SolvePortal) -> Iterator[httpx.Client]:
    """A browser of the plain user's (who may run the test app)."""
    client = _browser(solve_portal, solve_portal.user)
    try:
        yield client
    finally:
        client.close()


def _launch(client: httpx.Client, **fields: str) -> dict:
    response = client.post("/api/v1/sessions", json={"app": SOLVER_APP, **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


def _wait_state(client: httpx.Client, session_id: int, *states: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        session = client.get(f"/api/v1/sessions/{session_id}").json()
        if session["state"] in states:
            return dict(session)
        assert time.monotonic() < deadline, session
        time.sleep(0.1)


def _ready(client: httpx.Client) -> dict:
    launched = _launch(client)
    assert launched["state"] == "starting" and launched["token"] is None
    return _wait_state(client, launched["id"], "ready", "failed")


def _settings(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"AIMMS_PORTAL_{name.upper()}", value)
    config.get_settings.cache_clear()


def _reaper_settings(portal: SolvePortal, monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Settings for the test's API and its scheduler's reaper (which keeps its own)."""
    _settings(monkeypatch, **values)
    portal.scheduler.settings = config.get_settings()
    portal.scheduler.reaper.settings = config.get_settings()


def _cookie(client: httpx.Client) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in client.cookies.items())}


def _ws_url(portal: SolvePortal, session: dict) -> str:
    return portal.url.replace("http", "ws") + f"{session['url']}ws"


def _ws_refusal(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """The status and error body of a WebSocket upgrade the proxy refuses."""

    async def connect() -> None:
        async with websockets.connect(url, additional_headers=headers, open_timeout=5):
            pass

    with pytest.raises(websockets.InvalidStatus) as refused:
        run_async(connect())
    response = refused.value.response
    return response.status_code, json.loads(bytes(response.body or b""))


def _may_run(publisher: User, *users: User) -> None:
    with session_scope() as session:
        for user in users:
            for right in ("read", "run"):
                app_access.set_grant(
                    session,
                    actor=publisher,
                    name=SOLVER_APP,
                    principal_type="user",
                    principal_name=user.username,
                    right=right,
                    effect="allow",
                )


def _reached_the_app(client: httpx.Client, session: dict) -> int:
    """How many requests reached the session's app so far (this one included)."""
    return int(client.get(f"{session['url']}api/count").json()["count"])


def test_a_webui_session_works_through_the_proxy(
    solve_portal: SolvePortal, owner: httpx.Client
) -> None:
    session = _ready(owner)
    assert session["state"] == "ready", session["reason"]
    base = session["url"]
    assert base == f"/s/{session['id']}/"

    page = owner.get(base)
    assert page.status_code == 200 and "Hello from solver-app" in page.text
    # nothing of the portal's log-on reaches the app
    with solve_portal.client():
        token = solve_portal.tokens["uma"]
    seen = owner.get(f"{base}api/headers", headers={"Authorization": f"Bearer {token}"}).json()
    names = {k.lower(): v for k, v in seen.items()}
    assert "authorization" not in names
    assert "aimms_portal" not in names.get("cookie", "")
    assert names["x-forwarded-for"] == "127.0.0.1"
    # and the app cannot set it
    cookies = owner.get(f"{base}api/cookie").headers.get_list("set-cookie")
    assert cookies == [f"app=1; Path={base}"]
    # a large body streams through both ways
    body = os.urandom(6 * 1024 * 1024)
    echoed = owner.post(f"{base}api/echo", content=body).json()
    assert echoed == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    big = owner.get(f"{base}api/big")
    assert big.status_code == 200 and big.content == bytes(range(256)) * 12288
    assert big.headers["content-length"] == str(256 * 12288)
    chunked = owner.get(f"{base}api/chunked")
    assert chunked.status_code == 200 and chunked.text == "one,two,three"
    # proxied requests are counted under the proxy's route template, not one per path
    metrics = httpx.get(f"{solve_portal.url}/metrics", trust_env=False).text
    assert 'route="/s/{session_id}/{path:path}",status="200"' in metrics
    # a WebSocket too, with the log-on cookie
    cookie = "; ".join(f"{k}={v}" for k, v in owner.cookies.items())
    ws_url = solve_portal.url.replace("http", "ws") + f"{base}ws"

    async def talk() -> str:
        async with websockets.connect(ws_url, additional_headers={"Cookie": cookie}) as ws:
            await ws.send("ping")
            return str(await ws.recv())

    assert run_async(talk()) == "echo:ping"
    # traffic counts as activity
    assert owner.get(f"/api/v1/sessions/{session['id']}").json()["last_activity_at"]


def test_only_the_owner_and_admins_get_through(
    solve_portal: SolvePortal, owner: httpx.Client
) -> None:
    session = _ready(owner)
    base = session["url"]
    other = quick_user("olga")
    boss = quick_user("boss", "admin")

    with contextlib.closing(_browser(solve_portal, other)) as olga:
        refused = olga.get(base, headers={"Accept": "application/json"})
        made_up = olga.get("/s/987654/", headers={"Accept": "application/json"})
        assert refused.status_code == made_up.status_code == 404
        assert refused.json()["error"]["message"] == f"No session {session['id']}."
        assert olga.get(f"/api/v1/sessions/{session['id']}").status_code == 404
    anonymous = httpx.get(f"{solve_portal.url}{base}", headers={"Accept": "text/html"})
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    with contextlib.closing(_browser(solve_portal, boss)) as admin:
        assert admin.get(base).status_code == 200

    # a WebSocket: the owner's cookie gets through, another user's gets the same "no such
    # session" as an HTTP request, and so does nobody's (with "log on")
    ws_url = _ws_url(solve_portal, session)

    async def as_owner() -> str:
        async with websockets.connect(ws_url, additional_headers=_cookie(owner)) as ws:
            await ws.send("mine")
            return str(await ws.recv())

    assert run_async(as_owner()) == "echo:mine"
    with contextlib.closing(_browser(solve_portal, other)) as olga:
        status, body = _ws_refusal(ws_url, _cookie(olga))
    assert status == 404
    assert body == {"error": {"code": "not_found", "message": f"No session {session['id']}."}}
    status, body = _ws_refusal(ws_url)
    assert (status, body["error"]["message"]) == (401, "Please log on.")


def test_api_tokens_pass_with_their_scopes(solve_portal: SolvePortal, owner: httpx.Client) -> None:
    session = _ready(owner)
    base = session["url"]
    uma = solve_portal.user
    boss = quick_user("chief", "admin")

    def token(user: User, *scopes: str) -> dict[str, str]:
        with session_scope() as db_session:
            _, secret = tokens.create_token(
                db_session, actor=user, name="proxy", scopes=list(scopes)
            )
        return {"Authorization": f"Bearer {secret}", "Accept": "application/json"}

    with httpx.Client(base_url=solve_portal.url, timeout=30, trust_env=False) as client:
        before = _reached_the_app(owner, session)
        # the owner's read-only token may look, not change
        reader = token(uma, "read")
        assert client.get(f"{base}api/count", headers=reader).status_code == 200
        refused = client.post(f"{base}api/echo", content=b"x", headers=reader)
        assert (
            error(refused, 403, "insufficient_scope") == "This API token lacks the 'write' scope."
        )
        status, body = _ws_refusal(_ws_url(solve_portal, session), reader)
        assert status == 403 and body["error"]["code"] == "insufficient_scope"
        writer = token(uma, "read", "write")
        assert client.post(f"{base}api/echo", content=b"x", headers=writer).status_code == 200
        # an admin's token opens another user's session only with the admin scope
        plain = token(boss, "read", "write")
        assert error(client.get(base, headers=plain), 404, "not_found") == (
            f"No session {session['id']}."
        )
        assert client.get(base, headers=token(boss, "read", "write", "admin")).status_code == 200
        # what was refused never reached the app: two GETs, one POST and this count did
        assert _reached_the_app(owner, session) == before + 4


def test_an_app_that_never_answers_says_why(
    solve_portal: SolvePortal, owner: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    _settings(monkeypatch, webui_answer_timeout_s="2")
    with open(solver_bundle(solve_portal.folder, "2.0", webui_mode="silent"), "rb") as stream:
        apps.publish_bundle(actor=solve_portal.publisher, source=stream)

    launched = _launch(owner, version="2.0")
    ended = _wait_state(owner, launched["id"], "failed", "ready")

    assert ended["state"] == "failed"
    assert ended["reason"] == "the app did not answer within 2 s"
    log = owner.get(f"/api/v1/sessions/{launched['id']}/log").json()["lines"]
    assert "web: still thinking" in log
    page = owner.get(launched["url"], headers={"Accept": "text/html"})
    assert page.status_code == 410
    assert "did not answer within 2 s" in page.text and "session-relaunch" in page.text


def test_an_app_that_crashes_at_start_says_why(
    solve_portal: SolvePortal, owner: httpx.Client
) -> None:
    with open(solver_bundle(solve_portal.folder, "3.0", webui_mode="crash"), "rb") as stream:
        apps.publish_bundle(actor=solve_portal.publisher, source=stream)

    ended = _wait_state(owner, _launch(owner, version="3.0")["id"], "failed", "ready")

    assert ended["reason"] == "the app exited with code 3 before it answered"
    log = owner.get(f"/api/v1/sessions/{ended['id']}/log").json()["lines"]
    assert "web: cannot read my configuration" in log


def test_seats_and_terminate(
    solve_portal: SolvePortal, owner: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    _settings(monkeypatch, max_sessions_per_user="1")
    first = _ready(owner)

    refused = owner.post("/api/v1/sessions", json={"app": SOLVER_APP})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "no_free_seats"
    assert "End one on the Sessions page" in refused.json()["error"]["message"]

    with session_scope() as session:
        row = session.get(AppSession, first["id"])
        assert row is not None
    pid = runner_pid(row)
    ended = owner.delete(f"/api/v1/sessions/{first['id']}").json()
    assert ended["state"] == "stopped" and ended["reason"] == "ended by you"
    assert not process_alive(pid)
    # the seat is free at once
    assert _launch(owner)["state"] == "starting"
    # the ended session's page says so; a WebSocket to it is refused with the reason
    page = owner.get(first["url"], headers={"Accept": "text/html"})
    assert page.status_code == 410 and "ended by you" in page.text
    status, body = _ws_refusal(_ws_url(solve_portal, first), _cookie(owner))
    assert status == 410
    assert body == {
        "error": {"code": "session_ended", "message": "This session has ended: ended by you."}
    }


def test_an_idle_session_is_culled_and_frees_its_seat(
    solve_portal: SolvePortal, owner: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    _reaper_settings(
        solve_portal, monkeypatch, webui_idle_minutes="0.05", max_sessions_per_user="1"
    )
    session = _ready(owner)

    ended = _wait_state(owner, session["id"], "stopped", "failed", timeout=60)

    assert ended["reason"] == "idle for 0.05 minutes"
    assert _launch(owner)["state"] == "starting"
    events = owner.get(f"/api/v1/sessions/{session['id']}/events").json()
    assert [e["state"] for e in events] == ["pending", "starting", "ready", "stopping", "stopped"]


def test_sessions_export_as_csv_with_their_peak_memory_and_cpu(
    solve_portal: SolvePortal, owner: httpx.Client
) -> None:
    session = _ready(owner)
    # the reaper polls the launcher every second: a few polls, then the figures are in
    deadline = time.monotonic() + 30
    while not (session["peak_memory_bytes"] and session["cpu_seconds"]):
        assert time.monotonic() < deadline, session
        time.sleep(0.2)
        session = owner.get(f"/api/v1/sessions/{session['id']}").json()
    assert session["peak_memory_bytes"] > 1024 * 1024  # the runner and the app: Pythons
    assert session["cpu_seconds"] > 0

    export = owner.get("/api/v1/sessions/export.csv")
    assert export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert list(rows[0])[:6] == ["id", "kind", "app", "version", "owner", "state"]
    row = rows[0]
    assert [row[k] for k in ("id", "kind", "app", "version", "owner", "state")] == [
        str(session["id"]),
        "webui",
        SOLVER_APP,
        "1.0",
        "uma",
        "ready",
    ]
    assert int(row["peak_memory_bytes"]) >= session["peak_memory_bytes"] > 0
    assert float(row["cpu_seconds"]) > 0


def test_bad_launches_are_refused(solve_portal: SolvePortal, owner: httpx.Client) -> None:
    for body, status, code in [
        ({"app": "nope"}, 404, "not_found"),
        ({"app": SOLVER_APP, "version": "9"}, 404, "not_found"),
        ({"app": SOLVER_APP, "kind": "solve"}, 422, "invalid_request"),
    ]:
        response = owner.post("/api/v1/sessions", json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    with contextlib.closing(_browser(solve_portal, quick_user("nobody"))) as nobody:
        assert nobody.post("/api/v1/sessions", json={"app": SOLVER_APP}).status_code == 404


def test_traffic_and_an_open_websocket_keep_a_session_alive(
    solve_portal: SolvePortal, owner: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # idle after 1.8 s: shorter than a kept pass (2 s), so requests let through on one
    # must count too, not only those that ask the database
    _reaper_settings(solve_portal, monkeypatch, webui_idle_minutes="0.03")
    session = _ready(owner)
    url = f"/api/v1/sessions/{session['id']}"

    def activity() -> datetime:
        seen = owner.get(url).json()
        assert seen["state"] == "ready", seen
        return datetime.fromisoformat(seen["last_activity_at"])

    # requests through the proxy, for several idle periods
    assert owner.get(session["url"]).status_code == 200
    first = activity()
    until = time.monotonic() + 8
    while time.monotonic() < until:
        assert owner.get(session["url"]).status_code == 200
        time.sleep(0.2)
    after_requests = activity()
    assert after_requests > first

    # a WebSocket held open, nothing sent, for as long
    async def hold_open() -> datetime:
        async with websockets.connect(
            _ws_url(solve_portal, session), additional_headers=_cookie(owner)
        ) as ws:
            await asyncio.sleep(8)
            seen = await asyncio.to_thread(activity)
            await ws.send("still here")
            assert await ws.recv() == "echo:still here"
            return seen

    after_websocket = run_async(hold_open())
    assert after_websocket > after_requests

    # left alone, it is culled
    ended = _wait_state(owner, session["id"], "stopped", "failed", timeout=30)
    assert ended["reason"] == "idle for 0.03 minutes"


def test_a_session_ends_at_its_longest_lifetime(
    solve_portal: SolvePortal, owner: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 7.2 s from its launch, however busy it is
    _reaper_settings(solve_portal, monkeypatch, webui_max_hours="0.002", max_sessions_per_user="1")
    session = _launch(owner)
    with session_scope() as db_session:
        row = db_session.get(AppSession, session["id"])
        assert row is not None
    pid = runner_pid(row)

    # (the first start of the runtime may take longer than that: only a ready one is ended)
    ended = _wait_state(owner, session["id"], "stopped", "failed", timeout=150)

    assert (ended["state"], ended["reason"]) == (
        "stopped",
        "reached its longest lifetime of 0.002 h",
    )
    events = owner.get(f"/api/v1/sessions/{session['id']}/events").json()
    assert [e["state"] for e in events] == ["pending", "starting", "ready", "stopping", "stopped"]
    assert not process_alive(pid)
    page = owner.get(session["url"], headers={"Accept": "text/html"})
    assert page.status_code == 410
    assert "This session has ended" in page.text
    assert "reached its longest lifetime of 0.002 h" in page.text
    assert f'href="/launch/{SOLVER_APP}"' in page.text
    # its seat is free
    again = _launch(owner)
    assert again["state"] == "starting"
    owner.delete(f"/api/v1/sessions/{again['id']}")


def test_the_portal_wide_seat_limit(
    solve_portal: SolvePortal, owner: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    _settings(monkeypatch, max_webui_sessions="1")
    olga = quick_user("olga")
    _may_run(solve_portal.publisher, olga)
    first = _launch(owner)

    with contextlib.closing(_browser(solve_portal, olga)) as second:
        refused = second.post("/api/v1/sessions", json={"app": SOLVER_APP})
        assert refused.status_code == 409
        assert refused.json()["error"] == {
            "code": "no_free_seats",
            "message": "No free seat: the one browser session of this portal is in use. "
            "Try again in a few minutes, or run the app on your own computer.",
        }

        owner.delete(f"/api/v1/sessions/{first['id']}")
        assert _launch(second)["state"] == "starting"


def test_launches_at_once_for_the_last_seat_take_it_once(
    solve_portal: SolvePortal, monkeypatch: pytest.MonkeyPatch
) -> None:
    _settings(monkeypatch, max_webui_sessions="1")
    users = [quick_user(f"racer{n}") for n in range(6)]
    _may_run(solve_portal.publisher, *users)
    browsers = [_browser(solve_portal, user) for user in users]
    start = threading.Barrier(len(browsers))
    answers: list[httpx.Response] = []

    def launch(client: httpx.Client) -> None:
        start.wait()
        answers.append(client.post("/api/v1/sessions", json={"app": SOLVER_APP}))

    threads = [threading.Thread(target=launch, args=(client,)) for client in browsers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for client in browsers:
        client.close()

    assert sorted(a.status_code for a in answers) == [201] + [409] * 5, [a.text for a in answers]
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {"no_free_seats"}
    live = [s for s in solve_portal.sessions() if s.state in sessions.SEATED_STATES]
    assert len(live) == 1


def _release_without_webui(portal: SolvePortal, version: str) -> None:
    source = portal.folder / f"no-webui-{version}"
    source.mkdir()
    manifest = {k: v for k, v in MANIFEST.items() if k != "webui"} | {"version": version}
    (source / "app.json").write_text(json.dumps(manifest))
    (source / "procs.py").write_text(PROCEDURES_PY)
    bundle = portal.folder / f"no-webui-{version}.zip"
    pack_app(source, bundle)
    with open(bundle, "rb") as stream:
        apps.publish_bundle(actor=portal.publisher, source=stream)


def test_launches_of_releases_that_cannot_run_say_why(
    solve_portal: SolvePortal, owner: httpx.Client
) -> None:
    _release_without_webui(solve_portal, "4.0")
    refused = owner.post("/api/v1/sessions", json={"app": SOLVER_APP, "version": "4.0"})
    assert error(refused, 422, "no_webui") == f"{SOLVER_APP} 4.0 has no WebUI to open."

    # the runtime's package gone from storage
    with session_scope() as db_session:
        runtime = db_session.exec(select(RuntimeVersion)).one()
        signer = db_session.exec(select(SigningKey)).one()
    get_storage().delete(runtime.storage_key)
    refused = owner.post("/api/v1/sessions", json={"app": SOLVER_APP, "version": "1.0"})
    assert error(refused, 422, "runtime_missing") == (
        f"The runtime {runtime.name} {runtime.version} of {SOLVER_APP} 1.0 is missing from "
        "the portal's storage; ask an admin to upload it again."
    )

    # its signing key no longer trusted
    with session_scope() as db_session:
        root = db_session.exec(select(User).where(User.username == "root")).one()
        signing_keys.delete_signing_key(db_session, actor=root, key_id=signer.id or 0)
    refused = owner.post("/api/v1/sessions", json={"app": SOLVER_APP, "version": "1.0"})
    assert error(refused, 422, "runtime_untrusted") == (
        f"The runtime of {SOLVER_APP} 1.0 is not trusted any more; ask its publisher for a "
        "release on a trusted runtime."
    )
    # nothing was started, no seat taken
    assert solve_portal.sessions() == []


def test_forged_credentials_never_reach_the_app(
    solve_portal: SolvePortal, owner: httpx.Client
) -> None:
    session = _ready(owner)
    with session_scope() as db_session:
        row = db_session.get(AppSession, session["id"])
        assert row is not None
    # the session's own token, as its runner holds it
    with open(f"/proc/{runner_pid(row)}/environ", "rb") as environ:
        variables = dict(
            line.split(b"=", 1) for line in environ.read().split(b"\0") if b"=" in line
        )
    session_token = variables[b"AIMMS_PORTAL_TOKEN"].decode()
    assert session_token.startswith("ast_")
    before = _reached_the_app(owner, session)

    anonymous = httpx.Client(base_url=solve_portal.url, timeout=30, trust_env=False)
    for client in (anonymous, owner):  # with or without the owner's log-on cookie
        for value, message in [
            (f"Bearer {session_token}", "A session token does not open a session"),
            (f"Bearer ast_{secrets.token_urlsafe(32)}", "A session token does not open"),
            (f"Bearer apt_{secrets.token_urlsafe(32)}", "The API token is not valid."),
            ("Bearer garbage", "The API token is not valid."),
            ("garbage", "The Authorization header holds no API token"),
        ]:
            for accept in ("application/json", "text/html"):
                answer = client.get(
                    session["url"], headers={"Authorization": value, "Accept": accept}
                )
                assert answer.status_code == 401, (value, accept, answer.text)
                if accept == "text/html":
                    assert "Not logged on" in answer.text and message in answer.text
                else:
                    assert error(answer, 401, "invalid_token").startswith(message)
            status, body = _ws_refusal(_ws_url(solve_portal, session), {"Authorization": value})
            assert status == 401 and body["error"]["message"].startswith(message)
    anonymous.close()

    # one more: the count itself
    assert _reached_the_app(owner, session) == before + 1


def test_an_app_that_stops_answering_says_so(
    solve_portal: SolvePortal, owner: httpx.Client
) -> None:
    session = _ready(owner)
    assert owner.get(f"{session['url']}api/deaf").status_code == 200

    page = owner.get(session["url"], headers={"Accept": "text/html"})

    assert page.status_code == 502
    assert "<h1>The app does not answer</h1>" in page.text
    assert "The app of this session does not answer: " in page.text
    assert "http-equiv" not in page.text  # no reloading in circles
    assert "web: not listening any more" in page.text  # its log, for its owner
    assert f'id="session-retry" href="{session["url"]}"' in page.text
    assert 'id="session-terminate"' in page.text
    assert f'"/api/v1/sessions/{session["id"]}"' in page.text
    answer = owner.get(session["url"], headers={"Accept": "application/json"})
    message = error(answer, 502, "app_down")
    assert message.startswith("The app of this session does not answer: ")
    # the session itself still runs: it is not "starting", nor ended
    assert owner.get(f"/api/v1/sessions/{session['id']}").json()["state"] == "ready"
    # a WebSocket to it says so too
    status, body = _ws_refusal(_ws_url(solve_portal, session), _cookie(owner))
    assert status == 502 and body["error"]["code"] == "app_down"


def test_terminating_a_session_lets_nobody_through_at_once(
    solve_portal: SolvePortal, owner: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # passes kept for long: only forgetting them stops the next request
    monkeypatch.setattr(proxy, "PASS_SECONDS", 600.0)
    session = _ready(owner)
    assert owner.get(session["url"]).status_code == 200  # a pass is kept now

    # what the Sessions page's Terminate calls, in this process as in the portal's
    sessions.terminate_session(actor=solve_portal.user, session_id=session["id"])

    answer = owner.get(session["url"], headers={"Accept": "application/json"})
    assert error(answer, 410, "session_ended") == "This session has ended: ended by you."


def test_a_webui_session_survives_a_portal_restart(solve_portal: SolvePortal) -> None:
    lease = 3.0
    with backend_processes(solve_portal, 1, AIMMS_PORTAL_JOB_LEASE_SECONDS=f"{lease:g}") as (
        backend,
    ):
        backend.wait_until_serving()
        portal = dataclasses.replace(solve_portal, url=backend.url)
        with contextlib.closing(_browser(portal, solve_portal.user)) as client:
            session = _ready(client)
            assert client.get(session["url"]).status_code == 200

            backend.kill()  # a crash, not a shutdown
            backend.start()
            backend.wait_until_serving()

            again = client.get(session["url"])
            assert again.status_code == 200 and "Hello from solver-app" in again.text
            time.sleep(lease)  # a few heartbeats and a reaper round of the new process
            still = client.get(f"/api/v1/sessions/{session['id']}").json()
            assert still["state"] == "ready", still

            # down for longer than a lease (as a restart with a production build is):
            # the heartbeats of that time reached nobody, which is no session's fault
            backend.stop()  # a shutdown this time: the next process leads at once
            time.sleep(lease + 2)
            backend.start()
            backend.wait_until_serving()
            time.sleep(lease)

            still = client.get(f"/api/v1/sessions/{session['id']}").json()
            assert still["state"] == "ready", still
            assert client.get(session["url"]).status_code == 200


# -- the forwarding itself, against a scripted app (the pass check faked) -------------------


@dataclasses.dataclass
class _Ready:
    """What the pass check returns, as far as the proxy reads it."""

    address: str
    id: int = 7


class _Checks:
    """A stand-in for the pass check (``proxy._target``): counts the calls, lets through
    to ``address`` (or raises ``refuse``), and may run ``during`` while it checks."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.calls: list[tuple[dict[str, str], str | None, int]] = []
        self.refuse: PortalError | None = None
        self.during: Callable[[], None] | None = None

    def __call__(
        self, cookies: dict[str, str], authorization: str | None, sid: int, *, changes: bool
    ) -> _Ready:
        self.calls.append((cookies, authorization, sid))
        time.sleep(0.05)  # long enough for concurrent requests to overlap
        if self.during is not None:
            self.during()
        if self.refuse is not None:
            raise self.refuse
        return _Ready(self.address)


@contextlib.asynccontextmanager
async def _proxied(
    monkeypatch: pytest.MonkeyPatch, handler: Handler
) -> AsyncIterator[tuple[httpx.AsyncClient, _Checks, Served]]:
    """A client of :class:`proxy.SessionProxy` (in this loop) in front of a scripted app."""
    async with serving(handler) as served:
        checks = _Checks(served.address)
        monkeypatch.setattr(proxy, "_target", checks)
        monkeypatch.setattr(proxy, "_passes", proxy._Passes())
        # the log the "does not answer" page shows its owner
        monkeypatch.setattr(proxy, "_log_lines", lambda *_: ["web: <oops> & more"])

        async def not_the_proxy(scope: dict, receive: object, send: object) -> None:
            raise AssertionError(f"{scope['path']} went past the proxy")

        app = proxy.SessionProxy(not_the_proxy)  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4567))
        async with httpx.AsyncClient(transport=transport, base_url="http://portal") as client:
            try:
                yield client, checks, served
            finally:
                await proxy.close_clients()


def _lines(head: bytes) -> list[str]:
    return head.decode().split("\r\n")


async def _echo_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request with its request line; a few answer headers of its own."""
    served = Served()
    while True:
        head, _ = await read_request(reader, served)
        if head.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
            continue
        line = head.split(b"\r\n")[0]
        writer.write(
            answer(
                line,
                "200 OK",
                "Set-Cookie: aimms_portal_session=stolen; Path=/",
                "Set-Cookie: aimms_portal_csrf =stolen",
                "Set-Cookie: app=1",
                "Keep-Alive: timeout=5",
                "X-App: yes",
            )
        )


def test_the_app_gets_the_request_as_sent_but_never_the_portals_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        async with _proxied(monkeypatch, _echo_app) as (client, checks, _):
            got = await client.get(
                "/s/7/a%2Fb/c?x=1&y=%20",
                headers={
                    "Cookie": "aimms_portal_session=SECRET; theme=dark; aimms_portal_csrf=C",
                    "Authorization": "Bearer aimms_token",
                    "X-Forwarded-For": "6.6.6.6",
                    "X-Forwarded-Host": "evil.example",
                    "Accept": "text/plain",
                },
            )
            assert got.status_code == 200
            assert got.text == "GET /s/7/a%2Fb/c?x=1&y=%20 HTTP/1.1"
            # the app's own cookies come back, never one of the portal's names
            assert got.headers.get_list("set-cookie") == ["app=1"]
            assert got.headers["x-app"] == "yes" and "keep-alive" not in got.headers
            assert checks.calls == [({"aimms_portal_session": "SECRET"}, "Bearer aimms_token", 7)]

    run_async(main())


def test_what_reaches_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []

    async def recording_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader, Served())
            seen.append(head + body)
            writer.write(answer(b"ok"))

    async def main() -> None:
        async with _proxied(monkeypatch, recording_app) as (client, _, served):
            await client.get(
                "/s/7/page",
                headers={
                    "Cookie": "aimms_portal_session=SECRET; theme=dark; aimms_portal_csrf=C",
                    "Authorization": "Bearer aimms_token",
                    "X-Forwarded-For": "6.6.6.6",
                    "X-Forwarded-Host": "evil.example",
                    "Accept": "text/plain",
                },
            )
            await client.post("/s/7/form", content=b"a=1", headers={"Cookie": "theme=dark"})
            lines = _lines(seen[0])
            assert lines[0] == "GET /s/7/page HTTP/1.1"
            assert f"host: {served.address}" in lines
            assert "cookie: theme=dark" in lines
            assert "accept: text/plain" in lines
            assert "x-forwarded-for: 10.1.2.3" in lines
            assert "x-forwarded-proto: http" in lines
            assert "x-forwarded-host: portal" in lines
            text = seen[0].decode().lower()
            assert "authorization" not in text and "secret" not in text
            assert "6.6.6.6" not in text and "evil.example" not in text
            assert seen[1].endswith(b"\r\n\r\na=1") and b"content-length: 3" in seen[1]

    run_async(main())


def test_behind_a_trusted_proxy_the_app_gets_the_clients_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _settings(monkeypatch, trusted_proxies="10.0.0.0/8")
    seen: list[bytes] = []

    async def recording_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader, Served())
            seen.append(head)
            writer.write(answer(b"ok"))

    async def main() -> None:
        async with _proxied(monkeypatch, recording_app) as (client, _, _served):
            # the client wrote 6.6.6.6, the trusted proxies 192.0.2.8 and 10.9.9.9
            forwarded = {"X-Forwarded-For": "6.6.6.6, 192.0.2.8, 10.9.9.9"}
            assert (await client.get("/s/7/", headers=forwarded)).status_code == 200
            assert "x-forwarded-for: 192.0.2.8" in _lines(seen[0])

    try:
        run_async(main())
    finally:
        monkeypatch.undo()
        config.get_settings.cache_clear()  # nothing of this test's settings stays


def test_requests_at_once_share_one_pass_check(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with _proxied(monkeypatch, _echo_app) as (client, checks, _):
            cookie = {"Cookie": "aimms_portal_session=SECRET"}
            answers = await asyncio.gather(
                *(client.get(f"/s/7/{n}", headers=cookie) for n in range(20))
            )
            assert [a.status_code for a in answers] == [200] * 20
            assert len(checks.calls) == 1
            # a kept pass: no check at all
            assert (await client.get("/s/7/again", headers=cookie)).status_code == 200
            assert len(checks.calls) == 1
            # other credentials are checked on their own
            other = {"Cookie": "aimms_portal_session=OTHER"}
            assert (await client.get("/s/7/x", headers=other)).status_code == 200
            assert len(checks.calls) == 2

    run_async(main())


def test_a_pass_checked_while_its_session_ends_is_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        async with _proxied(monkeypatch, _echo_app) as (client, checks, _):
            checks.during = lambda: proxy.forget_session(7)  # ended by this process
            cookie = {"Cookie": "aimms_portal_session=SECRET"}
            assert (await client.get("/s/7/", headers=cookie)).status_code == 200
            checks.during = None
            checks.refuse = Gone("This session has ended: ended by you.", code="session_ended")
            refused = await client.get("/s/7/", headers=cookie | {"Accept": "application/json"})
            assert refused.status_code == 410
            assert refused.json()["error"]["code"] == "session_ended"
            assert len(checks.calls) == 2

    run_async(main())


def test_refusals_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with _proxied(monkeypatch, _echo_app) as (client, checks, _):
            json_ = {"Accept": "application/json"}
            checks.refuse = NotFound("No session 7.")
            refused = await client.get("/s/7/", headers=json_)
            assert refused.status_code == 404 and refused.json()["error"]["message"] == (
                "No session 7."
            )
            checks.refuse = Conflict("This session is still starting.", code="session_starting")
            starting = await client.get("/s/7/", headers={"Accept": "text/html"})
            assert starting.status_code == 503 and 'http-equiv="refresh"' in starting.text
            checks.refuse = NotAuthenticated("Please log on.")
            anonymous = await client.get("/s/7/x", headers={"Accept": "text/html"})
            assert anonymous.status_code == 303
            assert anonymous.headers["location"] == "/login?next=/s/7/x"
            # a bad token is no browser to send to the log-on page: it is told what is wrong
            checks.refuse = NotAuthenticated("The API token is not valid.", code="invalid_token")
            forged = await client.get(
                "/s/7/x", headers={"Accept": "text/html", "Authorization": "Bearer apt_x"}
            )
            assert forged.status_code == 401
            assert "Not logged on" in forged.text and "The API token is not valid." in forged.text
            assert len(checks.calls) == 4  # refusals are never kept

    run_async(main())


def test_an_app_that_is_gone_or_breaks_off_gets_a_clear_502(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, Served())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    async def main() -> None:
        json_ = {"Accept": "application/json"}
        async with _proxied(monkeypatch, cut_short) as (client, checks, served):
            broken = await client.get("/s/7/", headers=json_)
            assert broken.status_code == 502
            assert broken.json()["error"]["code"] == "app_down"

            async with serving(cut_short) as gone:
                checks.address = gone.address  # a port nobody listens on any more
            down = await client.get("/s/7/?x=<1>", headers={"Accept": "text/html"})
            assert down.status_code == 502 and "The app does not answer" in down.text
            assert "no connection to the app" in down.text  # why
            assert "web: &lt;oops&gt; &amp; more" in down.text  # its log, as text
            assert 'id="session-retry" href="/s/7/?x=%3C1%3E"' in down.text
            # the pass went with it: the next request is checked again
            assert len(checks.calls) == 2

    run_async(main())


def test_head_and_bodies_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with _proxied(monkeypatch, _echo_app) as (client, _, served):
            head = await client.head("/s/7/file")
            assert head.status_code == 200 and head.headers["content-length"] == "4"
            assert head.content == b""
            after = await client.get("/s/7/after")  # the connection is still good
            assert after.text == "GET /s/7/after HTTP/1.1"
            assert served.connections == 1

    run_async(main())


def test_an_id_spelled_otherwise_is_sent_to_its_usual_spelling() -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=create_api())
        async with httpx.AsyncClient(transport=transport, base_url="http://portal") as client:
            odd = await client.get("/s/+7/a%20b?x=1")
            assert odd.status_code == 307 and odd.headers["location"] == "/s/7/a%20b?x=1"
            bare = await client.get("/s/7")
            assert bare.status_code == 307 and bare.headers["location"] == "/s/7/"

    run_async(main())


def test_a_caller_that_goes_away_while_sending_gets_nothing_and_breaks_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bodies: list[bytes] = []

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"content-length: 10" in head
        bodies.append(await reader.read())  # until the proxy gives up on the connection

    async def main() -> None:
        async with _proxied(monkeypatch, app) as (client, _, served):
            messages = iter(
                [
                    {"type": "http.request", "body": b"12345", "more_body": True},
                    {"type": "http.disconnect"},
                ]
            )

            async def receive() -> dict:
                return next(messages)

            sent: list[dict] = []

            async def send(message: dict) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "method": "POST",
                "path": "/s/7/upload",
                "raw_path": b"/s/7/upload",
                "query_string": b"",
                "headers": [(b"content-length", b"10"), (b"cookie", b"aimms_portal_session=S")],
                "client": ("127.0.0.1", 1),
                "scheme": "http",
            }
            await proxy.SessionProxy(None)(scope, receive, send)  # type: ignore[arg-type]
            assert sent == []
            for _ in range(100):
                if bodies:
                    break
                await asyncio.sleep(0.05)
            assert bodies == [b"12345"]  # and the connection was closed, not kept
            assert served.connections == 1

    run_async(main())
