"""The demo content of a fresh development portal: the HiGHS runtime and the transport app.

The wheels of the demo runtime come from PyPI once per machine: the ``demo_wheels``
fixture downloads them into the pytest cache (keyed by the requirements' contents) and
the service tests build from there. The CLI test runs ``aimms-portal run
--prepare-only`` as a user would, which downloads them itself (marker ``network``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from aimms_portal import config
from aimms_portal.config import Settings
from aimms_portal.db import session_scope
from aimms_portal.errors import InvalidInput
from aimms_portal.models import App, Release, Role, RuntimeVersion, SigningKey, User
from aimms_portal.services import demo
from aimms_portal.storage import get_storage
from tests import publishing
from tests.api.support import API, quick_user
from tests.helpers import bearer

pytestmark = pytest.mark.sqlite

REQUIREMENTS = demo.RUNTIME_DIR / "requirements.txt"
SUMMARY = "demo published: runtime python-highs 1.0.0, app transport 1.0.0 (everyone may run it)"
CONSOLE_SCRIPT = Path(sys.executable).parent / "aimms-portal"


@pytest.fixture
def dev_settings(db: None, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A development portal that wants its demo (the suite turns the demo off)."""
    monkeypatch.setenv("AIMMS_PORTAL_DEMO", "true")
    config.get_settings.cache_clear()
    settings = config.get_settings()
    assert settings.environment == "development" and settings.demo
    return settings


@pytest.fixture
def admin_user(db: None) -> User:
    return quick_user("admin", Role.admin.value)


def published() -> dict[str, Any]:
    """What the portal holds: runtime versions, apps, and stored objects by prefix."""
    with session_scope() as session:
        runtimes = [f"{r.name} {r.version}" for r in session.exec(select(RuntimeVersion))]
        apps = [a.name for a in session.exec(select(App))]
    objects = sorted(o.key.split("/")[0] for o in get_storage().list())
    return {"runtimes": runtimes, "apps": apps, "objects": objects}


def test_the_demo_is_published_for_everyone(
    dev_settings, admin_user, demo_wheels, client, tmp_path
):
    assert demo.wanted(dev_settings)

    summary = demo.publish_demo(dev_settings, admin=admin_user, wheel_dir=demo_wheels)

    assert summary == SUMMARY
    assert not demo.wanted(dev_settings)
    with session_scope() as session:
        runtime = session.exec(select(RuntimeVersion)).one()
        release = session.exec(select(Release)).one()
        key = session.exec(select(SigningKey)).one()
    assert (runtime.name, runtime.version) == ("python-highs", "1.0.0")
    assert runtime.signer_name == demo.DEV_KEY_NAME == key.name
    assert release.runtime_version_id == runtime.id
    # the package carries the wheels the requirements name
    package = tmp_path / "runtime.zip"
    with get_storage().open(runtime.storage_key) as stream, open(package, "wb") as out:
        shutil.copyfileobj(stream, out)
    with zipfile.ZipFile(package) as zipped:
        names = zipped.namelist()
    assert any(n.startswith("wheels/highspy-1.16.0-") for n in names), names
    assert any(n.startswith("wheels/numpy-") for n in names), names
    # the development key lives in the data folder, readable by the portal only
    key_file = dev_settings.data_dir / "development-signing-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    # any user, without a grant of their own, sees the app and may run it
    newcomer = bearer(quick_user("newcomer"))
    [app] = client.get(f"{API}/apps", headers=newcomer).json()
    assert (app["name"], app["latest_version"], app["category"]) == (
        "transport",
        "1.0.0",
        "Logistics",
    )
    assert app["rights"] == {"read": True, "write": False, "run": True}
    launch = client.get(f"{API}/apps/transport/launch", headers=newcomer)
    assert launch.status_code == 200 and launch.json()["webui"] is True
    icon = client.get(f"{API}/apps/transport/icon", headers=newcomer)
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"


def test_the_demo_is_wanted_only_on_an_empty_development_portal(dev_settings, admin_user, tmp_path):
    assert demo.wanted(dev_settings)
    assert not demo.wanted(dev_settings.model_copy(update={"demo": False}))
    production = Settings(
        environment="production",
        secret_key="s" * 40,
        public_url="https://portal.example.com",
        demo=True,
        database_url=dev_settings.database_url,
    )
    assert not demo.wanted(production)

    # anything published counts: a runtime of someone else's
    publishing.trust_test_key(admin_user)
    publishing.upload_runtime(admin_user, tmp_path, "1.0")
    assert not demo.wanted(dev_settings)


def test_a_failed_build_is_reported_and_tried_again_next_time(
    dev_settings, admin_user, monkeypatch, tmp_path, caplog
):
    # no package index and no local wheels: pip fails as it does without a network
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))

    with caplog.at_level(logging.WARNING, logger="aimms_portal.services.demo"):
        message = demo.publish_demo_if_wanted(dev_settings, admin_user)

    assert message is not None
    assert message.startswith("demo content not published: pip could not fetch the wheels")
    assert "highspy" in message
    assert any(
        r.levelno == logging.WARNING and "demo content not published" in r.getMessage()
        for r in caplog.records
    )
    assert published() == {"runtimes": [], "apps": [], "objects": []}
    assert demo.wanted(dev_settings)


def test_an_app_that_fails_to_publish_takes_the_runtime_back(
    dev_settings, admin_user, demo_wheels, monkeypatch, tmp_path
):
    # a transport app that needs a runtime version the demo does not build
    original = demo.APP_DIR
    app_dir = tmp_path / "transport"
    shutil.copytree(original, app_dir)
    manifest = json.loads((app_dir / "app.json").read_text())
    manifest["runtime"]["version"] = ">=5"
    (app_dir / "app.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(demo, "APP_DIR", app_dir)

    with pytest.raises(InvalidInput) as caught:
        demo.publish_demo(dev_settings, admin=admin_user, wheel_dir=demo_wheels)

    assert caught.value.code == "missing_runtime"
    assert published() == {"runtimes": [], "apps": [], "objects": []}
    assert demo.wanted(dev_settings)

    # the next start succeeds, with the key made the first time
    monkeypatch.setattr(demo, "APP_DIR", original)
    assert demo.publish_demo(dev_settings, admin=admin_user, wheel_dir=demo_wheels) == SUMMARY
    with session_scope() as session:
        assert len(session.exec(select(SigningKey)).all()) == 1


@pytest.mark.network
def test_the_first_start_publishes_the_demo(tmp_path):
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMMS_PORTAL_")}
    env.update(AIMMS_PORTAL_DATA_DIR=str(data), AIMMS_PORTAL_DEMO="true")

    def prepare() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CONSOLE_SCRIPT), "run", "--prepare-only"],
            cwd=tmp_path,  # no .env of the repository
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    first = prepare()

    assert first.returncode == 0, first.stderr
    assert SUMMARY in first.stdout
    assert "First admin created" in first.stdout
    with sqlite3.connect(data / "portal.db") as db:
        runtimes = db.execute("SELECT name, version FROM runtime_versions").fetchall()
        apps = db.execute("SELECT name FROM apps").fetchall()
    assert runtimes == [("python-highs", "1.0.0")] and apps == [("transport",)]
    assert (data / "development-signing-key.pem").is_file()

    again = prepare()
    assert again.returncode == 0, again.stderr
    assert "demo" not in again.stdout
