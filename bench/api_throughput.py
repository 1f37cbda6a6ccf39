"""Throughput of the REST API next to a bare Starlette route, in one server (issue 2).

Usage (from the repository root; needs PostgreSQL on 127.0.0.1:5432 and Debian's `wrk`)::

    .venv/bin/python bench/api_throughput.py [--rounds 5] [--duration 8] [--docs docs/benchmarks.md]

What one run does:

1. creates a throwaway PostgreSQL database, migrates it, and adds an admin, a user and
   200 more users (no passwords: nothing here logs on with one);
2. starts ONE server process the way the portal runs in production: Granian (which
   Reflex 0.10 picks when gunicorn is absent, as here), ASGI, one worker. It serves one
   app: the bare route ``/bare`` and ``/db-floor`` beside the REST API of
   ``create_api()``;
3. per target a short warm-up, then ``--rounds`` rounds in which every target gets
   ``wrk`` with 64 connections on 2 threads in turn: ``/bare``, ``GET /api/v1/me`` with
   a user's token, ``GET /api/v1/users?limit=50`` with the admin's token; and two
   references that show where the time goes: ``/healthz`` (a route of the REST API
   without database or log-on) and ``/db-floor`` (one ``SELECT 1`` through the
   portal's engine in the thread pool, the least any synchronous database route does).
   Each round compares a target with the bare route of the same round, so that what
   else the machine does in a given minute weighs on both alike;
4. prints a markdown table (medians over the rounds of requests/s, p50, p99 and the
   share of the bare route's throughput); with ``--docs`` also writes it into that file;
5. stops the server and drops the database, also after an error, Ctrl-C or SIGTERM.

Every response is checked: a target that answers anything but 2xx fails the run,
since fast errors would make the figures meaningless; before the load, one answer of
each target is checked for its content too.
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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `python bench/api_throughput.py` from anywhere

PG_ADMIN_URL = os.environ.get(
    "AIMMS_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
#: Users in the database besides the admin and the user whose token calls /me.
EXTRA_USERS = 200
SERVER_START_TIMEOUT = 60.0
DOCS_BEGIN = "<!-- api_throughput: begin (written by bench/api_throughput.py) -->"
DOCS_END = "<!-- api_throughput: end -->"

#: wrk prints one JSON line after the run, so nothing has to be parsed out of its text.
WRK_REPORT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "status_errors": %d, ' ..
    '"socket_errors": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def create_bench_app() -> Any:
    """The ASGI app the server runs: ``/bare`` and ``/db-floor`` next to the REST API,
    behind the front the portal itself runs behind (:class:`ApiFront`: the API's paths
    go to ``create_api()``, everything else, here a Starlette app, to the other side).

    ``/bare`` answers a small JSON document with nothing else in its way: no database,
    no authentication, no middleware. ``/db-floor`` adds one pooled ``SELECT 1`` run in
    the thread pool, as the portal's synchronous routes run.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from aimms_portal.api.app import ApiFront, create_api
    from aimms_portal.db import get_engine

    async def bare(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def select_one() -> int:
        with get_engine().connect() as conn:
            return int(conn.exec_driver_sql("SELECT 1").scalar_one())

    async def db_floor(request: Request) -> JSONResponse:
        return JSONResponse({"status": await run_in_threadpool(select_one)})

    rest = Starlette(routes=[Route("/bare", bare), Route("/db-floor", db_floor)])
    return ApiFront(rest, api=create_api())


# -- the throwaway database ------------------------------------------------------------


@contextmanager
def throwaway_database() -> Iterator[str]:
    """A new, migrated PostgreSQL database; dropped on the way out whatever happens."""
    from aimms_portal.db import upgrade_database

    name = f"aimms_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_database(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        print(f"dropped database {name}", file=sys.stderr)


def seed() -> tuple[str, str]:
    """Add the admin, the user and the extra users; returns (user token, admin token)."""
    from aimms_portal.db import reset_engine, session_scope
    from aimms_portal.models import Role
    from aimms_portal.services import accounts, tokens

    with session_scope() as session:
        accounts.ensure_builtin_groups(session)
        admin = accounts.create_user(
            session, actor=None, username="bench-admin", password=None, role=Role.admin.value
        )
        user = accounts.create_user(session, actor=None, username="bench-user", password=None)
        for n in range(EXTRA_USERS):
            accounts.create_user(
                session,
                actor=None,
                username=f"user{n:04d}",
                password=None,
                email=f"user{n:04d}@example.org",
                full_name=f"User {n}",
            )
        _, user_token = tokens.create_token(
            session, actor=user, name="bench", scopes=["read"], expires_in_days=1
        )
        _, admin_token = tokens.create_token(
            session, actor=admin, name="bench", scopes=["read", "admin"], expires_in_days=1
        )
    reset_engine()  # the server has its own pool; this process keeps no connection open
    return user_token, admin_token


# -- the server ------------------------------------------------------------------------


def serve(port: int) -> None:
    """Run the benchmark app like Reflex runs the portal in production (blocks)."""
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server import Server

    Server(
        target="bench.api_throughput:create_bench_app",
        factory=True,
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        log_level=LogLevels.warning,
        working_dir=REPO_ROOT,
    ).serve()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(database_url: str, log: Path) -> Iterator[str]:
    """The server in its own process group; yields its URL; stopped on the way out."""
    port = free_port()
    env = {
        **os.environ,
        "AIMMS_PORTAL_DATABASE_URL": database_url,
        "AIMMS_PORTAL_STORAGE_URL": (log.parent / "storage").as_uri(),
        "AIMMS_PORTAL_LOG_LEVEL": os.environ.get("AIMMS_PORTAL_LOG_LEVEL", "WARNING"),
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, and we stop the server ourselves
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, process, log)
        print(f"server pid {process.pid} on {url}", file=sys.stderr)
        yield url
    finally:
        _stop(process)


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/bare", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not answer on {url}:\n{log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    # Granian stops its worker itself on SIGINT; if it hangs, the whole process group
    # goes (killed while its leader is alive, so the group is surely still ours)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    print(f"stopped server pid {process.pid}", file=sys.stderr)


# -- load ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    path: str
    token: str | None = None
    #: whether the issue's target (half the bare route's throughput) applies
    judged: bool = True


@dataclass(frozen=True)
class Result:
    target: Target
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int


@dataclass(frozen=True)
class Summary:
    """A target's rounds: medians, and the share of each round's bare route."""

    target: Target
    rounds: list[Result]
    shares: list[float]

    @property
    def requests_per_second(self) -> float:
        return statistics.median(r.requests_per_second for r in self.rounds)

    @property
    def p50_ms(self) -> float:
        return statistics.median(r.p50_ms for r in self.rounds)

    @property
    def p99_ms(self) -> float:
        return statistics.median(r.p99_ms for r in self.rounds)

    @property
    def share(self) -> float:
        return statistics.median(self.shares)


def summarize(targets: list[Target], rounds: list[list[Result]]) -> list[Summary]:
    """Per target, its results of every round and its share of that round's bare route
    (the first target)."""
    return [
        Summary(
            target=target,
            rounds=[results[index] for results in rounds],
            shares=[
                results[index].requests_per_second / results[0].requests_per_second
                for results in rounds
            ],
        )
        for index, target in enumerate(targets)
    ]


def check_target(url: str, target: Target) -> None:
    """One request by hand: the target must answer 200 with what it should."""
    headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    response = httpx.get(url + target.path, headers=headers, timeout=10)
    if response.status_code != 200:
        raise RuntimeError(f"{target.path}: HTTP {response.status_code} {response.text[:200]}")
    body = response.json()
    if target.path.startswith("/api/v1/users") and (
        len(body["items"]) != 50 or body["total"] < EXTRA_USERS
    ):
        raise RuntimeError(f"{target.path}: unexpected page {body}")
    if target.path == "/api/v1/me" and (
        body["username"] != "bench-user" or body["auth"] != "token" or body["scopes"] != ["read"]
    ):
        raise RuntimeError(f"{target.path}: unexpected caller {body}")


def run_wrk(
    url: str, target: Target, *, seconds: int, connections: int, threads: int, script: Path
) -> Result:
    """``wrk`` against one target; fails on any non-2xx answer or socket error."""
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
    ]
    if target.token:
        command += ["-H", f"Authorization: Bearer {target.token}"]
    command.append(url + target.path)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^BENCH_JSON (\{.*\})$", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no report from wrk:\n{output}")
    report = json.loads(match.group(1))
    if report["status_errors"] or report["socket_errors"]:
        raise RuntimeError(f"{target.path}: errors under load: {report}\n{output}")
    return Result(
        target=target,
        requests_per_second=report["requests"] / (report["duration_us"] / 1e6),
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        requests=report["requests"],
    )


# -- report ----------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}"


def versions(database_url: str) -> str:
    from importlib.metadata import version

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            postgres = str(conn.execute(text("SHOW server_version")).scalar()).split()[0]
    finally:
        engine.dispose()
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()[1]
    return (
        f"Python {platform.python_version()}, granian {version('granian')}, "
        f"fastapi {version('fastapi')}, starlette {version('starlette')}, "
        f"SQLAlchemy {version('sqlalchemy')}, PostgreSQL {postgres}, wrk {wrk}"
    )


def table(summaries: list[Summary]) -> str:
    lines = [
        "| target | requests/s | p50 latency | p99 latency | share of bare |",
        "|---|---:|---:|---:|---:|",
    ]
    for summary in summaries:
        lines.append(
            f"| `GET {summary.target.path}` ({summary.target.name}) "
            f"| {summary.requests_per_second:,.0f} | {summary.p50_ms:.1f} ms "
            f"| {summary.p99_ms:.1f} ms | {summary.share:.1%} |"
        )
    return "\n".join(lines)


def rounds_line(summaries: list[Summary]) -> str:
    parts = [
        f"`{summaries[0].target.path}` "
        + ", ".join(f"{r.requests_per_second:,.0f}" for r in summaries[0].rounds)
    ]
    for summary in summaries[1:]:
        figures = ", ".join(
            f"{r.requests_per_second:,.0f} ({share:.0%})"
            for r, share in zip(summary.rounds, summary.shares, strict=True)
        )
        parts.append(f"`{summary.target.path}` {figures}")
    return "Every round (requests/s, share of that round's bare route): " + "; ".join(parts) + "."


def report(summaries: list[Summary], args: argparse.Namespace, context: dict[str, str]) -> str:
    verdicts = []
    for summary in summaries[1:]:
        if not summary.target.judged:
            continue
        verdicts.append(
            f"`{summary.target.path}` reaches {summary.share:.1%} of the bare route "
            f"({'meets' if summary.share >= 0.5 else 'misses'} the 50 % target)"
        )
    return "\n".join(
        [
            DOCS_BEGIN,
            f"Run of {context['date']} on {context['machine']} (load average "
            f"{context['load']} before the run); {context['versions']}.",
            "",
            "```",
            context["command"],
            "```",
            "",
            f"One Granian process (ASGI, 1 worker); per target a {args.warmup} s warm-up, then "
            f"{args.rounds} rounds, in each of which every target in turn gets "
            f"`wrk -t{args.threads} -c{args.connections} -d{args.duration}s --timeout 10s "
            "--latency -s report.lua [-H 'Authorization: Bearer <token>'] URL`. Medians over "
            "the rounds; a share compares a target with the bare route of the same round. "
            "Client, server and PostgreSQL share the machine.",
            "",
            table(summaries),
            "",
            rounds_line(summaries),
            "",
            "; ".join(verdicts) + ".",
            DOCS_END,
        ]
    )


def write_docs(path: Path, block: str) -> None:
    """Put ``block`` between the markers in ``path`` (appended if they are missing)."""
    current = path.read_text() if path.exists() else ""
    if DOCS_BEGIN in current and DOCS_END in current:
        before, rest = current.split(DOCS_BEGIN, 1)
        after = rest.split(DOCS_END, 1)[1]
        path.write_text(before + block + after)
    else:
        path.write_text(current.rstrip("\n") + ("\n\n" if current else "") + block + "\n")


# -- main ------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per target and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over all targets")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds per target")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--docs", type=Path, help="also write the results into this file")
    parser.add_argument(
        "--hold",
        action="store_true",
        help="keep the server running after the setup until Enter (to attach a profiler)",
    )
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is missing; on Debian: apt-get install -y wrk", file=sys.stderr)
        return 2
    # a plain `kill` must clean up too: turn SIGTERM into an exception
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    try:
        python = str(Path(sys.executable).relative_to(REPO_ROOT))
    except ValueError:
        python = "python"
    command = " ".join([python, "bench/api_throughput.py", *sys.argv[1:]])
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="aimms-bench-") as scratch:
        script = Path(scratch) / "report.lua"
        script.write_text(WRK_REPORT)
        with throwaway_database() as database_url:
            os.environ["AIMMS_PORTAL_DATABASE_URL"] = database_url
            from aimms_portal.config import get_settings

            get_settings.cache_clear()
            user_token, admin_token = seed()
            targets = [
                Target("bare Starlette route", "/bare", judged=False),
                Target("reference: API route, no database", "/healthz", judged=False),
                Target("reference: one pooled SELECT 1", "/db-floor", judged=False),
                Target("user token", "/api/v1/me", user_token),
                Target("admin token, 202 users", "/api/v1/users?limit=50", admin_token),
            ]
            context = {
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": machine(),
                "versions": versions(database_url),
                "command": command,
                "load": load,
            }
            with running_server(database_url, Path(scratch) / "server.log") as url:
                for target in targets:
                    check_target(url, target)
                if args.hold:
                    input(f"serving on {url}; tokens: {user_token} {admin_token}; Enter ends")
                options = {"connections": args.connections, "threads": args.threads}
                for target in targets:
                    run_wrk(url, target, seconds=args.warmup, script=script, **options)
                rounds = []
                for number in range(1, args.rounds + 1):
                    results = []
                    for target in targets:
                        result = run_wrk(
                            url, target, seconds=args.duration, script=script, **options
                        )
                        print(
                            f"round {number}, {target.path}: "
                            f"{result.requests_per_second:,.0f} requests/s, "
                            f"p99 {result.p99_ms:.1f} ms",
                            file=sys.stderr,
                        )
                        results.append(result)
                    rounds.append(results)
    block = report(summarize(targets, rounds), args, context)
    print(block)
    if args.docs:
        write_docs(args.docs, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
