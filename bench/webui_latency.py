"""WebUI sessions on the local launcher: launch latency and the proxy's overhead.

Usage (from the repository root; needs PostgreSQL on 127.0.0.1:5432 and Debian's
``wrk``)::

    .venv/bin/python bench/webui_latency.py [--runs 20] [--docs docs/benchmarks.md]

Issue 5's targets: from the launch until the WebUI answers, p50 at most 1.5 s (local
launcher); requests per second through the proxy at least 60 % of requests per second
straight to the app, in the same run.

Set-up: a throwaway PostgreSQL database and a temporary folder; a signed runtime without
wheels and an app whose WebUI is a small HTTP/1.1 server of the standard library
(``ThreadingHTTPServer``) answering ``GET <base>ping`` with a short JSON body. The portal
is served as a default portal serves it (``--server portal``): what ``aimms-portal run``
starts, Reflex's production build on one port, Granian with one worker process (Reflex
starts more only with Redis), in a scratch project folder like the UI tests'; local
launcher. ``--server backend`` measures the backend process instead
(``python -m aimms_portal.backend``: REST API, proxy and scheduler on uvicorn, one
process). The client logs on like a browser (the log-on cookie).

- **launch**: ``POST /api/v1/sessions``, then ``GET /s/<id>/`` every 20 ms until the
  app's page comes back (the proxy answers 503 while the session starts); each launch
  starts a new session (the previous one is ended first; the runtime comes from the
  cache after the first).
- **proxy**: one session; ``wrk`` with 32 connections on 2 threads for 10 s against the
  app straight (its own port on 127.0.0.1), then through the proxy (with the cookie),
  turn about, ``--rounds`` times (3); the best run of each way counts, and every run is
  listed. Measured twice: with that threaded server (the kind the demo app runs) and
  with a second app whose WebUI is an ``asyncio`` server of the standard library,
  several times faster, which shows the proxy's own ceiling rather than the app's. Also
  the CPU time the portal's processes (the server's process group, not the sessions)
  spent per request in the best run through the proxy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.api_throughput import free_port, machine, throwaway_database  # noqa: E402
from bench.solve_latency import backend  # noqa: E402

DOCS_BEGIN = "<!-- webui_latency: begin (written by bench/webui_latency.py) -->"
DOCS_END = "<!-- webui_latency: end -->"
APP = "webui-bench"
FAST_APP = "webui-bench-fast"
PASSWORD = "Bench-password-123!"  # noqa: S105  (a throwaway database's user)

WEB_PY = r"""
import http.server, os

BASE = os.environ.get("AIMMS_PORTAL_BASE_PATH", "/")
BODY = b'{"pong": true}'


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as the demo app: else each answer waits ~40 ms

    def do_GET(self):
        body = BODY if self.path == BASE + "ping" else b"<html><body>bench</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

# HTTP/1.1 keep-alive on asyncio streams: enough of HTTP for GET requests without a body.
FAST_WEB_PY = r"""
import asyncio, os

BASE = os.environ.get("AIMMS_PORTAL_BASE_PATH", "/").encode()


def answer(body, kind):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: "
    return head + str(len(body)).encode() + b"\r\n\r\n" + body


PING = answer(b'{"pong": true}', b"application/json")
PAGE = answer(b"<html><body>bench</body></html>", b"text/html")


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1]
            writer.write(PING if target == BASE + b"ping" else PAGE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, IndexError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(os.environ["PORT"]))
    async with server:
        await server.serve_forever()


asyncio.run(main())
"""


def seed(folder: Path) -> None:
    """A user, a trusted key, a runtime and the benchmark app (with a WebUI)."""
    from aimms_portal.db import session_scope
    from aimms_portal.packages import build_runtime, generate_signing_key, pack_app, sign_file
    from aimms_portal.services import accounts, apps, runtimes, signing_keys

    with session_scope() as session:
        admin = accounts.create_user(
            session, actor=None, username="bench", password=PASSWORD, role="admin"
        )
    private_pem, public = generate_signing_key()
    with session_scope() as session:
        signing_keys.add_signing_key(session, actor=admin, name="bench", public_key=public)
    source = folder / "runtime"
    source.mkdir()
    (source / "runtime.json").write_text(
        json.dumps({"format": 1, "name": "webui-runtime", "version": "1.0", "python": ">=3.11"})
    )
    package = folder / "runtime.zip"
    build_runtime(source, package)
    with open(package, "rb") as stream:
        runtimes.upload_runtime(
            actor=admin, source=stream, signature=sign_file(private_pem, package).to_json()
        )
    for name, title, server in (
        (APP, "WebUI benchmark", WEB_PY),
        (FAST_APP, "WebUI benchmark (asyncio server)", FAST_WEB_PY),
    ):
        app_dir = folder / name
        app_dir.mkdir()
        manifest = {
            "format": 1,
            "name": name,
            "version": "1.0",
            "title": title,
            "description": "A small web server.",
            "runtime": {"name": "webui-runtime", "version": ">=1.0"},
            "webui": {"command": ["python", "web.py"]},
        }
        (app_dir / "app.json").write_text(json.dumps(manifest))
        (app_dir / "web.py").write_text(server)
        bundle = folder / f"{name}.zip"
        pack_app(app_dir, bundle)
        with open(bundle, "rb") as stream:
            apps.publish_bundle(actor=admin, source=stream)


def browser(url: str):  # type: ignore[no-untyped-def]
    import httpx

    client = httpx.Client(base_url=url, timeout=30, trust_env=False)
    answer = client.post("/api/v1/auth/login", json={"username": "bench", "password": PASSWORD})
    answer.raise_for_status()
    client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
    return client


def measure_launch(client, runs: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds from the launch request until the WebUI answers through the proxy."""
    took = []
    for index in range(runs + 1):  # the first launch prepares the runtime
        started = time.perf_counter()
        launched = client.post("/api/v1/sessions", json={"app": APP})
        launched.raise_for_status()
        session = launched.json()
        while True:
            page = client.get(session["url"], headers={"Accept": "application/json"})
            if page.status_code == 200:
                break
            if page.status_code not in (503,):
                raise RuntimeError(f"launch failed: {page.status_code} {page.text[:300]}")
            time.sleep(0.02)
        if index:
            took.append(time.perf_counter() - started)
        client.delete(f"/api/v1/sessions/{session['id']}").raise_for_status()
    return took


def _cpu_seconds(server: int) -> float:
    """CPU time (user + system) of the server process ``server`` and its children in its
    process group (Granian's workers; not the sessions, which run in groups of their own).
    """
    import psutil

    total = 0.0
    root = psutil.Process(server)
    for process in [root, *root.children(recursive=True)]:
        try:
            if process.pid == server or os.getpgid(process.pid) == os.getpgid(server):
                times = process.cpu_times()
                total += times.user + times.system
        except (psutil.Error, ProcessLookupError):
            continue
    return total


def wrk(url: str, headers: dict[str, str], server: int | None = None) -> tuple[float, float]:
    """(requests per second, CPU µs of the ``server`` process per request) that one 10 s
    run of ``wrk`` gets from ``url``."""
    argv = ["wrk", "-t2", "-c32", "-d10s", "--timeout", "10s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    cpu = _cpu_seconds(server) if server else 0.0
    done = subprocess.run([*argv, url], capture_output=True, text=True, check=True)
    cpu = _cpu_seconds(server) - cpu if server else 0.0
    if "Non-2xx" in done.stdout or "Socket errors" in done.stdout:
        raise RuntimeError(f"wrk saw errors:\n{done.stdout}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    count = re.search(r"(\d+) requests in", done.stdout)
    assert rate and count, done.stdout
    return float(rate.group(1)), cpu * 1e6 / max(1, int(count.group(1)))


@dataclass
class ProxyRuns:
    """The ``wrk`` runs against one app: straight and through the proxy, alternately."""

    direct: list[float] = field(default_factory=list)  # requests/s
    proxied: list[float] = field(default_factory=list)  # requests/s
    cpu: list[float] = field(default_factory=list)  # portal CPU µs per proxied request

    @property
    def best_direct(self) -> float:
        return max(self.direct)

    @property
    def best_proxied(self) -> float:
        return max(self.proxied)

    @property
    def share(self) -> float:
        """The best run through the proxy against the best run straight."""
        return self.best_proxied / self.best_direct

    @property
    def cpu_of_best(self) -> float:
        return self.cpu[self.proxied.index(self.best_proxied)]

    def runs(self) -> str:
        pairs = zip(self.direct, self.proxied, strict=True)
        return ", ".join(f"{d:,.0f} / {p:,.0f}" for d, p in pairs)


def measure_proxy(client: httpx.Client, url: str, app: str, server: int, rounds: int) -> ProxyRuns:
    """``rounds`` rounds of a run straight to ``app``, then one through the proxy (turn
    about, so that a change in the machine's load meets both alike)."""
    from aimms_portal.db import session_scope
    from aimms_portal.models import AppSession

    session = client.post("/api/v1/sessions", json={"app": app}).json()
    while client.get(session["url"]).status_code != 200:
        time.sleep(0.05)
    with session_scope() as db:
        row = db.get(AppSession, session["id"])
        assert row is not None
        address = row.address
    path = f"{session['url']}ping"
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    runs = ProxyRuns()
    for _ in range(rounds):
        runs.direct.append(wrk(f"http://{address}{path}", {})[0])
        proxied, cpu = wrk(f"{url}{path}", {"Cookie": cookie}, server)
        runs.proxied.append(proxied)
        runs.cpu.append(cpu)
    client.delete(f"/api/v1/sessions/{session['id']}")
    return runs


@contextmanager
def portal(env: dict[str, str], folder: Path) -> Iterator[tuple[str, int]]:
    """The portal as ``aimms-portal run`` serves it (Reflex's production build on one port:
    Granian, one worker), in a scratch project folder that links to the package (as the
    UI tests do: the build never touches the checkout's ``.web``). Yields its URL and
    process id; stopped (and its sessions) on the way out."""
    project = folder / "project"
    project.mkdir()
    for name in ("aimms_portal", "assets", "alembic", "alembic.ini"):
        (project / name).symlink_to(REPO_ROOT / name)
    shutil.copy(REPO_ROOT / "rxconfig.py", project / "rxconfig.py")
    shutil.copytree(REPO_ROOT / "reflex.lock", project / "reflex.lock")
    port = env["AIMMS_PORTAL_PORT"]
    url = f"http://127.0.0.1:{port}"
    env = env | {
        "AIMMS_PORTAL_PUBLIC_URL": url,
        "AIMMS_PORTAL_RUNNER_PORTAL_URL": url,
        "REFLEX_TELEMETRY_ENABLED": "false",
        "REFLEX_CHECK_LATEST_VERSION": "false",
    }
    tools = REPO_ROOT / ".tools" / "node_modules" / ".bin"
    if tools.is_dir():
        env["PATH"] = f"{tools}{os.pathsep}{env['PATH']}"
        env["REFLEX_USE_SYSTEM_BUN"] = "1"
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [bin_dir / "aimms-portal", "run", "--prepare-only"],
        env=env,
        cwd=project,
        check=True,
        capture_output=True,
    )
    log = folder / "portal.log"
    with open(log, "wb") as out:
        # what `aimms-portal run` execs, from the scratch folder
        process = subprocess.Popen(
            [str(bin_dir / "reflex"), "run", "--env", "prod", "--single-port"]
            + ["--frontend-port", port, "--backend-port", port],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        import httpx

        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the portal did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, process.pid
    finally:
        _stop_sessions(Path(env["AIMMS_PORTAL_SESSIONS_DIR"]))
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        _stop_sessions(Path(env["AIMMS_PORTAL_SESSIONS_DIR"]))


@contextmanager
def backend_process(env: dict[str, str], folder: Path) -> Iterator[tuple[str, int]]:
    """The backend process (``python -m aimms_portal.backend``); yields its URL and
    process id."""
    with backend(env, folder / "backend.log") as url:
        import psutil

        server = next(
            p for p in psutil.Process().children() if "aimms_portal.backend" in p.cmdline()
        )
        yield url, server.pid


def _stop_sessions(sessions_dir: Path) -> None:
    from aimms_portal.launchers.local import LocalLauncher

    launcher = LocalLauncher(sessions_dir)
    for handle in launcher.list_sessions().values():
        launcher.stop(handle, grace_seconds=1)


SERVERS = {
    "portal": "the portal as `aimms-portal run` serves it: Reflex's production build on one "
    "port, Granian with one worker process",
    "backend": "the backend process (`python -m aimms_portal.backend`): uvicorn, one process",
}


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {platform.python_version()}"]
    for package in ("reflex", "granian", "uvicorn", "uvloop", "httptools"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"no {package}")
    return ", ".join(parts)


def report(
    args: argparse.Namespace,
    launch: list[float],
    threaded: ProxyRuns,
    fast: ProxyRuns,
) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    ordered = sorted(launch)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    p50 = statistics.median(launch)
    share = threaded.share
    fast_share = fast.share
    return "\n".join(
        [
            DOCS_BEGIN,
            f"Run of {now} on {machine()} (load average {load} before the run); {_versions()}.",
            "",
            "```",
            ".venv/bin/python bench/webui_latency.py"
            + (f" --server {args.server}" if args.server != "portal" else "")
            + (f" --runs {args.runs}" if args.runs != 20 else "")
            + (f" --rounds {args.rounds}" if args.rounds != 3 else "")
            + (f" --docs {args.docs}" if args.docs else ""),
            "```",
            "",
            f"Server: {SERVERS[args.server]}.",
            "",
            "| measure | result | target |",
            "|---|---:|---:|",
            f"| launch → WebUI answering, p50 ({len(launch)} launches) | {p50 * 1000:,.0f} ms "
            "| 1,500 ms |",
            f"| launch → WebUI answering, p95 | {p95 * 1000:,.0f} ms | – |",
            f"| threaded app: requests/s straight | {threaded.best_direct:,.0f} | – |",
            f"| threaded app: requests/s through the proxy | {threaded.best_proxied:,.0f} | – |",
            f"| threaded app: proxy share of direct | {share:.0%} | 60% |",
            f"| threaded app: portal CPU per proxied request | {threaded.cpu_of_best:,.0f} µs "
            "| – |",
            f"| asyncio app: requests/s straight | {fast.best_direct:,.0f} | – |",
            f"| asyncio app: requests/s through the proxy | {fast.best_proxied:,.0f} | – |",
            f"| asyncio app: proxy share of direct | {fast_share:.0%} | 60% |",
            f"| asyncio app: portal CPU per proxied request | {fast.cpu_of_best:,.0f} µs | – |",
            "",
            f"All runs, requests/s straight / through the proxy, in the order run: threaded "
            f"app {threaded.runs()}; asyncio app {fast.runs()}. The table shows the best of "
            "each.",
            "",
            f"Launch: {'meets' if p50 <= 1.5 else 'misses'} the target; proxy, threaded app: "
            f"{'meets' if share >= 0.6 else 'misses'} the target; proxy, asyncio app: "
            f"{'meets' if fast_share >= 0.6 else 'misses'} the target.",
            DOCS_END,
        ]
    )


def write_docs(path: Path, block: str) -> None:
    text = path.read_text()
    if DOCS_BEGIN in text:
        head, rest = text.split(DOCS_BEGIN, 1)
        _, tail = rest.split(DOCS_END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--docs", type=Path)
    parser.add_argument("--server", choices=sorted(SERVERS), default="portal")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per app and way")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install -y wrk", file=sys.stderr)
        return 2

    with throwaway_database() as url, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        env = dict(os.environ) | {
            "AIMMS_PORTAL_DATABASE_URL": url,
            "AIMMS_PORTAL_DATA_DIR": str(folder / "data"),
            "AIMMS_PORTAL_STORAGE_URL": (folder / "storage").as_uri(),
            "AIMMS_PORTAL_SESSIONS_DIR": str(folder / "sessions"),
            "AIMMS_PORTAL_RUNTIME_CACHE_DIR": str(folder / "cache"),
            "AIMMS_PORTAL_PORT": str(port),
            "AIMMS_PORTAL_LOG_LEVEL": "WARNING",
            "AIMMS_PORTAL_DEMO": "false",
            "AIMMS_PORTAL_MAX_SESSIONS_PER_USER": "5",
        }
        os.environ.update({k: env[k] for k in env if k.startswith("AIMMS_PORTAL_")})
        seed(folder)
        serve = portal if args.server == "portal" else backend_process
        with serve(env, folder) as (api, server):
            client = browser(api)
            launch = measure_launch(client, args.runs)
            threaded = measure_proxy(client, api, APP, server, args.rounds)
            fast = measure_proxy(client, api, FAST_APP, server, args.rounds)
    block = report(args, launch, threaded, fast)
    print(block)
    if args.docs:
        write_docs(args.docs, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
