"""Solve jobs in Chromium: the New-job form with a streamed input upload, the job page's
live state and log, downloads, cancel from the live Jobs page, bulk delete, privacy.

The jobs run for real: the portal's scheduler starts runner processes with the local
launcher, which prepare the test runtime's environment and run the procedures.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from playwright.sync_api import Browser, Page, expect

from aimms_portal.client import PortalClient, PortalClientError
from aimms_portal.packages import build_runtime, pack_app, signing
from aimms_portal.services.demo import APP_DIR, RUNTIME_DIR
from aimms_portal.ui.pages import jobs as jobs_ui
from aimms_portal.ui.pages.job_details import trim_log
from aimms_portal.ui.pages.jobs import keep_watching
from tests.corpus import TRUSTED_KEY_FILE
from tests.publishing import runtime_package
from tests.solving import SOLVER_APP, solver_bundle
from tests.ui.conftest import Portal
from tests.ui.helpers import TIMEOUT, admin_client, create_user, get_json, log_on, token_for

pytestmark = pytest.mark.browser

expect.set_options(timeout=TIMEOUT)

USER = ("uma", "Uma-password-2024")
OTHER = ("otto", "Otto-password-2024")
#: The first job of a runtime builds its environment: allow for that.
JOB_TIMEOUT = 120_000
EXAMPLE_CASE = APP_DIR / "data" / "example.json"


@pytest.fixture(scope="module")
def solver_app(portal: Portal, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The test runtime and the solver test app published; uma may run it, otto not."""
    folder = tmp_path_factory.mktemp("solver-app")
    create_user(portal, *USER)
    create_user(portal, *OTHER)
    with admin_client(portal) as admin:
        admin.trust_signing_key("corpus key", TRUSTED_KEY_FILE.read_text().strip())
        package, signature = runtime_package(folder, "1.0")
        admin.upload_runtime(package, signature)
        admin.publish_bundle(solver_bundle(folder))
        for right in ("read", "run"):
            admin.set_grant(
                SOLVER_APP,
                principal_type="user",
                principal_name=USER[0],
                right=right,
                effect="allow",
            )


@pytest.fixture(scope="module")
def uma_token(portal: Portal, solver_app: None) -> str:
    return token_for(portal, *USER)


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


@pytest.fixture
def otto(browser: Browser, portal: Portal, solver_app: None) -> Iterator[Page]:
    yield from _new_page(browser, portal, OTHER)


@pytest.fixture
def admin(browser: Browser, portal: Portal) -> Iterator[Page]:
    yield from _new_page(browser, portal, (portal.admin_username, portal.admin_password))


def _choose(page: Page, select_id: str, option: str) -> None:
    page.locator(f"#{select_id}").click()
    page.get_by_role("option", name=option, exact=True).click()
    expect(page.locator(f"#{select_id}")).to_contain_text(option)


def _download(portal: Portal, href: str, token: str) -> bytes:
    """The bytes behind a download link of the page, fetched with an API token."""
    assert re.fullmatch(r"/api/v1/cases/\d+/content", href), href
    request = urllib.request.Request(
        f"{portal.url}{href}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
        return bytes(response.read())


def _job_id_of(page: Page) -> int:
    expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    return int(page.url.rsplit("/", 1)[-1])


def _submit_with_upload(page: Page, procedure: str, input_file: Path) -> int:
    expect(page.locator("#new-job-procedure")).to_be_visible()
    _choose(page, "new-job-procedure", procedure)
    page.set_input_files("#new-job-input input[type=file]", str(input_file))
    expect(page.locator("#new-job-input")).to_contain_text(input_file.name)
    page.click("#new-job-submit")
    return _job_id_of(page)


def _jobs_of(portal: Portal, token: str) -> list[dict]:
    status, body = get_json(portal, "/jobs?limit=200", token)
    assert status == 200, body
    return list(body["items"])


def test_a_job_submitted_from_the_form_runs_and_its_page_follows_it(
    uma: Page, portal: Portal, uma_token: str, tmp_path: Path
) -> None:
    content = json.dumps({"hello": "world", "n": list(range(50))}).encode()
    input_file = tmp_path / "my input.json"
    input_file.write_bytes(content)

    # the app comes chosen from ?app=, with its procedures and their descriptions
    uma.goto(f"{portal.url}/jobs/new?app={SOLVER_APP}")
    expect(uma.locator("#new-job-app")).to_contain_text("Solver test app")
    expect(uma.locator("#new-job-version")).to_contain_text("latest (1.0)")
    job_id = _submit_with_upload(uma, "echo", input_file)

    # the job page follows the state and the log live, then offers the output
    expect(uma.locator("#job-title")).to_have_text(f"Job {job_id}")
    expect(uma.locator("#job-state")).to_have_text("succeeded", timeout=JOB_TIMEOUT)
    expect(uma.locator("#job-log")).to_contain_text(f"echo: {len(content)} bytes")
    expect(uma.locator("#job-log")).to_contain_text("a line on stderr")
    expect(uma.locator("#job-exit-code")).to_have_text("0")
    expect(uma.locator("#job-input-download")).to_contain_text("my input.json")
    output = uma.locator("#job-output-download")
    expect(output).to_contain_text(f"job-{job_id}-output")
    assert _download(portal, output.get_attribute("href") or "", uma_token) == content
    href = uma.locator("#job-input-download").get_attribute("href") or ""
    assert _download(portal, href, uma_token) == content
    expect(uma.locator("#job-delete")).to_be_visible()
    expect(uma.locator("#job-cancel")).to_have_count(0)

    # the Jobs page lists it with its counts; the id links to its page
    uma.goto(f"{portal.url}/jobs")
    row = uma.locator(f"#job-row-{job_id}")
    expect(row).to_contain_text(SOLVER_APP)
    expect(row).to_contain_text("echo")
    expect(uma.locator(f"#job-state-{job_id}")).to_have_text("succeeded")
    expect(uma.locator("#jobs-count-succeeded")).to_have_text(
        str(sum(j["state"] == "succeeded" for j in _jobs_of(portal, uma_token)))
    )
    uma.click(f"#job-link-{job_id}")
    expect(uma.locator("#job-title")).to_have_text(f"Job {job_id}")

    # nothing of the upload was kept in Reflex's public upload folder
    public = portal.project / "uploaded_files"
    assert not public.exists() or not any(public.rglob("*"))


def test_refusals_are_shown_in_plain_words_and_leave_nothing_behind(
    uma: Page, portal: Portal, uma_token: str, tmp_path: Path
) -> None:
    uma.goto(f"{portal.url}/jobs/new?app={SOLVER_APP}")
    _choose(uma, "new-job-procedure", "echo")
    uma.click("#new-job-input-none")

    uma.fill("#new-job-arguments", '{"reverse": tru}')
    uma.click("#new-job-submit")
    expect(uma.locator("#new-job-error")).to_contain_text("The arguments are not valid JSON")

    uma.fill("#new-job-arguments", "[1, 2]")
    uma.click("#new-job-submit")
    expect(uma.locator("#new-job-error")).to_have_text("arguments must be a JSON object.")

    # the service's rule: only admins raise priorities; the uploaded case goes again
    status, before = get_json(portal, "/cases", uma_token)
    assert status == 200
    uma.fill("#new-job-arguments", "{}")
    uma.fill("#new-job-priority", "5")
    uma.click("#new-job-input-upload")
    input_file = tmp_path / "refused.json"
    input_file.write_text("{}")
    uma.set_input_files("#new-job-input input[type=file]", str(input_file))
    expect(uma.locator("#new-job-input")).to_contain_text("refused.json")
    uma.click("#new-job-submit")
    expect(uma.locator("#new-job-error")).to_contain_text("Only admins may raise")
    expect(uma).to_have_url(re.compile(r"/jobs/new"))
    status, after = get_json(portal, "/cases", uma_token)
    assert status == 200 and after["total"] == before["total"]

    # an app without the run right is not offered; an app name in ?app= does not help
    uma.goto(f"{portal.url}/jobs/new?app=no-such-app")
    expect(uma.locator("#new-job-app")).to_contain_text("Solver test app")


def test_cancel_from_the_live_jobs_page_bulk_delete_and_privacy(
    uma: Page, otto: Page, admin: Page, portal: Portal, uma_token: str, tmp_path: Path
) -> None:
    # a long job, with one of uma's cases as its input, from the form
    uma.goto(f"{portal.url}/jobs/new?app={SOLVER_APP}")
    _choose(uma, "new-job-procedure", "sleep")
    uma.click("#new-job-input-case")
    expect(uma.locator("#new-job-case")).to_be_visible()
    uma.fill("#new-job-arguments", '{"seconds": 300}')
    uma.click("#new-job-submit")
    sleeper = _job_id_of(uma)
    expect(uma.locator("#job-state")).to_have_text("running", timeout=JOB_TIMEOUT)
    expect(uma.locator("#job-log")).to_contain_text("working")

    # the Jobs page shows it running, and its cancel shows up without a reload
    uma.goto(f"{portal.url}/jobs")
    expect(uma.locator(f"#job-state-{sleeper}")).to_have_text("running")
    expect(uma.locator(f"#job-delete-{sleeper}")).to_have_count(0)
    uma.click(f"#job-cancel-{sleeper}")
    expect(uma.locator(f"#job-state-{sleeper}")).to_have_text("cancelled", timeout=30_000)
    expect(uma.locator(f"#job-delete-{sleeper}")).to_be_visible()

    # a job submitted through the API appears on the open page by itself, and runs
    with PortalClient(portal.url, uma_token) as client:
        quick = client.request("POST", "/jobs", json={"app": SOLVER_APP, "procedure": "echo"})
    expect(uma.locator(f"#job-row-{quick['id']}")).to_be_visible()
    expect(uma.locator(f"#job-state-{quick['id']}")).to_have_text("succeeded", timeout=60_000)
    ids = [j["id"] for j in _jobs_of(portal, uma_token)]
    assert sleeper in ids and quick["id"] in ids

    # otto sees none of uma's jobs, not even by id
    otto.goto(f"{portal.url}/jobs")
    expect(otto.locator("#jobs-empty")).to_be_visible()
    for job_id in ids:
        expect(otto.locator(f"#job-row-{job_id}")).to_have_count(0)
    otto.goto(f"{portal.url}/jobs/{sleeper}")
    expect(otto.locator("#job-missing")).to_have_text("No such job.")
    expect(otto.locator("#job-log")).to_have_count(0)

    # an admin sees them with "all users", with the owner
    admin.goto(f"{portal.url}/jobs")
    expect(admin.locator(f"#job-row-{sleeper}")).to_have_count(0)
    admin.click("#jobs-all-users")
    expect(admin.locator(f"#job-row-{sleeper}")).to_contain_text(USER[0])

    # the bulk delete removes every finished job of uma's at once, after asking
    uma.click("#jobs-delete-finished")
    uma.click("#jobs-delete-finished-confirm")
    expect(uma.get_by_text(re.compile(r"Deleted \d+ finished jobs?\."))).to_be_visible()
    for job_id in ids:
        expect(uma.locator(f"#job-row-{job_id}")).to_have_count(0)
    expect(uma.locator("#jobs-empty")).to_be_visible()
    assert _jobs_of(portal, uma_token) == []


def test_a_running_job_is_cancelled_from_its_page_and_deleted(
    uma: Page, portal: Portal, uma_token: str
) -> None:
    uma.goto(f"{portal.url}/jobs/new?app={SOLVER_APP}")
    _choose(uma, "new-job-procedure", "sleep")
    uma.click("#new-job-input-none")
    uma.fill("#new-job-arguments", '{"seconds": 300}')
    uma.click("#new-job-submit")
    job_id = _job_id_of(uma)
    expect(uma.locator("#job-state")).to_have_text("running", timeout=JOB_TIMEOUT)
    uma.click("#job-cancel")
    expect(uma.locator("#job-state")).to_have_text("cancelled", timeout=30_000)
    expect(uma.locator("#job-reason")).to_contain_text("cancel")
    uma.click("#job-delete")
    uma.click("#job-delete-confirm")
    expect(uma).to_have_url(re.compile(r"/jobs$"))
    expect(uma.locator(f"#job-row-{job_id}")).to_have_count(0)
    assert job_id not in [j["id"] for j in _jobs_of(portal, uma_token)]


def test_the_job_page_keeps_the_last_lines_of_a_long_log() -> None:
    chunks = [
        {"id": "1", "stream": "stdout", "text": "a\nb\nc\n"},
        {"id": "2", "stream": "stderr", "text": "d\ne"},
    ]
    assert trim_log(chunks, 5) == (chunks, 0)
    kept, dropped = trim_log(chunks, 3)
    assert dropped == 2 and "".join(c["text"] for c in kept) == "c\nd\ne"
    assert kept[1] == chunks[1] and kept[0]["id"] == "1"
    assert trim_log(chunks, 2) == ([chunks[1]], 3)
    assert trim_log(chunks, 1) == ([{"id": "2", "stream": "stderr", "text": "e"}], 4)


def test_a_refresh_loop_stops_when_its_tab_leaves_disconnects_or_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sockets = {"tab-token": "sid"}
    monkeypatch.setattr(jobs_ui, "_event_namespace", lambda: SimpleNamespace(token_to_sid=sockets))
    router = SimpleNamespace(route_id="jobs", session=SimpleNamespace(client_token="tab-token"))
    tab = cast(Any, SimpleNamespace(router=router))

    assert keep_watching(tab, "/jobs", loop=3, current=3)
    assert not keep_watching(tab, "/jobs", loop=2, current=3)  # the page loaded again
    router.route_id = "/jobs/[id]"
    assert not keep_watching(tab, "/jobs", loop=3, current=3)
    assert keep_watching(tab, "/jobs/[id]", loop=3, current=3)
    sockets.clear()
    assert not keep_watching(tab, "/jobs/[id]", loop=3, current=3)


# -- the demo app ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_app(portal: Portal, demo_wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The demo runtime (HiGHS wheels from PyPI, kept in the pytest cache) and the
    transport app, published for everyone under a key of this test's own."""
    folder = tmp_path_factory.mktemp("demo")
    package = folder / "runtime.zip"
    build_runtime(RUNTIME_DIR, package, wheel_dir=demo_wheels)
    private_pem, public = signing.generate_signing_key()
    signature = signing.sign_file(private_pem, package).to_json()
    bundle = folder / "transport.zip"
    pack_app(APP_DIR, bundle)
    with admin_client(portal) as admin:
        admin.trust_signing_key("demo test key", public)
        admin.upload_runtime(package, signature)
        try:
            admin.publish_bundle(bundle)
        except PortalClientError as exc:  # pragma: no cover - a second module run
            assert exc.code == "duplicate_version", exc
        for right in ("read", "run"):
            admin.set_grant(
                "transport",
                principal_type="group",
                principal_name="everyone",
                right=right,
                effect="allow",
            )


@pytest.mark.network
def test_the_demo_solves_the_example_case_from_the_form(
    uma: Page, portal: Portal, uma_token: str, demo_app: None
) -> None:
    uma.goto(f"{portal.url}/jobs/new?app=transport")
    expect(uma.locator("#new-job-app")).to_contain_text("Transportation planner")
    _choose(uma, "new-job-procedure", "solve")
    expect(uma.locator("#new-job-procedure-description")).to_contain_text("optimal plan")
    job_id = _submit_with_upload(uma, "solve", EXAMPLE_CASE)

    expect(uma.locator("#job-state")).to_have_text("succeeded", timeout=240_000)
    expect(uma.locator("#job-log")).to_contain_text("Solving with")
    output = uma.locator("#job-output-download")
    expect(output).to_contain_text(f"job-{job_id}-output")
    plan = json.loads(_download(portal, output.get_attribute("href") or "", uma_token))
    assert plan["status"] == "optimal", plan
