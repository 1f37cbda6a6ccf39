"""The transport app's WebUI in Chromium, below a session's base path: edit, solve, read."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.examples.conftest import WebUI

pytestmark = pytest.mark.browser

TIMEOUT = 20_000


def test_edit_a_demand_solve_and_see_the_cost_change(page: Page, webui: WebUI):
    page.goto(webui.url)
    page.get_by_role("button", name="Solve").click()
    expect(page.locator("#objective")).to_have_text("29,580", timeout=TIMEOUT)
    # one highlighted cell in the cost matrix per route in use
    expect(page.locator("#costs td.used")).to_have_count(6)
    vienna = page.get_by_label("Cost from Katowice to Vienna").locator("..")
    expect(vienna.locator(".flow")).to_have_text("ships 150")

    # Paris takes 60 units less, each worth its shadow price of 25: 29,580 - 1,500
    # (the independent solver of test_transport.py finds 28,080 too)
    page.get_by_label("Demand of Paris").fill("200")
    expect(page.locator("#stale")).to_be_visible()
    expect(vienna.locator(".flow")).to_be_hidden()
    page.get_by_role("button", name="Solve").click()

    expect(page.locator("#objective")).to_have_text("28,080", timeout=TIMEOUT)
    expect(page.locator("#stale")).to_be_hidden()
    expect(vienna.locator(".flow")).to_be_visible()
    expect(page.locator("#status")).to_have_text("Optimal plan found: total cost 28,080")
    with webui.client() as client:
        assert client.get("api/case").json()["customers"][0] == {"name": "Paris", "demand": 200}


def test_names_typed_in_the_page_stay_text(page: Page, webui: WebUI):
    page.goto(webui.url)
    page.get_by_role("button", name="+ Add supplier").click()
    page.keyboard.type("<img src=x onerror=alert(1)>")
    page.get_by_role("button", name="Solve").click()

    # the new supplier has no costs yet: the server names it, and the page shows the name
    problems = page.locator("#problems")
    expect(problems).to_contain_text(
        "The cost from <img src=x onerror=alert(1)> to Paris is missing.", timeout=TIMEOUT
    )
    expect(page.locator("#costs tbody th").last).to_have_text("<img src=x onerror=alert(1)>")
    expect(page.locator("img[src=x]")).to_have_count(0)
