"""The runner's main loop: prepare the session, then serve it until it is to stop.

Started by a launcher as ``python -m aimms_portal.runner`` with the environment of
:meth:`aimms_portal.launchers.SessionSpec.environment` (portal URL, session token,
session id and kind) plus ``AIMMS_PORTAL_WORK_DIR`` (its working folder) and
``AIMMS_PORTAL_RUNTIME_CACHE`` (where runtime environments are kept). It talks to the
portal only through the REST API with the session token.

A solve session asks for a job (a long poll), runs it, reports it, and asks again;
the portal tells it to stop when it has been idle too long or is not needed. A WebUI
session runs the app's web server (see :mod:`aimms_portal.runner.webui`); so does a
desktop session, which :mod:`aimms_portal.desktop` drives on the user's own computer
with this same :class:`Runner`. SIGTERM
(the launcher stopping the session) kills a running procedure and ends the runner at
once, without reporting: the portal puts that job back in the queue itself.

Exit codes: 0 stopped as asked; 2 the session could not be prepared; 3 the portal
refused the session (token invalid or session ended); 64 the environment is incomplete.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from aimms_portal import sdk
from aimms_portal.runner.api import PortalAPI, PortalAPIError
from aimms_portal.runner.prepare import PrepareError, prepare_bundle, prepare_runtime
from aimms_portal.runner.procedure import StaleAttempt, run_job
from aimms_portal.runner.webui import serve_webui

logger = logging.getLogger("aimms_portal.runner")

#: Seconds one ``next`` call waits for work before it asks again.
NEXT_WAIT = 20.0
EXIT_STOPPED, EXIT_PREPARE, EXIT_REFUSED, EXIT_USAGE = 0, 2, 3, 64


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    try:
        url = os.environ["AIMMS_PORTAL_URL"]
        token = os.environ["AIMMS_PORTAL_TOKEN"]
        kind = os.environ.get("AIMMS_PORTAL_SESSION_KIND", "solve")
        work_dir = Path(os.environ.get("AIMMS_PORTAL_WORK_DIR") or os.getcwd())
        cache_dir = Path(os.environ.get("AIMMS_PORTAL_RUNTIME_CACHE") or work_dir / "cache")
    except KeyError as missing:
        print(f"runner: {missing} is not set", file=sys.stderr)
        return EXIT_USAGE

    stop = threading.Event()

    def on_term(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    api = PortalAPI(url, token, stop=stop)
    # the procedure and the app see the session's variables, not the runner's others
    session_env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("AIMMS_PORTAL_") or k in ("HOME", "LANG", "TMPDIR")
    }
    try:
        return Runner(api, kind, work_dir, cache_dir, session_env, stop).run()
    except PortalAPIError as exc:
        if exc.status == 401:
            logger.error("the portal refused this session: %s", exc.message)
            return EXIT_REFUSED
        if exc.status == 410:
            return EXIT_STOPPED
        raise


class Runner:
    """One session's runner (see the module docstring).

    ``on_ready``, if given, is called with the app's local address (``http://...``)
    once a WebUI or desktop session's app answers and the portal knows it is ready.
    """

    def __init__(
        self,
        api: PortalAPI,
        kind: str,
        work_dir: Path,
        cache_dir: Path,
        session_env: dict[str, str],
        stop: threading.Event,
        *,
        on_ready: Callable[[str], None] | None = None,
    ) -> None:
        self.api = api
        self.kind = kind
        self.work_dir = work_dir
        self.cache_dir = cache_dir
        self.session_env = session_env
        self.stop = stop
        self.on_ready = on_ready

    def run(self) -> int:
        _, info = self.api.call("GET", "/runner/session")
        logger.info(
            "session %s: %s %s (%s)", info["session_id"], info["app"], info["version"], info["kind"]
        )
        try:
            env_dir, app_dir = self.prepare(info)
        except PrepareError as exc:
            logger.error("cannot prepare the session: %s", exc)
            self._report_failure(f"the session could not be prepared: {exc}")
            return EXIT_PREPARE
        self._offer_sdk(info)
        if self.kind in ("webui", "desktop"):
            return serve_webui(
                self.api,
                info,
                app_dir=app_dir,
                env_dir=env_dir,
                session_env=self.session_env,
                stop=self.stop,
                report_failure=self._report_failure,
                on_ready=self.on_ready,
            )
        self.api.call("POST", "/runner/ready")
        logger.info("session ready")
        if self.kind == "solve":
            return self._serve_jobs(env_dir, app_dir)
        self._report_failure(f"this runner cannot serve {self.kind!r} sessions")
        return EXIT_PREPARE

    def prepare(self, info: dict[str, Any]) -> tuple[Path, Path]:
        """The session's runtime environment (cached) and its app folder (fetched,
        verified, decrypted, unpacked), from the session document ``info``.

        Raises:
            PrepareError: the runtime or the bundle cannot be prepared (the message says
                why).
        """
        env_dir = prepare_runtime(self.api, info["runtime"], self.cache_dir)
        return env_dir, prepare_bundle(self.api, info["bundle"], self.work_dir)

    def _offer_sdk(self, info: dict[str, Any]) -> None:
        """Put the apps' SDK on the app's path (``import aimms_portal_sdk``) and say which
        app and release the session runs."""
        folder = self.work_dir / "sdk"
        folder.mkdir(exist_ok=True)
        shutil.copyfile(Path(sdk.__file__), folder / "aimms_portal_sdk.py")
        paths = [str(folder), self.session_env.get("PYTHONPATH", "")]
        self.session_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self.session_env["AIMMS_PORTAL_APP"] = info["app"]
        self.session_env["AIMMS_PORTAL_APP_VERSION"] = info["version"]

    def _report_failure(self, reason: str, log: list[str] | None = None) -> None:
        logger.error("the session fails: %s", reason)
        try:
            self.api.call(
                "POST", "/runner/failed", {"reason": reason[:500], "log": (log or [])[-200:]}
            )
        except PortalAPIError as exc:
            logger.warning("could not tell the portal: %s", exc)

    def _serve_jobs(self, env_dir: Path, app_dir: Path) -> int:
        job: dict[str, Any] | None = None
        while not self.stop.is_set():
            if job is None:
                try:
                    status, answer = self.api.call(
                        "POST", "/runner/next", params={"wait": NEXT_WAIT}, timeout=NEXT_WAIT + 30
                    )
                except PortalAPIError as exc:
                    if exc.status == 410:
                        logger.info("the portal ends this session: %s", exc.message)
                        return EXIT_STOPPED
                    raise
                job = answer["job"] if status == 200 and answer else None
                if job is None:
                    continue
            current = job
            logger.info(
                "job %s attempt %s: %s", current["job_id"], current["attempt"], current["procedure"]
            )
            try:
                job = run_job(
                    self.api,
                    current,
                    app_dir=app_dir,
                    env_dir=env_dir,
                    work_dir=self.work_dir,
                    session_env=self.session_env,
                    stop=self.stop,
                )
            except StaleAttempt as exc:
                logger.warning("job %s: %s; not reported", current["job_id"], exc)
                job = None
        return EXIT_STOPPED
