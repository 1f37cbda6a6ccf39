"""Per-process caches of database rows that the database itself keeps exact.

The REST API answers most requests from a few rows that rarely change (who owns a token,
a user's role and groups, the first page of users), and reading them took most of each
request's time. An :class:`ExactCache` keeps such results in the process, and every
change to the tables it depends on empties it:

- in every portal process, through PostgreSQL: triggers on the watched tables (Alembic
  revision 0004) send ``NOTIFY aimms_portal_changes, '<table>'`` when a change commits,
  whoever made it (any portal process, the CLI, psql), and each process runs one
  :class:`ChangeFeed` thread that listens for them;
- in the process that made the change, at once: its units of work note which watched
  tables they wrote, and empty the caches when they commit, before the answer leaves.

It fails safe. A cache answers only while its process's feed is known to be listening:
connected, and its own heartbeat notification came back within
:data:`STALE_AFTER_SECONDS`. When the connection is lost every cache is emptied and
bypassed until the feed listens again. A result read from the database is kept only if
no change notification arrived since the read began (each cache has a generation,
raised by every invalidation), so a read that raced a change is never kept. On SQLite
(one process, but the CLI may change the file from another) nothing is cached.

What stays: a change committed by another process reaches this one when PostgreSQL
delivers the notification, normally well under a millisecond after the commit; before
each cached answer the feed's connection is checked for notifications that have
arrived but were not handled yet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction
from sqlalchemy.sql.elements import TextClause

from aimms_portal import db

logger = logging.getLogger(__name__)

#: The PostgreSQL channel the triggers notify; the payload is the table's name.
CHANNEL = "aimms_portal_changes"
#: How the feed's connection shows in ``pg_stat_activity``.
APPLICATION_NAME = "aimms_portal change feed"
#: The feed notifies itself this often to prove that notifications still arrive.
HEARTBEAT_SECONDS = 1.0
#: Caches are bypassed when the feed has heard nothing (not even its heartbeat) for
#: this long: a connection that died without a reset is noticed within this time.
STALE_AFTER_SECONDS = 3.0
#: How long a request waits for the feed's connection before it answers without the cache.
LOCK_WAIT_SECONDS = 0.02


@dataclass(frozen=True)
class Watch:
    """What a table's trigger reports: ``columns`` (``None``: all) of updates, and
    inserts if ``inserts``; deletes and truncates always."""

    columns: frozenset[str] | None = None
    inserts: bool = True


#: The watched tables, as the triggers of revision 0004 watch them. A new token or
#: log-on changes nothing a cache holds (unknown secrets are never cached), and the
#: last-used and last-seen times are bookkeeping: neither empties the caches.
WATCHED: dict[str, Watch] = {
    "users": Watch(),
    "groups": Watch(),
    "memberships": Watch(),
    "api_tokens": Watch(
        frozenset({"user_id", "token_hash", "scopes", "expires_at", "revoked_at"}), False
    ),
    "browser_sessions": Watch(
        frozenset({"user_id", "token_hash", "expires_at", "revoked_at"}), False
    ),
}

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_caches: list[ExactCache[Any, Any]] = []
_caches_lock = threading.Lock()


def _invalidate(tables: Iterable[str] | None) -> None:
    """Empty the caches that depend on any of ``tables`` (``None``: every cache)."""
    changed = None if tables is None else frozenset(tables)
    with _caches_lock:
        caches = list(_caches)
    for cache in caches:
        if changed is None or cache.tables & changed:
            cache.invalidate()


class ExactCache(Generic[K, V]):
    """A bounded cache of results read from ``tables``.

    Use it as: ``stamp = cache.stamp()`` before reading the database, then
    ``cache.put(key, value, stamp)``; ``cache.get(key)`` answers only while the change
    feed listens. Thread-safe; reads take no lock (a plain dictionary lookup, atomic in
    CPython), writers do. When full, the oldest entry goes: an order of use would cost
    every read a write. Values are shared between callers: never change one.
    """

    def __init__(self, name: str, *, tables: Iterable[str], maxsize: int) -> None:
        unknown = set(tables) - set(WATCHED)
        if unknown:
            raise ValueError(f"no change notifications for tables {sorted(unknown)}")
        self.name = name
        self.tables = frozenset(tables)
        self.maxsize = maxsize
        self._entries: dict[K, V] = {}
        self._lock = threading.Lock()
        self._generation = 0
        with _caches_lock:
            _caches.append(self)

    def get(self, key: K, *, caught_up: bool = False) -> V | None:
        """The cached value, or ``None`` if there is none or the cache may be stale.

        ``caught_up``: the caller's request has just had a cache answer (the feed caught
        up for it), so another catch-up is not needed: what arrived since was committed
        after the request began.
        """
        if not caught_up:
            feed = current_feed()
            if feed is None or not feed.catch_up():
                return None
        return self._entries.get(key)

    def stamp(self) -> int | None:
        """Take before reading what will be :meth:`put`; ``None`` when not caching."""
        feed = current_feed()
        if feed is None or not feed.usable():
            return None
        return self._generation

    def put(self, key: K, value: V, stamp: int | None) -> None:
        """Keep ``value`` unless something changed since ``stamp`` was taken."""
        if stamp is None:
            return
        feed = current_feed()
        with self._lock:
            if stamp == self._generation and feed is not None and feed.usable():
                if len(self._entries) >= self.maxsize and key not in self._entries:
                    del self._entries[next(iter(self._entries))]
                self._entries[key] = value

    def put_after_commit(self, session: Session, key: K, value: V, stamp: int | None) -> None:
        """:meth:`put` once ``session`` commits (what it read may rest on its own writes,
        and a unit of work that fails keeps nothing)."""
        if stamp is not None:
            session.info.setdefault(_PENDING_KEY, []).append((self, key, value, stamp))

    def swap(self, key: K, old: V, new: V) -> bool:
        """Replace the entry ``old`` of ``key`` with ``new``, which must hold the same
        data (e.g. other bookkeeping), if ``old`` is still there; whether it was."""
        with self._lock:
            if self._entries.get(key) is not old:
                return False
            self._entries[key] = new
            return True

    def discard(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def invalidate(self) -> None:
        """Forget everything, and refuse what reads that began before now bring."""
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


# -- the feed ---------------------------------------------------------------------------


class ChangeFeed:
    """Listens for the triggers' notifications in a daemon thread with its own connection.

    Reconnects with a growing pause after a failure; caches are bypassed meanwhile.
    """

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._lock = threading.Lock()
        self._conn: Any = None
        #: Per thread: the connection and a poll object on its socket.
        self._local = threading.local()
        self._alive_until = 0.0
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="change-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        self._wake_r.close()
        self._wake_w.close()

    def usable(self) -> bool:
        """Whether the feed listens and has heard from the database lately."""
        return self._conn is not None and time.monotonic() < self._alive_until

    def catch_up(self) -> bool:
        """Handle notifications that already arrived; whether caches may answer now.

        Called before every cached answer, so a notification waiting in the socket is
        never overtaken by a request, however busy the feed's thread is. Never raises:
        whatever goes wrong means "answer from the database".
        """
        try:
            conn = self._conn
            if conn is None or not self.usable():
                return False
            if not self._poller_for(conn).poll(0):
                return True  # nothing waiting (the common case: no lock, one system call)
            if not self._lock.acquire(timeout=LOCK_WAIT_SECONDS):
                return False  # the feed is busy with its connection
            try:
                if self._conn is not conn:
                    return False
                self._receive(conn)
                return self.usable()
            finally:
                self._lock.release()
        except Exception:  # the connection broke: the feed's thread reconnects
            return False

    def sync(self) -> bool:
        """Apply every change committed before this call to the caches (one round trip):
        the feed's own notification comes after all of them. Whether the feed listens."""
        with self._lock:
            conn = self._conn
            if conn is None:
                return False
            try:
                self._heartbeat(conn)
            except Exception:
                return False  # the feed's thread notices and reconnects
        return self.usable()

    def _poller_for(self, conn: Any) -> select.poll:
        # a poll object must not be used by two threads at once: one per thread
        local = self._local
        if getattr(local, "conn", None) is not conn:
            local.poller = select.poll()
            local.poller.register(conn.fileno(), select.POLLIN)
            local.conn = conn
        poller: select.poll = local.poller
        return poller

    def _connect(self) -> Any:
        import psycopg2

        url = make_url(self._url)
        options: dict[str, Any] = {
            "connect_timeout": 5,
            # a connection that dies without a reset is found within seconds, not hours
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
            "application_name": APPLICATION_NAME,
        }
        conn = psycopg2.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database,
            **(options | dict(url.query)),
        )
        conn.set_session(autocommit=True)
        with conn.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")
        return conn

    def _receive(self, conn: Any) -> None:
        # under self._lock
        conn.poll()
        tables = set()
        while conn.notifies:
            tables.add(conn.notifies.pop(0).payload)
        self._alive_until = time.monotonic() + STALE_AFTER_SECONDS
        tables.discard("")  # the heartbeat
        if tables:
            logger.debug("changed elsewhere: %s", ", ".join(sorted(tables)))
            _invalidate(tables)

    def _heartbeat(self, conn: Any) -> None:
        # under self._lock; the notification comes back with the answer
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        self._receive(conn)

    def _run(self) -> None:
        pause = 0.5
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as exc:  # the database may be down; try again soon
                logger.warning("change feed cannot connect: %s", type(exc).__name__)
                self._stop.wait(pause)
                pause = min(pause * 2, 10.0)
                continue
            pause = 0.5
            # whatever changed while nobody listened is unknown: start from empty caches
            _invalidate(None)
            with self._lock:
                self._conn = conn
                self._heartbeat(conn)
            logger.info("change feed listening; caches on")
            try:
                self._listen(conn)
            except Exception as exc:
                logger.warning("change feed lost its connection (%s); caches off", exc)
            finally:
                with self._lock:
                    self._conn = None
                    self._alive_until = 0.0
                _invalidate(None)
                with contextlib.suppress(Exception):  # closing a broken connection
                    conn.close()

    def _listen(self, conn: Any) -> None:
        next_beat = time.monotonic() + HEARTBEAT_SECONDS
        while not self._stop.is_set():
            timeout = max(0.0, next_beat - time.monotonic())
            readable, _, _ = select.select([conn, self._wake_r], [], [], timeout)
            with self._lock:
                if conn in readable:
                    self._receive(conn)
                if time.monotonic() >= next_beat:
                    self._heartbeat(conn)
                    next_beat = time.monotonic() + HEARTBEAT_SECONDS
            if not self.usable():
                raise ConnectionError("no heartbeat came back")


_feed: ChangeFeed | None = None
_feed_engine: Engine | None = None
_feed_lock = threading.Lock()


def current_feed() -> ChangeFeed | None:
    """The change feed of this process's database, started on first use; ``None`` on
    SQLite, where nothing is cached."""
    engine = db.get_engine()
    if engine is _feed_engine:
        return _feed
    return _start_feed(engine)


def _start_feed(engine: Engine) -> ChangeFeed | None:
    global _feed, _feed_engine
    with _feed_lock:
        if engine is not _feed_engine:
            _stop_feed()
            if engine.dialect.name == "postgresql":
                _feed = ChangeFeed(engine.url.render_as_string(hide_password=False))
                _feed.start()
            _feed_engine = engine
        return _feed


def _stop_feed() -> None:
    global _feed, _feed_engine
    feed, _feed, _feed_engine = _feed, None, None
    if feed is not None:
        feed.stop()
    _invalidate(None)


def stop_feed() -> None:
    """Stop listening and empty every cache (the engine is going away)."""
    with _feed_lock:
        _stop_feed()


db.on_engine_reset(stop_feed)


def _forget_feed_after_fork() -> None:
    # A forked child shares the parent's socket but not its thread: it must neither
    # read from nor close that connection, and starts a feed of its own on first use.
    # Locks another thread of the parent held at the fork would never be released.
    global _feed, _feed_engine, _feed_lock, _caches_lock
    _feed, _feed_engine = None, None
    _feed_lock, _caches_lock = threading.Lock(), threading.Lock()
    for cache in _caches:
        cache._lock = threading.Lock()
        cache.invalidate()


os.register_at_fork(after_in_child=_forget_feed_after_fork)


# -- changes made by this process ---------------------------------------------------------

_CHANGED_KEY = "aimms_changed_tables"
_PENDING_KEY = "aimms_pending_cache_puts"


def _note(session: Session, tables: Iterable[str]) -> None:
    session.info.setdefault(_CHANGED_KEY, set()).update(tables)


def _changed_columns(obj: Any) -> set[str]:
    from sqlalchemy import inspect

    state = inspect(obj)
    return {attr.key for attr in state.attrs if attr.history.has_changes()}


@event.listens_for(Session, "after_flush")
def _note_flushed(session: Session, _flush_context: UOWTransaction) -> None:
    # still before the flush is complete: new, dirty and deleted hold what was written
    tables = set()
    for obj in session.new:
        table = getattr(obj, "__tablename__", None)
        if table in WATCHED and WATCHED[table].inserts:
            tables.add(table)
    for obj in session.deleted:
        table = getattr(obj, "__tablename__", None)
        if table in WATCHED:
            tables.add(table)
    for obj in session.dirty:
        table = getattr(obj, "__tablename__", None)
        if table not in WATCHED:
            continue
        columns = WATCHED[table].columns
        changed = _changed_columns(obj)
        if changed if columns is None else changed & columns:
            tables.add(table)
    if tables:
        _note(session, tables)


@event.listens_for(Session, "do_orm_execute")
def _note_statement(state: ORMExecuteState) -> None:
    if state.is_select:
        return
    statement = state.statement
    if isinstance(statement, TextClause):
        if statement.text.lstrip()[:6].lower() != "select":
            _note(state.session, WATCHED)  # SQL we cannot see into: assume everything
        return
    table = getattr(getattr(statement, "table", None), "name", None)
    if table is None:
        _note(state.session, WATCHED)
    elif table in WATCHED:
        _note(state.session, [table])


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    tables = session.info.pop(_CHANGED_KEY, None)
    if tables:
        _invalidate(tables)
    # after the invalidation: a value read in a unit of work that changed its own
    # tables is refused by its stamp
    for cache, key, value, stamp in session.info.pop(_PENDING_KEY, ()):
        cache.put(key, value, stamp)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_CHANGED_KEY, None)
    session.info.pop(_PENDING_KEY, None)


def cached_or_loaded(cache: ExactCache[K, V], key: K, load: Callable[[], V]) -> V:
    """``cache``'s value for ``key``, or ``load()`` (kept when nothing changed meanwhile)."""
    value = cache.get(key)
    if value is None:
        stamp = cache.stamp()
        value = load()
        cache.put(key, value, stamp)
    return value
