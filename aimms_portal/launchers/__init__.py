"""Launchers: the backends that start, watch and stop session containers.

The contract is in :mod:`aimms_portal.launchers.base`; :func:`get_launcher` picks the
backend the settings name.
"""

from __future__ import annotations

import functools

from aimms_portal.config import Settings, get_settings
from aimms_portal.launchers.base import (
    Launcher,
    LauncherError,
    Observation,
    SessionSpec,
    SessionStatus,
)

__all__ = [
    "Launcher",
    "LauncherError",
    "Observation",
    "SessionSpec",
    "SessionStatus",
    "get_launcher",
    "make_launcher",
]


def make_launcher(settings: Settings) -> Launcher:
    """A launcher of the kind ``settings.launcher`` names.

    Raises:
        LauncherError: that backend is not available in this build.
    """
    if settings.launcher == "local":
        from aimms_portal.launchers.local import LocalLauncher

        return LocalLauncher(settings.resolved_sessions_dir)
    raise LauncherError(
        f"The {settings.launcher!r} launcher is not built yet; use AIMMS_PORTAL_LAUNCHER=local.",
        code="launcher_unavailable",
    )


@functools.cache
def get_launcher() -> Launcher:
    """The launcher of this process, made from the settings on first use."""
    return make_launcher(get_settings())
