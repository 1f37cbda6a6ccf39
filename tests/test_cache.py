"""The per-process caches that the database keeps exact (aimms_portal/cache.py).

Most tests need PostgreSQL (its triggers and LISTEN/NOTIFY are what keep the caches
exact); on SQLite the one test here checks that nothing is cached at all.
"""

from __future__ import annotations

import itertools
import os
import select
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.engine import make_url
from sqlmodel import select as sql_select

from aimms_portal import cache
from aimms_portal.db import session_scope
from aimms_portal.models import ApiToken, AuditEvent, Group, Membership, User, utcnow
from aimms_portal.services import accounts, tokens
from tests.caching import PATIENCE, caching, eventually, raw_connection, run_sql, settle
from tests.helpers import USE_SQLITE

__all__ = ["caching"]  # a fixture

_names = itertools.count()


def new_cache(*tables: str) -> cache.ExactCache[str, str]:
    return cache.ExactCache(f"test {next(_names)}", tables=tables, maxsize=10)


def fill(c: cache.ExactCache[str, str], key: str = "k", value: str = "v") -> None:
    """Put a value, as a reader would: stamp, read, put."""
    settle()
    stamp = c.stamp()
    assert stamp is not None, "the cache should be on"
    c.put(key, value, stamp)
    assert c.get(key) == value


@pytest.mark.sqlite
def test_nothing_is_cached_on_sqlite(db):
    if not USE_SQLITE:
        pytest.skip("the SQLite run checks this")
    c = new_cache("users")
    assert cache.current_feed() is None
    assert c.stamp() is None
    c.put("k", "v", 0)
    assert c.get("k") is None


def test_a_value_is_kept_until_this_process_changes_its_table(caching, make_user):
    c = new_cache("users")
    fill(c)
    user = make_user("ann")
    # the unit of work that changed the table emptied the cache when it committed
    assert c.get("k") is None
    fill(c)
    with session_scope() as session:
        row = session.get(User, user.id)
        assert row is not None
        row.full_name = "Ann Example"
        session.add(row)
    assert c.get("k") is None


def test_a_unit_of_work_that_rolls_back_changes_nothing(caching, make_user):
    c = new_cache("users")
    fill(c)
    with pytest.raises(RuntimeError), session_scope() as session:
        session.add(User(username="bob"))
        session.flush()
        raise RuntimeError("changed my mind")
    assert c.get("k") == "v"


def test_changes_to_other_tables_and_bookkeeping_keep_it(caching, make_user):
    ann = make_user("ann")
    with session_scope() as session:
        row, _ = tokens.create_token(session, actor=ann, name="ci", scopes=["read"])
    c = new_cache("users", "api_tokens", "groups")
    fill(c)
    with session_scope() as session:
        session.add(AuditEvent(action="test.event"))
        token = session.get(ApiToken, row.id)
        assert token is not None
        token.last_used_at = utcnow()  # the last use is bookkeeping, not a change
        session.add(token)
    assert c.get("k") == "v"
    with session_scope() as session:
        token = session.get(ApiToken, row.id)
        assert token is not None
        token.revoked_at = utcnow()
        session.add(token)
    assert c.get("k") is None


def test_bulk_statements_and_raw_sql_count_as_changes(caching, make_user):
    ann = make_user("ann")
    c = new_cache("api_tokens")
    fill(c)
    with session_scope() as session:
        accounts.end_all_access(session, user_id=ann.id or 0)  # UPDATE ... statements
    assert c.get("k") is None
    fill(c)
    with session_scope() as session:
        session.exec(sql_select(User))  # reads change nothing
    assert c.get("k") == "v"


def test_a_change_made_outside_the_portal_empties_it(caching, make_user, database_url):
    make_user("ann")
    c = new_cache("users")
    fill(c)
    with raw_connection(database_url) as conn:
        run_sql(conn, "UPDATE users SET full_name = 'changed in psql'")
    eventually(lambda: c.get("k") is None, "the trigger's notification emptied the cache")


def test_a_read_that_raced_a_change_is_not_kept(caching, make_user):
    c = new_cache("users")
    stamp = c.stamp()  # a reader starts ...
    make_user("ann")  # ... a change commits meanwhile ...
    c.put("k", "read before the change", stamp)  # ... and its result comes too late
    assert c.get("k") is None


def test_values_kept_after_commit_are_dropped_by_a_rollback(caching):
    c = new_cache("users")
    with pytest.raises(RuntimeError), session_scope() as session:
        c.put_after_commit(session, "k", "v", c.stamp())
        raise RuntimeError("the unit of work fails")
    assert c.get("k") is None
    with session_scope() as session:
        c.put_after_commit(session, "k", "v", c.stamp())
        assert c.get("k") is None  # not before the commit
    assert c.get("k") == "v"


def _feed_backend_pids(database_url: str) -> list[int]:
    with raw_connection(database_url) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
            (cache.APPLICATION_NAME, make_url(database_url).database),
        )
        return [pid for (pid,) in cursor.fetchall()]


def test_a_lost_feed_connection_drops_and_bypasses_the_cache(caching, database_url):
    c = new_cache("users")
    fill(c)
    [pid] = _feed_backend_pids(database_url)
    with raw_connection(database_url) as conn:
        run_sql(conn, "SELECT pg_terminate_backend(%s, 10000)", pid)  # until it is gone
    # the very next lookup notices the dead connection: nothing stale is answered
    assert c.get("k") is None
    eventually(lambda: _feed_backend_pids(database_url) not in ([], [pid]), "reconnected")
    eventually(lambda: cache.current_feed().usable(), "listening again")  # type: ignore[union-attr]
    assert c.get("k") is None  # what was cached before the loss is gone for good
    fill(c)


def test_a_feed_that_hears_nothing_turns_the_cache_off(caching, monkeypatch):
    c = new_cache("users")
    fill(c)
    later = time.monotonic() + cache.STALE_AFTER_SECONDS + 1
    monkeypatch.setattr(cache.time, "monotonic", lambda: later)
    assert c.get("k") is None
    assert c.stamp() is None


def test_threads_read_at_once_while_changes_arrive(caching, make_user, database_url):
    c = new_cache("users")
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                c.get("k")
                stamp = c.stamp()
                c.put("k", "v", stamp)
        except BaseException as exc:  # any exception fails the test
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for thread in readers:
        thread.start()
    try:
        with raw_connection(database_url) as conn:
            for n in range(50):
                run_sql(
                    conn,
                    "INSERT INTO groups (name, description, builtin, created_at) "
                    "VALUES (%s, '', false, now())",
                    f"g{n}",
                )
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert errors == []
    make_user("ann")
    assert c.get("k") is None


@pytest.fixture
def listener(caching: None, database_url: str) -> Iterator[Callable[[], set[str]]]:
    """A LISTEN connection of the test's own; calling it returns the tables notified
    since the last call (waiting a little for stragglers)."""
    with raw_connection(database_url) as conn:
        run_sql(conn, f"LISTEN {cache.CHANNEL}")

        def received() -> set[str]:
            # a marker of our own comes after everything committed before it
            run_sql(conn, "SELECT pg_notify(%s, 'marker')", cache.CHANNEL)
            tables: set[str] = set()
            deadline = time.monotonic() + PATIENCE
            while time.monotonic() < deadline:
                conn.poll()
                while conn.notifies:
                    payload = conn.notifies.pop(0).payload
                    if payload == "marker":
                        return tables - {""}
                    tables.add(payload)
                select.select([conn], [], [], 0.1)
            raise AssertionError("the marker notification never came")

        received()
        yield received


def test_the_triggers_report_what_the_caches_watch(listener, make_user, database_url):
    ann = make_user("ann")
    with session_scope() as session:
        row, _ = tokens.create_token(session, actor=ann, name="ci", scopes=["read"])
        group = Group(name="staff")
        session.add(group)
        session.flush()
        session.add(Membership(group_id=group.id or 0, user_id=ann.id or 0))
    assert listener() == {"users", "groups", "memberships"}  # a new token is no change

    with raw_connection(database_url) as conn:
        run_sql(conn, "UPDATE api_tokens SET last_used_at = now()")
        run_sql(conn, "UPDATE browser_sessions SET last_seen_at = now()")
        assert listener() == set()
        for table, column in [
            ("api_tokens", "revoked_at"),
            ("api_tokens", "expires_at"),
            ("api_tokens", "scopes"),
            ("browser_sessions", "revoked_at"),
            ("users", "role"),
            ("groups", "description"),
        ]:
            run_sql(conn, f"UPDATE {table} SET {column} = {column}")  # noqa: S608
            assert listener() == {table}, (table, column)
        run_sql(conn, "DELETE FROM memberships")
        assert listener() == {"memberships"}
    assert set(cache.WATCHED) == {
        "users",
        "groups",
        "memberships",
        "api_tokens",
        "browser_sessions",
    }


def test_a_forked_child_starts_from_empty_caches_and_a_feed_of_its_own(caching):
    c = new_cache("users")
    fill(c)
    parent_feed = cache.current_feed()
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        code = 1
        try:
            if c.get("k") is None and cache.current_feed() is not parent_feed:
                eventually(lambda: cache.current_feed().usable(), "child's feed up")  # type: ignore[union-attr]
                fill(c)
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert c.get("k") == "v"  # the parent's cache and feed go on
    assert cache.current_feed() is parent_feed and parent_feed.usable()
