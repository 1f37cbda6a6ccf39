"""Apps and releases through the REST API: publish, latest, hide, roll back, delete,
runtime resolution, icons, launch targets, the catalogue, and encrypted bundles.

Who may call each route is in test_authorization.py, hostile bundles in test_corpus.py,
how grants decide in test_access_rights.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import func, select

from aimms_portal.db import session_scope
from aimms_portal.models import App, AppGrant, Release, Role, RuntimeVersion
from aimms_portal.packages import decrypt_file, encrypt_file, generate_portal_keypair, pack_app
from aimms_portal.services import portal_keys
from tests import publishing
from tests.api.support import API, CLIENT_IP, audit_events, error, quick_user
from tests.corpus import CORPUS_DIR
from tests.helpers import bearer

pytestmark = pytest.mark.sqlite

APP = publishing.APP_NAME
SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16">'
    b'<rect width="16" height="16" fill="teal"/></svg>'
)


class Portal:
    """A portal with a trusted key, runtime corpus-runtime 1.0, a publisher (pete) and
    two plain users: bob, who gets rights in the tests, and ann, who gets none."""

    def __init__(self, client: Any, folder: Path) -> None:
        self.client = client
        self.folder = folder
        self.root_user = quick_user("root", Role.admin.value)
        self.pete_user = quick_user("pete", Role.publisher.value)
        self.bob_user = quick_user("bob")
        self.ann_user = quick_user("ann")
        self.pete = bearer(self.pete_user)
        self.bob = bearer(self.bob_user)
        self.ann = bearer(self.ann_user)
        publishing.trust_test_key(self.root_user)
        self.add_runtime("1.0")

    def add_runtime(self, version: str) -> None:
        publishing.upload_runtime(self.pete_user, self.folder, version)

    def publish(self, bundle: Path, headers: dict[str, str] | None = None, **params: Any) -> Any:
        return self.client.post(
            f"{API}/apps", content=bundle.read_bytes(), headers=headers or self.pete, params=params
        )

    def published(self, version: str, *, hide_previous: bool = False, **fields: Any) -> dict:
        bundle = publishing.app_bundle(self.folder, version, **fields)
        response = self.publish(bundle, hide_previous=hide_previous)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def grant(self, right: str, to: str = "bob", effect: str = "allow", app: str = APP) -> None:
        response = self.client.post(
            f"{API}/apps/{app}/access",
            json={"principal_type": "user", "principal_name": to, "right": right, "effect": effect},
            headers=self.pete,
        )
        assert response.status_code == 201, response.text

    def releases(self, headers: dict[str, str], app: str = APP) -> list[dict]:
        response = self.client.get(f"{API}/apps/{app}/releases", headers=headers)
        assert response.status_code == 200, response.text
        return list(response.json())

    def app(self, headers: dict[str, str] | None = None, app: str = APP) -> dict:
        response = self.client.get(f"{API}/apps/{app}", headers=headers or self.pete)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def stored(self) -> set[str]:
        """Keys of every object in the storage folder."""
        root = self.folder / "storage"
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def portal(client: Any, settings_env: Path) -> Portal:
    return Portal(client, settings_env)


def bundle_with(folder: Path, version: str, *, files: dict[str, bytes], **fields: Any) -> Path:
    """A bundle of corpus-app like the valid one, with ``files`` added or replaced and
    manifest ``fields`` changed (a field set to None is left out)."""
    source = folder / f"custom-{version}"
    shutil.rmtree(source, ignore_errors=True)
    with zipfile.ZipFile(CORPUS_DIR / "bundle_valid.zip") as zipped:
        zipped.extractall(source)  # noqa: S202  (the corpus's own valid file)
    manifest = json.loads((source / "app.json").read_text())
    manifest.update(version=version, **fields)
    manifest = {k: v for k, v in manifest.items() if v is not None}
    (source / "app.json").write_text(json.dumps(manifest))
    for name, data in files.items():
        (source / name).write_bytes(data)
    bundle = folder / f"custom-{version}.zip"
    pack_app(source, bundle)
    return bundle


def release_row(app: str, version: str) -> Release:
    with session_scope() as session:
        return session.exec(
            select(Release)
            .join(App, App.id == Release.app_id)  # type: ignore[arg-type]
            .where(App.name == app, Release.version == version)
        ).one()


def row_counts() -> dict[str, int]:
    with session_scope() as session:
        return {
            table.__tablename__: session.exec(select(func.count()).select_from(table)).one()
            for table in (App, Release, AppGrant, RuntimeVersion)
        }


# -- publishing and releases -------------------------------------------------------------


def test_publishing_creates_the_app_with_the_publishers_grants(portal):
    bundle = publishing.app_bundle(portal.folder, "1.0")

    response = portal.publish(bundle)

    assert response.status_code == 201, response.text
    release = response.json()
    assert {k: v for k, v in release.items() if k != "created_at"} == {
        "version": "1.0",
        "latest": True,
        "hidden": False,
        "runtime": "corpus-runtime 1.0",
        "runtime_spec": ">=1.0",
        "encrypted": False,
        "bundle_sha256": hashlib.sha256(bundle.read_bytes()).hexdigest(),
        "bundle_size": bundle.stat().st_size,
        "webui": True,
        "procedures": ["solve"],
        "published_by": "pete",
    }
    assert portal.app() == {
        "name": APP,
        "title": "Corpus app",
        "description": "The app of the aimms_portal test corpus.",
        "category": "Tests",
        "icon_url": f"{API}/apps/{APP}/icon",
        "latest_version": "1.0",
        "rights": {"read": True, "write": True, "run": True},
    }
    grants = portal.client.get(f"{API}/apps/{APP}/access", headers=portal.pete).json()
    assert [
        (g["principal_type"], g["principal_name"], g["right"], g["effect"]) for g in grants
    ] == [
        ("user", "pete", "read", "allow"),
        ("user", "pete", "write", "allow"),
        ("user", "pete", "run", "allow"),
    ]
    [event] = audit_events(action="release.publish")
    assert (event.actor_name, event.target_name, event.source_ip) == (
        "pete",
        f"{APP} 1.0",
        CLIENT_IP,
    )
    # the stored bundle is the uploaded file, byte for byte
    stored = portal.folder / "storage" / release_row(APP, "1.0").bundle_key
    assert stored.read_bytes() == bundle.read_bytes()


def test_latest_moves_to_each_new_release(portal):
    for version in ("1.0", "1.1", "2.0", "0.5"):
        portal.published(version)
        assert portal.app()["latest_version"] == version

    releases = portal.releases(portal.pete)
    # newest version first; the previous releases stay visible
    assert [(r["version"], r["latest"], r["hidden"]) for r in releases] == [
        ("2.0", False, False),
        ("1.1", False, False),
        ("1.0", False, False),
        ("0.5", True, False),
    ]


def test_the_same_version_twice_is_a_409_and_stores_nothing(portal):
    portal.published("1.0")
    before, rows = portal.stored(), row_counts()

    response = portal.publish(publishing.app_bundle(portal.folder / "again", "1.0", title="B"))

    assert "published already" in error(response, 409, "duplicate_version")
    assert (portal.stored(), row_counts()) == (before, rows)
    assert portal.app()["title"] == "Corpus app"


def test_hide_previous_hides_the_release_that_was_latest(portal):
    portal.published("1.0")
    portal.grant("read")

    new = portal.published("2.0", hide_previous=True)

    assert new["latest"] and not new["hidden"]
    assert [(r["version"], r["hidden"]) for r in portal.releases(portal.pete)] == [
        ("2.0", False),
        ("1.0", True),
    ]
    # hidden releases are for writers (and admins) only
    assert [r["version"] for r in portal.releases(portal.bob)] == ["2.0"]
    root = bearer(portal.root_user)
    assert [r["version"] for r in portal.releases(root)] == ["2.0", "1.0"]
    [event] = audit_events(action="release.publish", target_name=f"{APP} 2.0")
    assert "hidden_previous=1.0" in event.detail


def test_rolling_back_moves_latest_and_unhides(portal):
    portal.published("1.0", title="First")
    portal.published("2.0", hide_previous=True, title="Second", category="Other")
    portal.grant("read")

    response = portal.client.put(
        f"{API}/apps/{APP}/latest", json={"version": "1.0"}, headers=portal.pete
    )

    assert response.status_code == 200, response.text
    assert (response.json()["version"], response.json()["latest"]) == ("1.0", True)
    assert not response.json()["hidden"]
    app = portal.app(portal.bob)
    # the catalogue shows what the latest release says
    assert (app["latest_version"], app["title"], app["category"]) == ("1.0", "First", "Tests")
    assert [(r["version"], r["latest"]) for r in portal.releases(portal.bob)] == [
        ("2.0", False),
        ("1.0", True),
    ]
    [event] = audit_events(action="release.latest")
    assert event.detail == "2.0 -> 1.0"

    forward = portal.client.put(
        f"{API}/apps/{APP}/latest", json={"version": "2.0"}, headers=portal.pete
    )
    assert forward.status_code == 200
    assert portal.app(portal.bob)["title"] == "Second"


def test_latest_cannot_move_to_a_release_that_does_not_exist(portal):
    portal.published("1.0")
    response = portal.client.put(
        f"{API}/apps/{APP}/latest", json={"version": "3.0"}, headers=portal.pete
    )
    error(response, 404, "not_found")
    assert portal.app()["latest_version"] == "1.0"


def test_a_release_that_is_not_latest_can_be_hidden_and_shown(portal):
    portal.published("1.0")
    portal.published("2.0")
    path = f"{API}/apps/{APP}/releases/1.0"

    hidden = portal.client.patch(path, json={"hidden": True}, headers=portal.pete)
    assert hidden.status_code == 200 and hidden.json()["hidden"] is True
    assert release_row(APP, "1.0").hidden

    shown = portal.client.patch(path, json={"hidden": False}, headers=portal.pete)
    assert shown.status_code == 200 and shown.json()["hidden"] is False
    assert [e.action for e in audit_events(target_type="app")][-2:] == [
        "release.hide",
        "release.show",
    ]


def test_the_latest_release_can_be_neither_hidden_nor_deleted(portal):
    portal.published("1.0")
    portal.published("2.0")
    before = portal.stored()

    hide = portal.client.patch(
        f"{API}/apps/{APP}/releases/2.0", json={"hidden": True}, headers=portal.pete
    )
    delete = portal.client.delete(f"{API}/apps/{APP}/releases/2.0", headers=portal.pete)

    assert "latest" in error(hide, 409, "is_latest")
    assert "latest" in error(delete, 409, "is_latest")
    assert [(r["version"], r["latest"], r["hidden"]) for r in portal.releases(portal.pete)] == [
        ("2.0", True, False),
        ("1.0", False, False),
    ]
    assert portal.stored() == before
    # the only release is the latest too
    portal.published("1.0", name="solo-app")
    error(portal.client.delete(f"{API}/apps/solo-app/releases/1.0", headers=portal.pete), 409)


def test_deleting_a_release_removes_its_bundle_and_icon(portal):
    portal.published("1.0")
    portal.published("2.0")
    old, kept = release_row(APP, "1.0"), release_row(APP, "2.0")
    assert {old.bundle_key, old.icon_key} <= portal.stored()

    response = portal.client.delete(f"{API}/apps/{APP}/releases/1.0", headers=portal.pete)

    assert response.status_code == 204, response.text
    assert [r["version"] for r in portal.releases(portal.pete)] == ["2.0"]
    stored = portal.stored()
    assert old.bundle_key not in stored and old.icon_key not in stored
    assert {kept.bundle_key, kept.icon_key} <= stored
    error(portal.client.delete(f"{API}/apps/{APP}/releases/1.0", headers=portal.pete), 404)
    assert [e.target_name for e in audit_events(action="release.delete")] == [f"{APP} 1.0"]


def test_deleting_an_app_removes_releases_icons_grants_and_objects(portal):
    portal.published("1.0")
    portal.published("2.0")
    portal.published("1.0", name="other-app")
    portal.grant("read")
    other = release_row("other-app", "1.0")
    runtime_objects = {k for k in portal.stored() if k.startswith("runtimes/")}

    response = portal.client.delete(f"{API}/apps/{APP}", headers=portal.pete)

    assert response.status_code == 204, response.text
    error(portal.client.get(f"{API}/apps/{APP}", headers=portal.pete), 404, "not_found")
    assert [a["name"] for a in portal.client.get(f"{API}/apps", headers=portal.pete).json()] == [
        "other-app"
    ]
    assert portal.stored() == runtime_objects | {other.bundle_key, other.icon_key}
    counts = row_counts()
    assert (counts["apps"], counts["releases"], counts["app_grants"]) == (1, 1, 3)
    [event] = audit_events(action="app.delete")
    assert (event.target_name, event.detail) == (APP, "2 releases")
    # the name is free again
    assert portal.publish(publishing.app_bundle(portal.folder / "new", "1.0")).status_code == 201


# -- runtime resolution ------------------------------------------------------------------


def test_a_release_needing_a_missing_runtime_is_refused(portal):
    portal.add_runtime("1.5")
    before, rows = portal.stored(), row_counts()

    response = portal.publish(publishing.app_bundle(portal.folder, "1.0", runtime=">=2"))

    message = error(response, 422, "missing_runtime")
    assert "corpus-runtime >=2" in message
    assert "1.0, 1.5" in message  # what the portal has instead
    assert (portal.stored(), row_counts()) == (before, rows)
    error(portal.client.get(f"{API}/apps/{APP}", headers=portal.pete), 404)


@pytest.mark.parametrize(
    ("spec", "chosen"),
    [
        (">=1.0,<2", "1.5"),
        (">=1.0", "2.0"),
        ("~=1.0", "1.5"),
        ("==1.0", "1.0"),
        (">=2.1rc1", "2.1rc1"),
    ],
)
def test_the_newest_matching_runtime_version_is_chosen(portal, spec, chosen):
    for version in ("2.0", "1.5", "2.1rc1"):
        portal.add_runtime(version)

    release = portal.published("1.0", runtime=spec)

    # pre-releases count only when the specifier names one
    assert release["runtime"] == f"corpus-runtime {chosen}"
    assert release["runtime_spec"] == spec
    with session_scope() as session:
        runtime = session.get(RuntimeVersion, release_row(APP, "1.0").runtime_version_id)
        assert runtime is not None and runtime.version == chosen


# -- icons ---------------------------------------------------------------------------------


def _assert_served_safely(response: Any, content_type: str) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "sandbox" in policy
    assert "script-src" not in policy


def test_the_icon_is_served_with_its_type_and_a_sandbox(portal):
    portal.published("1.0")
    portal.grant("read")
    with zipfile.ZipFile(CORPUS_DIR / "bundle_valid.zip") as zipped:
        png = zipped.read("icon.png")

    response = portal.client.get(f"{API}/apps/{APP}/icon", headers=portal.bob)

    _assert_served_safely(response, "image/png")
    assert response.content == png


def test_the_icon_type_comes_from_its_bytes_not_its_name(portal):
    # an SVG that calls itself icon.png is still served as SVG, under the sandbox
    portal.publish(bundle_with(portal.folder, "1.0", files={"icon.png": SVG}))

    response = portal.client.get(f"{API}/apps/{APP}/icon", headers=portal.pete)

    _assert_served_safely(response, "image/svg+xml")
    assert response.content == SVG


def test_the_icon_follows_the_latest_release(portal):
    portal.publish(bundle_with(portal.folder, "1.0", files={"logo.svg": SVG}, icon="logo.svg"))
    portal.publish(bundle_with(portal.folder, "2.0", files={}, icon=None))
    assert portal.app()["icon_url"] is None
    error(portal.client.get(f"{API}/apps/{APP}/icon", headers=portal.pete), 404, "not_found")

    portal.client.put(f"{API}/apps/{APP}/latest", json={"version": "1.0"}, headers=portal.pete)

    assert portal.app()["icon_url"] == f"{API}/apps/{APP}/icon"
    _assert_served_safely(
        portal.client.get(f"{API}/apps/{APP}/icon", headers=portal.pete), "image/svg+xml"
    )


# -- launch targets ------------------------------------------------------------------------


def launch(portal: Portal, headers: dict[str, str], version: str | None = None) -> Any:
    params = {"version": version} if version else {}
    return portal.client.get(f"{API}/apps/{APP}/launch", params=params, headers=headers)


def test_launch_resolves_latest_or_a_given_version(portal):
    portal.published("1.0")
    portal.published("2.0", title="Two")
    portal.grant("read")
    portal.grant("run")

    latest = launch(portal, portal.bob)
    older = launch(portal, portal.bob, "1.0")

    assert latest.status_code == 200, latest.text
    assert {k: v for k, v in latest.json().items() if k != "message"} == {
        "app": APP,
        "version": "2.0",
        "title": "Two",
        "webui": True,
    }
    assert older.status_code == 200 and older.json()["version"] == "1.0"
    error(launch(portal, portal.bob, "9.9"), 404, "not_found")


def test_hidden_releases_launch_only_for_writers(portal):
    portal.published("1.0")
    portal.published("2.0", hide_previous=True)
    portal.grant("read")
    portal.grant("run")

    error(launch(portal, portal.bob, "1.0"), 404, "not_found")
    assert launch(portal, portal.pete, "1.0").json()["version"] == "1.0"
    assert launch(portal, bearer(portal.root_user), "1.0").status_code == 200


def test_launch_needs_the_run_right(portal):
    portal.published("1.0")
    portal.grant("read")

    # bob may see the app, so he learns he may not run it; ann may not even see it
    assert "run" in error(launch(portal, portal.bob), 403, "forbidden")
    error(launch(portal, portal.ann), 404, "not_found")
    error(launch(portal, portal.ann, "1.0"), 404, "not_found")


# -- the catalogue -------------------------------------------------------------------------


def test_the_catalogue_searches_and_filters_by_category(portal):
    portal.published("1.0")  # corpus-app: "Corpus app", category Tests
    portal.published(
        "1.0",
        name="route-planner",
        title="Routes",
        description="Plan delivery tours.",
        category="Logistics",
    )
    portal.published(
        "1.0",
        name="depot-sites",
        title="Facility location",
        description="Where to build.",
        category="Logistics",
    )

    def names(**params: str) -> list[str]:
        response = portal.client.get(f"{API}/apps", params=params, headers=portal.pete)
        assert response.status_code == 200, response.text
        return [a["name"] for a in response.json()]

    # by title, then name
    assert names() == ["corpus-app", "depot-sites", "route-planner"]
    assert names(q="TOURS") == ["route-planner"]  # description, any case
    assert names(q="facility") == ["depot-sites"]  # title
    assert names(q="corpus") == ["corpus-app"]  # name and title
    assert names(q="  depot ") == ["depot-sites"]  # name only, trimmed
    assert names(category="Logistics") == ["depot-sites", "route-planner"]
    assert names(category="Logistics", q="route") == ["route-planner"]
    assert names(category="logistics") == []  # exact match
    assert names(q="nothing like it") == []
    error(portal.client.get(f"{API}/apps", params={"q": "x" * 81}, headers=portal.pete), 422)


# -- encrypted bundles ---------------------------------------------------------------------


def portal_key(portal: Portal) -> dict[str, str]:
    response = portal.client.get(f"{API}/portal-key")
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_the_portal_key_is_public_and_stable(portal):
    from aimms_portal.packages import public_fingerprint

    key = portal_key(portal)  # no log-on

    assert key["public_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    assert key["fingerprint"] == public_fingerprint(key["public_pem"].encode())
    assert portal_key(portal) == key


def test_an_encrypted_bundle_is_published_and_stays_encrypted(portal):
    key = portal_key(portal)
    plain = publishing.app_bundle(portal.folder, "1.0")
    encrypted = portal.folder / "corpus-app-1.0.aimmsenc"
    encrypt_file(plain, encrypted, key["public_pem"].encode())

    response = portal.publish(encrypted)

    assert response.status_code == 201, response.text
    assert response.json()["encrypted"] is True
    assert response.json()["bundle_sha256"] == hashlib.sha256(encrypted.read_bytes()).hexdigest()
    row = release_row(APP, "1.0")
    assert row.portal_key_fingerprint == key["fingerprint"]
    stored = portal.folder / "storage" / row.bundle_key
    data = stored.read_bytes()
    assert data.startswith(b"AIMMSENC")
    with zipfile.ZipFile(plain) as zipped:
        manifest = zipped.read("app.json")
    assert manifest not in data and b'"corpus-app"' not in data
    # the portal's private key opens it again, to exactly the bundle that was packed
    with session_scope() as session:
        private_pem = portal_keys.private_key_for(session, key["fingerprint"])
    decrypted = portal.folder / "decrypted.zip"
    decrypt_file(stored, decrypted, private_pem)
    assert decrypted.read_bytes() == plain.read_bytes()
    # the catalogue still knows what is inside
    assert portal.app()["title"] == "Corpus app"


def test_a_bundle_encrypted_for_another_portal_is_refused(portal):
    portal_key(portal)
    _, other_public = generate_portal_keypair()
    encrypted = portal.folder / "other.aimmsenc"
    encrypt_file(publishing.app_bundle(portal.folder, "1.0"), encrypted, other_public)
    before, rows = portal.stored(), row_counts()

    response = portal.publish(encrypted)

    message = error(response, 422, "wrong_portal")
    assert "another portal" in message and "/api/v1/portal-key" in message
    assert (portal.stored(), row_counts()) == (before, rows)


@pytest.mark.parametrize("where", ["first-chunk", "last-tag", "last-byte"])
def test_a_tampered_encrypted_bundle_is_refused(portal, where):
    key = portal_key(portal)
    encrypted = portal.folder / "tampered.aimmsenc"
    encrypt_file(publishing.app_bundle(portal.folder, "1.0"), encrypted, key["public_pem"].encode())
    data = bytearray(encrypted.read_bytes())
    # magic (8) + version (1) + header length (4) + header, then the sealed chunks
    chunks_start = 13 + int.from_bytes(data[9:13], "big")
    offset = {"first-chunk": chunks_start + 10, "last-tag": len(data) - 8, "last-byte": -1}
    data[offset[where]] ^= 0x01
    encrypted.write_bytes(bytes(data))
    before, rows = portal.stored(), row_counts()

    response = portal.publish(encrypted)

    error(response, 422, "tampered")
    assert (portal.stored(), row_counts()) == (before, rows)
