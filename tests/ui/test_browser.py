"""The portal in Chromium: log-on, navigation by role, admin pages, tokens, log-off."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.ui.conftest import Portal
from tests.ui.helpers import TIMEOUT, create_user, get_json, log_on

pytestmark = pytest.mark.browser

expect.set_options(timeout=TIMEOUT)


def test_admin_creates_user_and_token_then_logs_off(page: Page, portal: Portal) -> None:
    page.set_default_timeout(TIMEOUT)

    # a guarded page sends an anonymous browser to the log-on page
    page.goto(f"{portal.url}/tokens")
    expect(page).to_have_url(re.compile(r"/login"))

    # a wrong password is refused with a plain message
    page.fill("#login-username", "admin")
    page.fill("#login-password", "not-the-password-1!")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_have_text("Wrong user name or password.")

    log_on(page, portal, portal.admin_username, portal.admin_password)
    nav = page.locator("#main-nav")
    for area in ("Apps", "Jobs", "Sessions", "Runtimes", "Admin", "Operator"):
        expect(nav.get_by_text(area, exact=True)).to_be_visible()
    page.goto(f"{portal.url}/operator")
    expect(page.locator("#not-built")).to_contain_text("not built yet")

    # create a user on the admin page
    page.goto(f"{portal.url}/admin/users")
    page.click("#user-new")
    page.fill("#new-username", "dora")
    page.fill("#new-password", "Dora-password-2024")
    page.click("#user-create")
    expect(page.locator("#user-row-dora")).to_be_visible()

    # the audit log shows it, loaded when the page opens
    page.goto(f"{portal.url}/admin/audit")
    expect(page.locator("#audit-table")).to_contain_text("user.create")
    expect(page.locator("#audit-table")).to_contain_text("dora")

    # create an API token; it is shown once and works against the REST API
    page.goto(f"{portal.url}/tokens")
    page.fill("#token-name", "browser test")
    page.click("#token-create")
    token_field = page.locator("#new-token")
    expect(token_field).to_have_value(re.compile(r"^apt_"))
    token = token_field.input_value()
    status, me = get_json(portal, "/me", token)
    assert status == 200 and me["username"] == "admin" and me["auth"] == "token"
    page.click("#token-done")
    expect(page.locator("#new-token")).to_have_count(0)
    expect(page.locator("#tokens-table")).to_contain_text("browser test")

    # log off: the token page is closed to this browser again
    page.click("#user-menu")
    page.click("#menu-logoff")
    expect(page).to_have_url(re.compile(r"/login"))
    page.goto(f"{portal.url}/tokens")
    expect(page).to_have_url(re.compile(r"/login"))
    expect(page.locator("#tokens-table")).to_have_count(0)
    # the REST API agrees: the browser's cookie no longer works
    assert page.request.get(f"{portal.url}/api/v1/me").status == 401

    # secrets never reach the portal's log
    log = portal.log.read_text()
    assert token not in log and token[4:] not in log
    assert portal.admin_password not in log and "Dora-password-2024" not in log


def test_plain_user_sees_no_admin_areas(page: Page, portal: Portal) -> None:
    page.set_default_timeout(TIMEOUT)
    create_user(portal, "erin", "Erin-password-2024")
    log_on(page, portal, "erin", "Erin-password-2024")
    nav = page.locator("#main-nav")
    expect(nav.get_by_text("Apps", exact=True)).to_be_visible()
    for area in ("Admin", "Operator", "Runtimes"):
        expect(nav.get_by_text(area, exact=True)).to_have_count(0)

    # typing an admin address is refused on the server: back to the start page
    page.goto(f"{portal.url}/admin/users")
    expect(page).to_have_url(re.compile(r"localhost:\d+/$"))
    expect(page.locator("#users-table")).to_have_count(0)
    assert page.request.get(f"{portal.url}/api/v1/users").status == 403


def test_admin_manages_roles_groups_and_access(page: Page, portal: Portal, browser) -> None:
    page.set_default_timeout(TIMEOUT)
    create_user(portal, "fred", "Fred-password-2024")

    # fred works in a browser of his own
    fred = browser.new_context().new_page()
    fred.set_default_timeout(TIMEOUT)
    log_on(fred, portal, "fred", "Fred-password-2024")

    log_on(page, portal, portal.admin_username, portal.admin_password)
    page.goto(f"{portal.url}/admin/users")
    row = page.locator("#user-row-fred")

    # role: user -> publisher, and the REST API sees it
    row.get_by_role("combobox").click()
    page.get_by_role("option", name="publisher", exact=True).click()
    expect(page.get_by_text("Role changed to publisher.")).to_be_visible()
    assert fred.request.get(f"{portal.url}/api/v1/me").json()["role"] == "publisher"

    # groups: create one, add and remove fred
    page.goto(f"{portal.url}/admin/groups")
    page.fill("#group-name", "planners")
    page.click("#group-create")
    page.fill("#member-username", "fred")
    page.click("#member-add")
    expect(page.locator("#members-table")).to_contain_text("fred")
    assert "planners" in fred.request.get(f"{portal.url}/api/v1/me").json()["groups"]
    page.locator("#members-table").get_by_role("button", name="Remove").click()
    expect(page.locator("#members-table")).not_to_contain_text("fred")

    # a name that is no user is refused with a plain message
    page.fill("#member-username", "nobody-here")
    page.click("#member-add")
    expect(page.get_by_text("There is no user called 'nobody-here'.")).to_be_visible()

    # reset password: fred's log-on ends, the new password works
    page.goto(f"{portal.url}/admin/users")
    row.get_by_role("button", name="Reset password").click()
    page.fill("#reset-password", "short")
    page.click("#reset-submit")
    expect(page.get_by_text("The password needs at least 12 characters")).to_be_visible()
    page.fill("#reset-password", "Fred-new-password-77")
    page.click("#reset-submit")
    expect(page.get_by_text("New password set for fred")).to_be_visible()
    fred.goto(f"{portal.url}/account")
    expect(fred).to_have_url(re.compile(r"/login"))
    log_on(fred, portal, "fred", "Fred-new-password-77")

    # disable: fred is out at his next click, and cannot log on again
    row.get_by_role("button", name="Disable").click()
    expect(row).to_contain_text("disabled")
    fred.goto(f"{portal.url}/tokens")
    expect(fred).to_have_url(re.compile(r"/login"))
    fred.fill("#login-username", "fred")
    fred.fill("#login-password", "Fred-new-password-77")
    fred.click("#login-submit")
    expect(fred.locator("#login-error")).to_have_text("This account is disabled.")

    # the audit page can be filtered to these changes
    page.goto(f"{portal.url}/admin/audit")
    page.locator("input[name=action]").fill("user.")
    page.click("#audit-filter")
    table = page.locator("#audit-table")
    for action in ("user.role", "user.password_reset", "user.disable"):
        expect(table).to_contain_text(action)
    expect(table).not_to_contain_text("auth.login")
    expect(page.get_by_text(re.compile(r"^1–\d+ of \d+$"))).to_be_visible()


def test_token_revoked_in_the_browser_stops_working(page: Page, portal: Portal) -> None:
    page.set_default_timeout(TIMEOUT)
    create_user(portal, "gina", "Gina-password-2024")
    log_on(page, portal, "gina", "Gina-password-2024")
    page.goto(f"{portal.url}/tokens")
    page.fill("#token-name", "to revoke")
    page.click("#token-create")
    expect(page.locator("#new-token")).to_have_value(re.compile(r"^apt_"))
    token = page.locator("#new-token").input_value()
    assert get_json(portal, "/me", token)[0] == 200

    page.locator("#tokens-table").get_by_role("button", name="Revoke").click()
    expect(page.get_by_text("Token revoked.")).to_be_visible()
    expect(page.get_by_text("You have no active tokens.")).to_be_visible()
    status, body = get_json(portal, "/me", token)
    assert status == 401 and body["error"]["code"] == "token_revoked"
