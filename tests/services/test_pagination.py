"""Pagination shared by every list."""

from __future__ import annotations

import pytest
from sqlmodel import col, select

from aimms_portal.db import session_scope
from aimms_portal.errors import InvalidInput
from aimms_portal.models import Group
from aimms_portal.services.pagination import MAX_LIMIT, paginate

pytestmark = pytest.mark.sqlite


@pytest.fixture
def groups(db: None) -> list[str]:
    names = [f"g{n:02d}" for n in range(12)]
    with session_scope() as session:
        for name in names:
            session.add(Group(name=name))
    return sorted([*names, "everyone"])


@pytest.fixture(params=[False, True], ids=["two statements", "count with the page"])
def count_with_page(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def _page(limit: int, offset: int, count_with_page: bool = False):
    with session_scope() as session:
        return paginate(
            session,
            select(Group).order_by(col(Group.name)),
            limit=limit,
            offset=offset,
            count_with_page=count_with_page,
        )


def test_pages_cover_the_list_once_and_count_all_of_it(groups, count_with_page):
    seen = []
    for offset in range(0, 15, 5):
        page = _page(5, offset, count_with_page)
        assert (page.total, page.limit, page.offset) == (len(groups), 5, offset)
        seen += [g.name for g in page.items]
    assert seen == groups


def test_a_page_past_the_end_is_empty_but_counts(groups, count_with_page):
    page = _page(5, 100, count_with_page)
    assert page.items == [] and page.total == len(groups)


@pytest.mark.parametrize(("limit", "offset"), [(0, 0), (MAX_LIMIT + 1, 0), (5, -1)])
def test_limits_outside_the_bounds_are_refused(groups, limit, offset):
    with pytest.raises(InvalidInput):
        _page(limit, offset)


def test_an_empty_list_counts_nothing(db, count_with_page):
    with session_scope() as session:
        page = paginate(
            session,
            select(Group).where(col(Group.name) == "nobody"),
            limit=5,
            offset=0,
            count_with_page=count_with_page,
        )
    assert page.items == [] and page.total == 0
