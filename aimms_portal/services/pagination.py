"""Pagination shared by every list the portal returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import func
from sqlmodel import Session, select
from sqlmodel.sql.expression import SelectOfScalar

from aimms_portal.errors import InvalidInput

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, with the total count of the whole list."""

    items: list[T]
    total: int
    limit: int
    offset: int


def paginate(
    session: Session,
    statement: SelectOfScalar[Any],
    *,
    limit: int,
    offset: int,
    count_with_page: bool = False,
) -> Page[Any]:
    """Run ``statement`` (already ordered) for one page and count all its rows.

    ``count_with_page``: one statement instead of two, the total riding on every row
    (``count(*) over ()``); only a page past the end needs the count of its own. For
    plain filtered selects only: with ``DISTINCT`` the window would count the rows
    before they are made distinct.

    Raises:
        InvalidInput: ``limit`` outside 1..500 or a negative ``offset``.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}.")
    if offset < 0:
        raise InvalidInput("offset must not be negative.")
    if count_with_page:
        # rows of (item, total): SQLAlchemy's execute, as sqlmodel's exec would keep
        # only the first column of what began as a select of one entity
        rows = session.execute(
            statement.add_columns(func.count().over()).limit(limit).offset(offset)
        ).all()
        if rows or offset == 0:
            total = rows[0][1] if rows else 0
            return Page(items=[row[0] for row in rows], total=total, limit=limit, offset=offset)
    total = session.exec(
        select(func.count()).select_from(statement.order_by(None).subquery())
    ).one()
    items = list(session.exec(statement.limit(limit).offset(offset)).all())
    return Page(items=items, total=total, limit=limit, offset=offset)
