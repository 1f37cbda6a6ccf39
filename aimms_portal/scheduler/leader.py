"""Leader election through a lease row, so that work that must run once runs once.

Every portal process runs a scheduler; only the holder of the ``scheduler`` lease
dispatches and reaps. The holder renews the lease well before it runs out; a process
that dies simply stops renewing, and another takes over once the lease has expired.
The take-over is one conditional ``UPDATE`` (``holder = me OR expired``), which the
database serializes, so two processes can never both believe they won.

Processes compare their own clocks with ``expires_at``: keep the clocks of the portal
machines in sync (NTP); a skew shortens or lengthens the hand-over by as much.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from aimms_portal.db import session_scope
from aimms_portal.models import LeaderLease, utcnow

logger = logging.getLogger(__name__)


def holder_name() -> str:
    """A name for this process that no other process (here or elsewhere) shares."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaderLeaseKeeper:
    """Tries to take or keep the lease ``name`` for ``holder``.

    Call :meth:`try_hold` at least every ``ttl / 3``; it answers whether this process
    holds the lease until at least ``ttl`` from now.
    """

    def __init__(self, name: str, holder: str, ttl: timedelta) -> None:
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.held = False

    def try_hold(self) -> bool:
        now = utcnow()
        with session_scope() as session:
            result = session.execute(
                update(LeaderLease)
                .where(
                    LeaderLease.name == self.name,  # type: ignore[arg-type]
                    (LeaderLease.holder == self.holder) | (LeaderLease.expires_at < now),  # type: ignore[arg-type]
                )
                .values(holder=self.holder, expires_at=now + self.ttl)
            )
            won = result.rowcount == 1  # type: ignore[attr-defined]
            missing = (
                not won
                and session.exec(
                    select(LeaderLease.id).where(LeaderLease.name == self.name)
                ).first()
                is None
            )
        if missing:  # in a unit of work of its own, once the first one is over
            won = self._create(now)
        if won != self.held:
            logger.info("%s the %s lease (%s)", "took" if won else "lost", self.name, self.holder)
        self.held = won
        return won

    def _create(self, now: datetime) -> bool:
        try:
            with session_scope() as session:
                session.add(
                    LeaderLease(name=self.name, holder=self.holder, expires_at=now + self.ttl)
                )
            return True
        except IntegrityError:  # another process created it first
            return False

    def release(self) -> None:
        """Give the lease up at once (a clean shutdown), so another takes over quickly."""
        if not self.held:
            return
        with session_scope() as session:
            session.execute(
                update(LeaderLease)
                .where(
                    LeaderLease.name == self.name,  # type: ignore[arg-type]
                    LeaderLease.holder == self.holder,  # type: ignore[arg-type]
                )
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        self.held = False
        logger.info("released the %s lease", self.name)
