"""Queue throughput: no-op jobs through the portal's scheduler and through procrastinate.

Usage (from the repository root; needs PostgreSQL on 127.0.0.1:5432, trust auth)::

    .venv/bin/python bench/queue_throughput.py [--jobs 20000] [--workers 4] \
        [--docs docs/benchmarks.md]

Issue 4's target: at least 5x procrastinate's jobs per second, same jobs, same database,
same number of workers, side by side in one run.

What one run does, in one throwaway PostgreSQL database:

1. **The portal.** Migrates the database, adds a user, an app and a release whose
   procedure does nothing, and inserts ``--jobs`` queued jobs in one statement. Then
   it starts the portal's real scheduler (leader lease, LISTEN/NOTIFY, dispatcher,
   reaper) with a *null launcher*: a launcher whose "sessions" are threads of this
   process that play the runner by calling the runner's service functions directly
   (ready, next job, started, finished: the same units of work the REST routes run,
   without HTTP), ``--workers`` of them at most (``max_solve_sessions``). The clock
   runs from the scheduler's start until the last job has succeeded.
2. **procrastinate.** Applies procrastinate's schema to the same database, defers the
   same number of jobs of a task that does nothing (in batches, not timed), and runs
   one worker with ``concurrency=--workers`` and ``wait=False`` (it returns when the
   queue is empty), with LISTEN/NOTIFY on. The clock runs for ``run_worker_async``.

Both run in this one process against the same PostgreSQL server; nothing else runs.
After each queue's jobs are in, the database is analyzed (``ANALYZE``, not timed): on a
server with autovacuum on, autoanalyze does this within a minute of a bulk insert. The
benchmark machine's server has autovacuum off; without statistics, procrastinate's
fetch query sorts every waiting job (about 80 ms per fetch at 20,000), which measured
the server's configuration rather than the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.api_throughput import machine, throwaway_database  # noqa: E402

DOCS_BEGIN = "<!-- queue_throughput: begin (written by bench/queue_throughput.py) -->"
DOCS_END = "<!-- queue_throughput: end -->"
TARGET = 5.0


def analyze(database_url: str) -> None:
    """Give the planner statistics, as autoanalyze would after a bulk insert."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("ANALYZE"))
    finally:
        engine.dispose()


# -- the portal -------------------------------------------------------------------------


def seed_portal(jobs: int) -> None:
    """A user, an app with a no-op procedure, and ``jobs`` queued jobs."""
    from sqlalchemy import insert

    from aimms_portal.db import session_scope
    from aimms_portal.models import App, Job, Release, RuntimeVersion, User, utcnow

    with session_scope() as session:
        user = User(username="bench", role="user")
        runtime = RuntimeVersion(
            name="bench-runtime",
            version="1.0",
            sha256="0" * 64,
            size=0,
            storage_key="runtimes/none",
            signature="-",
            signer_fingerprint="0" * 64,
        )
        app = App(name="bench-app", title="Benchmark")
        session.add_all([user, runtime, app])
        session.flush()
        manifest = {"procedures": {"noop": {"command": ["true"]}}}
        release = Release(
            app_id=app.id or 0,
            version="1.0",
            runtime_version_id=runtime.id or 0,
            runtime_spec=">=1",
            manifest=json.dumps(manifest),
            bundle_key="bundles/none",
            bundle_sha256="0" * 64,
            bundle_size=0,
        )
        session.add(release)
        session.flush()
        now = utcnow()
        row = {
            "owner_id": user.id,
            "app_id": app.id,
            "release_id": release.id,
            "version": "1.0",
            "procedure": "noop",
            "arguments": "{}",
            "priority": 0,
            "time_limit_s": 60,
            "state": "queued",
            "attempt": 0,
            "max_attempts": 3,
            "cancel_requested": False,
            "reason": "",
            "hook_url": "",
            "created_at": now,
            "updated_at": now,
        }
        for start in range(0, jobs, 5000):
            session.execute(insert(Job), [row] * min(5000, jobs - start))


def null_launcher_class() -> type:
    from aimms_portal.db import session_scope
    from aimms_portal.launchers import Launcher, Observation, SessionSpec, SessionStatus
    from aimms_portal.scheduler import signals
    from aimms_portal.services import runner_ops

    class NullLauncher(Launcher):
        """Sessions that are threads of this process, playing the runner in process."""

        kind: ClassVar[str] = "local"

        def __init__(self) -> None:
            self.threads: dict[str, threading.Thread] = {}
            self.stop_all = threading.Event()
            self.done = 0
            self._lock = threading.Lock()

        def start(self, spec: SessionSpec) -> str:
            handle = f"null:{spec.session_id}"
            thread = threading.Thread(target=self._serve, args=(spec,), daemon=True)
            self.threads[handle] = thread
            thread.start()
            return handle

        def _serve(self, spec: SessionSpec) -> None:
            with session_scope() as session:
                runner = runner_ops.session_from_token(session, spec.token)
                runner_ops.mark_ready(session, runner=runner)
            channel = signals.session_channel(spec.session_id)
            while not self.stop_all.is_set():
                with session_scope() as session:
                    job = runner_ops.next_job(session, runner=runner)
                while job is not None:
                    job_id, attempt = job.id or 0, job.attempt
                    with session_scope() as session:
                        runner_ops.job_started(
                            session, runner=runner, job_id=job_id, attempt=attempt
                        )
                    with session_scope() as session:
                        job = runner_ops.finish_job(
                            session,
                            runner=runner,
                            job_id=job_id,
                            attempt=attempt,
                            outcome="succeeded",
                            exit_code=0,
                        )
                    with self._lock:
                        self.done += 1
                signals.wait(channel, 0.5)

        def poll(self, handle: str) -> Observation:
            thread = self.threads.get(handle)
            alive = thread is not None and thread.is_alive()
            return Observation(SessionStatus.running if alive else SessionStatus.gone)

        def stop(self, handle: str, *, grace_seconds: float = 5.0) -> None:
            pass  # the benchmark ends every session at once at the end

        def logs(self, handle: str, *, tail: int = 200) -> list[str]:
            return []

        def list_sessions(self) -> dict[int, str]:
            return {int(h.split(":")[1]): h for h, t in self.threads.items() if t.is_alive()}

        def adopt(self, handle: str) -> bool:
            return handle in self.threads

    return NullLauncher


def run_portal(jobs: int, workers: int) -> float:
    """Seconds the portal's scheduler takes for ``jobs`` no-op jobs."""
    from aimms_portal import config
    from aimms_portal.scheduler.service import Scheduler

    settings = config.get_settings()
    launcher = null_launcher_class()()
    scheduler = Scheduler(launcher, settings)
    started = time.perf_counter()
    scheduler.start()
    try:
        while launcher.done < jobs:
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
    finally:
        launcher.stop_all.set()
        scheduler.stop()
    _check_portal_jobs(jobs)
    return elapsed


def _check_portal_jobs(jobs: int) -> None:
    from sqlalchemy import func
    from sqlmodel import select

    from aimms_portal.db import session_scope
    from aimms_portal.models import Job

    with session_scope() as session:
        succeeded = session.exec(
            select(func.count()).select_from(Job).where(Job.state == "succeeded", Job.attempt == 1)
        ).one()
    if succeeded != jobs:
        raise RuntimeError(f"only {succeeded} of {jobs} jobs succeeded once")


# -- procrastinate ------------------------------------------------------------------------


async def run_procrastinate(database_url: str, jobs: int, workers: int) -> float:
    """Seconds procrastinate's worker takes for ``jobs`` no-op jobs."""
    import procrastinate
    from sqlalchemy.engine import make_url

    url = make_url(database_url).set(drivername="postgresql")
    conninfo = url.render_as_string(hide_password=False)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))

    @app.task(name="noop", queue="bench")
    async def noop() -> None:
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, jobs, 1000):
            await noop.batch_defer_async(*[{}] * min(1000, jobs - start))
        await asyncio.to_thread(analyze, database_url)
        started = time.perf_counter()
        await app.run_worker_async(
            queues=["bench"], concurrency=workers, wait=False, listen_notify=True
        )
        elapsed = time.perf_counter() - started
        rows = await app.connector.execute_query_all_async(
            "SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'succeeded'"
        )
    if rows[0]["n"] != jobs:
        raise RuntimeError(f"procrastinate finished {rows[0]['n']} of {jobs} jobs")
    return elapsed


# -- report -------------------------------------------------------------------------------


def report(args: argparse.Namespace, portal_s: float, procrastinate_s: float) -> str:
    import procrastinate

    ours = args.jobs / portal_s
    theirs = args.jobs / procrastinate_s
    ratio = ours / theirs
    verdict = "meets" if ratio >= TARGET else "misses"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    version = getattr(procrastinate, "__version__", "?")
    return "\n".join(
        [
            DOCS_BEGIN,
            f"Run of {now} on {machine()} (load average {load} before the run); "
            f"Python {platform.python_version()}, procrastinate {version}.",
            "",
            "```",
            ".venv/bin/python bench/queue_throughput.py"
            + (f" --jobs {args.jobs}" if args.jobs != 20000 else "")
            + (f" --workers {args.workers}" if args.workers != 4 else "")
            + (f" --docs {args.docs}" if args.docs else ""),
            "```",
            "",
            f"{args.jobs:,} no-op jobs, {args.workers} workers, one PostgreSQL database.",
            "",
            "| queue | time | jobs/s |",
            "|---|---:|---:|",
            f"| aimms_portal scheduler (null launcher) | {portal_s:.1f} s | {ours:,.0f} |",
            f"| procrastinate worker | {procrastinate_s:.1f} s | {theirs:,.0f} |",
            "",
            f"The portal reaches {ratio:.2f}x procrastinate's throughput ({verdict} the "
            f"{TARGET:g}x target).",
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
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--docs", type=Path)
    args = parser.parse_args()

    with throwaway_database() as url:
        os.environ.update(
            {
                "AIMMS_PORTAL_DATABASE_URL": url,
                "AIMMS_PORTAL_MAX_SOLVE_SESSIONS": str(args.workers),
                "AIMMS_PORTAL_MAX_JOBS_PER_USER": str(args.workers),
                "AIMMS_PORTAL_MAX_JOBS_PER_APP": str(args.workers),
                "AIMMS_PORTAL_LOG_LEVEL": "WARNING",
                "AIMMS_PORTAL_DEMO": "false",
            }
        )
        import logging

        logging.basicConfig(level=logging.WARNING)
        seed_portal(args.jobs)
        analyze(url)
        print(f"portal: {args.jobs} jobs queued", file=sys.stderr)
        portal_s = run_portal(args.jobs, args.workers)
        print(f"portal: {portal_s:.1f} s", file=sys.stderr)
        from aimms_portal.db import reset_engine

        reset_engine()
        procrastinate_s = asyncio.run(run_procrastinate(url, args.jobs, args.workers))
        print(f"procrastinate: {procrastinate_s:.1f} s", file=sys.stderr)
    block = report(args, portal_s, procrastinate_s)
    print(block)
    if args.docs:
        write_docs(args.docs, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
