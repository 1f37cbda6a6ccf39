"""The scheduler of one portal process: leader election, then dispatch, reap, hooks.

Every portal process (every worker, every replica) starts one :class:`Scheduler`. All of
them compete for the ``scheduler`` lease; the holder runs the rounds, the others only
keep trying for the lease. A round runs when something is announced on the queue
channel (a submit, a finished job, an idle session: LISTEN/NOTIFY on PostgreSQL) and at
least every :data:`POLL_SECONDS` otherwise.

The loop runs in a daemon thread: everything it calls is blocking (database, launcher).
A failure in one round is logged and the next round tries again; the database being
away makes the process give up its leadership until it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import httpx

from aimms_portal.config import Settings
from aimms_portal.errors import PortalError
from aimms_portal.launchers import Launcher
from aimms_portal.scheduler import hooks, signals
from aimms_portal.scheduler.dispatcher import dispatch_once
from aimms_portal.scheduler.leader import LeaderLeaseKeeper, holder_name
from aimms_portal.scheduler.reaper import Reaper

logger = logging.getLogger(__name__)

#: Longest pause between two rounds of the leader, in seconds.
POLL_SECONDS = 1.0
#: The leader lease lasts this long; it is renewed every third of it.
LEASE_SECONDS = 10.0
#: How often the optional maintenance callback runs (retention), in seconds.
MAINTENANCE_SECONDS = 3600.0


class Scheduler:
    """Leader-elected dispatch, reaping and hook delivery for one portal process.

    ``maintenance`` (optional) is called by the leader about every
    :data:`MAINTENANCE_SECONDS` (e.g. to delete jobs past their retention).
    """

    def __init__(
        self,
        launcher: Launcher,
        settings: Settings,
        *,
        maintenance: Callable[[], None] | None = None,
        name: str | None = None,
    ) -> None:
        self.launcher = launcher
        self.settings = settings
        self.maintenance = maintenance
        self.keeper = LeaderLeaseKeeper(
            "scheduler", name or holder_name(), timedelta(seconds=LEASE_SECONDS)
        )
        self.reaper = Reaper(launcher, settings)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: signals.Listener | None = None

    @property
    def is_leader(self) -> bool:
        return self.keeper.held

    def start(self) -> None:
        url = self.settings.resolved_database_url
        if signals.Listener.wanted(url):
            self._listener = signals.Listener(url)
            self._listener.start()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and give the lease up (sessions keep running: they are adopted)."""
        self._stop.set()
        signals.wake_locally(signals.QUEUE)
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._listener is not None:
            self._listener.stop()
        try:
            self.keeper.release()
        except PortalError as exc:
            logger.warning("could not release the scheduler lease: %s", exc.message)

    def _run(self) -> None:
        wakeups = signals.Subscription(signals.QUEUE)
        hook_client = hooks.make_client()
        renewed = 0.0
        last_maintenance = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                try:
                    if not self.keeper.held or now - renewed >= LEASE_SECONDS / 3:
                        was_leader = self.keeper.held
                        if self.keeper.try_hold():
                            renewed = now
                            if not was_leader:
                                self.reaper.became_leader()
                    if self.keeper.held:
                        self.run_round(hook_client)
                        if self.maintenance and now - last_maintenance >= MAINTENANCE_SECONDS:
                            last_maintenance = now
                            self.maintenance()
                except PortalError as exc:
                    logger.warning("scheduler round failed: %s", exc.log_detail or exc.message)
                    self.keeper.held = False
                except Exception:
                    logger.exception("scheduler round failed")
                wakeups.wait(POLL_SECONDS if self.keeper.held else LEASE_SECONDS / 3)
        finally:
            wakeups.close()
            hook_client.close()

    def run_round(self, hook_client: httpx.Client | None = None) -> None:
        """One round of the leader's work (tests call it directly)."""
        dispatch_once(self.launcher, self.settings)
        self.reaper.reap_once()
        if hook_client is not None:
            hooks.deliver_due(hook_client)
