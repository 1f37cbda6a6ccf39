"""The ``aimms-portal`` command, server side and client side.

Server-side commands run in-process against the run's test database (or a fresh SQLite
file). Client-side commands talk over real HTTP to the REST API served by uvicorn on a
free loopback port in a background thread, and keep their credentials in a temporary
config folder. One test runs the installed console script as a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from alembic.config import Config
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text
from sqlmodel import select
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route
from starlette.types import ASGIApp
from typer.testing import CliRunner, Result

from aimms_portal import config, storage
from aimms_portal.api.app import create_api
from aimms_portal.cli import CREDENTIALS_FILE, app
from aimms_portal.db import REPO_ROOT, reset_engine, session_scope
from aimms_portal.models import BrowserSession, User
from tests.helpers import PASSWORD, bearer

pytestmark = pytest.mark.sqlite

CONSOLE_SCRIPT = Path(sys.executable).parent / "aimms-portal"


# -- fixtures and helpers ----------------------------------------------------------------


@contextlib.contextmanager
def serve_in_thread(asgi_app: ASGIApp) -> Iterator[str]:
    """Serve ``asgi_app`` with uvicorn on a free loopback port; yields its base URL.

    The socket is bound before the server starts, so there is no race for the port.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(asgi_app, lifespan="off", log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def closed_port_url() -> str:
    """An http:// address on loopback where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def portal(db: None) -> Iterator[str]:
    """The REST API on a real HTTP server over loopback; yields its base URL."""
    with serve_in_thread(create_api()) as url:
        yield url


@pytest.fixture
def cli_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty config folder for the CLI's credentials (not created yet)."""
    folder = tmp_path / "home" / "aimms-portal"
    monkeypatch.setenv("AIMMS_PORTAL_CLI_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture
def portal_logging() -> Iterator[None]:
    """Restore the ``aimms_portal`` logger after a command configured it.

    ``run`` points the logger at the stderr of the moment, which under CliRunner is
    a buffer that is closed once the command returns.
    """
    logger = logging.getLogger("aimms_portal")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
def embedded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, portal_logging: None
) -> Iterator[Path]:
    """Settings of an embedded portal whose data folder is still empty; yields the folder."""
    data = tmp_path / "embedded"
    monkeypatch.setenv("AIMMS_PORTAL_DATA_DIR", str(data))
    monkeypatch.setenv("AIMMS_PORTAL_DATABASE_URL", f"sqlite:///{data / 'portal.db'}")
    monkeypatch.setenv("AIMMS_PORTAL_STORAGE_URL", (data / "storage").as_uri())
    for name in ("ENVIRONMENT", "ADMIN_USERNAME", "ADMIN_PASSWORD", "ADMIN_EMAIL"):
        monkeypatch.delenv(f"AIMMS_PORTAL_{name}", raising=False)
    _forget_settings()
    yield data
    _forget_settings()


def _forget_settings() -> None:
    config.get_settings.cache_clear()
    storage.get_storage.cache_clear()
    reset_engine()


def cli(*args: str, input: str | None = None) -> Result:
    """Run ``aimms-portal ARGS`` in-process."""
    return CliRunner().invoke(app, list(args), input=input)


def assert_clean_failure(result: Result, message: str) -> None:
    """The command failed with ``message`` on stderr and without a traceback."""
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def log_on_over_http(client: TestClient, username: str, password: str) -> int:
    response = client.post("/api/v1/auth/login", json={"username": username, "password": password})
    return response.status_code


def credentials(folder: Path) -> dict[str, object]:
    return dict(json.loads((folder / CREDENTIALS_FILE).read_text()))


def cli_login(url: str, username: str, password: str = PASSWORD) -> Result:
    return cli("login", url, "--username", username, "--password-stdin", input=password + "\n")


# -- db upgrade ------------------------------------------------------------------------


def test_db_upgrade_creates_the_schema_and_is_idempotent(embedded):
    first = cli("db", "upgrade")
    second = cli("db", "upgrade")

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert "Database is up to date." in second.stdout
    engine = create_engine(f"sqlite:///{embedded / 'portal.db'}")
    try:
        assert {"users", "groups", "api_tokens", "audit_events"} <= set(
            inspect(engine).get_table_names()
        )
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(
        Config(str(REPO_ROOT / "alembic.ini"), attributes={})
    ).get_current_head()
    assert [v[0] for v in versions] == [head]


def test_db_upgrade_on_the_migrated_test_database_changes_nothing(db):
    assert cli("db", "upgrade").exit_code == 0
    assert cli("db", "upgrade").exit_code == 0


def test_db_upgrade_with_an_unreachable_database_is_a_clear_error(embedded, monkeypatch):
    url = closed_port_url().replace("http://", "postgresql+psycopg2://postgres@") + "/nowhere"
    monkeypatch.setenv("AIMMS_PORTAL_DATABASE_URL", url)
    _forget_settings()

    assert_clean_failure(cli("db", "upgrade"), "The database cannot be reached")


def test_insecure_production_settings_are_refused_without_a_traceback(embedded, monkeypatch):
    monkeypatch.setenv("AIMMS_PORTAL_ENVIRONMENT", "production")
    _forget_settings()

    result = cli("db", "upgrade")

    assert_clean_failure(result, "Invalid settings")
    assert "AIMMS_PORTAL_SECRET_KEY" in result.stderr


# -- admin create ----------------------------------------------------------------------


def test_admin_create_reads_the_password_from_stdin_and_the_admin_can_log_on(client):
    result = cli("admin", "create", "--username", "Boss", "--password-stdin", input=PASSWORD)

    assert result.exit_code == 0, result.output
    assert "Admin 'boss' created." in result.stdout
    assert PASSWORD not in result.output
    response = client.post("/api/v1/auth/login", json={"username": "boss", "password": PASSWORD})
    assert response.status_code == 200
    assert response.json()["user"]["role"] == "admin"


def test_passwords_from_stdin_keep_their_spaces(portal, cli_home, client):
    password = f"  {PASSWORD} "

    created = cli("admin", "create", "--username", "boss", "--password-stdin", input=password)
    login = cli_login(portal, "boss", password=password)

    assert created.exit_code == 0, created.output
    assert login.exit_code == 0, login.output
    assert log_on_over_http(client, "boss", PASSWORD) == 401


def test_admin_create_with_a_weak_password_fails_with_the_policy(db):
    result = cli("admin", "create", "--username", "boss", "--password-stdin", input="short1\n")

    assert_clean_failure(result, "The password needs at least 12 characters, a symbol.")
    with session_scope() as session:
        assert session.exec(select(User).where(User.username == "boss")).first() is None


def test_admin_create_with_a_taken_name_says_so(admin):
    result = cli("admin", "create", "--username", "root", "--password-stdin", input=PASSWORD)

    assert_clean_failure(result, "The user name 'root' is taken.")


# -- run --prepare-only ----------------------------------------------------------------


def test_first_start_prints_a_generated_admin_password_once(embedded):
    first = cli("run", "--prepare-only")
    second = cli("run", "--prepare-only")

    assert first.exit_code == 0, first.output
    match = re.search(r"First admin created: user 'admin', password '([^']+)'", first.stdout)
    assert match, first.output
    password = match.group(1)
    assert first.output.count(password) == 1
    assert second.exit_code == 0, second.output
    assert "First admin" not in second.output and password not in second.output
    with TestClient(create_api()) as client:
        assert log_on_over_http(client, "admin", password) == 200


def test_first_start_uses_the_admin_password_from_the_environment(embedded, monkeypatch):
    monkeypatch.setenv("AIMMS_PORTAL_ADMIN_USERNAME", "chief")
    monkeypatch.setenv("AIMMS_PORTAL_ADMIN_PASSWORD", PASSWORD)
    _forget_settings()

    result = cli("run", "--prepare-only")

    assert result.exit_code == 0, result.output
    assert "First admin" not in result.output and PASSWORD not in result.output
    with TestClient(create_api()) as client:
        assert log_on_over_http(client, "chief", PASSWORD) == 200


def test_first_start_refuses_a_weak_admin_password_from_the_environment(embedded, monkeypatch):
    monkeypatch.setenv("AIMMS_PORTAL_ADMIN_PASSWORD", "password")
    _forget_settings()

    assert_clean_failure(cli("run", "--prepare-only"), "The password needs")


# -- login -----------------------------------------------------------------------------


def test_login_keeps_a_private_token_that_whoami_uses(portal, cli_home, make_user):
    make_user("ann")

    result = cli_login(portal, "ann")

    assert result.exit_code == 0, result.output
    assert f"Logged on to {portal} as ann" in result.stdout
    path = cli_home / CREDENTIALS_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cli_home).st_mode) == 0o700
    assert [p.name for p in cli_home.iterdir()] == [CREDENTIALS_FILE]  # no temporary left
    stored = credentials(cli_home)
    assert stored["url"] == portal and str(stored["token"]).startswith("apt_")
    me = httpx.get(f"{portal}/api/v1/me", headers={"Authorization": f"Bearer {stored['token']}"})
    assert me.status_code == 200 and me.json()["scopes"] == ["read", "write"]

    whoami = cli("whoami")
    assert whoami.exit_code == 0, whoami.output
    assert whoami.stdout.startswith("ann (user) on ")
    assert "groups: everyone" in whoami.stdout


def test_logout_revokes_the_kept_token_and_forgets_it(portal, cli_home, make_user):
    make_user("ann")
    assert cli_login(portal, "ann").exit_code == 0
    token = str(credentials(cli_home)["token"])

    result = cli("logout")

    assert result.exit_code == 0, result.output
    assert not (cli_home / CREDENTIALS_FILE).exists()
    me = httpx.get(f"{portal}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 401 and me.json()["error"]["code"] == "token_revoked"
    assert_clean_failure(cli("whoami"), "Not logged in")


def test_login_logs_off_the_browser_log_on_it_used(portal, cli_home, make_user):
    make_user("ann")

    assert cli_login(portal, "ann").exit_code == 0

    with session_scope() as session:
        log_ons = session.exec(select(BrowserSession)).all()
    assert len(log_ons) == 1 and log_ons[0].revoked_at is not None


def test_login_replaces_an_older_readable_credentials_file(portal, cli_home, make_user):
    make_user("ann")
    cli_home.mkdir(parents=True)
    old = cli_home / CREDENTIALS_FILE
    old.write_text('{"url": "http://127.0.0.1:1", "token": "old"}')
    old.chmod(0o644)

    with open(old) as held:  # opened by someone else while it was readable
        assert cli_login(portal, "ann").exit_code == 0
        assert "apt_" not in held.read()

    assert stat.S_IMODE(os.stat(old).st_mode) == 0o600
    assert str(credentials(cli_home)["token"]).startswith("apt_")


def test_admin_login_token_carries_the_admin_scope(portal, cli_home, admin):
    assert cli_login(portal, "root").exit_code == 0

    listed = cli("tokens", "list")

    assert listed.exit_code == 0, listed.output
    assert "read write admin" in listed.stdout


def test_login_with_a_wrong_password_fails_and_keeps_nothing(portal, cli_home, make_user):
    make_user("ann")

    result = cli_login(portal, "ann", password="Wrong-password-123")

    assert_clean_failure(result, "Wrong user name or password.")
    assert not (cli_home / CREDENTIALS_FILE).exists()


def test_login_with_an_existing_token(portal, cli_home, make_user):
    token = bearer(make_user("ann"), "read")["Authorization"].removeprefix("Bearer ")

    result = cli("login", portal, "--token", "--password-stdin", input=f"  {token}  \n")

    assert result.exit_code == 0, result.output
    assert credentials(cli_home)["token"] == token
    assert cli("whoami").stdout.startswith("ann (user)")


def test_login_with_a_forged_token_fails_and_keeps_nothing(portal, cli_home):
    forged = "apt_" + "x" * 43

    result = cli("login", portal, "--token", "--password-stdin", input=forged)

    assert_clean_failure(result, "The API token is not valid.")
    assert not (cli_home / CREDENTIALS_FILE).exists()


def test_login_to_an_unreachable_portal_is_a_clear_error(cli_home):
    url = closed_port_url()

    result = cli_login(url, "ann")

    assert_clean_failure(result, f"Cannot reach the portal at {url}")


def test_login_needs_an_http_address(cli_home):
    result = cli_login("127.0.0.1:3000", "ann")

    assert_clean_failure(result, "The portal address must start with http:// or https://")


def test_login_to_something_that_is_not_the_portal_says_so(cli_home):
    def page(request: object) -> HTMLResponse:
        return HTMLResponse("<html>hello</html>")

    other = Starlette(routes=[Route("/{path:path}", page, methods=["GET", "POST"])])
    with serve_in_thread(other) as url:
        result = cli_login(url, "ann")

    assert_clean_failure(result, "did not answer like an aimms_portal")


# -- whoami and stored credentials ------------------------------------------------------


def test_whoami_without_login_says_how_to_log_in(cli_home):
    assert_clean_failure(cli("whoami"), "Not logged in; run `aimms-portal login URL` first.")


def test_whoami_with_a_damaged_credentials_file_says_so(cli_home):
    cli_home.mkdir(parents=True)
    (cli_home / CREDENTIALS_FILE).write_text("[1, 2]")

    assert_clean_failure(cli("whoami"), "is damaged")


def test_whoami_when_the_portal_is_gone_is_a_clear_error(portal, cli_home, make_user):
    make_user("ann")
    assert cli_login(portal, "ann").exit_code == 0
    stored = credentials(cli_home)
    stored["url"] = closed_port_url()
    (cli_home / CREDENTIALS_FILE).write_text(json.dumps(stored))

    assert_clean_failure(cli("whoami"), f"Cannot reach the portal at {stored['url']}")


# -- tokens ----------------------------------------------------------------------------


def test_tokens_create_list_and_revoke(portal, cli_home, make_user):
    make_user("ann")
    assert cli_login(portal, "ann").exit_code == 0

    created = cli("tokens", "create", "ci-job", "--scope", "read", "--days", "7")
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    assert re.fullmatch(r"apt_[\w-]{43}", secret), created.stdout
    assert created.output.count(secret) == 1
    assert "shown only this once" in created.stderr
    match = re.search(r"Token (\d+) 'ci-job' \(read\)", created.stderr)
    assert match, created.stderr
    token_id = match.group(1)
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{portal}/api/v1/me", headers=headers).status_code == 200

    listed = cli("tokens", "list")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if "ci-job" in line)
    assert row.split()[0] == token_id and secret[:10] in row and row.endswith("active")
    assert secret not in listed.output and secret[10:] not in listed.output

    revoked = cli("tokens", "revoke", token_id)
    assert revoked.exit_code == 0, revoked.output
    assert f"Token {token_id} revoked." in revoked.stdout
    refused = httpx.get(f"{portal}/api/v1/me", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "token_revoked"
    assert "ci-job" not in cli("tokens", "list").stdout
    everything = cli("tokens", "list", "--all").stdout
    assert next(line for line in everything.splitlines() if "ci-job" in line).endswith("revoked")


def test_revoking_an_unknown_token_is_a_clear_error(portal, cli_home, make_user):
    make_user("ann")
    assert cli_login(portal, "ann").exit_code == 0

    assert_clean_failure(cli("tokens", "revoke", "999999"), "No token with id 999999.")


def test_a_revoked_cli_token_says_to_log_in_again(portal, cli_home, make_user):
    make_user("ann")
    assert cli_login(portal, "ann").exit_code == 0
    own_id = str(credentials(cli_home)["token_id"])

    assert cli("tokens", "revoke", own_id).exit_code == 0

    result = cli("whoami")
    assert_clean_failure(result, "The API token was revoked.")
    assert "run `aimms-portal login URL` again" in result.stderr


def test_tokens_create_refuses_the_admin_scope_to_a_user(portal, cli_home, make_user):
    make_user("ann")
    assert cli_login(portal, "ann").exit_code == 0

    result = cli("tokens", "create", "sneaky", "--scope", "admin")

    assert_clean_failure(result, "Only admins can create tokens with the admin scope.")


# -- the installed console script --------------------------------------------------------


def run_console_script(*args: str, input: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_console_script_shows_its_commands():
    result = run_console_script("--help")

    assert result.returncode == 0, result.stderr
    for command in ("run", "db", "admin", "login", "whoami", "tokens", "runtime", "app"):
        assert re.search(rf"│ {command}\b", result.stdout), result.stdout


def test_console_script_logs_on_through_a_real_stdin(
    portal, cli_home, make_user: Callable[..., User]
):
    make_user("ann")

    login = run_console_script(
        "login", portal, "--username", "ann", "--password-stdin", input=PASSWORD + "\n"
    )
    whoami = run_console_script("whoami")

    assert login.returncode == 0, login.stderr
    assert stat.S_IMODE(os.stat(cli_home / CREDENTIALS_FILE).st_mode) == 0o600
    assert whoami.returncode == 0 and whoami.stdout.startswith("ann (user)"), whoami.stderr


def test_console_script_fails_without_a_traceback(cli_home):
    result = run_console_script("whoami")

    assert result.returncode == 1
    assert "Not logged in" in result.stderr and "Traceback" not in result.stderr
