"""WebUI sessions in Chromium: launch from the launch page and land in the app through
the proxy, privacy, the Launch menu (in the browser, or the commands for one's own
computer), WebSockets through the proxy and a restart of the portal while a session
runs, an app that stops answering, an app that never answers, idle culling with one
seat, terminate from the live Sessions page, and the transport demo solving through the
portal.

The sessions run for real: the portal's scheduler and the local launcher run in the
portal's process and start runner processes that prepare the test runtime and run the
test app's WebUI (``tests/solving.py``). Every test ends the sessions it leaves open;
the portal fixtures stop any session process that is left when the module ends.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from playwright.sync_api import Browser, Page, expect

from aimms_portal.client import PortalClient, PortalClientError
from tests.corpus import TRUSTED_KEY_FILE
from tests.helpers import run_async
from tests.publishing import runtime_package
from tests.solving import SOLVER_APP, solver_bundle
from tests.ui.conftest import Portal, serve_portal
from tests.ui.helpers import TIMEOUT, admin_client, create_user, get_json, log_on, token_for
from tests.ui.test_jobs import demo_app  # noqa: F401 (a fixture: the demo, published)

pytestmark = pytest.mark.browser

expect.set_options(timeout=TIMEOUT)

USER = ("uma", "Uma-password-2024")
OTHER = ("otto", "Otto-password-2024")
#: The first session of a runtime builds its environment: allow for that.
START_TIMEOUT = 150_000
#: The quick portal: an app has 3 s to answer, a WebUI session is idle after 6 s, and a
#: user holds one seat.
ANSWER_TIMEOUT_S = "3"
IDLE_MINUTES = "0.1"
QUICK_SETTINGS = {
    "AIMMS_PORTAL_WEBUI_ANSWER_TIMEOUT_S": ANSWER_TIMEOUT_S,
    "AIMMS_PORTAL_WEBUI_IDLE_MINUTES": IDLE_MINUTES,
    "AIMMS_PORTAL_MAX_SESSIONS_PER_USER": "1",
}
SESSION_URL = re.compile(r"/s/(\d+)/$")


def _publish_solver_app(portal: Portal, folder: Path) -> None:
    """The test runtime and the test app: 1.0 serves its WebUI, 2.0 never answers;
    uma may run it, otto not."""
    create_user(portal, *USER)
    create_user(portal, *OTHER)
    with admin_client(portal) as admin:
        admin.trust_signing_key("corpus key", TRUSTED_KEY_FILE.read_text().strip())
        package, signature = runtime_package(folder, "1.0")
        admin.upload_runtime(package, signature)
        admin.publish_bundle(solver_bundle(folder, "1.0"))
        admin.publish_bundle(solver_bundle(folder, "2.0", webui_mode="silent"))
        for right in ("read", "run"):
            admin.set_grant(
                SOLVER_APP,
                principal_type="user",
                principal_name=USER[0],
                right=right,
                effect="allow",
            )


@pytest.fixture(scope="module")
def solver_app(portal: Portal, tmp_path_factory: pytest.TempPathFactory) -> None:
    _publish_solver_app(portal, tmp_path_factory.mktemp("solver-app"))


@pytest.fixture(scope="module")
def quick_portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    """A portal of its own with short WebUI timeouts and one seat per user (see
    :data:`QUICK_SETTINGS`), the test app published on it."""
    tmp_path = tmp_path_factory.mktemp("quick-portal")
    serving = serve_portal(tmp_path, QUICK_SETTINGS)
    portal = next(serving)
    try:
        _publish_solver_app(portal, tmp_path / "solver-app")
        yield portal
    finally:
        serving.close()  # stops the portal and its session processes


def _end_sessions(portal: Portal, user: tuple[str, str]) -> None:
    """End every live session of ``user``'s (their seats are free for the next test)."""
    with PortalClient(portal.url, token_for(portal, *user)) as client:
        live = client.request("GET", "/sessions", params={"state": "live", "limit": 100})
        for session in live["items"]:
            try:
                client.request("DELETE", f"/sessions/{session['id']}")
            except PortalClientError as exc:
                if exc.code != "session_ended":
                    raise


def _new_page(browser: Browser, portal: Portal, user: tuple[str, str]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    log_on(page, portal, *user)
    yield page
    context.close()


@pytest.fixture
def uma(browser: Browser, portal: Portal, solver_app: None) -> Iterator[Page]:
    yield from _new_page(browser, portal, USER)
    _end_sessions(portal, USER)


@pytest.fixture
def otto(browser: Browser, portal: Portal, solver_app: None) -> Iterator[Page]:
    yield from _new_page(browser, portal, OTHER)


@pytest.fixture
def admin(browser: Browser, portal: Portal) -> Iterator[Page]:
    yield from _new_page(browser, portal, (portal.admin_username, portal.admin_password))


@pytest.fixture
def quick_uma(browser: Browser, quick_portal: Portal) -> Iterator[Page]:
    yield from _new_page(browser, quick_portal, USER)
    _end_sessions(quick_portal, USER)


def _choose(page: Page, select_id: str, option: str) -> None:
    page.locator(f"#{select_id}").click()
    page.get_by_role("option", name=option, exact=True).click()
    expect(page.locator(f"#{select_id}")).to_contain_text(option)


def _session_id_of(page: Page, timeout: float = START_TIMEOUT) -> int:
    """The id of the session ``page`` was sent to, once it shows the test app."""
    expect(page).to_have_url(SESSION_URL, timeout=timeout)
    match = SESSION_URL.search(page.url)
    assert match, page.url
    return int(match.group(1))


def _session(portal: Portal, token: str, session_id: int) -> dict[str, Any]:
    status, body = get_json(portal, f"/sessions/{session_id}", token)
    assert status == 200, body
    return dict(body)


def _wait_session(
    portal: Portal, token: str, session_id: int, *states: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        session = _session(portal, token, session_id)
        if session["state"] in states:
            return session
        assert time.monotonic() < deadline, session
        time.sleep(0.2)


def _fetch(portal: Portal, href: str, token: str) -> bytes:
    request = urllib.request.Request(
        f"{portal.url}{href}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
        return bytes(response.read())


def test_a_launch_lands_in_the_app_and_nobody_else_sees_it(
    uma: Page, otto: Page, admin: Page, portal: Portal
) -> None:
    uma_token = token_for(portal, *USER)

    # the launch page: the release, how to run it on one's own computer, and the button
    uma.goto(f"{portal.url}/launch/{SOLVER_APP}/1.0")
    expect(uma.locator("#launch-version")).to_have_text("1.0")
    desktop = uma.locator("#launch-desktop")
    expect(desktop.locator("#launch-desktop-login")).to_have_text(
        f"aimms-portal login {portal.url}"
    )
    expect(desktop.locator("#launch-desktop-command")).to_have_text(
        f"aimms-portal desktop {SOLVER_APP} --version 1.0"
    )
    uma.click("#launch-start")
    expect(uma.locator("#launch-state")).to_be_visible()
    expect(uma.locator("#launch-timeline")).to_contain_text("pending")
    session_id = _session_id_of(uma)
    expect(uma.locator("#hello")).to_have_text(f"Hello from {SOLVER_APP}")
    session = _session(portal, uma_token, session_id)
    assert session["state"] == "ready" and session["url"] == f"/s/{session_id}/"

    # otto gets the proxy's "no such session", as for a made-up id, and lists nothing
    otto.goto(f"{portal.url}/s/{session_id}/")
    expect(otto.locator("h1")).to_have_text("No such session")
    expect(otto.locator("#session-message")).to_have_text(f"No session {session_id}.")
    expect(otto.locator("#hello")).to_have_count(0)
    otto.goto(f"{portal.url}/sessions")
    expect(otto.locator("#sessions-empty")).to_be_visible()
    expect(otto.locator(f"#session-row-{session_id}")).to_have_count(0)

    # uma's Sessions page lists it, ready, and opens it again
    uma.goto(f"{portal.url}/sessions")
    row = uma.locator(f"#session-row-{session_id}")
    expect(row).to_contain_text(SOLVER_APP)
    expect(row).to_contain_text("webui")
    expect(uma.locator(f"#session-state-{session_id}")).to_have_text("ready")
    expect(uma.locator("#sessions-export")).to_have_attribute("href", "/api/v1/sessions/export.csv")
    uma.click(f"#session-open-{session_id}")
    expect(uma.locator("#hello")).to_be_visible()

    # an admin sees it with "all users", with its owner, and exports everyone's
    admin.goto(f"{portal.url}/sessions")
    expect(admin.locator(f"#session-row-{session_id}")).to_have_count(0)
    admin.click("#sessions-all-users")
    expect(admin.locator(f"#session-row-{session_id}")).to_contain_text(USER[0])
    export = admin.locator("#sessions-export")
    expect(export).to_have_attribute("href", "/api/v1/sessions/export.csv?all=true")
    admin_token = token_for(portal, portal.admin_username, portal.admin_password, "read")
    csv_text = _fetch(portal, export.get_attribute("href") or "", admin_token).decode()
    assert f"\n{session_id},webui,{SOLVER_APP},1.0,{USER[0]},ready," in csv_text

    # an end through the API shows on the open page by itself
    uma.goto(f"{portal.url}/sessions")
    expect(uma.locator(f"#session-state-{session_id}")).to_have_text("ready")
    with PortalClient(portal.url, uma_token) as client:
        client.request("DELETE", f"/sessions/{session_id}")
    expect(uma.locator(f"#session-state-{session_id}")).to_have_text("stopped")
    expect(uma.locator(f"#session-open-{session_id}")).to_have_count(0)


def test_terminate_from_the_sessions_page(uma: Page, portal: Portal) -> None:
    uma_token = token_for(portal, *USER)
    # ?start=1 starts at once (the address a catalogue's Launch button can link to)
    uma.goto(f"{portal.url}/launch/{SOLVER_APP}/1.0?start=1")
    session_id = _session_id_of(uma)
    expect(uma.locator("#hello")).to_be_visible()

    uma.goto(f"{portal.url}/sessions")
    expect(uma.locator(f"#session-state-{session_id}")).to_have_text("ready")
    uma.click(f"#session-details-{session_id}")
    expect(uma.locator("#session-details-title")).to_have_text(f"Session {session_id}")
    expect(uma.locator("#session-log")).to_contain_text("web: serving on")
    uma.click(f"#session-terminate-{session_id}")
    uma.click("#session-terminate-confirm")
    expect(uma.locator(f"#session-state-{session_id}")).to_have_text("stopped")
    expect(uma.locator(f"#session-reason-{session_id}")).to_have_text("ended by you")
    expect(uma.locator(f"#session-terminate-{session_id}")).to_have_count(0)
    # the details follow: every state with its time, and the log kept after the end
    timeline = uma.locator("#session-timeline")
    for state in ("pending", "starting", "ready", "stopping", "stopped"):
        expect(timeline).to_contain_text(state)
    expect(timeline).to_contain_text(re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"))
    expect(uma.locator("#session-log")).to_contain_text("web: serving on")
    assert _session(portal, uma_token, session_id)["state"] == "stopped"

    # the session's address now says it has ended and offers to launch the app again
    uma.goto(f"{portal.url}/s/{session_id}/")
    expect(uma.locator("h1")).to_have_text("This session has ended")
    expect(uma.locator("#session-message")).to_contain_text("ended by you")
    uma.click("#session-relaunch")
    expect(uma).to_have_url(re.compile(f"/launch/{SOLVER_APP}$"))
    expect(uma.locator("#launch-start")).to_be_visible()

    # filters: an ended webui session; not among the live ones, nor among solve sessions
    uma.goto(f"{portal.url}/sessions")
    row = uma.locator(f"#session-row-{session_id}")
    expect(row).to_be_visible()
    _choose(uma, "sessions-filter-state", "Live")
    expect(row).to_have_count(0)
    _choose(uma, "sessions-filter-state", "Ended")
    expect(row).to_be_visible()
    _choose(uma, "sessions-filter-kind", "Solve")
    expect(row).to_have_count(0)


def test_the_launch_menu_opens_the_app_here_or_shows_the_commands(
    uma: Page, portal: Portal
) -> None:
    # the commands are those of the launch page, for the release a launch would start
    uma.goto(f"{portal.url}/launch/{SOLVER_APP}")
    login = uma.locator("#launch-desktop-login").inner_text()
    command = uma.locator("#launch-desktop-command").inner_text()
    assert login == f"aimms-portal login {portal.url}"
    assert command == f"aimms-portal desktop {SOLVER_APP} --version 2.0"  # the latest

    # from the catalogue's card
    uma.goto(f"{portal.url}/")
    uma.click(f"#app-card-launch-{SOLVER_APP}")
    expect(uma.locator("#launch-menu-browser")).to_have_text("In the browser")
    uma.click("#launch-menu-desktop")
    dialog = uma.locator("#launch-menu-dialog")
    expect(dialog).to_contain_text("Run Solver test app on your computer")
    expect(dialog.locator("#launch-menu-login")).to_have_text(login)
    expect(dialog.locator("#launch-menu-command")).to_have_text(command)
    uma.click("#launch-menu-close")
    expect(dialog).to_have_count(0)

    # from the app's page; "In the browser" starts a session of it at once
    uma.goto(f"{portal.url}/apps/{SOLVER_APP}")
    uma.click("#app-launch")
    uma.click("#launch-menu-desktop")
    expect(uma.locator("#launch-menu-command")).to_have_text(command)
    uma.keyboard.press("Escape")
    expect(uma.locator("#launch-menu-dialog")).to_have_count(0)
    uma.click("#app-launch")
    uma.click("#launch-menu-browser")
    expect(uma).to_have_url(re.compile(f"/launch/{SOLVER_APP}$"))
    expect(uma.locator("#launch-version")).to_have_text("2.0")
    expect(uma.locator("#launch-timeline")).to_contain_text("pending")
    token = token_for(portal, *USER)
    status, live = get_json(portal, "/sessions?state=live", token)
    assert status == 200 and [s["version"] for s in live["items"]] == ["2.0"], live


def _cookie_of(portal: Portal, user: tuple[str, str]) -> dict[str, str]:
    with httpx.Client(base_url=portal.url, trust_env=False, timeout=30) as client:
        logged = client.post("/api/v1/auth/login", json={"username": user[0], "password": user[1]})
        assert logged.status_code == 200, logged.text
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in client.cookies.items())}


def _ws_refusal(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    """What the portal answers a WebSocket upgrade it refuses: status and body."""

    async def connect() -> tuple[int, Any]:
        try:
            async with websockets.connect(url, additional_headers=headers, open_timeout=10):
                return 101, None
        except websockets.InvalidStatus as refused:
            body = bytes(refused.response.body or b"")
            return refused.response.status_code, json.loads(body) if body else None

    return run_async(connect())


def test_websockets_and_a_portal_restart_while_a_session_runs(
    uma: Page, otto: Page, portal: Portal
) -> None:
    token = token_for(portal, *USER)
    uma.goto(f"{portal.url}/launch/{SOLVER_APP}/1.0?start=1")
    session_id = _session_id_of(uma)
    live = f"{portal.url}/s/{session_id}/live"

    # the app's page opens a WebSocket through the proxy and talks over it; a note saved
    uma.goto(live)
    uma.click("#ws-open")
    expect(uma.locator("#ws-state")).to_have_text("open")
    uma.fill("#ws-text", "before the restart")
    uma.click("#ws-send")
    expect(uma.locator(".ws-reply")).to_have_text(["echo:before the restart"])
    uma.fill("#note-text", "first")
    uma.click("#note-save")
    expect(uma.locator("#note")).to_have_text("first")
    # the portal's server refuses another user's upgrade with the proxy's own answer
    ws_url = live.replace("http", "ws", 1).replace("/live", "/ws")
    assert _ws_refusal(ws_url, _cookie_of(portal, OTHER)) == (
        404,
        {"error": {"code": "not_found", "message": f"No session {session_id}."}},
    )

    portal.restart()

    # the restart cut the WebSocket; the session runs on, and the page works again
    expect(uma.locator("#ws-state")).to_have_text("closed")
    uma.reload()
    expect(uma.locator("#note")).to_have_text("first")  # the same app process
    uma.fill("#note-text", "second")
    uma.click("#note-save")
    expect(uma.locator("#note")).to_have_text("second")
    uma.click("#ws-open")
    expect(uma.locator("#ws-state")).to_have_text("open")
    uma.fill("#ws-text", "after the restart")
    uma.click("#ws-send")
    expect(uma.locator(".ws-reply")).to_have_text(["echo:after the restart"])
    assert _session(portal, token, session_id)["state"] == "ready"
    otto.reload()  # the other user's log-on outlived the restart too; still no way in
    otto.goto(f"{portal.url}/s/{session_id}/live")
    expect(otto.locator("h1")).to_have_text("No such session")

    # an app that stops answering says so, with its log, and can be ended from there
    assert _fetch(portal, f"/s/{session_id}/api/deaf", token) == b"{}"
    uma.reload()
    expect(uma.locator("h1")).to_have_text("The app does not answer")
    expect(uma.locator("#session-log")).to_contain_text("web: not listening any more")
    expect(uma.locator("#session-retry")).to_be_visible()
    uma.click("#session-terminate")
    expect(uma.locator("h1")).to_have_text("This session has ended")
    expect(uma.locator("#session-message")).to_contain_text("ended by you")
    assert _session(portal, token, session_id)["state"] == "stopped"


def test_an_app_that_never_answers_shows_why_on_the_launch_page(
    quick_uma: Page, quick_portal: Portal
) -> None:
    quick_uma.goto(f"{quick_portal.url}/launch/{SOLVER_APP}/2.0")
    quick_uma.click("#launch-start")
    failed = quick_uma.locator("#launch-failed")
    expect(failed).to_contain_text(
        f"the app did not answer within {ANSWER_TIMEOUT_S} s", timeout=START_TIMEOUT
    )
    expect(quick_uma.locator("#launch-state")).to_have_text("failed")
    expect(quick_uma.locator("#launch-log")).to_contain_text("web: still thinking")
    expect(quick_uma.locator("#launch-timeline")).to_contain_text("failed")
    expect(quick_uma.locator("#launch-retry")).to_be_visible()
    expect(quick_uma).to_have_url(re.compile(f"/launch/{SOLVER_APP}/2.0$"))


def test_an_idle_session_is_culled_and_frees_the_seat(
    quick_uma: Page, quick_portal: Portal, browser: Browser
) -> None:
    token = token_for(quick_portal, *USER)
    # a second tab waits on the launch page while the first launches
    waiting = quick_uma.context.new_page()
    waiting.goto(f"{quick_portal.url}/launch/{SOLVER_APP}/1.0")
    expect(waiting.locator("#launch-start")).to_be_visible()

    quick_uma.goto(f"{quick_portal.url}/launch/{SOLVER_APP}/1.0?start=1")
    session_id = _session_id_of(quick_uma)
    expect(quick_uma.locator("#hello")).to_be_visible()

    # the one seat is taken
    waiting.click("#launch-start")
    expect(waiting.locator("#launch-refused")).to_contain_text("No free seat")
    expect(waiting.locator("#launch-sessions-link")).to_have_attribute("href", "/sessions")

    # left alone, the session is culled; the open tab learns it at its next navigation
    ended = _wait_session(quick_portal, token, session_id, "stopped", "failed", timeout=60)
    assert ended["reason"] == f"idle for {IDLE_MINUTES} minutes", ended
    quick_uma.reload()
    expect(quick_uma.locator("h1")).to_have_text("This session has ended")
    expect(quick_uma.locator("#session-message")).to_contain_text("idle for")
    expect(quick_uma.locator("#session-relaunch")).to_be_visible()

    # and the seat is free again
    waiting.click("#launch-start")
    second = _session_id_of(waiting)
    assert second != session_id
    expect(waiting.locator("#hello")).to_be_visible()


# -- the demo app ----------------------------------------------------------------------


@pytest.mark.network
def test_the_demo_solves_through_the_portal_from_its_webui(
    uma: Page,
    portal: Portal,
    demo_app: None,  # noqa: F811 (the fixture imported above)
) -> None:
    uma_token = token_for(portal, *USER)
    uma.goto(f"{portal.url}/launch/transport?start=1")
    session_id = _session_id_of(uma, timeout=300_000)
    expect(uma.locator("h1")).to_have_text("Transportation planner")

    # edit one cost in the table (the page saves it through the proxy), then solve
    cost = uma.get_by_label("Cost from Lyon to Madrid")
    expect(cost).to_have_value("53")
    cost.fill("40")
    uma.click("#solve")
    expect(uma.locator("#status")).to_contain_text(
        "Optimal plan found: total cost", timeout=300_000
    )
    expect(uma.locator("#plan-status")).to_have_text("optimal")
    objective = float((uma.locator("#objective").text_content() or "").replace(",", ""))

    # the solve ran on the portal as a job of the demo's solve procedure, on the edit
    status, body = get_json(portal, "/jobs?limit=50", uma_token)
    assert status == 200, body
    solves = [j for j in body["items"] if j["app"] == "transport" and j["procedure"] == "solve"]
    assert len(solves) == 1, body["items"]
    job = solves[0]
    assert job["state"] == "succeeded", job
    case = json.loads(_fetch(portal, f"/api/v1/cases/{job['input_case_id']}/content", uma_token))
    assert {"from": "Lyon", "to": "Madrid", "cost": 40} in case["costs"]
    plan = json.loads(_fetch(portal, f"/api/v1/cases/{job['output_case_id']}/content", uma_token))
    assert plan["status"] == "optimal" and plan["objective"] == pytest.approx(objective, abs=0.01)

    # the Jobs page shows it; the WebUI session is still there
    uma.goto(f"{portal.url}/jobs")
    expect(uma.locator(f"#job-row-{job['id']}")).to_contain_text("solve")
    expect(uma.locator(f"#job-state-{job['id']}")).to_have_text("succeeded")
    assert _session(portal, uma_token, session_id)["state"] == "ready"
