"""Serving a WebUI session: run the app's web server, tell the portal where it answers,
heartbeat, and say why when it ends.

The app's ``webui.command`` runs in the app's folder with the runtime first on ``PATH``
and, on top of the session's variables, ``PORT`` (a free port on 127.0.0.1 the runner
picked) and ``AIMMS_PORTAL_BASE_PATH`` (the path prefix the portal's proxy serves it
under, e.g. ``/s/12/``; the app must serve its pages under it). What the app prints goes
to the session's log. The session is ready once the app answers any HTTP request at its
base path; an app that exits, or does not answer within the portal's time, ends the
session as failed with the reason and the last lines it printed.

A desktop session (:mod:`aimms_portal.desktop`) is served the same way on the user's own
computer, under the base path ``/``: the browser opens the app's port directly.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aimms_portal.runner.api import PortalAPI, PortalAPIError

logger = logging.getLogger(__name__)

#: Lines of the app's output kept to explain a failure.
TAIL_LINES = 40


class AppProcess:
    """The app's web server as a process group of its own, its output followed."""

    def __init__(self, command: list[str], app_dir: Path, env: dict[str, str]) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.process = subprocess.Popen(
            command,
            cwd=app_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        self._pump = threading.Thread(target=self._follow, daemon=True)
        self._pump.start()

    def _follow(self) -> None:
        assert self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self.tail.append(line)
            # the runner's own output is the session's log (the launcher keeps it)
            sys.stdout.write(f"[app] {line}\n")
            sys.stdout.flush()

    def exit_code(self) -> int | None:
        return self.process.poll()

    def stop(self, grace: float = 3.0) -> None:
        """End the app's process group: SIGTERM, ``grace`` seconds, SIGKILL."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._pump.join(timeout=5)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (the app binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(port: int, path: str) -> bool:
    """Whether an HTTP server on ``port`` answers a GET of ``path`` (any status)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def serve_webui(
    api: PortalAPI,
    info: dict[str, Any],
    *,
    app_dir: Path,
    env_dir: Path,
    session_env: dict[str, str],
    stop: threading.Event,
    report_failure: Any,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Run the session's WebUI until the portal or a signal ends it; the exit code.

    ``on_ready`` is called with the app's address (``http://127.0.0.1:PORT/base/``) once
    the portal has been told the session is ready.
    """
    command = (info["manifest"].get("webui") or {}).get("command")
    if not command:
        report_failure("the release has no WebUI command", [])
        return 2
    base_path = session_env.get("AIMMS_PORTAL_BASE_PATH") or "/"
    port = free_port()
    env = {
        **session_env,
        "PATH": f"{env_dir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "VIRTUAL_ENV": str(env_dir),
        "PYTHONUNBUFFERED": "1",
        "PORT": str(port),
        "AIMMS_PORTAL_BASE_PATH": base_path,
    }
    try:
        app = AppProcess(command, app_dir, env)
    except OSError as exc:
        report_failure(f"the app could not start: {exc.strerror}", [])
        return 2

    deadline = time.monotonic() + float(info.get("answer_timeout_s") or 60)
    while not answers(port, base_path):
        code = app.exit_code()
        if code is not None:
            app.stop()
            report_failure(f"the app exited with code {code} before it answered", list(app.tail))
            return 2
        if stop.is_set():
            app.stop()
            return 0
        if time.monotonic() > deadline:
            app.stop()
            timeout = info.get("answer_timeout_s") or 60
            report_failure(f"the app did not answer within {timeout:g} s", list(app.tail))
            return 2
        time.sleep(0.05)

    interval = float(info.get("heartbeat_seconds") or 2)
    try:
        # inside the try: a session that ended meanwhile (401, 410) stops the app too
        api.call("POST", "/runner/ready", {"address": f"127.0.0.1:{port}"})
        logger.info("the app answers on port %d under %s", port, base_path)
        if on_ready is not None:
            on_ready(f"http://127.0.0.1:{port}{base_path}")
        while not stop.wait(interval):
            code = app.exit_code()
            if code is not None:
                if code == 0:
                    logger.info("the app ended by itself")
                    with contextlib.suppress(PortalAPIError):
                        api.call("POST", "/runner/stopped", {"reason": "the app ended"})
                    return 0
                report_failure(f"the app stopped with exit code {code}", list(app.tail))
                return 2
            try:
                _, answer = api.call("POST", "/runner/heartbeat", timeout=10)
            except PortalAPIError as exc:
                if exc.status in (401, 410):
                    logger.info("the portal ended this session: %s", exc.message)
                    return 0
                logger.warning("heartbeat failed: %s", exc)
                continue
            if answer and answer.get("stop"):
                logger.info("the portal ends this session")
                return 0
        return 0
    finally:
        app.stop()
