"""Stand-ins the tests share, in one place: a launcher that starts nothing.

It is for the scheduler's own tests (order, capacity, leadership), which are about what
the scheduler decides, not about processes; everything about real sessions is tested
with the local launcher (tests/launchers, tests/scheduler/test_end_to_end.py).
"""

from __future__ import annotations

import threading
from typing import ClassVar

from aimms_portal.launchers import Launcher, Observation, SessionSpec, SessionStatus


class RecordingLauncher(Launcher):
    """Records starts and stops; every started session "runs" until stopped."""

    kind: ClassVar[str] = "local"

    def __init__(self) -> None:
        self.started: list[SessionSpec] = []
        self.stopped: list[str] = []
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self, spec: SessionSpec) -> str:
        handle = f"fake:{spec.session_id}"
        with self._lock:
            self.started.append(spec)
            self._running[handle] = spec.session_id
        return handle

    def poll(self, handle: str) -> Observation:
        with self._lock:
            running = handle in self._running
        return Observation(SessionStatus.running if running else SessionStatus.gone)

    def stop(self, handle: str, *, grace_seconds: float = 5.0) -> None:
        with self._lock:
            self.stopped.append(handle)
            self._running.pop(handle, None)

    def logs(self, handle: str, *, tail: int = 200) -> list[str]:
        return []

    def list_sessions(self) -> dict[int, str]:
        with self._lock:
            return {session_id: handle for handle, session_id in self._running.items()}

    def adopt(self, handle: str) -> bool:
        with self._lock:
            return handle in self._running
