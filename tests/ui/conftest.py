"""A real portal process (Reflex production build, single port) and Chromium.

The portal runs from a scratch folder that links to the package, so its compiled
front end (``.web``) never disturbs a developer's portal running from the checkout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aimms_portal.db import REPO_ROOT
from aimms_portal.launchers.local import LocalLauncher
from tests.helpers import migrated_database

CHROMIUM = os.environ.get("AIMMS_TEST_CHROMIUM") or shutil.which("chromium") or ""
ADMIN_PASSWORD = "Admin-password-for-tests-1"
START_TIMEOUT = 180


class _Server:
    """The portal's server process (``reflex run --env prod``: Granian), in a process
    group of its own; started, stopped and started again at will."""

    def __init__(self, url: str, project: Path, env: dict[str, str], log: Path) -> None:
        self.url, self.project, self.env, self.log = url, project, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        port = self.env["AIMMS_PORTAL_PORT"]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [
                    Path(sys.executable).parent / "reflex",
                    "run",
                    "--env",
                    "prod",
                    "--single-port",
                    "--frontend-port",
                    port,
                    "--backend-port",
                    port,
                ],
                cwd=self.project,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_until_ready(self.url, self.process, self.log)

    def stop(self) -> None:
        """SIGTERM to the server's group (its workers too), SIGKILL if it lingers.
        Session processes run in sessions of their own: they are not in the group."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, 15)
            self.process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)
            self.process.wait()
        self.process = None


@dataclass(frozen=True)
class Portal:
    url: str
    admin_username: str
    admin_password: str
    log: Path
    #: The folder the portal runs in (Reflex's public ``uploaded_files`` would be here).
    project: Path
    server: _Server = field(repr=False, compare=False)

    def restart(self) -> None:
        """Stop the portal's server and start it again on the same address, database
        and storage, as an operator's restart does; returns once it serves again."""
        self.server.stop()
        self.server.start()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scratch_project(folder: Path) -> Path:
    for name in ("aimms_portal", "assets", "alembic", "alembic.ini"):
        (folder / name).symlink_to(REPO_ROOT / name)
    shutil.copy(REPO_ROOT / "rxconfig.py", folder / "rxconfig.py")
    shutil.copytree(REPO_ROOT / "reflex.lock", folder / "reflex.lock")
    return folder


def _wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"portal exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/login", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(
        f"portal did not answer within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    """A portal on a free loopback port with a database of its own and a known admin.

    One portal serves all tests of a module (starting one takes a while), so tests
    create what they need under names of their own, through the portal itself.
    """
    yield from serve_portal(tmp_path_factory.mktemp("portal"))


def serve_portal(tmp_path: Path, settings: dict[str, str] | None = None) -> Iterator[Portal]:
    """A portal as the ``portal`` fixture's, with ``settings`` (environment variables such
    as ``AIMMS_PORTAL_WEBUI_IDLE_MINUTES``) on top: for a module-scoped fixture of its own."""
    with migrated_database(tmp_path) as database_url:
        yield from _serve(tmp_path, database_url, settings or {})


def _serve(tmp_path: Path, database_url: str, settings: dict[str, str]) -> Iterator[Portal]:
    port = _free_port()
    url = f"http://localhost:{port}"
    project = tmp_path / "project"
    project.mkdir()
    _scratch_project(project)
    env = dict(os.environ)
    env.update(
        AIMMS_PORTAL_DATABASE_URL=database_url,
        AIMMS_PORTAL_STORAGE_URL=(tmp_path / "storage").as_uri(),
        AIMMS_PORTAL_DATA_DIR=str(tmp_path / "data"),
        AIMMS_PORTAL_PUBLIC_URL=url,
        AIMMS_PORTAL_PORT=str(port),
        AIMMS_PORTAL_RUNNER_PORTAL_URL=f"http://127.0.0.1:{port}",
        AIMMS_PORTAL_SESSIONS_DIR=str(tmp_path / "sessions"),
        AIMMS_PORTAL_RUNTIME_CACHE_DIR=str(tmp_path / "runtime-cache"),
        AIMMS_PORTAL_ADMIN_USERNAME="admin",
        AIMMS_PORTAL_ADMIN_PASSWORD=ADMIN_PASSWORD,
        REFLEX_TELEMETRY_ENABLED="false",
        REFLEX_CHECK_LATEST_VERSION="false",
    )
    env.update(settings)
    tools = REPO_ROOT / ".tools" / "node_modules" / ".bin"
    if tools.is_dir():
        env["PATH"] = f"{tools}{os.pathsep}{env['PATH']}"
        env["REFLEX_USE_SYSTEM_BUN"] = "1"
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [bin_dir / "aimms-portal", "run", "--prepare-only"],
        env=env,
        check=True,
        cwd=project,
        capture_output=True,
    )

    log = tmp_path / "portal.log"
    server = _Server(url, project, env, log)
    try:
        server.start()
        yield Portal(
            url=url,
            admin_username="admin",
            admin_password=ADMIN_PASSWORD,
            log=log,
            project=project,
            server=server,
        )
    finally:
        # solve sessions run in process sessions of their own: stop them first (their
        # open connections would hold up the server's shutdown) and again at the end
        _stop_sessions(tmp_path / "sessions")
        server.stop()
        _stop_sessions(tmp_path / "sessions")


def _stop_sessions(sessions_dir: Path) -> None:
    launcher = LocalLauncher(sessions_dir)
    for handle in launcher.list_sessions().values():
        launcher.stop(handle, grace_seconds=1)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    """Debian's Chromium, without the calls home that a closed network refuses."""
    if not CHROMIUM:
        pytest.fail("Chromium not found: install Debian's chromium or set AIMMS_TEST_CHROMIUM")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    }
