"""The ``aimms-portal`` command.

Server-side commands (``run``, ``db``, ``admin``) act on the portal of the current
settings. Client-side commands (``login``, ``whoami``, ``tokens``) talk to a portal over
its REST API with a token kept in the user's config folder (mode 600).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from aimms_portal.client import PortalClient, PortalClientError

app = typer.Typer(
    help="Self-hosted portal for optimization apps.", no_args_is_help=True, add_completion=False
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
admin_app = typer.Typer(help="Administrator accounts.", no_args_is_help=True)
tokens_app = typer.Typer(help="Your personal API tokens.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
app.add_typer(tokens_app, name="tokens")

CREDENTIALS_FILE = "credentials.json"


def main() -> None:
    app()


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _read_secret_line() -> str:
    """One line of standard input without its line ending (a password may end in spaces)."""
    return sys.stdin.readline().rstrip("\r\n")


# -- server side -----------------------------------------------------------------------


@contextlib.contextmanager
def _server_errors() -> Iterator[None]:
    """Turn what a server-side command can meet into one line on stderr and status 1.

    Refused settings and an unreachable database are the operator's to fix, so they get
    a message rather than a traceback; anything else is a bug and keeps its traceback.
    """
    from pydantic import ValidationError
    from sqlalchemy.exc import OperationalError

    from aimms_portal.errors import PortalError

    try:
        yield
    except PortalError as exc:
        raise _fail(exc.message) from exc
    except ValidationError as exc:
        problems = "; ".join(str(error["msg"]) for error in exc.errors())
        raise _fail(f"Invalid settings: {problems}") from exc
    except OperationalError as exc:
        raise _fail(f"The database cannot be reached: {exc.orig}".strip()) from exc


def _bun_environment(root: Path) -> dict[str, str]:
    """Environment for Reflex: bun from the project's tools folder, no network probes."""
    env = dict(os.environ)
    tools = root / ".tools" / "node_modules" / ".bin"
    if tools.is_dir():
        env["PATH"] = f"{tools}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("REFLEX_USE_SYSTEM_BUN", "1")
    env.setdefault("REFLEX_TELEMETRY_ENABLED", "false")
    env.setdefault("REFLEX_CHECK_LATEST_VERSION", "false")
    return env


@app.command()
def run(
    port: Annotated[int | None, typer.Option(help="Port to serve on (default: settings).")] = None,
    prepare_only: Annotated[bool, typer.Option(help="Prepare the database, then stop.")] = False,
) -> None:
    """Prepare the database and first admin, then serve the portal (UI and REST API)."""
    from aimms_portal.config import get_settings
    from aimms_portal.db import REPO_ROOT
    from aimms_portal.logs import configure_logging
    from aimms_portal.services.setup import prepare

    if port is not None:
        os.environ["AIMMS_PORTAL_PORT"] = str(port)
        get_settings.cache_clear()
    with _server_errors():
        settings = get_settings()
        configure_logging(settings)
        prepared = prepare(settings)
    password = prepared.admin_password
    if prepared.demo:
        typer.echo(prepared.demo)
    if password:
        # shown once, on the console only; never logged
        typer.secho(
            f"\nFirst admin created: user '{settings.admin_username}', password '{password}'\n"
            "Write the password down now: it is not stored anywhere in clear and will not be "
            "shown again.\n",
            fg=typer.colors.YELLOW,
        )
    if prepare_only:
        return
    reflex = shutil.which("reflex") or str(Path(sys.executable).parent / "reflex")
    typer.echo(f"Serving the portal on {settings.public_url}")
    os.chdir(REPO_ROOT)
    os.execve(  # noqa: S606  (replaces this process by the server)
        reflex,
        [
            reflex,
            "run",
            "--env",
            "prod",
            "--single-port",
            "--frontend-port",
            str(settings.port),
            "--backend-port",
            str(settings.port),
        ],
        _bun_environment(REPO_ROOT),
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply all database migrations (safe to repeat)."""
    from aimms_portal.db import upgrade_database

    with _server_errors():
        upgrade_database()
    typer.echo("Database is up to date.")


@admin_app.command("create")
def admin_create(
    username: Annotated[str, typer.Option(prompt=True, help="User name of the new admin.")],
    email: Annotated[str, typer.Option(help="E-mail address.")] = "",
    password_stdin: Annotated[
        bool, typer.Option(help="Read the password from standard input.")
    ] = False,
) -> None:
    """Create an admin account (asks for the password unless --password-stdin)."""
    from aimms_portal.db import session_scope, upgrade_database
    from aimms_portal.models import Role
    from aimms_portal.services import accounts

    if password_stdin:
        password = _read_secret_line()
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise _fail("The passwords differ.")
    with _server_errors():
        upgrade_database()
        with session_scope() as session:
            accounts.ensure_builtin_groups(session)
            user = accounts.create_user(
                session,
                actor=None,
                username=username,
                password=password,
                role=Role.admin.value,
                email=email,
            )
    typer.echo(f"Admin '{user.username}' created.")


# -- client side -----------------------------------------------------------------------


def config_dir() -> Path:
    """Where the CLI keeps its credentials (``AIMMS_PORTAL_CLI_CONFIG_DIR`` overrides)."""
    override = os.environ.get("AIMMS_PORTAL_CLI_CONFIG_DIR")
    return Path(override) if override else Path(typer.get_app_dir("aimms-portal"))


def _save_credentials(url: str, token: str, token_id: int) -> Path:
    """Write the credentials file (mode 600) in place of any earlier one."""
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / CREDENTIALS_FILE
    # a new file with mode 600 from the start, renamed over the old one: the token is
    # never in a file others could read or already hold open, nor half-written
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{CREDENTIALS_FILE}.")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"url": url, "token": token, "token_id": token_id}, out)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _load_credentials() -> dict[str, Any]:
    path = config_dir() / CREDENTIALS_FILE
    try:
        data = json.loads(path.read_text())
        return {
            "url": str(data["url"]),
            "token": str(data["token"]),
            "token_id": int(data.get("token_id") or 0),
        }
    except FileNotFoundError as exc:
        raise _fail("Not logged in; run `aimms-portal login URL` first.") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise _fail(f"{path} is damaged; run `aimms-portal login URL` again.") from exc


@contextlib.contextmanager
def _portal_errors(*, stored_token: bool = False) -> Iterator[None]:
    """Turn the client's errors into one line on stderr and exit status 1.

    With ``stored_token``, a 401 means the kept token stopped working (revoked, expired,
    user disabled), so the message says how to get a new one.
    """
    try:
        yield
    except PortalClientError as exc:
        hint = "; run `aimms-portal login URL` again" if stored_token and exc.status == 401 else ""
        raise _fail(f"{exc}{hint}") from exc


@contextlib.contextmanager
def _stored_client() -> Iterator[PortalClient]:
    """A client with the kept credentials, its errors turned into messages."""
    credentials = _load_credentials()
    with (
        _portal_errors(stored_token=True),
        PortalClient(credentials["url"], credentials["token"]) as client,
    ):
        yield client


@app.command()
def login(
    url: Annotated[str, typer.Argument(help="Address of the portal.")] = "http://localhost:3000",
    username: Annotated[str | None, typer.Option(help="Your user name.")] = None,
    token: Annotated[
        bool, typer.Option("--token", help="Paste an existing API token instead of a password.")
    ] = False,
    password_stdin: Annotated[
        bool, typer.Option(help="Read the password (or token) from standard input.")
    ] = False,
    days: Annotated[int, typer.Option(min=1, max=365, help="Lifetime of the new token.")] = 90,
) -> None:
    """Log on to a portal and keep an API token for the other commands."""

    def secret(prompt: str) -> str:
        return _read_secret_line() if password_stdin else getpass.getpass(prompt)

    if token:
        value = secret("API token: ").strip()
        with _portal_errors(), PortalClient(url, value) as client:
            me = client.me()
        token_id = 0
    else:
        username = username or typer.prompt("User name")
        password = secret("Password: ")
        with _portal_errors(), PortalClient(url) as anonymous:
            created = anonymous.log_on_for_token(
                username,
                password,
                token_name=f"cli@{socket.gethostname()}"[:64],
                scopes=["read", "write"],
                expires_in_days=days,
            )
        value, token_id = created["token"], created["id"]
        with _portal_errors(), PortalClient(url, value) as client:
            me = client.me()
    path = _save_credentials(url, value, token_id)
    typer.echo(f"Logged on to {url} as {me['username']}; token kept in {path}.")


@app.command()
def logout() -> None:
    """Revoke the kept token (if `login` created it) and forget it."""
    credentials = _load_credentials()
    if credentials["token_id"]:
        with _stored_client() as client:
            try:
                client.revoke_token(credentials["token_id"])
            except PortalClientError as exc:
                if exc.status != 401:  # already revoked or expired: nothing left to end
                    raise
    (config_dir() / CREDENTIALS_FILE).unlink(missing_ok=True)
    typer.echo(f"Logged off from {credentials['url']}.")


@app.command()
def whoami() -> None:
    """Show the user the stored token belongs to."""
    with _stored_client() as client:
        me = client.me()
    typer.echo(
        f"{me['username']} ({me['role']}) on {client.url}; groups: " + ", ".join(me["groups"])
    )


@tokens_app.command("list")
def tokens_list(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked.")] = False,
) -> None:
    """List your API tokens."""
    with _stored_client() as client:
        rows = client.list_tokens(include_revoked=all_)
    typer.echo(f"{'ID':>5}  {'NAME':<24} {'PREFIX':<11} {'SCOPES':<17} {'EXPIRES':<10}  STATE")
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        typer.echo(
            f"{row['id']:>5}  {row['name'][:24]:<24} {row['prefix']:<11} "
            f"{row['scopes']:<17} {row['expires_at'][:10]:<10}  {state}"
        )


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="What the token is for.")],
    scope: Annotated[list[str] | None, typer.Option(help="read, write or admin; repeat.")] = None,
    days: Annotated[int, typer.Option(min=1, max=365, help="Lifetime in days.")] = 90,
) -> None:
    """Create an API token and print it (this once)."""
    with _stored_client() as client:
        created = client.create_token(name, scope or ["read", "write"], days)
    typer.echo(created["token"])
    typer.echo(
        f"Token {created['id']} '{created['name']}' ({created['scopes']}), expires "
        f"{created['expires_at'][:10]}. It is shown only this once.",
        err=True,
    )


@tokens_app.command("revoke")
def tokens_revoke(token_id: Annotated[int, typer.Argument(help="Id from `tokens list`.")]) -> None:
    """Revoke one of your API tokens at once."""
    with _stored_client() as client:
        client.revoke_token(token_id)
    typer.echo(f"Token {token_id} revoked.")


if __name__ == "__main__":
    main()
