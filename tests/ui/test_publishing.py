"""Publishing in Chromium: signing keys, runtime and bundle uploads with progress bars,
grants (deny beats allow), roll back, refusals, and publishers' text shown literally."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from aimms_portal.client import PortalClientError
from aimms_portal.packages import pack_app
from tests.corpus import CORPUS_DIR, TRUSTED_KEY_FILE
from tests.publishing import APP_NAME, RUNTIME_NAME, app_bundle, runtime_package
from tests.ui.conftest import Portal
from tests.ui.helpers import TIMEOUT, admin_client, create_user, get_json, log_on, token_for

pytestmark = pytest.mark.browser

expect.set_options(timeout=TIMEOUT)

PUBLISHER = ("pia", "Pia-password-2024")
MEMBER = ("uma", "Uma-password-2024")
OUTSIDER = ("otto", "Otto-password-2024")
GROUP = "planners"


def _new_page(browser: Browser, portal: Portal, user: tuple[str, str]) -> Page:
    """A browser of its own, logged on as ``user``."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(TIMEOUT)
    log_on(page, portal, *user)
    return page


def _larger_bundle(folder: Path, version: str, megabytes: int) -> Path:
    """A valid bundle with a few megabytes of incompressible data, so it takes a while."""
    bundle = app_bundle(folder, version)
    source = folder / f"app-{APP_NAME}-{version}"
    (source / "data.bin").write_bytes(os.urandom(megabytes * 1024 * 1024))
    pack_app(source, bundle)
    return bundle


def _catalogue_names(portal: Portal, token: str) -> list[str]:
    status, body = get_json(portal, "/apps", token)
    assert status == 200, body
    return [app["name"] for app in body]


def _upload_runtime(page: Page, portal: Portal, folder: Path, version: str) -> None:
    package, signature = runtime_package(folder, version)
    sig_file = package.with_name(package.name + ".sig")
    sig_file.write_bytes(signature)
    page.goto(f"{portal.url}/runtimes")
    page.set_input_files("#runtime-package input[type=file]", str(package))
    page.set_input_files("#runtime-sig input[type=file]", str(sig_file))
    expect(page.locator("#runtime-sig")).to_contain_text(sig_file.name)
    page.click("#runtime-upload")
    expect(page.locator("#runtime-progress")).to_be_visible()
    expect(page.locator("#runtime-upload-done")).to_contain_text(
        f"Runtime {RUNTIME_NAME} {version} uploaded."
    )
    expect(page.locator("#runtime-progress-label")).to_have_text("100% sent")


def _publish(page: Page, portal: Portal, bundle: Path, version: str) -> None:
    page.goto(f"{portal.url}/publish")
    page.set_input_files("#publish-bundle input[type=file]", str(bundle))
    expect(page.locator("#publish-bundle")).to_contain_text(bundle.name)
    page.click("#publish-submit")
    expect(page.locator("#publish-progress")).to_be_visible()
    expect(page.locator("#publish-done")).to_contain_text(f"Published {APP_NAME} {version}.")
    expect(page.locator("#publish-progress-label")).to_have_text("100% sent")


def _add_grant(page: Page, kind: str, name: str, right: str, effect: str) -> None:
    page.locator("#grant-type").click()
    page.get_by_role("option", name=kind, exact=True).click()
    page.fill("#grant-name", name)
    page.locator("#grant-right").click()
    page.get_by_role("option", name=right, exact=True).click()
    page.locator("#grant-effect").click()
    page.get_by_role("option", name=effect, exact=True).click()
    page.click("#grant-add")
    expect(page.locator(f"#grant-row-{kind}-{name}-{right}")).to_contain_text(effect)


def test_publisher_uploads_grants_and_rolls_back(
    page: Page, portal: Portal, browser: Browser, tmp_path: Path
) -> None:
    page.set_default_timeout(TIMEOUT)
    create_user(portal, *PUBLISHER, role="publisher")
    create_user(portal, *MEMBER)
    create_user(portal, *OUTSIDER)
    with admin_client(portal) as admin:
        group = admin.request("POST", "/groups", json={"name": GROUP})
        users = admin.request("GET", "/users", params={"q": MEMBER[0]})["items"]
        member_id = next(u["id"] for u in users if u["username"] == MEMBER[0])
        admin.request("POST", f"/groups/{group['id']}/members", json={"user_id": member_id})

    # the admin trusts the publisher's signing key, pasted on the Signing keys page
    log_on(page, portal, portal.admin_username, portal.admin_password)
    page.goto(f"{portal.url}/admin/keys")
    page.fill("#key-name", "corpus test key")
    page.fill("#key-text", TRUSTED_KEY_FILE.read_text().strip())
    page.click("#key-add")
    expect(page.locator("#keys-table")).to_contain_text("corpus test key")
    expect(page.locator("#portal-key-pem")).to_have_value(re.compile("BEGIN PUBLIC KEY"))

    # the publisher uploads the runtime and two releases of the app, with progress bars
    pia = _new_page(browser, portal, PUBLISHER)
    _upload_runtime(pia, portal, tmp_path, "1.0")
    row = pia.locator(f"#runtime-row-{RUNTIME_NAME}-1\\.0")
    expect(row).to_contain_text("corpus test key")
    _publish(pia, portal, app_bundle(tmp_path, "1.0"), "1.0")
    _publish(pia, portal, _larger_bundle(tmp_path, "2.0", megabytes=8), "2.0")
    pia.click("#publish-app-link")
    expect(pia).to_have_url(re.compile(f"/apps/{APP_NAME}$"))
    expect(pia.locator("#release-row-2\\.0 .latest-badge")).to_be_visible()

    # she lets the planners group see and run the app
    _add_grant(pia, "group", GROUP, "read", "allow")
    _add_grant(pia, "group", GROUP, "run", "allow")

    # a member of the group sees it, in the catalogue and through REST; an outsider does not
    uma = _new_page(browser, portal, MEMBER)
    expect(uma.locator(f"#app-card-{APP_NAME}")).to_contain_text("Launch")
    uma.goto(f"{portal.url}/apps")  # the catalogue's other address
    expect(uma).to_have_url(f"{portal.url}/")
    expect(uma.locator(f"#app-card-{APP_NAME}")).to_contain_text("Launch")
    otto = _new_page(browser, portal, OUTSIDER)
    expect(otto.locator("#catalogue-empty")).to_be_visible()
    expect(otto.locator(f"#app-card-{APP_NAME}")).to_have_count(0)
    uma_token = token_for(portal, *MEMBER)
    otto_token = token_for(portal, *OUTSIDER)
    assert APP_NAME in _catalogue_names(portal, uma_token)
    assert APP_NAME not in _catalogue_names(portal, otto_token)
    otto.goto(f"{portal.url}/launch/{APP_NAME}")
    expect(otto.locator("#launch-refused")).to_have_text("No such app or release.")
    uma.goto(f"{portal.url}/launch/{APP_NAME}")
    expect(uma.locator("#launch-version")).to_have_text("2.0")
    expect(uma.locator("#launch-start")).to_be_visible()

    # deny beats allow: a deny for uma herself hides the app from her again
    _add_grant(pia, "user", MEMBER[0], "read", "deny")
    uma.goto(f"{portal.url}/")
    expect(uma.locator("#catalogue-empty")).to_be_visible()
    expect(uma.locator(f"#app-card-{APP_NAME}")).to_have_count(0)
    assert APP_NAME not in _catalogue_names(portal, uma_token)
    pia.fill("#explain-username", MEMBER[0])
    pia.click("#explain-submit")
    expect(pia.locator("#explain-read")).to_contain_text("no")
    expect(pia.locator("#explain-read")).to_contain_text("deny")
    # run needs read: the group's allow no longer counts for her
    expect(pia.locator("#explain-run")).to_contain_text("no read right")

    # read without run: otto sees the app but may not launch it
    _add_grant(pia, "user", OUTSIDER[0], "read", "allow")
    otto.goto(f"{portal.url}/")
    expect(otto.locator(f"#app-card-{APP_NAME}")).to_contain_text("not run it")
    otto.goto(f"{portal.url}/launch/{APP_NAME}/1.0")
    expect(otto.locator("#launch-refused")).to_have_text("You may not run this app.")

    # roll back: latest moves to 1.0, in the UI and through REST
    pia.locator("#release-row-1\\.0").get_by_role("button", name="Make latest").click()
    expect(pia.get_by_text("1.0 is the latest release now.")).to_be_visible()
    expect(pia.locator("#release-row-1\\.0 .latest-badge")).to_be_visible()
    expect(pia.locator("#release-row-2\\.0 .latest-badge")).to_have_count(0)
    pia_token = token_for(portal, *PUBLISHER)
    status, releases = get_json(portal, f"/apps/{APP_NAME}/releases", pia_token)
    assert status == 200
    assert [r["version"] for r in releases if r["latest"]] == ["1.0"]
    status, app = get_json(portal, f"/apps/{APP_NAME}", otto_token)
    assert status == 200 and app["latest_version"] == "1.0"

    # hiding 2.0 keeps it from readers who cannot write
    pia.locator("#release-row-2\\.0").get_by_role("button", name="Hide").click()
    expect(pia.locator("#release-row-2\\.0 .hidden-badge")).to_be_visible()
    status, releases = get_json(portal, f"/apps/{APP_NAME}/releases", otto_token)
    assert [r["version"] for r in releases] == ["1.0"]
    otto.goto(f"{portal.url}/apps/{APP_NAME}")
    expect(otto.locator("#release-row-1\\.0")).to_be_visible()
    expect(otto.locator("#release-row-2\\.0")).to_have_count(0)
    expect(otto.get_by_role("button", name="Make latest")).to_have_count(0)
    expect(otto.locator("#grants-table")).to_have_count(0)

    # a runtime that releases use cannot be deleted; the page says why
    pia.goto(f"{portal.url}/runtimes")
    row.get_by_role("button", name="Delete").click()
    pia.click("#runtime-delete-confirm")
    expect(pia.get_by_text(f"is used by {APP_NAME} 1.0")).to_be_visible()
    expect(row).to_be_visible()

    # nothing was ever kept in Reflex's public upload folder
    public = portal.project / "uploaded_files"
    assert not public.exists() or not any(public.rglob("*"))


def _ensure_runtime(portal: Portal, folder: Path) -> None:
    """The test key trusted and corpus-runtime 1.0 uploaded (over REST), once per portal."""
    with admin_client(portal) as admin:
        try:
            admin.trust_signing_key("corpus key", TRUSTED_KEY_FILE.read_text().strip())
        except PortalClientError as exc:
            assert exc.code in ("key_trusted", "name_taken"), exc
        package, signature = runtime_package(folder, "1.0")
        try:
            admin.upload_runtime(package, signature)
        except PortalClientError as exc:
            assert exc.code == "duplicate_version", exc


def test_upload_pages_say_in_plain_words_what_is_wrong(
    page: Page, portal: Portal, tmp_path: Path
) -> None:
    page.set_default_timeout(TIMEOUT)
    _ensure_runtime(portal, tmp_path)
    log_on(page, portal, portal.admin_username, portal.admin_password)

    # a bundle's manifest problems are listed one by one
    page.goto(f"{portal.url}/publish")
    page.set_input_files(
        "#publish-bundle input[type=file]", str(CORPUS_DIR / "bundle_manifest_wrong_types.zip")
    )
    page.click("#publish-submit")
    error = page.locator("#publish-error")
    expect(error).to_contain_text("app.json has these problems:")
    expect(error).to_contain_text("'procedures.solve.command' must be a list of strings")
    assert error.locator("li").count() >= 3

    # a package signed by a key nobody trusts is refused before it is stored
    page.goto(f"{portal.url}/runtimes")
    package = CORPUS_DIR / "runtime_untrusted_key.zip"
    page.set_input_files("#runtime-package input[type=file]", str(package))
    page.set_input_files("#runtime-sig input[type=file]", f"{package}.sig")
    expect(page.locator("#runtime-sig")).to_contain_text("runtime_untrusted_key.zip.sig")
    page.click("#runtime-upload")
    expect(page.locator("#runtime-upload-error")).to_contain_text("does not trust")

    # a signed package with a broken manifest: every problem of runtime.json
    package = CORPUS_DIR / "runtime_manifest_missing_fields.zip"
    page.set_input_files("#runtime-package input[type=file]", str(package))
    page.set_input_files("#runtime-sig input[type=file]", f"{package}.sig")
    expect(page.locator("#runtime-sig")).to_contain_text("runtime_manifest_missing_fields")
    page.click("#runtime-upload")
    error = page.locator("#runtime-upload-error")
    expect(error).to_contain_text("runtime.json has these problems:")
    expect(error).to_contain_text("'version' is missing")
    expect(page.locator("#runtimes-table")).not_to_contain_text("1.1")


def test_html_in_titles_and_descriptions_is_shown_as_text(
    page: Page, portal: Portal, tmp_path: Path
) -> None:
    page.set_default_timeout(TIMEOUT)
    _ensure_runtime(portal, tmp_path)
    title = "<script>window.__pwned = 1</script>"
    description = '<img src=x onerror="window.__pwned = 2"><b>bold?</b>'
    bundle = app_bundle(
        tmp_path, "1.0", name="html-app", title=title, description=description, category="<i>"
    )
    with admin_client(portal) as admin:
        admin.publish_bundle(bundle)

    log_on(page, portal, portal.admin_username, portal.admin_password)
    card = page.locator("#app-card-html-app")
    expect(card.locator(".app-title")).to_have_text(title)
    expect(card.locator(".app-description")).to_have_text(description)
    expect(card).to_contain_text("<i>")
    assert card.locator("script, img[src=x], b, i").count() == 0

    page.goto(f"{portal.url}/apps/html-app")
    expect(page.locator("#app-title")).to_have_text(title)
    expect(page.locator("#app-description")).to_have_text(description)
    assert page.locator("#app-description img, #app-description b").count() == 0
    assert page.evaluate("window.__pwned") is None
