"""A live portal for solve-job tests: the REST API on a loopback port, a scheduler with
the local launcher, and a test app whose procedures echo, sleep, fail or spawn.

The REST API is served by uvicorn in a thread of the test process (no UI), so the test
can look into the database while real runner processes, started by the real local
launcher, talk to that API over HTTP exactly as they would to a production portal.
Runtime environments are cached for the whole test run (one ``venv`` per runtime
digest), as a portal's machine would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlmodel import col, select

from aimms_portal import config, launchers
from aimms_portal.api.app import create_api
from aimms_portal.client import PortalClient
from aimms_portal.db import REPO_ROOT, session_scope
from aimms_portal.launchers.local import LocalLauncher
from aimms_portal.models import AppSession, Job, Role, User
from aimms_portal.packages import pack_app
from aimms_portal.scheduler.service import Scheduler
from aimms_portal.services import app_access, apps
from tests import publishing
from tests.api.support import quick_user
from tests.servers import free_port

SOLVER_APP = "solver-app"

#: The test app's procedures: one script, the first argument says what to do.
PROCEDURES_PY = r"""
import json, os, subprocess, sys, time

mode = sys.argv[1]
with open(os.environ["AIMMS_PORTAL_ARGUMENTS"]) as f:
    args = json.load(f)
out = os.environ["AIMMS_PORTAL_OUTPUT"]

if mode == "echo":
    data = b""
    if "AIMMS_PORTAL_INPUT" in os.environ:
        with open(os.environ["AIMMS_PORTAL_INPUT"], "rb") as f:
            data = f.read()
    print(f"echo: {len(data)} bytes", flush=True)
    print("a line on stderr", file=sys.stderr, flush=True)
    with open(out, "wb") as f:
        f.write(data[::-1] if args.get("reverse") else data)
elif mode == "sleep":
    seconds = float(args.get("seconds", 60))
    journal = args.get("journal")
    job = os.environ["AIMMS_PORTAL_JOB_ID"]

    def note(what):
        if journal:
            with open(journal, "a") as f:
                f.write(f"{what} {job} {os.getpid()} {time.time():.3f}\n")

    note("start")
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        print(f"working {time.monotonic() - started:.1f}", flush=True)
        time.sleep(0.1)
    with open(out, "w") as f:
        f.write(json.dumps({"slept": seconds, "pid": os.getpid()}))
    note("end")
elif mode == "fail":
    print("something went wrong", file=sys.stderr, flush=True)
    sys.exit(int(args.get("code", 3)))
elif mode == "wheel":
    import corpus_demo
    with open(out, "w") as f:
        f.write(corpus_demo.VERSION)
elif mode == "env":
    keep = ("AIMMS_PORTAL_URL", "AIMMS_PORTAL_SESSION_ID", "AIMMS_PORTAL_JOB_ID", "VIRTUAL_ENV")
    seen = {k: os.environ.get(k) for k in keep}
    seen["token"] = bool(os.environ.get("AIMMS_PORTAL_TOKEN"))
    with open(out, "w") as f:
        f.write(json.dumps(seen))
elif mode == "spawn":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(args["journal"], "a") as f:
        f.write(f"start {os.environ['AIMMS_PORTAL_JOB_ID']} {child.pid} {time.time():.3f}\n")
    time.sleep(600)
"""

#: The test app's WebUI: pages under the base path, a few JSON routes and a WebSocket
#: echo (written with the standard library only: the test runtime has nothing else).
#: ``live`` is a page that keeps a note (saved with ``POST api/note``) and talks over a
#: WebSocket it opens when asked; ``api/deaf`` makes the app stop answering while it
#: keeps running; ``api/count`` says how many requests reached the app.
WEB_PY = r"""
import base64, hashlib, html, http.server, json, os, socket, struct, sys, threading, time

BASE = os.environ.get("AIMMS_PORTAL_BASE_PATH", "/")
MODE = sys.argv[1] if len(sys.argv) > 1 else "serve"
print(f"web: mode {MODE}, base {BASE}", flush=True)
if MODE == "silent":
    while True:
        print("web: still thinking", flush=True)
        time.sleep(0.5)
if MODE == "crash":
    print("web: cannot read my configuration", flush=True)
    sys.exit(3)

NOTE = ["nothing yet"]
DEAF = threading.Event()
COUNT = [0]  # requests that reached the app (api/count tells)
LIVE = '''<html><body><h1 id="live-title">Live page</h1>
<p>Note: <span id="note">%s</span></p>
<input id="note-text"><button id="note-save">Save</button>
<p>WebSocket: <span id="ws-state">closed</span></p>
<input id="ws-text"><button id="ws-open">Connect</button><button id="ws-send">Send</button>
<div id="ws-log"></div>
<script>
const base = %s;
let ws = null;
const $ = (id) => document.getElementById(id);
$("note-save").onclick = async () => {
  const answer = await fetch(base + "api/note", {method: "POST", body: $("note-text").value});
  $("note").textContent = (await answer.json()).note;
};
$("ws-open").onclick = () => {
  ws = new WebSocket(location.origin.replace(/^http/, "ws") + base + "ws");
  ws.onopen = () => { $("ws-state").textContent = "open"; };
  ws.onclose = () => { $("ws-state").textContent = "closed"; };
  ws.onmessage = (event) => {
    const line = document.createElement("div");
    line.className = "ws-reply";
    line.textContent = event.data;
    $("ws-log").appendChild(line);
  };
};
$("ws-send").onclick = () => ws.send($("ws-text").value);
</script></body></html>'''


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status, body, kind="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        COUNT[0] += 1
        if DEAF.is_set():
            self.close_connection = True  # no answer at all, on any connection
            return
        if not self.path.startswith(BASE):
            return self._send(404, b"{}")
        rest = self.path[len(BASE):]
        if rest == "":
            app = os.environ.get("AIMMS_PORTAL_APP")
            page = f"<html><body><h1 id='hello'>Hello from {app}</h1></body></html>"
            return self._send(200, page.encode(), "text/html")
        if rest == "live":
            page = LIVE % (html.escape(NOTE[0]), json.dumps(BASE))
            return self._send(200, page.encode(), "text/html")
        if rest == "api/deaf":
            self._send(200, b"{}")
            print("web: not listening any more", flush=True)
            DEAF.set()
            threading.Thread(target=lambda: (server.shutdown(), server.server_close())).start()
            return
        if rest == "api/count":
            return self._send(200, json.dumps({"count": COUNT[0]}).encode())
        if rest == "api/headers":
            return self._send(200, json.dumps(dict(self.headers)).encode())
        if rest == "api/cookie":
            extra = [
                ("Set-Cookie", "aimms_portal_session=stolen; Path=/"),
                ("Set-Cookie", "app=1; Path=" + BASE),
            ]
            return self._send(200, b"{}", extra=extra)
        if rest == "api/big":  # larger than what the proxy reads whole: streamed
            return self._send(200, bytes(range(256)) * 12288, "application/octet-stream")
        if rest == "api/chunked":  # no Content-Length: streamed as it comes
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"one,", b"two,", b"three"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
            return
        if rest == "ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self._websocket()
        return self._send(404, b"{}")

    def do_POST(self):
        COUNT[0] += 1
        length = int(self.headers.get("Content-Length", 0))
        data = self.rfile.read(length)
        if self.path == BASE + "api/note":
            NOTE[0] = data.decode()
            return self._send(200, json.dumps({"note": NOTE[0]}).encode())
        digest = hashlib.sha256(data).hexdigest()
        self._send(200, json.dumps({"size": len(data), "sha256": digest}).encode())

    def _websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        magic = (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()
        accept = base64.b64encode(hashlib.sha1(magic).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        conn = self.connection
        while True:
            head = conn.recv(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", conn.recv(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", conn.recv(8))[0]
            mask = conn.recv(4)
            payload = bytearray()
            while len(payload) < length:
                payload += conn.recv(length - len(payload))
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 8:
                conn.sendall(b"\x88\x00")
                return
            reply = b"echo:" + data
            if len(reply) < 126:
                frame = bytes([0x81, len(reply)])
            else:
                frame = bytes([0x81, 126]) + struct.pack(">H", len(reply))
            conn.sendall(frame + reply)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
print(f"web: serving on {server.server_port}", flush=True)
server.serve_forever()
while True:  # deaf (see api/deaf): running, but answering nobody
    time.sleep(60)
"""

MANIFEST = {
    "format": 1,
    "name": SOLVER_APP,
    "version": "1.0",
    "title": "Solver test app",
    "description": "Procedures that echo, sleep, fail and spawn, for the solve tests.",
    "runtime": {"name": publishing.RUNTIME_NAME, "version": ">=1.0"},
    "procedures": {
        name: {"command": ["python", "procs.py", name]}
        for name in ("echo", "sleep", "fail", "wheel", "env", "spawn")
    },
    "webui": {"command": ["python", "web.py"]},
    "resources": {"time_limit_s": 120},
}


def solver_bundle(folder: Path, version: str = "1.0", *, webui_mode: str = "serve") -> Path:
    r"""The test app's bundle, version ``version``; its WebUI serves, stays ``silent``
    (never answers) or ``crash``\ es at start, as ``webui_mode`` says."""
    source = folder / f"solver-{version}"
    source.mkdir(parents=True)
    manifest = MANIFEST | {"version": version}
    manifest["webui"] = {"command": ["python", "web.py", webui_mode]}
    (source / "app.json").write_text(json.dumps(manifest))
    (source / "procs.py").write_text(PROCEDURES_PY)
    (source / "web.py").write_text(WEB_PY)
    bundle = folder / f"solver-{version}.zip"
    pack_app(source, bundle)
    return bundle


@dataclass
class SolvePortal:
    """A running portal for solve tests (see the module docstring)."""

    url: str
    scheduler: Scheduler
    launcher: LocalLauncher
    publisher: User
    user: User
    folder: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, user: User | None = None) -> PortalClient:
        """A REST client acting as ``user`` (default: the plain user with the run right)."""
        user = user or self.user
        if user.username not in self.tokens:
            from aimms_portal.services import tokens

            with session_scope() as session:
                _, secret = tokens.create_token(
                    session,
                    actor=user,
                    name="solve tests",
                    scopes=["read", "write"],
                    expires_in_days=1,
                )
            self.tokens[user.username] = secret
        return PortalClient(self.url, self.tokens[user.username], timeout=60)

    def job(self, job_id: int) -> Job:
        with session_scope() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def wait_for(self, job_id: int, predicate: Callable[[Job], bool], timeout: float = 60.0) -> Job:
        """Poll the database until ``predicate(job)`` holds; the job then."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} stayed {job.state} ({job.reason})")
            time.sleep(0.05)

    def wait_state(self, job_id: int, *states: str, timeout: float = 60.0) -> Job:
        return self.wait_for(job_id, lambda j: j.state in states, timeout)

    def sessions(self) -> list[AppSession]:
        with session_scope() as session:
            return list(session.exec(select(AppSession).order_by(col(AppSession.id))).all())


def publish_solver_app(folder: Path, *, runners: tuple[str, ...] = ("uma",)) -> tuple[User, User]:
    """Publish the test app (and its runtime) as ``pete``; ``runners`` (new users) may
    run it. Returns the publisher and the first of them."""
    root = quick_user("root", Role.admin.value)
    publisher = quick_user("pete", Role.publisher.value)
    users = [quick_user(name) for name in runners]
    publishing.trust_test_key(root)
    publishing.upload_runtime(publisher, folder, "1.0")
    with open(solver_bundle(folder), "rb") as stream:
        apps.publish_bundle(actor=publisher, source=stream)
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
    return publisher, users[0]


def _serve(port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(
        uvicorn.Config(
            create_api(),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            # a test's stray long poll must not hold the server (and the next test) up
            timeout_graceful_shutdown=2,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test API server did not start")
        time.sleep(0.02)
    return server, thread


@pytest.fixture(scope="session")
def runtime_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One runtime cache for the run: the test runtime's venv is built once."""
    return tmp_path_factory.mktemp("runtime-cache")


#: Settings that make failures show within seconds instead of the production defaults.
FAST_SETTINGS = {
    "AIMMS_PORTAL_JOB_LEASE_SECONDS": "4",
    "AIMMS_PORTAL_HEARTBEAT_SECONDS": "0.5",
    "AIMMS_PORTAL_SOLVE_IDLE_SECONDS": "30",
    "AIMMS_PORTAL_SESSION_START_TIMEOUT_S": "60",
    "AIMMS_PORTAL_MAX_JOBS_PER_USER": "4",
}


@pytest.fixture
def solve_settings(
    db: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, runtime_cache: Path
) -> dict[str, str]:
    """Environment for a solve portal; a test may change values before ``solve_portal``."""
    port = free_port()
    values = FAST_SETTINGS | {
        "AIMMS_PORTAL_PORT": str(port),
        "AIMMS_PORTAL_RUNNER_PORTAL_URL": f"http://127.0.0.1:{port}",
        "AIMMS_PORTAL_SESSIONS_DIR": str(tmp_path / "sessions"),
        "AIMMS_PORTAL_RUNTIME_CACHE_DIR": str(runtime_cache),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def solve_portal(
    solve_settings: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[SolvePortal]:
    """A live portal with the test app published and ``user`` allowed to run it."""
    for name, value in solve_settings.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()
    launchers.get_launcher.cache_clear()
    settings = config.get_settings()

    publisher, user = publish_solver_app(tmp_path)
    server, thread = _serve(settings.port)
    launcher = LocalLauncher(settings.resolved_sessions_dir)
    scheduler = Scheduler(launcher, settings)
    scheduler.start()
    portal = SolvePortal(
        url=f"http://127.0.0.1:{settings.port}",
        scheduler=scheduler,
        launcher=launcher,
        publisher=publisher,
        user=user,
        folder=tmp_path,
    )
    try:
        yield portal
    finally:
        scheduler.stop()
        for handle in launcher.list_sessions().values():
            launcher.stop(handle, grace_seconds=1)
        server.should_exit = True
        thread.join(timeout=10)
        launchers.get_launcher.cache_clear()


def upload_input(portal: SolvePortal, content: bytes, name: str = "input.json") -> int:
    """An input case of the plain user's; its id."""
    path = portal.folder / name
    path.write_bytes(content)
    with portal.client() as client:
        return int(client.upload_case(path, name=name)["id"])


def submit(portal: SolvePortal, procedure: str, **fields: Any) -> int:
    """Submit a job of the test app as the plain user; its id."""
    with portal.client() as client:
        job = client.request(
            "POST", "/jobs", json={"app": SOLVER_APP, "procedure": procedure, **fields}
        )
    return int(job["id"])


@dataclass(frozen=True)
class Run:
    """One run of the ``sleep`` procedure, from its journal."""

    job_id: int
    pid: int
    start: float
    end: float | None


def journal_runs(journal: Path) -> list[Run]:
    """The runs the ``sleep`` procedure wrote into ``journal``, in start order."""
    starts: dict[int, tuple[int, float]] = {}
    ends: dict[int, float] = {}
    if not journal.exists():
        return []
    for line in journal.read_text().splitlines():
        what, job, pid, at = line.split()
        if what == "start":
            starts[int(pid)] = (int(job), float(at))
        else:
            ends[int(pid)] = float(at)
    runs = [Run(job, pid, at, ends.get(pid)) for pid, (job, at) in starts.items()]
    return sorted(runs, key=lambda r: r.start)


def wait_for_runs(journal: Path, count: int, timeout: float = 60.0) -> list[Run]:
    """Wait until ``journal`` shows at least ``count`` runs that started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = journal_runs(journal)
        if len(runs) >= count:
            return runs
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} runs in {journal}")


def runner_pid(app_session: AppSession) -> int:
    """The runner's process id, from a local launcher handle."""
    return int(app_session.handle.split(":")[2])


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- whole portal processes -------------------------------------------------------------


class PortalProcess:
    """``python -m aimms_portal.backend`` on a port of its own; killed and started at will."""

    def __init__(self, env: dict[str, str], log: Path, port: int) -> None:
        self.env = env
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def wait_until_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1):  # noqa: S310
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(self.log.read_text()[-3000:]) from None
                time.sleep(0.05)

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aimms_portal.backend"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def backend_processes(
    portal: SolvePortal, count: int, *, shared_url: bool = False, **settings: str
) -> Iterator[list[PortalProcess]]:
    """``count`` portal processes on the test database, in place of the test's own
    scheduler (which is stopped); the test's REST server stays up for the test itself.

    Runners reach the portal process that started them, or with ``shared_url`` the
    test's own REST server, as runners of a portal of several replicas reach its load
    balancer (which outlives any one replica).
    """
    portal.scheduler.stop()
    base = dict(os.environ) | settings
    processes = []
    for index in range(count):
        port = free_port()
        env = base | {
            "AIMMS_PORTAL_PORT": str(port),
            "AIMMS_PORTAL_RUNNER_PORTAL_URL": portal.url
            if shared_url
            else f"http://127.0.0.1:{port}",
        }
        processes.append(PortalProcess(env, portal.folder / f"portal-{index}.log", port))
    for process in processes:
        process.start()
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()
        for handle in portal.launcher.list_sessions().values():
            portal.launcher.stop(handle, grace_seconds=1)
