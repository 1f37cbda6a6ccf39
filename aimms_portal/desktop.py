"""The desktop client: an app's WebUI on the user's own computer, as a desktop session.

``aimms-portal desktop APP`` (:func:`run_desktop`) registers a ``desktop`` session over
the REST API with the user's own API token. The portal refuses it as it refuses any
launch (no run right, no free seat: it takes one of the user's seats; an encrypted
release where the portal does not hand those to its users' computers) or answers with
the session's token, shown once. From then on this process is the session's runner:
the same :class:`~aimms_portal.runner.agent.Runner` as in every session container
fetches and verifies the runtime (built once per runtime in the user's cache folder,
:func:`runtime_cache`) and the bundle (decrypted, where the portal allows it, into a
temporary folder removed at the end), starts the app's WebUI on a free port of
127.0.0.1 under the base path ``/``, tells the portal it is ready and heartbeats. The
app has the session's variables (``AIMMS_PORTAL_URL``: the portal's address;
``AIMMS_PORTAL_TOKEN``: the session's token), so its solves go to the portal as jobs of
the session's user (see :mod:`aimms_portal.sdk`).

How a desktop session ends:

- Ctrl-C, SIGTERM or SIGHUP here: the app is stopped and the portal told that the
  session stopped. While the session is still being prepared (nothing runs yet), the
  preparation is abandoned.
- The app exits by itself: the session stopped (exit code 0), or failed with the reason
  and the app's last lines.
- The portal ends the session (terminated from the Sessions page, culled at its longest
  lifetime or after a silence): its next heartbeat learns it, and the app is stopped.
- This process is killed outright (SIGKILL, a crash): the portal, hearing no more
  heartbeats, ends the session as failed after ``AIMMS_PORTAL_JOB_LEASE_SECONDS`` and
  frees its seat. Known limit: nothing here outlives a SIGKILL to stop the app, which
  goes on running (its solves are refused: the session has ended) until it is closed.

It needs a POSIX system: the app runs as a process group of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from aimms_portal.client import PortalClient, PortalClientError
from aimms_portal.runner.agent import Runner
from aimms_portal.runner.api import PortalAPI, PortalAPIError

logger = logging.getLogger(__name__)

#: The signals that close a desktop session.
CLOSING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: What the portal records as the reason when the user closes the session here.
CLOSED_HERE = "closed on the user's computer"
#: How long the client waits for the portal to record the end of the session.
ENDED_WAIT_SECONDS = 5.0
ENDED_STATES = ("stopped", "failed")


@dataclass(frozen=True)
class Ended:
    """How a desktop session ended: ``stopped``, ``failed``, or as far as the portal
    could tell (``unknown`` when it could not be asked)."""

    session_id: int
    state: str
    reason: str


def runtime_cache() -> Path:
    """Where runtime environments are kept on this computer (one per runtime package):
    ``$XDG_CACHE_HOME/aimms-portal`` or ``~/.cache/aimms-portal``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG rules say a relative path is to be ignored
    folder = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return folder / "aimms-portal"


def session_env(url: str, token: str, session_id: int) -> dict[str, str]:
    """The variables the session's app sees (none else of this process's)."""
    env = {name: os.environ[name] for name in ("HOME", "LANG", "TMPDIR") if name in os.environ}
    env.update(
        {
            "AIMMS_PORTAL_URL": url,
            "AIMMS_PORTAL_TOKEN": token,
            "AIMMS_PORTAL_SESSION_ID": str(session_id),
            "AIMMS_PORTAL_SESSION_KIND": "desktop",
            "AIMMS_PORTAL_BASE_PATH": "/",
        }
    )
    return env


def _say(line: str) -> None:
    print(line, flush=True)


class _DesktopRunner(Runner):
    """The session's runner; it notes when preparing (the part a signal cuts short,
    since no app runs yet) is over."""

    preparing = True

    def prepare(self, info: dict[str, Any]) -> tuple[Path, Path]:
        try:
            return super().prepare(info)
        finally:
            self.preparing = False


def run_desktop(
    client: PortalClient,
    app: str,
    *,
    version: str | None = None,
    open_browser: bool = True,
    cache_dir: Path | None = None,
    say: Callable[[str], None] = _say,
) -> Ended:
    """Register a desktop session of ``app`` (``version``, else its latest release) as
    the user of ``client``, run it here until it ends (see the module docstring), and
    say how it ended. ``say`` shows a line to the user. Call it from the main thread:
    it handles the closing signals while it runs.

    Raises:
        PortalClientError: the portal refused the session, or could not be reached.
    """
    launched = client.request(
        "POST", "/sessions", json={"app": app, "version": version, "kind": "desktop"}
    )
    session_id, token = int(launched["id"]), str(launched["token"])
    label = f"{launched['app']} {launched['version']}"

    def on_ready(url: str) -> None:
        say(f"{label} runs at {url} (desktop session {session_id}); press Ctrl-C to end it.")
        if open_browser:
            _open_in_browser(url, say)

    stop, closing = threading.Event(), threading.Event()
    api = PortalAPI(client.url, token, stop=stop)
    work_dir = Path(tempfile.mkdtemp(prefix="aimms-portal-desktop-"))
    runner = _DesktopRunner(
        api,
        "desktop",
        work_dir,
        cache_dir or runtime_cache(),
        session_env(client.url, token, session_id),
        stop,
        on_ready=on_ready,
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s: ending the session", signal.Signals(signum).name)
        closing.set()
        stop.set()
        if runner.preparing:
            raise KeyboardInterrupt  # no app runs yet: abandon the preparation

    # run the session, then put back the signals and remove the app's folder
    problem = ""
    previous = {sig: signal.signal(sig, on_signal) for sig in CLOSING_SIGNALS}
    try:
        runner.run()
    except KeyboardInterrupt:
        closing.set()
    except PortalAPIError as exc:
        # 401 and 410 mean that the portal has ended the session: its end says why
        if exc.status == 0:
            problem = exc.message  # it could not be reached
        elif exc.status not in (401, 410):
            problem = f"the portal refused a call of the session: {exc.message}"
            _tell(api, "/runner/failed", problem)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(work_dir, ignore_errors=True)

    # closed here: the portal hears it from us (it may have ended the session already)
    if closing.is_set() and not problem:
        _tell(api, "/runner/stopped", CLOSED_HERE)
    return _how_it_ended(client, session_id, problem)


def _tell(api: PortalAPI, path: str, reason: str) -> None:
    with contextlib.suppress(PortalAPIError):
        api.call("POST", path, {"reason": reason[:500]})


def _how_it_ended(client: PortalClient, session_id: int, problem: str) -> Ended:
    """The session's end as the portal recorded it (``problem``: what went wrong here)."""
    deadline = time.monotonic() + ENDED_WAIT_SECONDS
    while True:
        try:
            session = client.request("GET", f"/sessions/{session_id}")
        except PortalClientError as exc:
            return Ended(session_id, "unknown", problem or f"the portal cannot tell: {exc}")
        state, reason = str(session["state"]), str(session["reason"] or "")
        if state in ENDED_STATES or time.monotonic() > deadline:
            return Ended(session_id, state, problem or reason)
        time.sleep(0.2)


def _open_in_browser(url: str, say: Callable[[str], None]) -> None:
    """Open ``url`` in the user's browser, without waiting for it."""
    graphical = not sys.platform.startswith("linux") or any(
        os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")
    )
    if not graphical:
        # webbrowser would fall back to a text browser, which takes over this terminal
        say(f"No display to open a browser on: open {url} in yours.")
        return

    def open_it() -> None:
        if not webbrowser.open(url):
            say(f"No browser could be opened: open {url} in yours.")

    # some browsers' commands return only when the browser closes
    threading.Thread(target=open_it, name="browser", daemon=True).start()
