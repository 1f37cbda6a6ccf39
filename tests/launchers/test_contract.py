"""The launcher contract, once, against every backend (so far: ``local``).

Every test in the first part runs against each entry of :data:`BACKENDS` through the
``backend`` fixture; adding a backend is adding one entry. The "runner" is a small
standard-library script (:data:`RUNNER`) that does what its ``TEST_ACTION`` variable
says and reports on stdout, so the tests watch a session only through the contract
(``poll``, ``logs``, ``list_sessions``, ...). The tests after the contract part cover
what only the local launcher has (handles, launch records, /proc, limits, folders).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aimms_portal.launchers import local
from aimms_portal.launchers.base import (
    ENV_BASE_PATH,
    ENV_PORT,
    ENV_PORTAL_URL,
    ENV_SESSION_ID,
    ENV_SESSION_KIND,
    ENV_TOKEN,
    Launcher,
    LauncherError,
    Observation,
    SessionSpec,
    SessionStatus,
)
from aimms_portal.launchers.local import LocalLauncher

REPO = Path(__file__).resolve().parents[2]
PORTAL_URL = "http://127.0.0.1:9/"

RUNNER = r'''
"""A stand-in for the session runner: does what TEST_ACTION says, reports on stdout."""
import hashlib
import os
import signal
import subprocess
import sys
import time

CHILD = """
import os, signal, sys, time
if sys.argv[1] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def say(*words):
    print(*words, flush=True)


def sleep_forever():
    while True:
        time.sleep(1)


def spawn_child(mode):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, __file__], stdout=subprocess.PIPE
    )
    assert child.stdout.readline() == b"ready\n"  # its SIGTERM handling is in place
    say("child", child.pid)


action = os.environ.get("TEST_ACTION", "env")
time.sleep(float(os.environ.get("TEST_DELAY", "0")))
if action == "env":
    say("names", ",".join(sorted(os.environ)))
    for name, value in sorted(os.environ.items()):
        if name == "AIMMS_PORTAL_TOKEN":
            say("token-sha256", hashlib.sha256(value.encode()).hexdigest())
        elif name.startswith("AIMMS_PORTAL_") or name == "PORT":
            say("env", name, value)
    say("ready")
    sleep_forever()
elif action == "exit":
    say("exiting")
    sys.exit(int(os.environ["TEST_EXIT_CODE"]))
elif action == "stubborn-child":
    spawn_child("ignore-term")
    say("ready")
    sleep_forever()
elif action == "orphan":
    spawn_child("plain")
    os.kill(os.getpid(), signal.SIGKILL)
elif action == "allocate":
    data = b"\x01" * (int(os.environ["TEST_ALLOCATE_MB"]) * 1024 * 1024)  # touches it all
    say("allocated", len(data) // (1024 * 1024))
    if os.environ.get("TEST_HOLD") == "1":
        say("ready")
        sleep_forever()
elif action == "busy":
    say("ready")
    while True:
        pass
elif action == "lines":
    for number in range(int(os.environ["TEST_LINES"])):
        print("line", number)
    say("ready")
    sleep_forever()
else:
    sys.exit(f"unknown action {action}")
'''


# --- the backends -------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """How the contract tests drive one backend.

    Attributes:
        name: The test id.
        make: A launcher whose runner is the given script, keeping its state under the
            given folder. Called twice with the same folder, it gives two launchers on
            the same sessions, as two portal processes (or one restarted) would.
        make_broken: A launcher whose runner cannot be started at all.
        unknown_handle: A well-formed handle of this backend that names no session.
        process_alive: Whether a process id a runner printed (``child <pid>``) still
            runs; zombies count as ended.
        stored_state: Everything the backend keeps about its sessions, as text (to
            check that no token is in it).
        keeps_ended: Whether an ended session holds something (and so is listed)
            until it is stopped.
    """

    name: str
    make: Callable[[Path, Path], Launcher]
    make_broken: Callable[[Path], Launcher]
    unknown_handle: Callable[[Path], str]
    process_alive: Callable[[int], bool]
    stored_state: Callable[[Path], str]
    keeps_ended: bool = True


def local_process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


def all_files_text(root: Path) -> str:
    return "\n".join(
        path.read_bytes().decode("utf-8", errors="replace")
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    )


BACKENDS = [
    Backend(
        name="local",
        make=lambda root, script: LocalLauncher(
            root / "sessions", runner_command=[sys.executable, str(script)]
        ),
        make_broken=lambda root: LocalLauncher(
            root / "sessions", runner_command=[str(root / "no-such-runner")]
        ),
        unknown_handle=lambda root: "local:41:999999:12345:00000000:41-0123abcd",
        process_alive=local_process_alive,
        stored_state=lambda root: all_files_text(root / "sessions"),
    ),
]


# --- fixtures and helpers -----------------------------------------------------------

_session_ids = itertools.count(1000)


def new_token() -> str:
    return "tok-" + secrets.token_urlsafe(24)


class Sessions:
    """Starts sessions for one test, waits on them, and stops all of them at the end.

    ``runner_script`` is in every command line of the test's runners and their
    children, which lets :meth:`close` kill whatever a broken launcher left behind.
    """

    def __init__(self, launcher: Launcher, backend: Backend, runner_script: Path) -> None:
        self.launcher = launcher
        self.backend = backend
        self.runner_script = runner_script
        self.handles: list[str] = []
        self.session_ids: dict[str, int] = {}

    def spec(
        self, action: str = "env", *, env: dict[str, str] | None = None, **fields: object
    ) -> SessionSpec:
        values: dict[str, object] = {
            "session_id": next(_session_ids),
            "kind": "solve",
            "portal_url": PORTAL_URL,
            "token": new_token(),
            **fields,
        }
        extra_env = {"TEST_ACTION": action, **(env or {})}
        return SessionSpec(extra_env=extra_env, **values)  # type: ignore[arg-type]

    def start(
        self, action: str = "env", *, env: dict[str, str] | None = None, **fields: object
    ) -> str:
        return self.start_spec(self.spec(action, env=env, **fields))

    def start_spec(self, spec: SessionSpec) -> str:
        handle = self.launcher.start(spec)
        self.track(handle, spec.session_id)
        return handle

    def track(self, handle: str, session_id: int) -> None:
        """Stop this session too at the end (one started elsewhere)."""
        self.handles.append(handle)
        self.session_ids[handle] = session_id

    def wait_for_line(self, handle: str, prefix: str, timeout: float = 10.0) -> str:
        """The first log line that starts with ``prefix``, once the runner wrote it."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.launcher.logs(handle, tail=1000)
            for line in lines:
                if line.startswith(prefix):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no line {prefix!r} in the logs: {lines}")
            time.sleep(0.02)

    def wait_for_status(
        self, handle: str, status: SessionStatus, timeout: float = 10.0
    ) -> Observation:
        deadline = time.monotonic() + timeout
        while True:
            observation = self.launcher.poll(handle)
            if observation.status == status:
                return observation
            if time.monotonic() > deadline:
                raise AssertionError(f"still {observation} after {timeout} s")
            time.sleep(0.02)

    def child_pid(self, handle: str) -> int:
        """The pid of the child the runner started (it prints ``child <pid>``)."""
        return int(self.wait_for_line(handle, "child ").split()[1])

    def close(self) -> None:
        try:
            for handle in self.handles:
                self.launcher.stop(handle, grace_seconds=0)
        finally:
            # a safety net for a launcher that failed to stop something
            for pid in pids_running(str(self.runner_script)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def pids_running(word: str) -> list[int]:
    """The processes on this machine with ``word`` in their command line."""
    found = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and word.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                found.append(int(name))
        except OSError:
            continue
    return found


@pytest.fixture(params=BACKENDS, ids=lambda backend: backend.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def runner_script(tmp_path: Path) -> Path:
    path = tmp_path / "runner.py"
    path.write_text(RUNNER)
    return path


@pytest.fixture
def launcher(backend: Backend, tmp_path: Path, runner_script: Path) -> Launcher:
    return backend.make(tmp_path, runner_script)


@pytest.fixture
def sessions(launcher: Launcher, backend: Backend, runner_script: Path) -> Iterator[Sessions]:
    """Sessions of this test; every one of them is stopped when the test ends."""
    tracker = Sessions(launcher, backend, runner_script)
    try:
        yield tracker
    finally:
        tracker.close()


@pytest.fixture
def launcher_log() -> Iterator[io.StringIO]:
    """Everything the portal's loggers write during the test, at DEBUG and up."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("aimms_portal")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def env_report(sessions: Sessions, handle: str) -> tuple[set[str], dict[str, str], str]:
    """What an ``env`` runner saw: variable names, AIMMS/PORT values, token digest."""
    sessions.wait_for_line(handle, "ready")
    lines = sessions.launcher.logs(handle, tail=1000)
    names = set(next(line for line in lines if line.startswith("names ")).split()[1].split(","))
    values = {}
    for line in lines:
        if line.startswith("env "):
            _, name, value = line.split(" ", 2)
            values[name] = value
    digest = next(line for line in lines if line.startswith("token-sha256 ")).split()[1]
    return names, values, digest


# --- the contract -------------------------------------------------------------------


def test_start_returns_before_the_runner_is_ready(sessions: Sessions) -> None:
    began = time.monotonic()
    handle = sessions.start(env={"TEST_DELAY": "3"})
    took = time.monotonic() - began

    assert took < 2.0
    observation = sessions.launcher.poll(handle)
    assert observation.status == SessionStatus.running
    assert "ready" not in sessions.launcher.logs(handle)


def test_environment_carries_the_session_variables(
    sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the portal's own environment must not reach the session
    monkeypatch.setenv("PORT", "1")
    monkeypatch.setenv("AIMMS_PORTAL_SECRET_KEY", "portal-only")
    spec = sessions.spec(port=8123, base_path="/s/7/", kind="webui")

    names, values, digest = env_report(sessions, sessions.start_spec(spec))

    assert values[ENV_PORTAL_URL] == PORTAL_URL
    assert values[ENV_SESSION_ID] == str(spec.session_id)
    assert values[ENV_SESSION_KIND] == "webui"
    assert values[ENV_PORT] == "8123"
    assert values[ENV_BASE_PATH] == "/s/7/"
    assert digest == hashlib.sha256(spec.token.encode()).hexdigest()
    assert ENV_TOKEN in names
    assert "AIMMS_PORTAL_SECRET_KEY" not in names


def test_environment_has_no_port_or_base_path_unless_given(
    sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORT", "1")
    monkeypatch.setenv(ENV_BASE_PATH, "/portal/")

    names, values, _ = env_report(sessions, sessions.start())

    assert ENV_PORT not in names
    assert ENV_BASE_PATH not in names
    assert values[ENV_SESSION_KIND] == "solve"


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_is_reported(sessions: Sessions, code: int) -> None:
    handle = sessions.start("exit", env={"TEST_EXIT_CODE": str(code)})

    observation = sessions.wait_for_status(handle, SessionStatus.exited)

    assert observation.exit_code == code
    assert "exiting" in sessions.launcher.logs(handle)


def test_stop_asks_politely_first(sessions: Sessions) -> None:
    handle = sessions.start()
    sessions.wait_for_line(handle, "ready")

    began = time.monotonic()
    sessions.launcher.stop(handle, grace_seconds=5)

    assert time.monotonic() - began < 2.5  # it ended on SIGTERM: no waiting for the grace
    assert sessions.launcher.poll(handle).status == SessionStatus.gone


def test_stop_kills_a_child_that_ignores_sigterm(sessions: Sessions) -> None:
    handle = sessions.start("stubborn-child")
    child = sessions.child_pid(handle)
    sessions.wait_for_line(handle, "ready")
    assert sessions.backend.process_alive(child)

    began = time.monotonic()
    sessions.launcher.stop(handle, grace_seconds=0.5)

    assert time.monotonic() - began >= 0.5  # the child outlived SIGTERM for the grace
    assert not sessions.backend.process_alive(child)
    assert sessions.launcher.poll(handle).status == SessionStatus.gone


def test_stop_ends_what_is_left_after_the_runner_was_killed(sessions: Sessions) -> None:
    handle = sessions.start("orphan")
    child = sessions.child_pid(handle)

    observation = sessions.wait_for_status(handle, SessionStatus.exited)
    assert observation.exit_code in (-signal.SIGKILL, 128 + signal.SIGKILL)
    assert sessions.backend.process_alive(child)

    sessions.launcher.stop(handle, grace_seconds=1)

    assert not sessions.backend.process_alive(child)
    assert sessions.launcher.poll(handle).status == SessionStatus.gone


def test_stop_is_idempotent(sessions: Sessions) -> None:
    handle = sessions.start()
    sessions.wait_for_line(handle, "ready")

    sessions.launcher.stop(handle, grace_seconds=1)
    sessions.launcher.stop(handle, grace_seconds=1)

    assert sessions.launcher.poll(handle).status == SessionStatus.gone
    assert sessions.launcher.logs(handle) == []


def test_unknown_handle_is_gone_and_stops_quietly(
    launcher: Launcher, backend: Backend, tmp_path: Path
) -> None:
    handle = backend.unknown_handle(tmp_path)

    launcher.stop(handle, grace_seconds=0)

    assert launcher.poll(handle).status == SessionStatus.gone
    assert launcher.logs(handle) == []
    assert launcher.adopt(handle) is False


def test_logs_give_the_last_lines(sessions: Sessions) -> None:
    handle = sessions.start("lines", env={"TEST_LINES": "500"})
    sessions.wait_for_line(handle, "ready")

    assert sessions.launcher.logs(handle, tail=3) == ["line 498", "line 499", "ready"]
    assert sessions.launcher.logs(handle, tail=1) == ["ready"]
    assert len(sessions.launcher.logs(handle)) == 200
    assert sessions.launcher.logs(handle, tail=1000)[0] == "line 0"


def test_list_sessions_names_running_sessions_only(sessions: Sessions) -> None:
    running = sessions.start()
    ended = sessions.start("exit", env={"TEST_EXIT_CODE": "0"})
    stopped = sessions.start()
    sessions.launcher.stop(stopped, grace_seconds=0)
    sessions.wait_for_status(ended, SessionStatus.exited)

    listed = sessions.launcher.list_sessions()

    ids = sessions.session_ids
    assert listed[ids[running]] == running
    assert ids[stopped] not in listed
    assert (ids[ended] in listed) == sessions.backend.keeps_ended
    sessions.launcher.stop(ended, grace_seconds=0)
    assert sessions.launcher.list_sessions() == {ids[running]: running}


def test_adopt_after_a_restart(
    sessions: Sessions, backend: Backend, tmp_path: Path, runner_script: Path
) -> None:
    handle = sessions.start()
    sessions.wait_for_line(handle, "ready")

    restarted = backend.make(tmp_path, runner_script)

    assert restarted.adopt(handle) is True
    assert restarted.poll(handle).status == SessionStatus.running
    assert "ready" in restarted.logs(handle)
    assert restarted.list_sessions()[sessions.session_ids[handle]] == handle
    restarted.stop(handle, grace_seconds=1)
    assert restarted.poll(handle).status == SessionStatus.gone
    assert sessions.launcher.poll(handle).status == SessionStatus.gone
    assert restarted.adopt(handle) is False


def test_session_outlives_the_portal_process_that_started_it(
    sessions: Sessions, backend: Backend, tmp_path: Path, runner_script: Path
) -> None:
    spec = sessions.spec()
    # a separate "portal" process starts the session and exits at once
    code = (
        "from pathlib import Path\n"
        "from tests.launchers.test_contract import BACKENDS, SessionSpec\n"
        f"backend = next(b for b in BACKENDS if b.name == {backend.name!r})\n"
        f"launcher = backend.make(Path({str(tmp_path)!r}), Path({str(runner_script)!r}))\n"
        f"spec = SessionSpec(session_id={spec.session_id}, kind='solve', "
        f"portal_url={PORTAL_URL!r}, token={spec.token!r}, extra_env={{'TEST_ACTION': 'env'}})\n"
        "print(launcher.start(spec))\n"
    )
    portal = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert portal.returncode == 0, portal.stderr
    handle = portal.stdout.strip().splitlines()[-1]
    sessions.track(handle, spec.session_id)

    sessions.wait_for_line(handle, "ready")
    assert sessions.launcher.adopt(handle) is True
    assert sessions.launcher.list_sessions()[spec.session_id] == handle
    sessions.launcher.stop(handle, grace_seconds=1)
    assert sessions.launcher.poll(handle).status == SessionStatus.gone


def test_poll_reports_memory_and_cpu(sessions: Sessions) -> None:
    holder = sessions.start("allocate", env={"TEST_ALLOCATE_MB": "100", "TEST_HOLD": "1"})
    busy = sessions.start("busy")
    sessions.wait_for_line(holder, "ready")
    sessions.wait_for_line(busy, "ready")
    time.sleep(0.5)

    held = sessions.launcher.poll(holder)
    spun = sessions.launcher.poll(busy)

    assert held.memory_bytes is not None and held.memory_bytes >= 100 * 1024 * 1024
    assert spun.cpu_seconds is not None and spun.cpu_seconds >= 0.2
    assert held.cpu_seconds is not None and held.cpu_seconds < spun.cpu_seconds


def test_memory_limit_fails_a_greedy_program(sessions: Sessions) -> None:
    modest = sessions.start("allocate", env={"TEST_ALLOCATE_MB": "16"}, memory_mb=64)
    greedy = sessions.start("allocate", env={"TEST_ALLOCATE_MB": "1024"}, memory_mb=64)

    assert sessions.wait_for_status(modest, SessionStatus.exited).exit_code == 0
    assert "allocated 16" in sessions.launcher.logs(modest)
    failed = sessions.wait_for_status(greedy, SessionStatus.exited)
    assert failed.exit_code not in (None, 0)
    assert not any(line.startswith("allocated") for line in sessions.launcher.logs(greedy))


def test_cpu_time_limit_ends_a_busy_loop(sessions: Sessions) -> None:
    handle = sessions.start("busy", cpu_time_s=1)

    observation = sessions.wait_for_status(handle, SessionStatus.exited, timeout=15)

    assert observation.exit_code not in (None, 0)
    assert "ready" in sessions.launcher.logs(handle)


def test_a_runner_that_cannot_start_raises(backend: Backend, tmp_path: Path) -> None:
    broken = backend.make_broken(tmp_path)
    spec = SessionSpec(session_id=5, kind="solve", portal_url=PORTAL_URL, token=new_token())

    with pytest.raises(LauncherError) as raised:
        broken.start(spec)

    assert raised.value.message
    assert spec.token not in raised.value.message
    assert broken.list_sessions() == {}


def test_token_is_never_stored_or_logged(
    sessions: Sessions, backend: Backend, tmp_path: Path, launcher_log: io.StringIO
) -> None:
    spec = sessions.spec()
    handle = sessions.start_spec(spec)
    names, _, _ = env_report(sessions, handle)
    assert ENV_TOKEN in names  # the session did get it
    ended = sessions.start("exit", env={"TEST_EXIT_CODE": "1"}, token=spec.token)
    sessions.wait_for_status(ended, SessionStatus.exited)
    sessions.launcher.poll(handle)
    sessions.launcher.adopt(handle)
    sessions.launcher.list_sessions()

    stored = backend.stored_state(tmp_path)
    assert str(spec.session_id) in stored  # the records are there to be searched
    assert spec.token not in stored
    assert spec.token not in handle
    assert spec.token not in "\n".join(sessions.launcher.logs(handle, tail=1000))
    sessions.launcher.stop(handle, grace_seconds=0)
    sessions.launcher.stop(ended, grace_seconds=0)
    assert f"session {spec.session_id}" in launcher_log.getvalue()
    assert spec.token not in launcher_log.getvalue()


# --- the local launcher only --------------------------------------------------------


@pytest.fixture
def local_launcher(tmp_path: Path, runner_script: Path) -> LocalLauncher:
    return LocalLauncher(tmp_path / "sessions", runner_command=[sys.executable, str(runner_script)])


@pytest.fixture
def local_sessions(local_launcher: LocalLauncher, runner_script: Path) -> Iterator[Sessions]:
    tracker = Sessions(local_launcher, BACKENDS[0], runner_script)
    try:
        yield tracker
    finally:
        tracker.close()


def proc_stat(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2 :].split()


def session_folder(launcher: LocalLauncher, handle: str) -> Path:
    return launcher.sessions_dir / handle.split(":")[-1]


def test_local_handle_and_launch_record(
    local_sessions: Sessions, local_launcher: LocalLauncher
) -> None:
    spec = local_sessions.spec()
    handle = local_sessions.start_spec(spec)

    prefix, session_id, pid, starttime, boot, folder = handle.split(":")
    assert (prefix, int(session_id)) == ("local", spec.session_id)
    assert int(starttime) == int(proc_stat(int(pid))[19])  # field 22 of /proc/<pid>/stat
    assert folder.startswith(f"{spec.session_id}-")
    record = json.loads((local_launcher.sessions_dir / folder / "launch.json").read_text())
    assert (record["session_id"], record["pid"], record["starttime"], record["boot"]) == (
        spec.session_id,
        int(pid),
        int(starttime),
        boot,
    )
    assert spec.token not in json.dumps(record)
    assert os.getsid(int(pid)) == int(pid) == os.getpgid(int(pid))  # leads its own session


def test_local_environment_is_minimal(
    local_sessions: Sessions, local_launcher: LocalLauncher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    handle = local_sessions.start(cpu=1.5)

    names, values, _ = env_report(local_sessions, handle)

    work = session_folder(local_launcher, handle) / "work"
    assert names == {
        "PATH",
        "HOME",
        "LANG",
        "TMPDIR",
        "PYTHONPATH",
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "TEST_ACTION",
        ENV_PORTAL_URL,
        ENV_TOKEN,
        ENV_SESSION_ID,
        ENV_SESSION_KIND,
        "AIMMS_PORTAL_WORK_DIR",
    }
    assert values["AIMMS_PORTAL_WORK_DIR"] == str(work)
    pid = int(handle.split(":")[2])
    environ = dict(
        item.split(b"=", 1)
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if item
    )
    assert environ[b"HOME"] == str(work).encode()
    assert environ[b"TMPDIR"] == str(work / "tmp").encode()
    assert environ[b"OPENBLAS_NUM_THREADS"] == b"2"
    assert (work / "tmp").is_dir()
    assert Path(f"/proc/{pid}/cwd").resolve() == work.resolve()


def test_local_limits_are_set_on_the_runner(local_sessions: Sessions) -> None:
    handle = local_sessions.start(memory_mb=100, cpu_time_s=30)
    pid = int(handle.split(":")[2])

    limits = resource_limits(pid)

    address_space = (100 + local.ADDRESS_SPACE_HEADROOM_MB) * 1024 * 1024
    assert limits["Max address space"] == (str(address_space), str(address_space))
    assert limits["Max cpu time"] == ("30", str(30 + local.CPU_KILL_AFTER_S))
    assert limits["Max core file size"] == ("0", "0")


def resource_limits(pid: int) -> dict[str, tuple[str, str]]:
    limits = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        limits[name] = (soft, hard)
    return limits


def test_local_cpu_limit_is_reported_as_sigxcpu(local_sessions: Sessions) -> None:
    handle = local_sessions.start("busy", cpu_time_s=1)

    observation = local_sessions.wait_for_status(handle, SessionStatus.exited, timeout=15)

    assert observation.exit_code == -signal.SIGXCPU
    assert "CPU time" in observation.detail


def test_local_exit_code_is_unknown_after_a_portal_restart(
    local_sessions: Sessions, tmp_path: Path, runner_script: Path
) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from aimms_portal.launchers.local import LocalLauncher\n"
        "from aimms_portal.launchers.base import SessionSpec\n"
        f"launcher = LocalLauncher(Path({str(tmp_path / 'sessions')!r}), "
        f"runner_command=[sys.executable, {str(runner_script)!r}])\n"
        "spec = SessionSpec(session_id=77, kind='solve', portal_url='http://x', token='t', "
        "extra_env={'TEST_ACTION': 'exit', 'TEST_EXIT_CODE': '4', 'TEST_DELAY': '0.3'})\n"
        "print(launcher.start(spec))\n"
    )
    portal = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert portal.returncode == 0, portal.stderr
    handle = portal.stdout.strip()
    local_sessions.track(handle, 77)

    observation = local_sessions.wait_for_status(handle, SessionStatus.exited)

    assert observation.exit_code is None
    assert "unknown" in observation.detail
    assert local_sessions.launcher.list_sessions() == {77: handle}
    assert local_sessions.launcher.logs(handle) == ["exiting"]


def test_local_a_reused_pid_is_not_ours(local_launcher: LocalLauncher) -> None:
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        starttime = int(proc_stat(stranger.pid)[19])
        boot = local._boot_id()
        ours = f"local:9:{stranger.pid}:{starttime}:{boot}:9-0123abcd"
        reused = f"local:9:{stranger.pid}:{starttime - 1}:{boot}:9-0123abcd"
        other_boot = f"local:9:{stranger.pid}:{starttime}:ffffffff:9-0123abcd"

        assert local_launcher.adopt(ours) is True  # the same pid and start time: ours
        assert local_launcher.adopt(reused) is False
        assert local_launcher.adopt(other_boot) is False
        assert local_launcher.poll(reused).status == SessionStatus.gone
        local_launcher.stop(reused, grace_seconds=0)
        local_launcher.stop(other_boot, grace_seconds=0)
        assert stranger.poll() is None  # still running: it was not ours to stop
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize(
    "handle",
    [
        "docker:abc",
        "local:1:2:3:00000000:../../etc",
        "local:1:2:3:00000000:2-0123abcd",  # the folder is another session's
        "local:1:x:3:00000000:1-0123abcd",
        "local:1:2:3:00000000:1-0123abcd:extra",
    ],
)
def test_local_malformed_handles_are_refused(local_launcher: LocalLauncher, handle: str) -> None:
    for call in (
        local_launcher.poll,
        local_launcher.stop,
        local_launcher.logs,
        local_launcher.adopt,
    ):
        with pytest.raises(LauncherError):
            call(handle)


def test_local_list_sessions_skips_what_is_not_a_session(
    local_sessions: Sessions, local_launcher: LocalLauncher, tmp_path: Path
) -> None:
    handle = local_sessions.start()
    root = local_launcher.sessions_dir
    good_record = (session_folder(local_launcher, handle) / "launch.json").read_text()
    (root / "notes").mkdir()
    (root / "6-0123abcd").mkdir()  # being started: no record yet
    (root / "7-0123abcd").mkdir()
    (root / "7-0123abcd" / "launch.json").write_text("{not json")
    (root / "8-0123abcd").mkdir()
    (root / "8-0123abcd" / "launch.json").write_text(good_record)  # names another session
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "launch.json").write_text(good_record)
    (root / "9-0123abcd").symlink_to(elsewhere)

    assert local_launcher.list_sessions() == {local_sessions.session_ids[handle]: handle}
    assert (root / "6-0123abcd").is_dir()  # left alone


def test_local_start_failure_leaves_nothing(tmp_path: Path) -> None:
    not_executable = tmp_path / "runner.sh"
    not_executable.write_text("#!/bin/sh\n")
    spec = SessionSpec(session_id=5, kind="solve", portal_url=PORTAL_URL, token=new_token())

    for command, words in [
        ([str(tmp_path / "missing")], "was not found"),
        ([str(not_executable)], "permission denied"),
    ]:
        launcher = LocalLauncher(tmp_path / "sessions", runner_command=command)
        with pytest.raises(LauncherError, match=words):
            launcher.start(spec)
        assert list((tmp_path / "sessions").iterdir()) == []


def test_local_logs_read_only_the_end_of_a_huge_log(
    local_sessions: Sessions, local_launcher: LocalLauncher
) -> None:
    handle = local_sessions.start("lines", env={"TEST_LINES": "0"})
    local_sessions.wait_for_line(handle, "ready")
    log = session_folder(local_launcher, handle) / "runner.log"
    with open(log, "ab") as file:
        file.write(b"x" * (3 * local.LOG_TAIL_MAX_BYTES) + b"\nlast\n")

    lines = local_launcher.logs(handle, tail=5)

    assert lines[-1] == "last"
    assert len(lines) == 2 and set(lines[0]) == {"x"}
    assert len(lines[0]) < local.LOG_TAIL_MAX_BYTES


def test_local_stop_removes_the_folder(
    local_sessions: Sessions, local_launcher: LocalLauncher
) -> None:
    handle = local_sessions.start()
    local_sessions.wait_for_line(handle, "ready")
    folder = session_folder(local_launcher, handle)
    (folder / "work" / "deep" / "er").mkdir(parents=True)
    (folder / "work" / "deep" / "er" / "file").write_text("data")

    local_launcher.stop(handle, grace_seconds=1)

    assert not folder.exists()
    assert list(local_launcher.sessions_dir.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may remove read-only folders anyway")
def test_local_stop_removes_read_only_folders(
    local_sessions: Sessions, local_launcher: LocalLauncher
) -> None:
    handle = local_sessions.start()
    folder = session_folder(local_launcher, handle)
    locked = folder / "work" / "locked"
    locked.mkdir()
    (locked / "file").write_text("data")
    locked.chmod(0o500)

    local_launcher.stop(handle, grace_seconds=1)

    assert not folder.exists()


def test_local_stop_reaps_its_child(local_sessions: Sessions) -> None:
    handle = local_sessions.start("exit", env={"TEST_EXIT_CODE": "0"})
    pid = int(handle.split(":")[2])
    local_sessions.wait_for_status(handle, SessionStatus.exited)

    assert not Path(f"/proc/{pid}").exists()  # poll collected the zombie
    local_sessions.launcher.stop(handle, grace_seconds=0)
    assert local_sessions.launcher.poll(handle).status == SessionStatus.gone
