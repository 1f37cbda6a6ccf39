"""Running one job: fetch its input, run its procedure, stream its log, report the result.

The procedure runs in the app's folder as a process group of its own (inside the
session's, so stopping the session still ends it), with the runtime's environment
first on ``PATH`` and these variables:

- ``AIMMS_PORTAL_INPUT`` / ``AIMMS_PORTAL_OUTPUT``: the input case file (absent when
  the job has none) and where to write the output case;
- ``AIMMS_PORTAL_ARGUMENTS``: a JSON file with the job's arguments;
- ``AIMMS_PORTAL_JOB_ID`` and the session's ``AIMMS_PORTAL_URL`` / ``AIMMS_PORTAL_TOKEN``
  (an app may hand further work to the portal).

While it runs, the runner heartbeats about every second (renewing the attempt's lease
and learning of a cancel), sends what the procedure prints to the job's log in batches,
and enforces the job's time limit. The whole process group is killed on cancel, on the
time limit, and when the portal says the attempt is no longer current (then nothing
more is reported for it: a newer attempt owns the job).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aimms_portal.runner.api import PortalAPI, PortalAPIError

logger = logging.getLogger(__name__)

#: Heartbeats while a procedure runs, at least this often (seconds).
JOB_HEARTBEAT = 1.0
#: Log lines are sent at least this often (seconds), or when this many bytes wait.
LOG_FLUSH_SECONDS = 0.5
LOG_FLUSH_BYTES = 256 * 1024
#: Time between SIGTERM and SIGKILL when a procedure is stopped.
KILL_GRACE = 0.5


class StaleAttempt(Exception):
    """The portal says this attempt is not current: stop without reporting."""


@dataclass
class Outcome:
    state: str
    exit_code: int | None = None
    reason: str = ""


@dataclass
class _LogShipper:
    """Collects lines from the procedure's pipes and sends them in batches."""

    api: PortalAPI
    job_id: int
    attempt: int
    lines: queue.Queue[tuple[str, str] | None] = field(default_factory=queue.Queue)
    stale: bool = False

    def reader(self, stream: str, pipe: IO[bytes]) -> threading.Thread:
        def pump() -> None:
            for raw in iter(pipe.readline, b""):
                self.lines.put((stream, raw.decode("utf-8", errors="replace")))
            pipe.close()

        thread = threading.Thread(target=pump, name=f"log-{stream}", daemon=True)
        thread.start()
        return thread

    def ship_until_done(self, readers: list[threading.Thread]) -> None:
        """Send batches until every reader has finished and the queue is empty."""
        batch: list[tuple[str, str]] = []
        size = 0
        last = time.monotonic()
        while True:
            done = not any(r.is_alive() for r in readers)
            try:
                item = self.lines.get(timeout=0.1)
            except queue.Empty:
                item = None
            if item is not None:
                batch.append(item)
                size += len(item[1])
            due = time.monotonic() - last >= LOG_FLUSH_SECONDS or size >= LOG_FLUSH_BYTES
            if batch and (due or (done and self.lines.empty())):
                self._send(batch)
                batch, size, last = [], 0, time.monotonic()
            if done and self.lines.empty() and not batch:
                return

    def _send(self, batch: list[tuple[str, str]]) -> None:
        if self.stale:
            return
        try:
            self.api.call(
                "POST",
                f"/runner/jobs/{self.job_id}/log",
                {"attempt": self.attempt, "lines": batch},
            )
        except PortalAPIError as exc:
            if exc.code == "stale_attempt":
                self.stale = True
            else:
                logger.warning("log lines lost: %s", exc)


def run_job(
    api: PortalAPI,
    job: dict[str, Any],
    *,
    app_dir: Path,
    env_dir: Path,
    work_dir: Path,
    session_env: dict[str, str],
    stop: threading.Event,
) -> dict[str, Any] | None:
    """Run one job to its end and report it; returns the session's next job, if any.

    ``stop`` set (the session is ending) kills the procedure; the job is then not
    reported, so the portal gives it to another session.

    Raises:
        StaleAttempt: the portal no longer counts this attempt (nothing was reported).
    """
    job_id, attempt = job["job_id"], job["attempt"]
    folder = work_dir / f"job-{job_id}-{attempt}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        outcome, output = _execute(
            api, job, folder, app_dir=app_dir, env_dir=env_dir, session_env=session_env, stop=stop
        )
        if stop.is_set():
            raise StaleAttempt("the session is stopping")
        if output is not None:
            name = f"job-{job_id}-output" + _suffix(job)
            _fenced(
                api.upload,
                f"/runner/jobs/{job_id}/output",
                output,
                params={"attempt": attempt, "name": name},
            )
        _, answer = _fenced(
            api.call,
            "POST",
            f"/runner/jobs/{job_id}/finish",
            {
                "attempt": attempt,
                "outcome": outcome.state,
                "exit_code": outcome.exit_code,
                "reason": outcome.reason,
            },
        )
        logger.info("job %s attempt %s: %s", job_id, attempt, outcome.state)
        return answer.get("next") if answer else None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _suffix(job: dict[str, Any]) -> str:
    name = (job.get("input") or {}).get("name") or ""
    suffix = Path(name).suffix
    return suffix if 1 < len(suffix) <= 10 and suffix[1:].isalnum() else ""


def _fenced(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except PortalAPIError as exc:
        if exc.code == "stale_attempt":
            raise StaleAttempt(exc.message) from exc
        raise


def _execute(
    api: PortalAPI,
    job: dict[str, Any],
    folder: Path,
    *,
    app_dir: Path,
    env_dir: Path,
    session_env: dict[str, str],
    stop: threading.Event,
) -> tuple[Outcome, Path | None]:
    job_id, attempt = job["job_id"], job["attempt"]
    params = {"attempt": attempt}
    env = {
        **session_env,
        "PATH": f"{env_dir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "VIRTUAL_ENV": str(env_dir),
        "PYTHONUNBUFFERED": "1",
        "AIMMS_PORTAL_JOB_ID": str(job_id),
        "AIMMS_PORTAL_OUTPUT": str(folder / "output"),
        "AIMMS_PORTAL_ARGUMENTS": str(folder / "arguments.json"),
    }
    (folder / "arguments.json").write_text(json.dumps(job.get("arguments") or {}))
    if job.get("input"):
        digest, _ = _fenced(
            api.download, f"/runner/jobs/{job_id}/input", folder / "input", params=params
        )
        if digest != job["input"]["sha256"]:
            return Outcome("failed", None, "the input case arrived damaged"), None
        env["AIMMS_PORTAL_INPUT"] = str(folder / "input")
    command = job.get("command")
    if not command:
        return Outcome("failed", None, f"the release has no procedure {job['procedure']!r}"), None

    _fenced(api.call, "POST", f"/runner/jobs/{job_id}/started", {"attempt": attempt})
    try:
        process = subprocess.Popen(
            command,
            cwd=app_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,
        )
    except OSError as exc:
        return Outcome("failed", None, f"the procedure could not start: {exc.strerror}"), None
    assert process.stdout is not None and process.stderr is not None
    shipper = _LogShipper(api, job_id, attempt)
    readers = [shipper.reader("stdout", process.stdout), shipper.reader("stderr", process.stderr)]
    shipping = threading.Thread(target=shipper.ship_until_done, args=(readers,), daemon=True)
    shipping.start()

    try:
        outcome = _watch(api, process, job, stop)
    finally:
        # children the procedure left behind would hold its pipes (and the log) open
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    shipping.join(timeout=30)
    if shipper.stale:
        raise StaleAttempt("the attempt went stale while it ran")
    output = folder / "output"
    return outcome, output if output.is_file() else None


def _watch(
    api: PortalAPI, process: subprocess.Popen[bytes], job: dict[str, Any], stop: threading.Event
) -> Outcome:
    """Wait for the procedure, heartbeating; kill it on cancel, time limit or stop."""
    job_id, attempt = job["job_id"], job["attempt"]
    deadline = time.monotonic() + job["time_limit_s"]
    while True:
        left = deadline - time.monotonic()
        try:
            code = process.wait(timeout=max(0.0, min(JOB_HEARTBEAT, left)))
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            if code == 0:
                return Outcome("succeeded", 0)
            if code < 0:
                return Outcome("failed", code, f"the procedure was killed by signal {-code}")
            return Outcome("failed", code)
        if stop.is_set():
            _kill(process)
            return Outcome("failed", None, "the session stopped")
        if time.monotonic() >= deadline:
            _kill(process)
            return Outcome("timed_out", None, f"time limit {job['time_limit_s']} s")
        try:
            _, answer = api.call(
                "POST", f"/runner/jobs/{job_id}/heartbeat", {"attempt": attempt}, timeout=10
            )
        except PortalAPIError as exc:
            if exc.code == "stale_attempt":
                _kill(process)
                raise StaleAttempt(exc.message) from exc
            logger.warning("heartbeat failed: %s", exc)
            continue
        if answer and answer.get("cancel"):
            _kill(process)
            return Outcome("cancelled", None, "cancelled")


def _kill(process: subprocess.Popen[bytes]) -> None:
    """End the procedure's whole process group: SIGTERM, a short grace, SIGKILL."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        return
