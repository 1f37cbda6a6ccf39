"""Wake-ups between portal processes: PostgreSQL LISTEN/NOTIFY, with a local fallback.

Whoever changes the queue (a submit, a cancel, a finished job, an idle session) calls
:func:`announce` inside its unit of work; the wake-up is sent when that unit commits,
so no listener can look before the change is visible. Listeners never rely on it: every
waiter also polls on a timer, so a lost notification only delays.

- On PostgreSQL, ``announce`` runs ``pg_notify`` (delivered by the server at commit to
  every process that listens), and each portal process runs one :class:`Listener`
  thread with its own connection that turns notifications into local wake-ups.
- On SQLite (one process by design), the wake-up is delivered in process, after commit.

Channels: :data:`QUEUE` (the dispatcher should look at the queue) and
:func:`session_channel` (work or a stop for one session).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import threading
from collections import defaultdict
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

logger = logging.getLogger(__name__)

#: The one PostgreSQL channel; the payload names the local channel to wake.
PG_CHANNEL = "aimms_portal"
QUEUE = "queue"


def session_channel(session_id: int) -> str:
    return f"session:{session_id}"


class _Waiters:
    """Local wake-ups: threading events and asyncio events, by channel."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[str, set[threading.Event]] = defaultdict(set)
        self._loops: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = defaultdict(
            set
        )

    def wake(self, channel: str) -> None:
        with self._lock:
            threads = list(self._threads.get(channel, ()))
            loops = list(self._loops.get(channel, ()))
        for flag in threads:
            flag.set()
        for loop, async_flag in loops:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(async_flag.set)

    def add_thread(self, channel: str, flag: threading.Event) -> None:
        with self._lock:
            self._threads[channel].add(flag)

    def remove_thread(self, channel: str, flag: threading.Event) -> None:
        with self._lock:
            self._threads[channel].discard(flag)
            if not self._threads[channel]:
                del self._threads[channel]

    def add_async(
        self, channel: str, item: tuple[asyncio.AbstractEventLoop, asyncio.Event]
    ) -> None:
        with self._lock:
            self._loops[channel].add(item)

    def remove_async(
        self, channel: str, item: tuple[asyncio.AbstractEventLoop, asyncio.Event]
    ) -> None:
        with self._lock:
            self._loops[channel].discard(item)
            if not self._loops[channel]:
                del self._loops[channel]


_waiters = _Waiters()


def announce(session: Session, channel: str) -> None:
    """Wake every waiter on ``channel``, in every portal process, once ``session`` commits."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:c, :p)"), {"c": PG_CHANNEL, "p": channel})
    # also locally: the notifying process need not wait for its own listener's round trip
    pending: set[str] = session.info.setdefault("aimms_wakeups", set())
    if not pending:
        event.listen(session, "after_commit", _wake_after_commit, once=True)
        event.listen(session, "after_rollback", _forget_wakeups, once=True)
    pending.add(channel)


def _wake_after_commit(session: Session) -> None:
    for channel in session.info.pop("aimms_wakeups", set()):
        _waiters.wake(channel)
    if event.contains(session, "after_rollback", _forget_wakeups):
        event.remove(session, "after_rollback", _forget_wakeups)


def _forget_wakeups(session: Session) -> None:
    session.info.pop("aimms_wakeups", None)
    if event.contains(session, "after_commit", _wake_after_commit):
        event.remove(session, "after_commit", _wake_after_commit)


def wait(channel: str, timeout: float) -> bool:
    """Block up to ``timeout`` seconds for a wake-up on ``channel``; whether one came.

    Only wake-ups that arrive while waiting count: look at the database first, then wait.
    """
    flag = threading.Event()
    _waiters.add_thread(channel, flag)
    try:
        return flag.wait(timeout)
    finally:
        _waiters.remove_thread(channel, flag)


class Subscription:
    """A standing subscription to a channel for a thread that waits again and again.

    Wake-ups that arrive between two waits are kept (the flag stays set), unlike
    :func:`wait`.
    """

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._flag = threading.Event()
        _waiters.add_thread(channel, self._flag)

    def wait(self, timeout: float) -> bool:
        woken = self._flag.wait(timeout)
        self._flag.clear()
        return woken

    def close(self) -> None:
        _waiters.remove_thread(self.channel, self._flag)


async def wait_async(channel: str, timeout: float) -> bool:
    """:func:`wait` for coroutines: does not block the event loop."""
    item = (asyncio.get_running_loop(), asyncio.Event())
    _waiters.add_async(channel, item)
    try:
        await asyncio.wait_for(item[1].wait(), timeout)
        return True
    except TimeoutError:
        return False
    finally:
        _waiters.remove_async(channel, item)


def wake_locally(channel: str) -> None:
    """Wake this process's waiters on ``channel`` now (the listener uses this)."""
    _waiters.wake(channel)


class Listener:
    """Turns PostgreSQL notifications into local wake-ups; one per portal process.

    Runs in a daemon thread with a connection of its own. When the connection breaks
    it reconnects with a growing pause, waking every waiter of :data:`QUEUE` meanwhile
    (they then look at the database, as after any wake-up).
    """

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def wanted(database_url: str) -> bool:
        return make_url(database_url).get_backend_name() == "postgresql"

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pg-listener", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _connect(self) -> Any:
        import psycopg2

        url = make_url(self._url)
        conn = psycopg2.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database,
            connect_timeout=5,
            **dict(url.query),
        )
        conn.set_session(autocommit=True)
        with conn.cursor() as cursor:
            cursor.execute(f"LISTEN {PG_CHANNEL}")
        return conn

    def _run(self) -> None:
        pause = 0.5
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as exc:  # the database may be down; try again soon
                logger.warning("notification listener cannot connect: %s", type(exc).__name__)
                self._stop.wait(pause)
                pause = min(pause * 2, 10.0)
                continue
            pause = 0.5
            logger.debug("listening for notifications")
            try:
                while not self._stop.is_set():
                    readable, _, _ = select.select([conn], [], [], 1.0)
                    if not readable:
                        continue
                    conn.poll()
                    while conn.notifies:
                        _waiters.wake(conn.notifies.pop(0).payload)
            except Exception as exc:
                logger.warning("notification listener lost its connection: %s", exc)
                _waiters.wake(QUEUE)
            finally:
                with contextlib.suppress(Exception):  # closing a broken connection
                    conn.close()
