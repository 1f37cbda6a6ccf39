"""The ``aimms-portal`` command.

Server-side commands (``run``, ``db``, ``admin``) act on the portal of the current
settings. Client-side commands (``login``, ``whoami``, ``tokens``) talk to a portal over
its REST API with a token kept in the user's config folder (mode 600).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import sys
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


# -- server side -----------------------------------------------------------------------


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
    from aimms_portal.errors import PortalError
    from aimms_portal.logs import configure_logging
    from aimms_portal.services.setup import prepare

    if port is not None:
        os.environ["AIMMS_PORTAL_PORT"] = str(port)
        get_settings.cache_clear()
    settings = get_settings()
    configure_logging(settings)
    try:
        password = prepare(settings)
    except PortalError as exc:
        raise _fail(exc.message) from exc
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
    from aimms_portal.errors import PortalError

    try:
        upgrade_database()
    except PortalError as exc:
        raise _fail(exc.message) from exc
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
    from aimms_portal.errors import PortalError
    from aimms_portal.models import Role
    from aimms_portal.services import accounts

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise _fail("The passwords differ.")
    try:
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
    except PortalError as exc:
        raise _fail(exc.message) from exc
    typer.echo(f"Admin '{user.username}' created.")


# -- client side -----------------------------------------------------------------------


def config_dir() -> Path:
    """Where the CLI keeps its credentials (``AIMMS_PORTAL_CLI_CONFIG_DIR`` overrides)."""
    override = os.environ.get("AIMMS_PORTAL_CLI_CONFIG_DIR")
    return Path(override) if override else Path(typer.get_app_dir("aimms-portal"))


def _save_credentials(url: str, token: str, token_id: int) -> Path:
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / CREDENTIALS_FILE
    # created with mode 600 from the start, so the token is never readable by others
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"url": url, "token": token, "token_id": token_id}, out)
    os.chmod(path, 0o600)
    return path


def _load_credentials() -> dict[str, Any]:
    path = config_dir() / CREDENTIALS_FILE
    try:
        data = json.loads(path.read_text())
        return {"url": str(data["url"]), "token": str(data["token"])}
    except FileNotFoundError as exc:
        raise _fail("Not logged in; run `aimms-portal login URL` first.") from exc
    except (ValueError, KeyError) as exc:
        raise _fail(f"{path} is damaged; run `aimms-portal login URL` again.") from exc


def _client() -> PortalClient:
    credentials = _load_credentials()
    return PortalClient(credentials["url"], credentials["token"])


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except PortalClientError as exc:
        raise _fail(str(exc)) from exc


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
        return sys.stdin.readline().strip() if password_stdin else getpass.getpass(prompt)

    if token:
        value = secret("API token: ")
        with PortalClient(url, value) as client:
            me = _call(client.me)
            token_id = 0
    else:
        username = username or typer.prompt("User name")
        password = secret("Password: ")
        with PortalClient(url) as anonymous:
            scopes = ["read", "write"]
            created = _call(
                anonymous.log_on_for_token,
                username,
                password,
                token_name=f"cli@{socket.gethostname()}"[:64],
                scopes=scopes,
                expires_in_days=days,
            )
        value, token_id = created["token"], created["id"]
        with PortalClient(url, value) as client:
            me = _call(client.me)
    path = _save_credentials(url, value, token_id)
    typer.echo(f"Logged on to {url} as {me['username']}; token kept in {path}.")


@app.command()
def whoami() -> None:
    """Show the user the stored token belongs to."""
    with _client() as client:
        me = _call(client.me)
    typer.echo(
        f"{me['username']} ({me['role']}) on {client.url}; groups: " + ", ".join(me["groups"])
    )


@tokens_app.command("list")
def tokens_list(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked.")] = False,
) -> None:
    """List your API tokens."""
    with _client() as client:
        rows = _call(client.list_tokens, include_revoked=all_)
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
    with _client() as client:
        created = _call(client.create_token, name, scope or ["read", "write"], days)
    typer.echo(created["token"])
    typer.echo(
        f"Token {created['id']} '{created['name']}' ({created['scopes']}), expires "
        f"{created['expires_at'][:10]}. It is shown only this once.",
        err=True,
    )


@tokens_app.command("revoke")
def tokens_revoke(token_id: Annotated[int, typer.Argument(help="Id from `tokens list`.")]) -> None:
    """Revoke one of your API tokens at once."""
    with _client() as client:
        _call(client.revoke_token, token_id)
    typer.echo(f"Token {token_id} revoked.")


if __name__ == "__main__":
    main()
