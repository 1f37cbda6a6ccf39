"""The launcher contract: how the portal starts, watches and stops session containers.

A launcher runs one *runner* (``python -m aimms_portal.runner``) per session, with the
environment of :meth:`SessionSpec.environment`; the runner does everything else over
the REST API. Every backend (``local`` processes, ``docker`` containers, ``ecs`` tasks)
implements the same six calls and passes the one contract test suite in
``tests/launchers/``.

Rules every backend keeps:

- ``start`` returns quickly (it does not wait for the runner to be ready) and gives a
  *handle*: a string that names the session to this backend, survives a portal restart
  and is all ``poll``, ``stop``, ``logs`` and ``adopt`` need.
- Every call may be made from any portal process, any number of times, in any order,
  also after the session ended: ``stop`` of a stopped session, ``poll`` of a handle the
  backend has forgotten (``gone``) and ``logs`` of an ended session (what is left, or
  nothing) are normal, not errors.
- ``stop`` ends the whole session (every process of it) and frees what it held (its
  working folder, its container); it escalates from a polite request to a kill and
  returns once the session is gone. What the session wrote to stdout and stderr may go
  with it: read ``logs`` *before* ``stop`` when they matter (e.g. for a failed session).
- ``list_sessions`` names every session this backend holds anything of *for this
  portal* (and no other): the running ones, and ended ones that still hold something
  (a working folder, an exited container) until ``stop`` frees it. After a restart the
  portal adopts the ones it still knows and stops the rest; nothing is lost or leaked.
- Blocking calls: the methods are synchronous; async callers go through
  :func:`aimms_portal.aio.run_blocking`.
- Provider errors become :class:`LauncherError` with a message for the user; the
  environment (it carries the session's token) is never logged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from aimms_portal.errors import PortalError

#: Environment variables every session gets (the SDK reads them).
ENV_PORTAL_URL = "AIMMS_PORTAL_URL"
ENV_TOKEN = "AIMMS_PORTAL_TOKEN"  # noqa: S105  (a variable name, not a secret)
ENV_SESSION_ID = "AIMMS_PORTAL_SESSION_ID"
ENV_SESSION_KIND = "AIMMS_PORTAL_SESSION_KIND"
ENV_BASE_PATH = "AIMMS_PORTAL_BASE_PATH"
ENV_PORT = "PORT"


class LauncherError(PortalError):
    """The launcher could not do what was asked (start, stop, ...)."""

    code = "launcher_failed"


class SessionStatus(StrEnum):
    running = "running"  # the session's processes (or container) are alive
    exited = "exited"  # it ended by itself; ``exit_code`` says how
    gone = "gone"  # the backend knows no such session (never started, or cleaned up)


@dataclass(frozen=True)
class Observation:
    """What :meth:`Launcher.poll` saw.

    ``exit_code`` (``exited`` only) is the runner's exit status: ``-N`` when signal ``N``
    ended it (a backend that cannot tell a signal from an exit reports what it has, e.g.
    ``137``), ``None`` when the backend does not know it (e.g. the local launcher after a
    portal restart; ``detail`` says so). ``memory_bytes`` and ``cpu_seconds`` are the
    session's current resident memory and the CPU time it used so far, where the backend
    can tell (else ``None``).
    """

    status: SessionStatus
    exit_code: int | None = None
    detail: str = ""
    memory_bytes: int | None = None
    cpu_seconds: float | None = None


@dataclass(frozen=True)
class SessionSpec:
    """Everything a launcher needs to start one session.

    Attributes:
        session_id: The portal's id of the session (``app_sessions.id``).
        kind: ``solve``, ``webui`` or ``desktop``.
        portal_url: Where the runner reaches the REST API.
        token: The session-scoped token. Secret: never log it.
        cpu: CPUs the release asks for (a hint; backends may round or ignore it).
        memory_mb: Memory limit of the whole session, in MB (``None``: no limit).
        cpu_time_s: CPU seconds the whole session may use (``None``: no limit).
        port: Port the app's WebUI must listen on (WebUI sessions).
        base_path: Path prefix the WebUI is served under, e.g. ``/s/12/``.
        extra_env: More environment for the runner (e.g. cache folders).
    """

    session_id: int
    kind: str
    portal_url: str
    token: str
    cpu: float | None = None
    memory_mb: int | None = None
    cpu_time_s: int | None = None
    port: int | None = None
    base_path: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        """The runner's environment variables (on top of a minimal base)."""
        env = {
            ENV_PORTAL_URL: self.portal_url,
            ENV_TOKEN: self.token,
            ENV_SESSION_ID: str(self.session_id),
            ENV_SESSION_KIND: self.kind,
            **self.extra_env,
        }
        if self.port is not None:
            env[ENV_PORT] = str(self.port)
        if self.base_path is not None:
            env[ENV_BASE_PATH] = self.base_path
        return env

    def __repr__(self) -> str:  # the token must not reach a log through a repr
        return f"SessionSpec(session_id={self.session_id}, kind={self.kind!r})"


class Launcher(ABC):
    """One backend that runs session containers. See the module docstring for the rules."""

    #: The value of ``AIMMS_PORTAL_LAUNCHER`` that selects this backend.
    kind: ClassVar[str]

    @abstractmethod
    def start(self, spec: SessionSpec) -> str:
        """Start the session's runner; return its handle without waiting for it.

        Raises:
            LauncherError: the session could not be started (nothing is left running).
        """

    @abstractmethod
    def poll(self, handle: str) -> Observation:
        """Whether the session still runs, how it ended, and what it uses.

        ``running`` while the runner runs; ``exited`` once it ended but the session still
        holds something (processes it left, its folder or container: ``stop`` frees
        them); ``gone`` once nothing of it is left (after ``stop``, or never started).

        Raises:
            LauncherError: the handle is not one of this backend's.
        """

    @abstractmethod
    def stop(self, handle: str, *, grace_seconds: float = 5.0) -> None:
        """End the session: ask politely, wait up to ``grace_seconds``, then kill.

        Returns once nothing of the session runs any more; frees what it held, which may
        include its logs. Idempotent: stopping an ended, stopped or forgotten session
        is not an error.
        """

    @abstractmethod
    def logs(self, handle: str, *, tail: int = 200) -> list[str]:
        """The last ``tail`` lines the runner wrote to its stdout and stderr.

        What is left of them: an empty list once the session is gone (``stop`` may have
        removed them, so read them before stopping).
        """

    @abstractmethod
    def list_sessions(self) -> dict[int, str]:
        """Every session this backend holds anything of for this portal: id -> handle.

        Running sessions and ended ones not yet stopped (see the module docstring).
        """

    @abstractmethod
    def adopt(self, handle: str) -> bool:
        """Take over watching a session started by an earlier portal process.

        Returns whether the session still runs (``False``: it is gone or ended).
        """
