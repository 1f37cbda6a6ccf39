"""The database engine and units of work.

Services receive a :class:`sqlmodel.Session` from :func:`session_scope`; nothing else
opens sessions. A connection problem surfaces as :class:`~aimms_portal.errors.Unavailable`
so every caller can answer 503 and the pool heals by itself once the database is back
(``pool_pre_ping`` replaces dead connections).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool
from sqlmodel import Session, create_engine

from aimms_portal.config import get_settings
from aimms_portal.errors import Unavailable

logger = logging.getLogger(__name__)

#: The repository (or installed source tree) that holds `alembic/` and `rxconfig.py`.
REPO_ROOT = Path(__file__).resolve().parent.parent


def make_engine(url: str, *, pooled: bool = True) -> Engine:
    """Build an engine for ``url`` with the settings the portal relies on.

    ``pooled=False`` opens a new connection each time (migrations, one-shot commands).
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if not pooled:
        kwargs["poolclass"] = NullPool
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Threads of one process share the file; SQLite serializes writers itself.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["connect_args"] = {"connect_timeout": 5}
        if pooled:
            # 40 in all, as many as AnyIO's worker threads (FastAPI's synchronous routes);
            # 20 stay open, so a burst no longer opens and closes connections (6 % of the
            # samples of an earlier profile were in connect). The pre-ping stays: it is a
            # round trip per checkout, but a request never fails on a connection that a
            # database restart left dead, and the hot reads no longer check one out.
            kwargs.update(pool_size=20, max_overflow=20, pool_timeout=10)
    engine = create_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # foreign keys are off by default in SQLite; WAL lets readers work beside a writer
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
    # the driver would open transactions lazily and as readers; we begin them ourselves
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: Any) -> None:
    # Every unit of work takes SQLite's write lock when it begins, so units of work run
    # one after another: the serialized equivalent of PostgreSQL's row locks (claiming a
    # job, fencing a stale attempt). A reader that later wants to write can then never
    # fail with "database is locked" half-way; units of work are short, so the wait is too.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


@functools.cache
def get_engine() -> Engine:
    """The engine of this process, made from the settings on first use."""
    url = get_settings().resolved_database_url
    logger.info("database: %s", make_url(url).render_as_string(hide_password=True))
    return make_engine(url)


_reset_hooks: list[Callable[[], None]] = []


def on_engine_reset(hook: Callable[[], None]) -> None:
    """Call ``hook`` whenever :func:`reset_engine` forgets the engine (before it goes)."""
    _reset_hooks.append(hook)


def reset_engine() -> None:
    """Forget the engine (tests switch databases between runs)."""
    for hook in _reset_hooks:
        hook()
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()


@contextlib.contextmanager
def session_scope() -> Iterator[Session]:
    """One unit of work: committed when the block ends, rolled back if it raises.

    Raises:
        Unavailable: the database cannot be reached.
    """
    try:
        with Session(get_engine(), expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
    except OperationalError as exc:
        raise Unavailable(
            "The database cannot be reached right now; try again shortly.",
            log_detail=str(exc.orig),
        ) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable(
                "The connection to the database was lost; try again shortly.",
                log_detail=str(exc.orig),
            ) from exc
        raise


def is_sqlite(session: Session) -> bool:
    """Whether the session talks to SQLite (some statements differ)."""
    bind = session.get_bind()
    return bind.dialect.name == "sqlite"


def upgrade_database(url: str | None = None) -> None:
    """Run every Alembic migration up to ``head`` on ``url`` (default: the settings')."""
    from alembic.config import Config

    from alembic import command

    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "alembic"))
    url = url or get_settings().resolved_database_url
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")
