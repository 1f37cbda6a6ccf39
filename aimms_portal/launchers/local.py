"""The ``local`` launcher: every session is a process tree on the portal's own machine.

This is the backend of the embedded mode and of small single servers. Each session gets
a folder under ``sessions_dir``::

    <session_id>-<8 hex>/
        launch.json   what the portal needs to find the session again (never the token)
        runner.log    the runner's stdout and stderr, appended
        work/         the runner's working folder and HOME; work/tmp is its TMPDIR

The runner is started in a new session (``setsid``), so it leads its own process group
and session and outlives the portal process that started it: a restarted portal finds
it again through ``launch.json`` (:meth:`LocalLauncher.list_sessions`) or its handle
(:meth:`LocalLauncher.adopt`). Process ids are reused by the kernel, so a session is
named by its runner's pid *and* start time (field 22 of ``/proc/<pid>/stat``) and the
boot it started in; a process with that pid but another start time is not ours.

The processes of a session are those whose process group or session id is the runner's
pid: everything the runner and the app start, unless one of them starts a session of
its own (``setsid``, ``start_new_session=True``, a daemon), which takes it out of the
portal's sight. The runner must start the app without doing that (``process_group=0``
is fine).

Limits, and how they differ from a container's:

- ``memory_mb`` becomes ``RLIMIT_AS``, the address space of *each* process, set to
  ``memory_mb`` plus :data:`ADDRESS_SPACE_HEADROOM_MB`. Address space counts what a
  process has reserved, not what it uses: the interpreter and its shared libraries,
  8 MiB of stack per thread, 64 MiB per glibc malloc arena, OpenBLAS buffers per
  thread. Measured here (Python 3.11, numpy 2.4, highspy 1.16): bare Python reserves
  14 MiB; ``import numpy`` 109 MiB with one OpenBLAS thread plus 41 MiB per further
  thread; the demo's solve peaks at 250-290 MiB of address space while only 38 MiB is
  resident. Under a bare 512 MiB limit, a process that imported numpy and highspy can
  allocate 405 MiB in one piece with one OpenBLAS thread and 301 MiB with two; with
  the 256 MiB headroom (768 MiB), 661 and 557 MiB: at least what the app asked for,
  at most ``memory_mb`` + 256 MiB of address space. Because OpenBLAS and OpenMP start
  one thread per core (and reserve address space for each), a session whose spec names
  ``cpu`` also gets ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS`` of
  that many threads (rounded up, overridable through ``extra_env``); without that,
  importing numpy on a 32-core machine would reserve about 1.4 GiB (109 + 31 x 41
  MiB, extrapolated), more than any fixed headroom. The limit holds per process, so a
  session of several processes may use more in all: :meth:`LocalLauncher.poll` reports
  their total resident memory, so the portal can stop a session that does.
- ``cpu_time_s`` becomes ``RLIMIT_CPU`` of each process: ``SIGXCPU`` when it is used
  up, ``SIGKILL`` :data:`CPU_KILL_AFTER_S` seconds later if that signal is ignored.
- ``cpu`` is only the thread hint above; nothing stops a session from using every core.
- Core dumps are off (``RLIMIT_CORE`` 0).

``runner.log`` grows for as long as the session runs; it is not rotated (the runner
streams its logs to the portal, this file is for when it cannot).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from aimms_portal.launchers.base import (
    Launcher,
    LauncherError,
    Observation,
    SessionSpec,
    SessionStatus,
)

logger = logging.getLogger(__name__)

#: Address space each session process gets on top of ``memory_mb`` (see the module doc).
ADDRESS_SPACE_HEADROOM_MB = 256
#: Seconds of CPU a process may use past ``cpu_time_s`` (after ``SIGXCPU``) before
#: the kernel kills it.
CPU_KILL_AFTER_S = 2
#: :meth:`LocalLauncher.logs` reads at most this much of the end of ``runner.log``.
LOG_TAIL_MAX_BYTES = 1024 * 1024
#: How long :meth:`LocalLauncher.stop` keeps killing before it gives up.
KILL_TIMEOUT_S = 10.0

RECORD_FILE = "launch.json"
LOG_FILE = "runner.log"
WORK_DIR = "work"

_HANDLE_PREFIX = "local"
_FOLDER_NAME = re.compile(r"(\d+)-[0-9a-f]{8}")
_BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
_POLL_INTERVAL_S = 0.02
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The runners this OS process started, by (pid, start time). Only the parent can learn a
# child's exit status, and it must collect it (reap the zombie) once; every
# LocalLauncher in the process shares these, as the children belong to the process.
_children: dict[tuple[int, int], subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


@dataclass(frozen=True)
class _Handle:
    """What a handle names: ``local:<session>:<pid>:<start time>:<boot>:<folder>``."""

    session_id: int
    pid: int
    starttime: int
    boot: str
    folder: str

    def __str__(self) -> str:
        return ":".join(
            (
                _HANDLE_PREFIX,
                str(self.session_id),
                str(self.pid),
                str(self.starttime),
                self.boot,
                self.folder,
            )
        )

    @classmethod
    def parse(cls, handle: str) -> _Handle:
        parts = handle.split(":")
        if len(parts) != 6 or parts[0] != _HANDLE_PREFIX:
            raise LauncherError(
                "This session was not started by the local launcher.",
                code="bad_handle",
                log_detail=f"handle {handle!r}",
            )
        _, session, pid, starttime, boot, folder = parts
        name = _FOLDER_NAME.fullmatch(folder)
        if (
            not (session.isdigit() and pid.isdigit() and starttime.isdigit())
            or not re.fullmatch(r"[0-9a-f]{8}", boot)
            or name is None
            or name.group(1) != session
        ):
            raise LauncherError(
                "The session's launch record is damaged.",
                code="bad_handle",
                log_detail=f"handle {handle!r}",
            )
        return cls(int(session), int(pid), int(starttime), boot, folder)


@dataclass(frozen=True)
class _Process:
    """One line of ``/proc/<pid>/stat``, the fields we use."""

    pid: int
    state: str
    pgrp: int
    sid: int
    cpu_ticks: int  # utime + stime + cutime + cstime: also children it has reaped
    starttime: int
    rss_pages: int

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X", "x")  # a zombie has ended


def _read_process(pid: int) -> _Process | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read()
    except OSError:  # no such process (any more)
        return None
    # the command name (field 2) is in parentheses and may hold spaces and parentheses
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return _Process(
            pid=pid,
            state=fields[0].decode(),
            pgrp=int(fields[2]),
            sid=int(fields[3]),
            cpu_ticks=sum(int(value) for value in fields[11:15]),
            starttime=int(fields[19]),
            rss_pages=int(fields[21]),
        )
    except (IndexError, ValueError):  # it ended while we read
        return None


def _all_processes() -> Iterator[_Process]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            process = _read_process(int(name))
            if process is not None:
                yield process


@functools.cache
def _boot_id() -> str:
    """The first 8 hex digits of this boot's id: start times count from the boot."""
    with open(_BOOT_ID_FILE) as file:
        return file.read().strip().replace("-", "")[:8]


def _describe_exit(code: int) -> str:
    if code == 0:
        return "The runner exited normally."
    if code > 0:
        return f"The runner exited with code {code}."
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGXCPU:
        return f"The runner was ended by {name}: it used up its CPU time."
    return f"The runner was ended by {name}."


def _limits(spec: SessionSpec, headroom_mb: int) -> list[tuple[int, tuple[int, int]]]:
    """The resource limits of the session's processes, clamped to what we may set."""
    wanted = [(resource.RLIMIT_CORE, 0, 0)]
    if spec.memory_mb is not None:
        address_space = (spec.memory_mb + headroom_mb) * 1024 * 1024
        wanted.append((resource.RLIMIT_AS, address_space, address_space))
    if spec.cpu_time_s is not None:
        wanted.append((resource.RLIMIT_CPU, spec.cpu_time_s, spec.cpu_time_s + CPU_KILL_AFTER_S))
    limits = []
    for which, soft, hard in wanted:
        _, our_hard = resource.getrlimit(which)
        if our_hard != resource.RLIM_INFINITY:  # a child cannot get more than we have
            hard = min(hard, our_hard)
            soft = min(soft, hard)
        limits.append((which, (soft, hard)))
    return limits


def _apply_limits(limits: list[tuple[int, tuple[int, int]]]) -> Callable[[], None]:
    # Runs in the forked child before exec. preexec_fn is documented as unsafe when the
    # parent has threads, because the child may need a lock another thread held at the
    # fork; this function takes none: it only calls setrlimit with values computed here.
    def apply() -> None:
        for which, values in limits:
            resource.setrlimit(which, values)

    return apply


def _tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a file, reading no more than LOG_TAIL_MAX_BYTES."""
    try:
        file = open(path, "rb")  # noqa: SIM115  (closed below; FileNotFoundError first)
    except FileNotFoundError:
        return []
    with file:
        end = file.seek(0, os.SEEK_END)
        start = max(0, end - LOG_TAIL_MAX_BYTES)
        position, data, newlines = end, b"", 0
        while position > start and newlines <= lines:
            step = min(64 * 1024, position - start)
            position -= step
            file.seek(position)
            block = file.read(step)
            newlines += block.count(b"\n")
            data = block + data
    text = data.decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]


def _remove_tree(folder: Path) -> None:
    def make_writable(function: Callable[..., Any], path: str, _: Any) -> None:
        # an app may have left folders read-only; we own them, so open them up and retry
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)
        function(path)

    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder, onerror=make_writable)


class LocalLauncher(Launcher):
    """Sessions as process trees on this machine; see the module docstring.

    Args:
        sessions_dir: Folder of the sessions' working folders (made when needed).
        runner_command: The command that starts a runner; default
            ``python -m aimms_portal.runner`` with this interpreter.
        address_space_headroom_mb: Address space each process gets on top of a spec's
            ``memory_mb`` (see the module docstring for why there is any).
    """

    kind: ClassVar[str] = "local"

    def __init__(
        self,
        sessions_dir: Path,
        *,
        runner_command: Sequence[str] | None = None,
        address_space_headroom_mb: int = ADDRESS_SPACE_HEADROOM_MB,
    ) -> None:
        self.sessions_dir = Path(sessions_dir)
        self.runner_command = list(runner_command or [sys.executable, "-m", "aimms_portal.runner"])
        self.address_space_headroom_mb = address_space_headroom_mb

    # --- the contract ---------------------------------------------------------------

    def start(self, spec: SessionSpec) -> str:
        """Start the runner in a new folder and a new process session; return at once.

        Raises:
            LauncherError: the folder could not be made or the runner not started
                (nothing is left behind: no process, no folder).
        """
        if spec.session_id < 0:
            raise LauncherError("A session id cannot be negative.", code="launch_failed")
        try:
            self.sessions_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder = self.sessions_dir / f"{spec.session_id}-{secrets.token_hex(4)}"
            work = folder / WORK_DIR
            (work / "tmp").mkdir(mode=0o700, parents=True)
        except OSError as error:
            raise LauncherError(
                "The session's working folder could not be made.",
                log_detail=f"{self.sessions_dir}: {error}",
            ) from error

        try:
            process = self._spawn(spec, folder, work)
        except (OSError, subprocess.SubprocessError) as error:
            _remove_tree(folder)
            raise self._start_error(error) from error

        try:
            handle = self._record(spec, folder, process)
        except OSError as error:
            self._kill_unrecorded(process)
            _remove_tree(folder)
            raise LauncherError(
                "The session's launch record could not be written.",
                log_detail=f"{folder}: {error}",
            ) from error

        logger.info(
            "started %s session %s: pid %d in %s",
            spec.kind,
            spec.session_id,
            process.pid,
            folder.name,
        )
        return str(handle)

    def poll(self, handle: str) -> Observation:
        """Running while the runner lives; ``exited`` once it ended, ``gone`` once stopped.

        The exit code is known only to the portal process that started the runner; one
        that adopted it reports ``exit_code=None``. Processes the runner left behind
        when it ended are named in ``detail`` (stop ends them) and counted in the
        memory and CPU figures, which sum the session's processes: resident memory
        (shared pages counted once per process) and CPU time, including that of
        children they have already collected.
        """
        target = _Handle.parse(handle)
        _reap_children()
        processes = self._processes(target)
        memory = sum(p.rss_pages for p in processes) * _PAGE_SIZE
        cpu = sum(p.cpu_ticks for p in processes) / _CLOCK_TICKS
        if any(p.pid == target.pid for p in processes):
            logger.debug("session %s: running, %d processes", target.session_id, len(processes))
            return Observation(SessionStatus.running, memory_bytes=memory, cpu_seconds=cpu)

        # only now: asked before the scan, a runner ending in between would look alive to
        # waitpid and dead to the scan
        exit_code = _exit_code(target)
        folder = self.sessions_dir / target.folder
        if not processes and exit_code is None and not folder.is_dir():
            return Observation(SessionStatus.gone, detail="The launcher knows no such session.")
        if exit_code is not None:
            detail = _describe_exit(exit_code)
        else:
            detail = (
                "The runner ended; its exit code is unknown: another portal process started it."
            )
        if not processes:
            return Observation(SessionStatus.exited, exit_code, detail)
        detail += f" {len(processes)} of its processes still run until it is stopped."
        return Observation(
            SessionStatus.exited, exit_code, detail, memory_bytes=memory, cpu_seconds=cpu
        )

    def stop(self, handle: str, *, grace_seconds: float = 5.0) -> None:
        """SIGTERM to every process of the session, SIGKILL after ``grace_seconds``.

        Returns once none is left, then removes the session's folder, ``runner.log``
        included: read :meth:`logs` first if they matter. Stopping a stopped or unknown
        session does nothing.

        Raises:
            LauncherError: a process would not die within ``KILL_TIMEOUT_S`` of SIGKILL
                (e.g. stuck in the kernel); the folder is kept then.
        """
        target = _Handle.parse(handle)

        # ask politely
        processes = self._processes(target)
        if processes:
            logger.info(
                "stopping session %s: SIGTERM to %d processes",
                target.session_id,
                len(processes),
            )
            self._signal(processes, signal.SIGTERM)
            processes = self._wait_for_end(target, grace_seconds)

        # then insist
        if processes:
            logger.info(
                "session %s: %d processes still run after %.1f s: SIGKILL",
                target.session_id,
                len(processes),
                grace_seconds,
            )
            deadline = time.monotonic() + KILL_TIMEOUT_S
            while processes:
                if time.monotonic() > deadline:
                    raise LauncherError(
                        "The session's processes could not be ended.",
                        log_detail=f"pids {[p.pid for p in processes]}",
                    )
                self._signal(processes, signal.SIGKILL)
                processes = self._wait_for_end(target, _POLL_INTERVAL_S)

        # free what it held
        with _children_lock:
            child = _children.pop((target.pid, target.starttime), None)
        if child is not None:
            child.poll()  # it has ended: this collects its exit status
        folder = self.sessions_dir / target.folder
        if folder.exists():
            try:
                _remove_tree(folder)
            except OSError as error:
                raise LauncherError(
                    "The session's working folder could not be removed.",
                    log_detail=f"{folder}: {error}",
                ) from error
            logger.info("stopped session %s, removed %s", target.session_id, target.folder)

    def logs(self, handle: str, *, tail: int = 200) -> list[str]:
        """The last ``tail`` lines of ``runner.log`` (at most its last MiB).

        Empty once the session was stopped: :meth:`stop` removes the log with the folder.
        """
        target = _Handle.parse(handle)
        if tail <= 0:
            return []
        return _tail(self.sessions_dir / target.folder / LOG_FILE, tail)

    def list_sessions(self) -> dict[int, str]:
        """Every session with a folder here: running, or ended and not yet stopped.

        The ended ones are listed so that the portal stops them (which removes their
        folder) after it has read their logs; nothing is removed here. Folders without
        a readable launch record (one being started, or not ours) are left alone. If two
        folders name one session, the one whose runner lives wins, else the newer.
        """
        _reap_children()
        try:
            entries = list(os.scandir(self.sessions_dir))
        except FileNotFoundError:
            return {}
        found: dict[int, tuple[bool, int, _Handle]] = {}
        for entry in entries:
            if not _FOLDER_NAME.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            target = self._read_record(Path(entry.path))
            if target is None:
                continue
            rank = (self._runner_alive(target), target.starttime, target)
            previous = found.get(target.session_id)
            if previous is not None:
                rank = max(previous, rank, key=lambda r: r[:2])
                logger.warning(
                    "session %s has two folders; listing %s", target.session_id, rank[2].folder
                )
            found[target.session_id] = rank
        return {session_id: str(rank[2]) for session_id, rank in found.items()}

    def adopt(self, handle: str) -> bool:
        """Whether the runner still lives (and is ours: same pid, start time and boot)."""
        target = _Handle.parse(handle)
        alive = self._runner_alive(target)
        if alive:
            logger.info("adopted session %s: pid %d", target.session_id, target.pid)
        else:
            logger.info("session %s ended while no portal watched it", target.session_id)
        return alive

    # --- starting -------------------------------------------------------------------

    def _spawn(self, spec: SessionSpec, folder: Path, work: Path) -> subprocess.Popen[bytes]:
        env = self._environment(spec, work)
        with open(folder / LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                self.runner_command,
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_apply_limits(_limits(spec, self.address_space_headroom_mb)),
            )
        return process

    def _environment(self, spec: SessionSpec, work: Path) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(work),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "TMPDIR": str(work / "tmp"),
        }
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        if spec.cpu is not None:
            threads = str(max(1, math.ceil(spec.cpu)))
            env.update(dict.fromkeys(_THREAD_VARIABLES, threads))
        env.update(spec.environment())
        env["AIMMS_PORTAL_WORK_DIR"] = str(work)
        return env

    def _start_error(self, error: OSError | subprocess.SubprocessError) -> LauncherError:
        program = self.runner_command[0]
        if isinstance(error, FileNotFoundError):
            message = f"The session runner {program!r} was not found on this server."
        elif isinstance(error, PermissionError):
            message = f"The session runner {program!r} may not be run (permission denied)."
        elif isinstance(error, OSError):
            message = f"The session runner could not be started: {error.strerror or error}."
        else:  # preexec_fn failed: setrlimit refused a value
            message = "The session's resource limits could not be set."
        return LauncherError(message, code="launch_failed", log_detail=repr(error))

    def _record(self, spec: SessionSpec, folder: Path, process: subprocess.Popen[bytes]) -> _Handle:
        """Note the child, then write launch.json atomically (all of it or nothing)."""
        runner = _read_process(process.pid)
        if runner is None:  # cannot be: our child's entry stays until we collect it
            raise ProcessLookupError(process.pid)
        handle = _Handle(spec.session_id, process.pid, runner.starttime, _boot_id(), folder.name)
        with _children_lock:
            _children[(handle.pid, handle.starttime)] = process

        record = {
            "format": 1,
            "session_id": spec.session_id,
            "kind": spec.kind,
            "pid": handle.pid,
            "starttime": handle.starttime,
            "boot": handle.boot,
            "started_at": datetime.now(UTC).isoformat(),
        }
        temporary = folder / f".{RECORD_FILE}.tmp"
        with open(temporary, "w") as file:
            json.dump(record, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, folder / RECORD_FILE)
        return handle

    def _read_record(self, folder: Path) -> _Handle | None:
        try:
            record = json.loads((folder / RECORD_FILE).read_text())
            handle = _Handle(
                int(record["session_id"]),
                int(record["pid"]),
                int(record["starttime"]),
                str(record["boot"]),
                folder.name,
            )
            return _Handle.parse(str(handle))  # the same checks as a handle from outside
        except FileNotFoundError:
            return None  # being started (the record is written right after the spawn)
        except (OSError, ValueError, KeyError, TypeError, LauncherError) as error:
            logger.warning("ignoring session folder %s: %s", folder.name, error)
            return None

    def _kill_unrecorded(self, process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        with _children_lock:
            for key, child in list(_children.items()):
                if child is process:
                    del _children[key]

    # --- watching -------------------------------------------------------------------

    def _runner_alive(self, target: _Handle) -> bool:
        if target.boot != _boot_id():
            return False
        runner = _read_process(target.pid)
        return runner is not None and runner.starttime == target.starttime and runner.alive

    def _processes(self, target: _Handle) -> list[_Process]:
        """The live processes of the session: its process group and process session.

        While any of them lives, the kernel does not hand out the runner's pid again
        (it names their group or session), so a process with that pid and another start
        time means the session is over; and after a reboot nothing of it is left.
        """
        if target.boot != _boot_id():
            return []
        runner = _read_process(target.pid)
        if runner is not None and runner.starttime != target.starttime:
            return []
        return [
            process
            for process in _all_processes()
            if process.alive
            and target.pid in (process.pgrp, process.sid)
            and process.starttime >= target.starttime
        ]

    def _signal(self, processes: list[_Process], signum: signal.Signals) -> None:
        # each group lies wholly inside the session (groups cannot span sessions), and
        # killpg reaches members that were forked after we looked
        for group in {process.pgrp for process in processes}:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signum)

    def _wait_for_end(self, target: _Handle, seconds: float) -> list[_Process]:
        """Wait up to ``seconds`` for every process to end; return those still alive."""
        deadline = time.monotonic() + seconds
        while True:
            _exit_code(target)  # collect the runner if it is our child
            processes = self._processes(target)
            if not processes or time.monotonic() >= deadline:
                return processes
            time.sleep(_POLL_INTERVAL_S)


def _exit_code(target: _Handle) -> int | None:
    """The runner's exit code if this process started it and it ended, else None."""
    with _children_lock:
        child = _children.get((target.pid, target.starttime))
    return None if child is None else child.poll()


def _reap_children() -> None:
    """Collect every ended runner of this process, so that no zombies pile up."""
    with _children_lock:
        children = list(_children.values())
    for child in children:
        child.poll()
