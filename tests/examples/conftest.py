"""Fixtures for the demo content in ``examples/``: the transport app's model and WebUI.

The app is tested as the portal will run it: its scripts as processes of their own,
started in the app's folder with the environment a session gives them. Nothing here
writes into ``examples/`` (no ``__pycache__``), so a bundle packed from it stays clean.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TRANSPORT = REPO_ROOT / "examples" / "transport"
EXAMPLE_CASE = TRANSPORT / "data" / "example.json"
BASE_PATH = "/s/abc123/"
START_TIMEOUT = 30

CHROMIUM = os.environ.get("AIMMS_TEST_CHROMIUM") or shutil.which("chromium") or ""


@pytest.fixture(scope="session")
def transport_model() -> ModuleType:
    """The transport app's ``model.py``, imported without leaving bytecode behind."""
    spec = importlib.util.spec_from_file_location("transport_model", TRANSPORT / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    dont_write_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write_bytecode
    return module


def app_env(**extra: str) -> dict[str, str]:
    """The environment of an app process: this one's, minus any portal connection."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMMS_PORTAL_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class WebUI:
    url: str  # the base URL, ending in "/"
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> httpx.Client:
        # trust_env off: a proxy from the environment must never see loopback traffic
        return httpx.Client(base_url=self.url, trust_env=False, timeout=30)


def _wait_until_ready(webui: WebUI) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with webui.client() as client:
        while time.monotonic() < deadline:
            if webui.process.poll() is not None:
                raise RuntimeError(
                    f"webui.py exited with {webui.process.returncode}:\n"
                    f"{webui.log.read_text()[-3000:]}"
                )
            try:
                if client.get("healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"webui.py did not answer:\n{webui.log.read_text()[-3000:]}")


@contextlib.contextmanager
def running_webui(folder: Path, base_path: str | None) -> Iterator[WebUI]:
    """webui.py started as a session starts it: a port, a base path (unless None), its
    folder; stopped with SIGTERM at the end."""
    port = free_port()
    log = folder / "webui.log"
    env = app_env(PORT=str(port))
    if base_path is not None:
        env["AIMMS_PORTAL_BASE_PATH"] = base_path
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "webui.py"],
            cwd=TRANSPORT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}{base_path or '/'}"
    server = WebUI(url=url, port=port, process=process, log=log)
    try:
        _wait_until_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def webui(tmp_path: Path) -> Iterator[WebUI]:
    """The transport app's WebUI below the base path of a (made-up) portal session."""
    with running_webui(tmp_path, BASE_PATH) as server:
        yield server


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
