"""``aimms-portal desktop APP``: desktop client sessions against a live portal.

The portal is ``solve_portal`` (tests/solving.py: the REST API on a loopback port, a
scheduler with the local launcher, the test app ``solver-app``). The desktop client
runs as a process of its own, as a user starts it, logged on as ``uma`` with
``login --token`` (credentials in a temporary config folder); its home, runtime cache
and temporary folder are the test's, so the test sees what it leaves behind. The last
test runs the transport demo on its ``python-highs`` runtime (wheels from PyPI: marker
``network``) and hands a solve from the desktop to the portal.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from aimms_portal import config
from aimms_portal.cli import CREDENTIALS_FILE
from aimms_portal.client import PortalClientError
from aimms_portal.db import session_scope
from aimms_portal.models import User
from aimms_portal.packages import pack_app
from aimms_portal.services import app_access, apps, demo, portal_keys
from tests import test_cli
from tests.api.support import quick_user
from tests.examples.test_transport import EXAMPLE_OPTIMUM
from tests.servers import free_port
from tests.solving import MANIFEST, SOLVER_APP, SolvePortal, process_alive, solver_bundle
from tests.test_cli import assert_clean_failure, cli

cli_home = test_cli.cli_home

#: The first desktop session of a run builds the test runtime's environment.
READY_TIMEOUT = 120
#: ... and the demo's (numpy, highspy), on the desktop and again in the solve session.
DEMO_TIMEOUT = 300
EXIT_TIMEOUT = 30
ADDRESS = re.compile(r"runs at (http://127\.0\.0\.1:\d+/) \(desktop session (\d+)\)")


@pytest.fixture
def solve_settings(
    solve_settings: dict[str, str], request: pytest.FixtureRequest
) -> dict[str, str]:
    """The solve portal's settings; for the demo, a job lease that outlasts a cold build
    of its runtime in the solve session (see tests/examples/test_transport_jobs.py)."""
    if "demo_portal" in request.fixturenames:
        return solve_settings | {"AIMMS_PORTAL_JOB_LEASE_SECONDS": "120"}
    return solve_settings


@pytest.fixture(scope="session")
def desktop_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The desktop's cache folder for the whole run: each runtime is built here once."""
    return tmp_path_factory.mktemp("desktop-cache")


@pytest.fixture
def desktop_env(cli_home: Path, tmp_path: Path, desktop_cache: Path) -> dict[str, str]:
    """The environment of the user's desktop client (a home, a cache, a temporary
    folder of its own); its credentials go into ``cli_home``."""
    home, scratch = tmp_path / "user-home", tmp_path / "user-tmp"
    home.mkdir()
    scratch.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k not in ("AIMMS_PORTAL_URL", "AIMMS_PORTAL_TOKEN")
    }
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(desktop_cache),
        TMPDIR=str(scratch),
        AIMMS_PORTAL_CLI_CONFIG_DIR=str(cli_home),
        PYTHONUNBUFFERED="1",
    )
    return env


def log_on(portal: SolvePortal, user: User | None = None) -> None:
    """Keep a token of ``user`` (default: ``uma``, who may run the test app) for the CLI."""
    user = user or portal.user
    with portal.client(user):
        token = portal.tokens[user.username]
    result = cli("login", portal.url, "--token", "--password-stdin", input=token + "\n")
    assert result.exit_code == 0, result.output


@pytest.fixture
def logged_on(solve_portal: SolvePortal, desktop_env: dict[str, str]) -> SolvePortal:
    """The solve portal, with the CLI logged on to it as ``uma``."""
    log_on(solve_portal)
    return solve_portal


class Desktop:
    """``aimms-portal desktop ARGS`` as a process of its own, its output followed."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aimms_portal.cli", "desktop", *args, "--no-browser"],
            env=env,
            cwd=env["HOME"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            process_group=0,  # as a shell's job: Ctrl-C reaches the whole group
        )
        self._readers = [
            threading.Thread(target=self._follow, args=(stream, lines), daemon=True)
            for stream, lines in (
                (self.process.stdout, self.stdout),
                (self.process.stderr, self.stderr),
            )
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _follow(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(["stdout:", *self.stdout, "stderr:", *self.stderr])

    def address(self, timeout: float = READY_TIMEOUT) -> tuple[str, int]:
        """The app's local address and the session's id, once the client prints them."""
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.stdout):
                if found := ADDRESS.search(line):
                    return found.group(1), int(found.group(2))
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.05)

    def app_processes(self) -> set[int]:
        """The processes the client started (the app), from /proc."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
        found, todo = set(), [self.process.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.add(child)
                todo.append(child)
        return found

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the client's process group (the
        app runs in a group of its own)."""
        os.killpg(self.process.pid, signal.SIGINT)

    def finish(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Wait until the client has exited; its exit status."""
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def kill(self) -> None:
        """End a client still running (SIGTERM, then SIGKILL to it and its app)."""
        if self.process.poll() is not None:
            return
        started = self.app_processes()
        self.process.terminate()
        try:
            self.process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            for pid in (self.process.pid, *started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def desktop(desktop_env: dict[str, str]) -> Iterator[Callable[..., Desktop]]:
    """Starts ``aimms-portal desktop ARGS`` as the user; a client still running at the
    end is killed."""
    started: list[Desktop] = []

    def launch(*args: str) -> Desktop:
        started.append(Desktop(desktop_env, *args))
        return started[-1]

    yield launch
    for client in started:
        client.kill()


def page(address: str) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=10) as browser:
        return browser.get(address)


def answers(address: str) -> bool:
    try:
        page(address)
        return True
    except httpx.TransportError:
        return False


def session_of(portal: SolvePortal, session_id: int) -> dict:
    with portal.client() as client:
        return dict(client.request("GET", f"/sessions/{session_id}"))


def set_settings(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"AIMMS_PORTAL_{name.upper()}", value)
    config.get_settings.cache_clear()


def assert_gone(processes: set[int]) -> None:
    deadline = time.monotonic() + 10
    while any(process_alive(pid) for pid in processes):
        assert time.monotonic() < deadline, f"still running: {processes}"
        time.sleep(0.05)


# -- the session's life ------------------------------------------------------------------


def test_a_desktop_session_runs_the_app_here_until_ctrl_c(
    logged_on: SolvePortal, desktop_env: dict[str, str], desktop: Callable[..., Desktop]
):
    client = desktop(SOLVER_APP)
    address, session_id = client.address()

    hello = page(address)
    assert hello.status_code == 200 and "Hello from solver-app" in hello.text
    with httpx.Client(trust_env=False, timeout=10) as browser:
        echoed = browser.post(f"{address}api/echo", content=b"12345").json()
    assert echoed["size"] == 5
    with logged_on.client() as rest:
        listed = rest.request("GET", "/sessions", params={"kind": "desktop"})["items"]
    assert [(s["id"], s["kind"], s["state"], s["owner"]) for s in listed] == [
        (session_id, "desktop", "ready", "uma")
    ]
    assert listed[0]["app"] == SOLVER_APP and listed[0]["version"] == "1.0"
    assert listed[0]["url"] is None  # not served by the portal's proxy
    apps_here = client.app_processes()
    assert apps_here, "the app runs as a child of the client"
    # the runtime's environment is kept in the user's cache folder
    cache = Path(desktop_env["XDG_CACHE_HOME"]) / "aimms-portal" / "runtimes"
    assert list(cache.glob("*/READY"))

    client.ctrl_c()

    assert client.finish() == 0, client.output()
    assert client.stdout[-1] == (
        f"Desktop session {session_id} stopped: closed on the user's computer."
    )
    assert_gone(apps_here)
    assert not answers(address)
    ended = session_of(logged_on, session_id)
    assert (ended["state"], ended["reason"]) == ("stopped", "closed on the user's computer")
    # the app's folder (the unpacked bundle) is gone from this computer
    assert list(Path(desktop_env["TMPDIR"]).iterdir()) == []
    assert "Traceback" not in client.output()


def test_ctrl_c_while_the_runtime_is_prepared_abandons_it(
    logged_on: SolvePortal,
    desktop_env: dict[str, str],
    desktop: Callable[..., Desktop],
    tmp_path: Path,
):
    desktop_env["XDG_CACHE_HOME"] = str(tmp_path / "cold-cache")  # the runtime is built
    client = desktop(SOLVER_APP)
    deadline = time.monotonic() + READY_TIMEOUT
    while not any(line.startswith("preparing runtime") for line in client.stderr):
        assert client.process.poll() is None and time.monotonic() < deadline, client.output()
        time.sleep(0.01)

    client.ctrl_c()

    assert client.finish() == 0, client.output()
    assert client.stdout[-1].endswith(" stopped: closed on the user's computer."), client.output()
    assert not any("runs at" in line for line in client.stdout)
    with logged_on.client() as rest:
        (ended,) = rest.request("GET", "/sessions")["items"]
    assert (ended["state"], ended["reason"]) == ("stopped", "closed on the user's computer")
    # nothing half-built is left to be taken for a ready runtime
    runtimes = tmp_path / "cold-cache" / "aimms-portal" / "runtimes"
    assert [p.name for p in runtimes.iterdir() if p.is_dir()] == []
    assert list(Path(desktop_env["TMPDIR"]).iterdir()) == []
    assert "Traceback" not in client.output()


def test_a_desktop_session_takes_a_seat(
    logged_on: SolvePortal,
    desktop_env: dict[str, str],
    desktop: Callable[..., Desktop],
    monkeypatch: pytest.MonkeyPatch,
):
    set_settings(monkeypatch, max_sessions_per_user="1")
    first = desktop(SOLVER_APP)
    _, session_id = first.address()

    second = desktop(SOLVER_APP)
    assert second.finish() == 1, second.output()
    with logged_on.client() as rest, pytest.raises(PortalClientError) as webui:
        rest.request("POST", "/sessions", json={"app": SOLVER_APP, "kind": "webui"})

    (refused,) = second.stderr
    assert refused.startswith("error: No free seat: you have 1 ") and refused.endswith(
        " (no_free_seats)"
    )
    assert (webui.value.status, webui.value.code) == (409, "no_free_seats")

    # SIGTERM ends it as Ctrl-C does, and gives the seat back
    first.process.send_signal(signal.SIGTERM)
    assert first.finish() == 0, first.output()
    assert session_of(logged_on, session_id)["state"] == "stopped"
    third = desktop(SOLVER_APP)
    third.address()


def test_a_session_ended_on_the_portal_ends_the_app_here(
    logged_on: SolvePortal, desktop_env: dict[str, str], desktop: Callable[..., Desktop]
):
    client = desktop(SOLVER_APP)
    address, session_id = client.address()
    apps_here = client.app_processes()

    with logged_on.client() as rest:
        rest.request("DELETE", f"/sessions/{session_id}")

    assert client.finish() == 0, client.output()
    assert client.stdout[-1] == f"Desktop session {session_id} stopped: ended by you."
    assert_gone(apps_here)
    assert not answers(address)
    assert session_of(logged_on, session_id)["state"] == "stopped"
    assert list(Path(desktop_env["TMPDIR"]).iterdir()) == []


def test_a_client_killed_outright_ends_on_the_portal_and_frees_its_seat(
    logged_on: SolvePortal,
    desktop_env: dict[str, str],
    desktop: Callable[..., Desktop],
    monkeypatch: pytest.MonkeyPatch,
):
    set_settings(monkeypatch, max_sessions_per_user="1")
    client = desktop(SOLVER_APP)
    _, session_id = client.address()
    apps_here = client.app_processes()

    # SIGKILL: no goodbye to the portal, no more heartbeats
    os.kill(client.process.pid, signal.SIGKILL)
    client.process.wait(timeout=EXIT_TIMEOUT)
    try:
        lease = float(logged_on.scheduler.settings.job_lease_seconds)
        deadline = time.monotonic() + lease + 30
        while (ended := session_of(logged_on, session_id))["state"] not in ("stopped", "failed"):
            assert time.monotonic() < deadline, ended
            time.sleep(0.2)
        assert (ended["state"], ended["reason"]) == ("failed", f"no heartbeat for {lease:g} s")

        # its seat is free again
        again = desktop(SOLVER_APP)
        _, second = again.address()
        assert second != session_id
    finally:
        # nothing passes SIGKILL on: the app it started is left running (README's limits)
        for pid in apps_here:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


#: A WebUI that answers, and exits with the code it is sent (``POST /quit/<code>``).
QUITTING_WEB_PY = r"""
import http.server, os, threading


class Handler(http.server.BaseHTTPRequestHandler):
    def _reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._reply(b"ok")

    def do_POST(self):
        code = int(self.path.rsplit("/", 1)[-1])
        self._reply(b"bye")
        print(f"web: quitting with {code}", flush=True)
        threading.Timer(0.2, os._exit, [code]).start()

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def publish_quitting_release(portal: SolvePortal, version: str) -> None:
    source = portal.folder / f"quitting-{version}"
    source.mkdir()
    manifest = MANIFEST | {"version": version, "webui": {"command": ["python", "web.py"]}}
    (source / "app.json").write_text(json.dumps(manifest))
    (source / "procs.py").write_text("")
    (source / "web.py").write_text(QUITTING_WEB_PY)
    bundle = portal.folder / f"quitting-{version}.zip"
    pack_app(source, bundle)
    with open(bundle, "rb") as stream:
        apps.publish_bundle(actor=portal.publisher, source=stream)


@pytest.mark.parametrize(
    ("code", "exit_status", "ending"),
    [(0, 0, "stopped: the app ended."), (5, 1, "failed: the app stopped with exit code 5.")],
)
def test_an_app_that_exits_ends_the_session(
    logged_on: SolvePortal,
    desktop_env: dict[str, str],
    desktop: Callable[..., Desktop],
    code: int,
    exit_status: int,
    ending: str,
):
    publish_quitting_release(logged_on, "3.0")
    client = desktop(SOLVER_APP, "--version", "3.0")
    address, session_id = client.address()

    with httpx.Client(trust_env=False, timeout=10) as browser:
        browser.post(f"{address}quit/{code}")

    assert client.finish() == exit_status, client.output()
    summary = f"Desktop session {session_id} {ending}"
    assert (client.stdout if code == 0 else client.stderr)[-1] == (
        summary if code == 0 else f"error: {summary}"
    )
    ended = session_of(logged_on, session_id)
    assert ended["state"] == ("stopped" if code == 0 else "failed")
    if code:
        with logged_on.client() as rest:
            log = rest.request("GET", f"/sessions/{session_id}/log")["lines"]
        assert "web: quitting with 5" in log
    assert "[app] web: quitting with" in "\n".join(client.stdout)


def test_an_app_that_cannot_start_fails_the_session_with_its_lines(
    logged_on: SolvePortal, desktop_env: dict[str, str], desktop: Callable[..., Desktop]
):
    with open(solver_bundle(logged_on.folder, "2.0", webui_mode="crash"), "rb") as stream:
        apps.publish_bundle(actor=logged_on.publisher, source=stream)

    client = desktop(SOLVER_APP)

    assert client.finish(timeout=READY_TIMEOUT) == 1, client.output()
    last = client.stderr[-1]
    assert re.fullmatch(
        r"error: Desktop session \d+ failed: the app exited with code 3 before it answered\.",
        last,
    ), client.output()
    session_id = int(last.split()[3])
    with logged_on.client() as rest:
        log = rest.request("GET", f"/sessions/{session_id}/log")["lines"]
    assert "web: cannot read my configuration" in log
    assert list(Path(desktop_env["TMPDIR"]).iterdir()) == []


# -- refused -----------------------------------------------------------------------------


def test_a_release_the_user_may_not_run_is_refused(
    solve_portal: SolvePortal, desktop_env: dict[str, str]
):
    reader = quick_user("rita")
    with session_scope() as session:
        app_access.set_grant(
            session,
            actor=solve_portal.publisher,
            name=SOLVER_APP,
            principal_type="user",
            principal_name="rita",
            right="read",
            effect="allow",
        )
    log_on(solve_portal, reader)

    assert_clean_failure(
        cli("desktop", SOLVER_APP, "--no-browser"),
        "error: You need the run right on 'solver-app' for this. (forbidden)",
    )
    assert_clean_failure(
        cli("desktop", "no-such-app", "--no-browser"), "error: No app called 'no-such-app'."
    )
    with solve_portal.client(reader) as rest:
        assert rest.request("GET", "/sessions")["total"] == 0

    log_on(solve_portal)  # uma may run it, but there is no such release
    assert_clean_failure(
        cli("desktop", SOLVER_APP, "--version", "9.9", "--no-browser"),
        "error: solver-app has no release '9.9'.",
    )


def publish_encrypted(portal: SolvePortal, version: str) -> None:
    """Release ``version`` of the test app, encrypted for this portal."""
    with session_scope() as session:
        public_pem = portal_keys.ensure_portal_key(session).public_pem.encode()
    solver_bundle(portal.folder, version)
    bundle = portal.folder / f"solver-{version}.enc"
    pack_app(portal.folder / f"solver-{version}", bundle, encrypt_for=public_pem)
    with open(bundle, "rb") as stream:
        assert apps.publish_bundle(actor=portal.publisher, source=stream).encrypted


def test_an_encrypted_release_runs_here_only_where_the_portal_allows_it(
    logged_on: SolvePortal,
    desktop_env: dict[str, str],
    desktop: Callable[..., Desktop],
    monkeypatch: pytest.MonkeyPatch,
):
    publish_encrypted(logged_on, "2.0")

    assert_clean_failure(
        cli("desktop", SOLVER_APP, "--no-browser"),
        "error: solver-app 2.0 is encrypted and this portal does not hand encrypted apps to "
        "computers of its users; open it in the browser instead. (encrypted_release)",
    )

    set_settings(monkeypatch, desktop_encrypted="true")
    client = desktop(SOLVER_APP)
    address, _ = client.address()
    assert "Hello from solver-app" in page(address).text
    client.ctrl_c()
    assert client.finish() == 0, client.output()
    # the decrypted bundle is not left on this computer
    assert list(Path(desktop_env["TMPDIR"]).iterdir()) == []


def test_a_portal_that_cannot_be_reached(cli_home: Path):
    cli_home.mkdir(parents=True)
    url = f"http://127.0.0.1:{free_port()}"
    (cli_home / CREDENTIALS_FILE).write_text(
        json.dumps({"url": url, "token": "apt_nothing", "token_id": 0})
    )

    result = cli("desktop", SOLVER_APP, "--no-browser")

    assert_clean_failure(result, f"error: Cannot reach the portal at {url}")


# -- the demo ----------------------------------------------------------------------------


@pytest.fixture
def demo_portal(solve_portal: SolvePortal, demo_wheels: Path) -> SolvePortal:
    """The solve portal with the demo runtime and the transport app published for all."""
    with session_scope() as session:
        root = session.exec(select(User).where(User.username == "root")).one()
    summary = demo.publish_demo(config.get_settings(), admin=root, wheel_dir=demo_wheels)
    assert summary.startswith("demo published: runtime python-highs 1.0.0, app transport")
    return solve_portal


@pytest.mark.network
def test_the_demo_on_the_desktop_hands_its_solve_to_the_portal(
    demo_portal: SolvePortal, desktop_env: dict[str, str], desktop: Callable[..., Desktop]
):
    log_on(demo_portal)
    client = desktop("transport")
    address, session_id = client.address(timeout=DEMO_TIMEOUT)

    assert page(address).status_code == 200
    with httpx.Client(trust_env=False, timeout=DEMO_TIMEOUT) as browser:
        solved = browser.post(
            f"{address}api/solve", content=b"{}", headers={"Content-Type": "application/json"}
        )

    assert solved.status_code == 200, solved.text
    plan = solved.json()
    assert plan["status"] == "optimal"
    assert plan["objective"] == pytest.approx(EXAMPLE_OPTIMUM)
    job = demo_portal.job(plan["job"])
    assert (job.state, job.procedure, job.owner_id) == ("succeeded", "solve", demo_portal.user.id)
    assert session_of(demo_portal, session_id)["state"] == "ready"

    client.ctrl_c()
    assert client.finish() == 0, client.output()
    assert session_of(demo_portal, session_id)["state"] == "stopped"
