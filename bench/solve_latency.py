"""Solve jobs on the local launcher: start latency (cold, warm), failover and cancel.

Usage (from the repository root; needs PostgreSQL on 127.0.0.1:5432, trust auth)::

    .venv/bin/python bench/solve_latency.py [--runs 20] [--docs docs/benchmarks.md]

Issue 4's targets, from submit until the procedure runs: cold (a new session process,
runtime already prepared) p50 at most 500 ms, warm (a session reused) p50 at most 100 ms;
from SIGKILL of a running solve's runner until the job runs again, p50 at most 15 s.
Issue 4 also asks that a cancel ends a running job within 2 s.

Set-up: a throwaway PostgreSQL database and a temporary folder (storage, sessions,
runtime cache); a signed runtime without wheels and an app whose procedure ``mark``
writes the time it started (``time.time()``, the same clock as this script) into a file
and exits, and ``hold`` does the same and then sleeps. The portal is the backend process
(``python -m aimms_portal.backend``: REST API and scheduler, local launcher); this
script talks to it over REST like any client and reads the database only to see when
something happened.

- **cold**: the solve sessions' idle time is 0, so every job needs a new session;
  before each job the script waits until no session is left. Measured: submit (just
  before the ``POST``) until the procedure's mark.
- **warm**: idle time 300 s; after one job has made the session, every further job is
  taken by that session. Same measure.
- **failover**: a ``hold`` job runs; its runner gets SIGKILL; measured until the job's
  second attempt runs (its mark).
- **cancel**: a ``hold`` job runs; measured from the ``POST .../cancel`` until the job
  is ``cancelled``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.api_throughput import free_port, machine, throwaway_database  # noqa: E402

DOCS_BEGIN = "<!-- solve_latency: begin (written by bench/solve_latency.py) -->"
DOCS_END = "<!-- solve_latency: end -->"
APP = "latency-app"

PROCEDURE = r"""
import json, os, sys, time
now = time.time()
with open(os.environ["AIMMS_PORTAL_ARGUMENTS"]) as f:
    args = json.load(f)
with open(args["mark"], "w") as f:
    f.write(repr(now))
if sys.argv[1] == "hold":
    time.sleep(600)
"""


def seed(folder: Path) -> str:
    """Admin, trusted key, runtime, app; returns an admin API token."""
    from aimms_portal.db import session_scope
    from aimms_portal.packages import build_runtime, generate_signing_key, pack_app, sign_file
    from aimms_portal.services import accounts, apps, runtimes, signing_keys, tokens

    with session_scope() as session:
        admin = accounts.create_user(
            session, actor=None, username="bench", password=None, role="admin"
        )
    private_pem, public = generate_signing_key()
    with session_scope() as session:
        signing_keys.add_signing_key(session, actor=admin, name="bench", public_key=public)
    source = folder / "runtime"
    source.mkdir()
    (source / "runtime.json").write_text(
        json.dumps({"format": 1, "name": "latency-runtime", "version": "1.0", "python": ">=3.11"})
    )
    package = folder / "runtime.zip"
    build_runtime(source, package)
    with open(package, "rb") as stream:
        runtimes.upload_runtime(
            actor=admin, source=stream, signature=sign_file(private_pem, package).to_json()
        )
    app_dir = folder / "app"
    app_dir.mkdir()
    manifest = {
        "format": 1,
        "name": APP,
        "version": "1.0",
        "title": "Latency",
        "description": "Procedures that mark when they start.",
        "runtime": {"name": "latency-runtime", "version": ">=1.0"},
        "procedures": {
            "mark": {"command": ["python", "proc.py", "mark"]},
            "hold": {"command": ["python", "proc.py", "hold"]},
        },
    }
    (app_dir / "app.json").write_text(json.dumps(manifest))
    (app_dir / "proc.py").write_text(PROCEDURE)
    bundle = folder / "app.zip"
    pack_app(app_dir, bundle)
    with open(bundle, "rb") as stream:
        apps.publish_bundle(actor=admin, source=stream)
    with session_scope() as session:
        _, token = tokens.create_token(
            session, actor=admin, name="bench", scopes=["read", "write", "admin"]
        )
    return token


@contextmanager
def backend(env: dict[str, str], log: Path) -> Iterator[str]:
    """The backend process; yields its URL; stopped (and its sessions) on the way out."""
    port = env["AIMMS_PORTAL_PORT"]
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "aimms_portal.backend"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the backend did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        from aimms_portal.launchers.local import LocalLauncher

        launcher = LocalLauncher(Path(env["AIMMS_PORTAL_SESSIONS_DIR"]))
        for handle in launcher.list_sessions().values():
            launcher.stop(handle, grace_seconds=1)


class Client:
    def __init__(self, url: str, token: str) -> None:
        import httpx

        self.http = httpx.Client(
            base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def submit(self, procedure: str, mark: Path) -> int:
        response = self.http.post(
            "/jobs", json={"app": APP, "procedure": procedure, "arguments": {"mark": str(mark)}}
        )
        response.raise_for_status()
        return int(response.json()["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self.http.get(f"/jobs/{job_id}").json())

    def cancel(self, job_id: int) -> None:
        self.http.post(f"/jobs/{job_id}/cancel").raise_for_status()


def _wait(predicate: Any, timeout: float = 120.0, poll: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting")
        time.sleep(poll)


def _mark(path: Path) -> float | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return float(text) if text else None


def _live_sessions() -> int:
    from sqlalchemy import func
    from sqlmodel import col, select

    from aimms_portal.db import session_scope
    from aimms_portal.models import AppSession

    with session_scope() as session:
        return int(
            session.exec(
                select(func.count())
                .select_from(AppSession)
                .where(col(AppSession.state).not_in(["stopped", "failed"]))
            ).one()
        )


def _runner_pid(job_id: int) -> int:
    from aimms_portal.db import session_scope
    from aimms_portal.models import AppSession, Job

    with session_scope() as session:
        job = session.get(Job, job_id)
        app_session = session.get(AppSession, job.session_id) if job and job.session_id else None
        if app_session is None or not app_session.handle:
            return 0
        return int(app_session.handle.split(":")[2])


def _finished(client: Client, job_id: int) -> bool:
    return client.job(job_id)["finished_at"] is not None


def measure_start(client: Client, folder: Path, runs: int, *, cold: bool) -> list[float]:
    """Seconds from submit to the procedure's mark, ``runs`` times."""
    latencies = []
    for index in range(runs + 1):  # the first run prepares (runtime cache, warm session)
        if cold:
            _wait(lambda: _live_sessions() == 0, poll=0.02)
        mark = folder / f"{'cold' if cold else 'warm'}-{index}"
        before = time.time()
        job_id = client.submit("mark", mark)
        started = _wait(lambda mark=mark: _mark(mark))
        _wait(lambda job_id=job_id: _finished(client, job_id), poll=0.01)
        if index:
            latencies.append(started - before)
    return latencies


def measure_failover(client: Client, folder: Path, runs: int) -> list[float]:
    """Seconds from SIGKILL of a running solve's runner until the job runs again."""
    took = []
    for index in range(runs):
        mark = folder / f"fail-{index}"
        job_id = client.submit("hold", mark)
        _wait(lambda mark=mark: _mark(mark))
        pid = _wait(lambda job_id=job_id: _runner_pid(job_id), poll=0.01)
        mark.unlink()  # from now on only the second attempt writes it
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        again = _wait(lambda mark=mark: _mark(mark), timeout=120)
        took.append(again - killed)
        client.cancel(job_id)
        _wait(lambda job_id=job_id: _finished(client, job_id), poll=0.01)
    return took


def measure_cancel(client: Client, folder: Path, runs: int) -> list[float]:
    """Seconds from asking to cancel a running job until it is cancelled."""
    took = []
    for index in range(runs):
        mark = folder / f"cancel-{index}"
        job_id = client.submit("hold", mark)
        _wait(lambda mark=mark: _mark(mark))
        _wait(lambda job_id=job_id: client.job(job_id)["state"] == "running", poll=0.01)
        asked = time.monotonic()
        client.cancel(job_id)
        _wait(lambda job_id=job_id: client.job(job_id)["state"] == "cancelled", poll=0.005)
        took.append(time.monotonic() - asked)
    return took


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(args: argparse.Namespace, rows: list[tuple[str, list[float], float]]) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        DOCS_BEGIN,
        f"Run of {now} on {machine()} (load average {load} before the run); "
        f"Python {platform.python_version()}.",
        "",
        "```",
        ".venv/bin/python bench/solve_latency.py"
        + (f" --runs {args.runs}" if args.runs != 20 else "")
        + (f" --docs {args.docs}" if args.docs else ""),
        "```",
        "",
        "| measure | runs | p50 | p95 | max | target (p50) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for name, values, target in rows:
        p50 = statistics.median(values)
        lines.append(
            f"| {name} | {len(values)} | {p50 * 1000:,.0f} ms | {_p(values, 0.95) * 1000:,.0f} ms"
            f" | {max(values) * 1000:,.0f} ms | {target * 1000:,.0f} ms |"
        )
        verdicts.append(f"{name}: {'meets' if p50 <= target else 'misses'} the target")
    lines += ["", "; ".join(verdicts) + ".", DOCS_END]
    return "\n".join(lines)


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
    args = parser.parse_args()

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
        }
        os.environ.update({k: env[k] for k in env if k.startswith("AIMMS_PORTAL_")})
        token = seed(folder)
        rows = []
        with backend(env | {"AIMMS_PORTAL_SOLVE_IDLE_SECONDS": "0"}, folder / "cold.log") as api:
            client = Client(api, token)
            rows.append(
                ("submit → running, cold", measure_start(client, folder, args.runs, cold=True), 0.5)
            )
        with backend(env, folder / "warm.log") as api:
            client = Client(api, token)
            rows.append(
                (
                    "submit → running, warm",
                    measure_start(client, folder, args.runs, cold=False),
                    0.1,
                )
            )
            rows.append(
                ("cancel → cancelled", measure_cancel(client, folder, max(5, args.runs // 2)), 2.0)
            )
            rows.append(
                (
                    "SIGKILL → running again",
                    measure_failover(client, folder, max(5, args.runs // 2)),
                    15.0,
                )
            )
    block = report(args, rows)
    print(block)
    if args.docs:
        write_docs(args.docs, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
