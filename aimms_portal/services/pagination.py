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
    session: Session, statement: SelectOfScalar[Any], *, limit: int, offset: int
) -> Page[Any]:
    """Run ``statement`` (already ordered) for one page and count all its rows.

    Raises:
        InvalidInput: ``limit`` outside 1..500 or a negative ``offset``.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}.")
    if offset < 0:
        raise InvalidInput("offset must not be negative.")
    total = session.exec(
        select(func.count()).select_from(statement.order_by(None).subquery())
    ).one()
    items = list(session.exec(statement.limit(limit).offset(offset)).all())
    return Page(items=items, total=total, limit=limit, offset=offset)
