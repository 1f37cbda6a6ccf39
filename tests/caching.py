"""What tests of the per-process caches share: a listening change feed, connections
of their own to the test database, patience for what happens in the background."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from aimms_portal import cache
from tests.helpers import USE_SQLITE

#: How long a test waits for something that happens in the background (a notification,
#: a reconnect); a bound, not a measurement.
PATIENCE = 15.0


def eventually(condition: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {PATIENCE} s: {what}")
        time.sleep(0.01)


def settle() -> None:
    """Let the feed apply the notifications of what the test changed so far (a change
    made here empties the caches at commit, and again when its notification comes)."""
    feed = cache.current_feed()
    assert feed is not None and feed.sync()


@pytest.fixture
def caching(db: None, database_url: str) -> Iterator[None]:
    """The change feed of this process listens (PostgreSQL only)."""
    if USE_SQLITE:
        pytest.skip("nothing is cached on SQLite")
    cache.current_feed()  # started on first use
    eventually(lambda: (feed := cache.current_feed()) is not None and feed.usable(), "feed up")
    yield


@contextmanager
def raw_connection(database_url: str, *, silent: bool = False) -> Iterator[Any]:
    """A psycopg2 connection of its own, outside the portal (like psql or the CLI).

    ``silent``: triggers do not fire (replica mode), so changes made here send no
    notification: a way to see whether an answer came from a cache.
    """
    url = make_url(database_url)
    conn = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)
    conn.autocommit = True
    if silent:
        with conn.cursor() as cursor:
            cursor.execute("SET session_replication_role = replica")
    try:
        yield conn
    finally:
        conn.close()


def run_sql(conn: Any, statement: str, *args: Any) -> None:
    with conn.cursor() as cursor:
        cursor.execute(statement, args)
