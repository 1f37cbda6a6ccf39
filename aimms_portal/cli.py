"""The ``aimms-portal`` command.

Server-side commands (``run``, ``db``, ``admin create``) act on the portal of the current
settings. Client-side commands (``login``, ``whoami``, ``tokens``, ``runtime``, ``app``,
``case``, ``job``, ``admin trust-key``) talk to a portal over its REST API with a token
kept in the user's config folder (mode 600). ``runtime keygen|build|sign`` and ``app
pack`` work on local files only (``app pack --encrypt-for-portal`` fetches the portal's
public key).
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
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from aimms_portal.client import PortalClient, PortalClientError, job_outcome

app = typer.Typer(
    help="Self-hosted portal for optimization apps.", no_args_is_help=True, add_completion=False
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
admin_app = typer.Typer(
    help="Administration: admin accounts, trusted signing keys.", no_args_is_help=True
)
tokens_app = typer.Typer(help="Your personal API tokens.", no_args_is_help=True)
runtime_app = typer.Typer(
    help="Runtime versions: make, sign and upload runtime packages.", no_args_is_help=True
)
apps_app = typer.Typer(
    help="Apps: pack and publish bundles, releases, access rights.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
app.add_typer(tokens_app, name="tokens")
app.add_typer(runtime_app, name="runtime")
app.add_typer(apps_app, name="app")

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
    """A client with the kept credentials, its errors turned into messages.

    Inside an app session (``AIMMS_PORTAL_URL`` and ``AIMMS_PORTAL_TOKEN`` set by the
    portal) the session's own token is used, so an app's scripts need no log-on.
    """
    url, token = os.environ.get("AIMMS_PORTAL_URL"), os.environ.get("AIMMS_PORTAL_TOKEN")
    if not (url and token):
        credentials = _load_credentials()
        url, token = credentials["url"], credentials["token"]
    with _portal_errors(stored_token=True), PortalClient(url, token) as client:
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


# -- publishing: local files ---------------------------------------------------------------


@contextlib.contextmanager
def _local_errors() -> Iterator[None]:
    """Turn what a command on local files can meet into one line on stderr and status 1.

    The packages library names every problem in an ``InvalidInput``; a missing or
    unreadable file is the user's to fix too. Anything else keeps its traceback.
    """
    from aimms_portal.errors import PortalError

    try:
        yield
    except PortalError as exc:
        raise _fail(exc.message) from exc
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise _fail(f"{where}{exc.strerror or exc}") from exc


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start; refuse if anything is there already."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _write_replacing(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it), mode 644."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _progress(label: str) -> Callable[[int, int], None] | None:
    """A percentage on stderr while an upload streams, when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None
    shown = -1

    def report(sent: int, total: int) -> None:
        nonlocal shown
        percent = 100 if total <= 0 else sent * 100 // total
        if percent != shown:
            shown = percent
            end = "\n" if sent >= total else ""
            typer.echo(f"\r{label}: {percent:3d}% of {_size(total)}", err=True, nl=bool(end))

    return report


def _size(size: int) -> str:
    """A byte count for people: ``812 bytes``, ``1.5 MiB``."""
    if size < 1024:
        return f"{size:,} bytes"
    scaled = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        scaled /= 1024
        if scaled < 1024 or unit == "GiB":
            break
    return f"{scaled:,.1f} {unit}"


@runtime_app.command("keygen")
def runtime_keygen(
    key: Annotated[Path, typer.Argument(help="Where to write the private key (and KEY.pub).")],
) -> None:
    """Make an Ed25519 signing key: KEY (private, mode 600) and KEY.pub (to trust)."""
    from aimms_portal.packages import fingerprint, generate_signing_key

    public_path = key.with_name(key.name + ".pub")
    for path in (key, public_path):
        if path.exists() or path.is_symlink():
            raise _fail(f"{path} exists already; refusing to overwrite it.")
    private_pem, public_text = generate_signing_key()
    with _local_errors():
        _write_new_file(key, private_pem, 0o600)
        try:
            _write_new_file(public_path, public_text.encode("ascii") + b"\n", 0o644)
        except BaseException:
            key.unlink(missing_ok=True)  # no private key without its public half
            raise
    typer.echo(f"Private key: {key} (mode 600; keep it secret, never upload it).")
    typer.echo(f"Public key:  {public_path}, fingerprint {fingerprint(public_text)}")
    typer.echo(f"An admin trusts it with `aimms-portal admin trust-key NAME {public_path}`.")


@runtime_app.command("build")
def runtime_build(
    folder: Annotated[Path, typer.Argument(help="Folder with runtime.json and requirements.txt.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Package file (default NAME-VERSION.zip).")
    ] = None,
    wheels: Annotated[
        Path | None,
        typer.Option(help="Take the *.whl files of this folder instead of asking pip (offline)."),
    ] = None,
) -> None:
    """Build a runtime package: runtime.json plus the wheels of requirements.txt."""
    from aimms_portal.packages import build_runtime, parse_runtime_manifest

    with _local_errors():
        if wheels is not None and not wheels.is_dir():
            raise _fail(f"{wheels} is not a folder of wheels.")
        if output is None:
            manifest = parse_runtime_manifest((folder / "runtime.json").read_bytes())
            output = Path(f"{manifest.name}-{manifest.version}.zip")
        manifest = build_runtime(folder, output, wheel_dir=wheels)
    typer.echo(f"Built runtime {manifest.name} {manifest.version} into {output}.")
    typer.echo(f"Sign it with `aimms-portal runtime sign {output} --key KEY`.")


@runtime_app.command("sign")
def runtime_sign(
    package: Annotated[Path, typer.Argument(help="The runtime package to sign.")],
    key: Annotated[Path, typer.Option(help="Your private key (from `runtime keygen`).")],
) -> None:
    """Sign a runtime package with your private key; writes PACKAGE.sig beside it."""
    from aimms_portal.packages import sign_file

    signature_path = package.with_name(package.name + ".sig")
    with _local_errors():
        signature = sign_file(key.read_bytes(), package)
        _write_replacing(signature_path, signature.to_json())
    typer.echo(f"Signed {package} (sha256 {signature.sha256[:16]}...) with key {signature.key}.")
    typer.echo(f"Signature: {signature_path}")


@runtime_app.command("upload")
def runtime_upload(
    package: Annotated[Path, typer.Argument(help="The runtime package.")],
    signature: Annotated[
        Path | None, typer.Option(help="Its signature file (default PACKAGE.sig).")
    ] = None,
) -> None:
    """Upload a signed runtime package to the portal you are logged on to."""
    signature_path = signature or package.with_name(package.name + ".sig")
    if not package.is_file():
        raise _fail(f"{package} is not a file.")
    if not signature_path.is_file():
        raise _fail(
            f"No signature: {signature_path} is missing; sign the package with "
            f"`aimms-portal runtime sign {package} --key KEY`."
        )
    with _local_errors(), open(signature_path, "rb") as sig:
        # a real .sig is a few hundred bytes; the portal refuses anything over 4 KiB
        signature_bytes = sig.read(64 * 1024)
    with _stored_client() as client:
        runtime = client.upload_runtime(
            package, signature_bytes, progress=_progress(f"Uploading {package.name}")
        )
    typer.echo(
        f"Uploaded runtime {runtime['name']} {runtime['version']} ({_size(runtime['size'])}, "
        f"sha256 {runtime['sha256'][:16]}...), signed by {runtime['signer_name']}."
    )


@runtime_app.command("list")
def runtime_list() -> None:
    """List the portal's runtime versions."""
    with _stored_client() as client:
        rows = client.list_runtimes()
    typer.echo(
        f"{'NAME':<24} {'VERSION':<12} {'PYTHON':<10} {'RELEASES':>8}  {'SIGNER':<20} UPLOADED"
    )
    for row in rows:
        typer.echo(
            f"{row['name'][:24]:<24} {row['version'][:12]:<12} {row['python_requires'][:10]:<10} "
            f"{row['releases']:>8}  {row['signer_name'][:20]:<20} {row['created_at'][:10]}"
        )


@runtime_app.command("delete")
def runtime_delete(
    name: Annotated[str, typer.Argument(help="Runtime name.")],
    version: Annotated[str, typer.Argument(help="Runtime version.")],
) -> None:
    """Delete a runtime version that no release uses."""
    with _stored_client() as client:
        client.delete_runtime(name, version)
    typer.echo(f"Runtime {name} {version} deleted.")


@runtime_app.command("delete-unused")
def runtime_delete_unused() -> None:
    """Delete every runtime version that no release uses."""
    with _stored_client() as client:
        deleted = client.delete_unused_runtimes()
    if deleted:
        typer.echo(f"Deleted {len(deleted)} unused runtime version(s): {', '.join(deleted)}.")
    else:
        typer.echo("No unused runtime versions.")


@admin_app.command("trust-key")
def admin_trust_key(
    name: Annotated[str, typer.Argument(help="A name for the key, e.g. its publisher.")],
    public_key: Annotated[Path, typer.Argument(help="The KEY.pub file (`ed25519:...`).")],
) -> None:
    """Trust a publisher's signing key on the portal you are logged on to."""
    with _local_errors(), open(public_key, "rb") as source:
        # a public key text is 52 characters; more means this is not one
        text = source.read(4096).decode("utf-8", errors="replace").strip()
    with _stored_client() as client:
        key = client.trust_signing_key(name, text)
    typer.echo(f"Trusted key {key['name']!r} (fingerprint {key['fingerprint']}).")


# -- apps ----------------------------------------------------------------------------------


@apps_app.command("pack")
def app_pack(
    folder: Annotated[Path, typer.Argument(help="The app's folder, with app.json at its top.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Bundle file (default NAME-VERSION.zip, or .aimmsenc when encrypted).",
        ),
    ] = None,
    encrypt_for: Annotated[
        Path | None, typer.Option(help="Encrypt for the portal whose public key PEM this is.")
    ] = None,
    encrypt_for_portal: Annotated[
        bool, typer.Option(help="Encrypt for the portal you are logged on to.")
    ] = False,
) -> None:
    """Pack an app folder into a bundle, optionally encrypted for one portal."""
    from aimms_portal.packages import pack_app, parse_app_manifest, public_fingerprint

    if encrypt_for is not None and encrypt_for_portal:
        raise _fail("Give --encrypt-for or --encrypt-for-portal, not both.")
    public_pem: bytes | None = None
    if encrypt_for_portal:
        with _stored_client() as client:
            portal_key = client.portal_key()
        public_pem = portal_key["public_pem"].encode("ascii")
        typer.echo(
            f"Encrypting for the portal at {client.url}, key fingerprint "
            f"{portal_key['fingerprint']}."
        )
    with _local_errors():
        if encrypt_for is not None:
            public_pem = encrypt_for.read_bytes()
            typer.echo(f"Encrypting for the portal key {public_fingerprint(public_pem)}.")
        if output is None:
            manifest = parse_app_manifest((folder / "app.json").read_bytes())
            suffix = "zip" if public_pem is None else "aimmsenc"
            output = Path(f"{manifest.name}-{manifest.version}.{suffix}")
        manifest = pack_app(folder, output, encrypt_for=public_pem)
    state = "encrypted bundle" if public_pem else "bundle"
    typer.echo(f"Packed {manifest.name} {manifest.version} into {state} {output}.")


@apps_app.command("publish")
def app_publish(
    bundle: Annotated[Path, typer.Argument(help="The bundle file (from `app pack`).")],
    hide_previous: Annotated[
        bool, typer.Option(help="Hide the release that was latest until now.")
    ] = False,
) -> None:
    """Publish a bundle as the app's new latest release."""
    if not bundle.is_file():
        raise _fail(f"{bundle} is not a file.")
    with _stored_client() as client:
        release = client.publish_bundle(
            bundle, hide_previous=hide_previous, progress=_progress(f"Uploading {bundle.name}")
        )
    # the answer does not name the app, and an encrypted bundle does not show its name
    # without the portal's key: the file name stands for it
    encrypted = ", encrypted" if release["encrypted"] else ""
    hidden = "; the previous latest is hidden" if hide_previous else ""
    typer.echo(
        f"Published {bundle.name}: release {release['version']} is now latest "
        f"(runtime {release['runtime']}{encrypted}){hidden}."
    )


@apps_app.command("list")
def app_list() -> None:
    """List the apps you may see, with their latest release and your rights."""
    with _stored_client() as client:
        rows = client.list_apps()
    typer.echo(f"{'NAME':<24} {'LATEST':<12} {'RIGHTS':<15} {'CATEGORY':<16} TITLE")
    for row in rows:
        rights = " ".join(r for r in ("read", "write", "run") if row["rights"][r]) or "-"
        typer.echo(
            f"{row['name'][:24]:<24} {(row['latest_version'] or '-')[:12]:<12} {rights:<15} "
            f"{row['category'][:16]:<16} {row['title']}"
        )


@apps_app.command("releases")
def app_releases(name: Annotated[str, typer.Argument(help="The app.")]) -> None:
    """List an app's releases, newest first."""
    with _stored_client() as client:
        rows = client.list_releases(name)
    typer.echo(f"{'VERSION':<12} {'TAGS':<18} {'RUNTIME':<28} {'SIZE':>12}  PUBLISHED")
    for row in rows:
        tags = [t for t in ("latest", "hidden", "encrypted") if row[t]]
        typer.echo(
            f"{row['version'][:12]:<12} {','.join(tags) or '-':<18} {row['runtime'][:28]:<28} "
            f"{_size(row['bundle_size']):>12}  {row['created_at'][:10]} by {row['published_by']}"
        )


@apps_app.command("latest")
def app_latest(
    name: Annotated[str, typer.Argument(help="The app.")],
    version: Annotated[str, typer.Argument(help="The release that becomes latest.")],
) -> None:
    """Move the app's latest tag to a release (roll back or forward)."""
    with _stored_client() as client:
        release = client.set_latest(name, version)
    typer.echo(f"{name}: latest is now {release['version']}.")


@apps_app.command("grant")
def app_grant(
    name: Annotated[str, typer.Argument(help="The app.")],
    right: Annotated[str, typer.Option(help="read, write or run.")],
    user: Annotated[str | None, typer.Option(help="Grant to this user.")] = None,
    group: Annotated[str | None, typer.Option(help="Grant to this group.")] = None,
    deny: Annotated[bool, typer.Option("--deny", help="Deny instead of allow.")] = False,
) -> None:
    """Allow (or with --deny, deny) a right on an app to one user or group."""
    if (user is None) == (group is None):
        raise _fail("Give exactly one of --user and --group.")
    if right not in ("read", "write", "run"):
        raise _fail(f"--right must be read, write or run, not {right!r}.")
    principal_type, principal_name = ("user", user) if user is not None else ("group", group)
    assert principal_name is not None
    effect = "deny" if deny else "allow"
    with _stored_client() as client:
        grant = client.set_grant(
            name,
            principal_type=principal_type,
            principal_name=principal_name,
            right=right,
            effect=effect,
        )
    verb = "Denied" if grant["effect"] == "deny" else "Allowed"
    typer.echo(
        f"{verb} {grant['right']} on {name} to {grant['principal_type']} {grant['principal_name']}."
    )


@apps_app.command("rights")
def app_rights(
    name: Annotated[str, typer.Argument(help="The app.")],
    user: Annotated[str, typer.Option(help="Whose rights to explain.")],
) -> None:
    """Explain a user's effective rights on an app: which grant decided each."""
    with _stored_client() as client:
        explained = client.explain_rights(name, user)
    typer.echo(f"Rights of {explained['user']} on {explained['app']}:")
    for right in ("read", "write", "run"):
        decision = explained["rights"][right]
        verdict = "allowed" if decision["allowed"] else "denied"
        typer.echo(f"  {right:<6} {verdict:<8} {decision['reason']}")


# -- cases ---------------------------------------------------------------------------------

case_app = typer.Typer(
    help="Cases: upload, download, list and delete data snapshots.", no_args_is_help=True
)
app.add_typer(case_app, name="case")


@case_app.command("upload")
def case_upload(
    file: Annotated[Path, typer.Argument(help="The file to upload as a case.")],
    name: Annotated[str | None, typer.Option(help="The case's name (default: file name).")] = None,
    app_name: Annotated[str | None, typer.Option("--app", help="The app it is for.")] = None,
    kind: Annotated[str, typer.Option(help="input or saved.")] = "input",
) -> None:
    """Upload a file as a case (compressed in the portal's storage)."""
    if not file.is_file():
        raise _fail(f"{file} is not a file.")
    with _stored_client() as client:
        case = client.upload_case(
            file, name=name, app=app_name, kind=kind, progress=_progress(f"Uploading {file.name}")
        )
    for_app = f" for {case['app']}" if case["app"] else ""
    typer.echo(
        f"Uploaded case {case['id']} {case['name']!r}{for_app} ({_size(case['size'])}, "
        f"{_size(case['stored_size'])} stored, sha256 {case['sha256'][:16]}...)."
    )


@case_app.command("download")
def case_download(
    case_id: Annotated[int, typer.Argument(help="Id from `case list`.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="File to write (default: case name).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace the output file if it exists.")] = False,
) -> None:
    """Download a case's content to a file."""
    with _stored_client() as client:
        case = client.get_case(case_id)
        if output is None:
            # the portal refuses names with slashes, but this name came over the network
            output = Path(Path(str(case["name"])).name)
            if output.name in ("", ".", ".."):
                raise _fail(f"Case {case_id} has no usable file name; give one with -o.")
        if output.exists() and not force:
            raise _fail(f"{output} exists already; give --force to replace it.")
        client.download_case(case_id, output, progress=_progress(f"Downloading {output.name}"))
    typer.echo(f"Downloaded case {case_id} {case['name']!r} to {output} ({_size(case['size'])}).")


@case_app.command("list")
def case_list(
    app_name: Annotated[str | None, typer.Option("--app", help="Only cases of this app.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only input, output or saved.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Everyone's cases (admins).")] = False,
) -> None:
    """List your cases, newest first."""
    with _stored_client() as client:
        rows = client.list_cases(app=app_name, kind=kind, all_users=all_)
    owner = f" {'OWNER':<16}" if all_ else ""
    typer.echo(f"{'ID':>6}  {'KIND':<7} {'APP':<20}{owner} {'SIZE':>11}  {'CREATED':<16}  NAME")
    for row in rows:
        owner = f" {row['owner'][:16]:<16}" if all_ else ""
        created = row["created_at"][:16].replace("T", " ")
        typer.echo(
            f"{row['id']:>6}  {row['kind']:<7} {(row['app'] or '-')[:20]:<20}{owner} "
            f"{_size(row['size']):>11}  {created:<16}  {row['name']}"
        )


@case_app.command("delete")
def case_delete(case_id: Annotated[int, typer.Argument(help="Id from `case list`.")]) -> None:
    """Delete a case and its stored data."""
    with _stored_client() as client:
        client.delete_case(case_id)
    typer.echo(f"Case {case_id} deleted.")


# -- jobs ----------------------------------------------------------------------------------

job_app = typer.Typer(
    help="Solve jobs: submit, follow, wait for results, cancel and delete.",
    no_args_is_help=True,
)
app.add_typer(job_app, name="job")

#: The exit status of ``job submit --wait`` and ``job wait`` by how the job ended; the
#: command's own errors exit with 1, wrong usage with 2.
JOB_EXIT_CODES = {"succeeded": 0, "failed": 3, "cancelled": 4, "timed_out": 5}
WAIT_HELP = "0 if the job succeeded, 3 failed, 4 cancelled, 5 timed out; 1 an error."


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _argument_value(raw: str) -> Any:
    """``raw`` as JSON when it is valid JSON (``42``, ``true``, ``[1, 2]``), else as text.

    NaN and Infinity are not JSON (the portal refuses them), so they stay text too.
    """
    try:
        return json.loads(raw, parse_constant=_not_json)
    except ValueError:
        return raw


def _job_arguments(pairs: list[str], arguments_file: Path | None) -> dict[str, Any] | None:
    """The job's arguments: the object in ``arguments_file``, then each KEY=VALUE on top."""
    if not pairs and arguments_file is None:
        return None
    arguments: dict[str, Any] = {}
    if arguments_file is not None:
        with _local_errors():
            text = arguments_file.read_text(encoding="utf-8")
        try:
            loaded = json.loads(text, parse_constant=_not_json)
        except ValueError as exc:
            raise _fail(f"{arguments_file} is not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise _fail(f"{arguments_file} must hold a JSON object of arguments.")
        arguments.update(loaded)
    for pair in pairs:
        key, equals, raw = pair.partition("=")
        if not equals or not key:
            raise _fail(f"--arg takes KEY=VALUE, not {pair!r}.")
        arguments[key] = _argument_value(raw)
    return arguments


def _start_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _fail(
            f"--start-at takes an ISO 8601 time such as 2026-12-24T18:00:00Z, not {text!r}."
        ) from exc
    if when.tzinfo is None:
        raise _fail(f"--start-at needs a time zone: {text}Z (UTC) or {text}+01:00, say.")
    return when


def _waiting(job_id: int) -> None:
    if sys.stderr.isatty():
        typer.echo(f"Waiting for job {job_id} to finish...", err=True)


def _exit_as_job(job: dict[str, Any]) -> None:
    """End the command with the exit status of how the job ended (0 only if it succeeded)."""
    status = JOB_EXIT_CODES.get(job["state"], 1)
    if status:
        raise typer.Exit(status)


@job_app.command("submit", epilog=f"Exit status with --wait: {WAIT_HELP}")
def job_submit(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="The app.")],
    procedure: Annotated[
        str, typer.Argument(metavar="PROCEDURE", help="One of the app's solve procedures.")
    ],
    input_file: Annotated[
        Path | None, typer.Option("--input", help="A file to upload as the input case.")
    ] = None,
    input_case: Annotated[
        int | None, typer.Option(help="An input case uploaded before (id from `case list`).")
    ] = None,
    version: Annotated[str | None, typer.Option(help="A release (default: latest).")] = None,
    arg: Annotated[
        list[str] | None,
        typer.Option(
            "--arg",
            metavar="KEY=VALUE",
            help="An argument for the procedure; VALUE is read as JSON when it is JSON, "
            "else as text. Repeat.",
        ),
    ] = None,
    arguments_file: Annotated[
        Path | None, typer.Option(help="A JSON object of arguments (--arg adds to it).")
    ] = None,
    priority: Annotated[int, typer.Option(help="-100 to 100; above 0 for admins only.")] = 0,
    time_limit: Annotated[
        int | None, typer.Option(min=1, help="Seconds (default and most: the app's limit).")
    ] = None,
    start_at: Annotated[
        str | None, typer.Option(help="Not before this time (ISO 8601, with a time zone).")
    ] = None,
    hook_url: Annotated[
        str | None, typer.Option(help="An address that gets a signed POST on each state change.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the job ends; exit with how it ended.")
    ] = False,
) -> None:
    """Submit a solve job: run one procedure of an app on an input case."""
    if input_file is not None and input_case is not None:
        raise _fail("Give --input or --input-case, not both.")
    if input_file is not None and not input_file.is_file():
        raise _fail(f"{input_file} is not a file.")
    arguments = _job_arguments(arg or [], arguments_file)
    when = _start_time(start_at) if start_at is not None else None
    with _stored_client() as client:
        job = client.submit(
            app_name,
            procedure,
            input=input_file,
            input_case_id=input_case,
            version=version,
            arguments=arguments,
            priority=priority,
            time_limit_s=time_limit,
            start_at=when,
            hook_url=hook_url,
            progress=_progress(f"Uploading {input_file.name}") if input_file else None,
        )
        on_input = f", input case {job['input_case_id']}" if job["input_case_id"] else ""
        typer.echo(
            f"Job {job['id']} {job['state']}: {job['app']} {job['version']}, "
            f"procedure {job['procedure']}{on_input}."
        )
        if job["hook_secret"]:
            typer.echo(f"Its state hooks are signed with the key {job['hook_secret']}.")
        if not wait:
            return
        _waiting(job["id"])
        job = client.wait(job["id"])
    typer.echo(job_outcome(job))
    _exit_as_job(job)


@job_app.command("list")
def job_list(
    state: Annotated[
        str | None, typer.Option(help="Only jobs in this state, or active, or finished.")
    ] = None,
    app_name: Annotated[str | None, typer.Option("--app", help="Only jobs of this app.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Everyone's jobs (admins).")] = False,
) -> None:
    """List your jobs, newest first."""
    with _stored_client() as client:
        rows = client.list_jobs(state=state, app=app_name, all_users=all_)
    owner = f" {'OWNER':<16}" if all_ else ""
    typer.echo(
        f"{'ID':>6}  {'STATE':<10} {'APP':<20} {'VERSION':<10} {'PROCEDURE':<16}{owner} "
        f"{'CREATED':<16}  REASON"
    )
    for row in rows:
        owner = f" {row['owner'][:16]:<16}" if all_ else ""
        created = row["created_at"][:16].replace("T", " ")
        line = (
            f"{row['id']:>6}  {row['state']:<10} {row['app'][:20]:<20} "
            f"{row['version'][:10]:<10} {row['procedure'][:16]:<16}{owner} {created:<16}  "
            f"{row['reason']}"
        )
        typer.echo(line.rstrip())


@job_app.command("show")
def job_show(
    job_id: Annotated[int, typer.Argument(help="Id from `job list`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """Show one job: its state, attempts, cases, arguments and times."""
    with _stored_client() as client:
        job = client.get_job(job_id)
    if as_json:
        typer.echo(json.dumps(job, indent=2))
        return

    def when(value: str | None) -> str:
        return value[:19].replace("T", " ") + " UTC" if value else "-"

    state = job["state"] + (f" ({job['reason']})" if job["reason"] else "")
    if job["cancel_requested"] and job["state"] not in JOB_EXIT_CODES:
        state += ", cancel asked"
    fields = [
        ("owner", job["owner"]),
        ("state", state),
        ("attempt", f"{job['attempt']} of {job['max_attempts']}"),
        ("priority", str(job["priority"])),
        ("time limit", f"{job['time_limit_s']} s"),
        ("start at", when(job["start_at"])),
        ("input case", str(job["input_case_id"] or "-")),
        ("output case", str(job["output_case_id"] or "-")),
        ("arguments", json.dumps(job["arguments"]) if job["arguments"] else "-"),
        ("exit code", "-" if job["exit_code"] is None else str(job["exit_code"])),
        ("hook URL", job["hook_url"] or "-"),
        ("created", when(job["created_at"])),
        ("started", when(job["started_at"])),
        ("finished", when(job["finished_at"])),
    ]
    typer.echo(f"Job {job['id']}: {job['app']} {job['version']}, procedure {job['procedure']}")
    for label, value in fields:
        typer.echo(f"  {label:<12} {value}")


@job_app.command("cancel")
def job_cancel(job_id: Annotated[int, typer.Argument(help="Id from `job list`.")]) -> None:
    """Cancel a job: a waiting one at once, a running one within about a second."""
    with _stored_client() as client:
        job = client.cancel_job(job_id)
    if job["state"] == "cancelled":
        typer.echo(f"Job {job['id']} cancelled.")
    else:
        typer.echo(
            f"Job {job['id']} is {job['state']}: asked to stop, it ends within about a second."
        )


@job_app.command("delete")
def job_delete(
    job_id: Annotated[int | None, typer.Argument(help="Id from `job list`.")] = None,
    finished: Annotated[
        bool, typer.Option("--finished", help="Delete all your finished jobs instead.")
    ] = False,
    app_name: Annotated[
        str | None, typer.Option("--app", help="With --finished: only this app's.")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="With --finished: everyone's (admins).")
    ] = False,
) -> None:
    """Delete a finished job with its log and cases (or, with --finished, all of them)."""
    if (job_id is None) != finished:
        raise _fail("Give a job id, or --finished for every finished job (not both).")
    if job_id is not None and (app_name is not None or all_):
        raise _fail("--app and --all go with --finished.")
    with _stored_client() as client:
        if job_id is not None:
            client.delete_job(job_id)
            typer.echo(f"Job {job_id} deleted.")
            return
        deleted = client.delete_jobs(app=app_name, all_users=all_)
    typer.echo(f"Deleted {deleted} finished job(s)." if deleted else "No finished jobs to delete.")


@job_app.command("logs")
def job_logs(
    job_id: Annotated[int, typer.Argument(help="Id from `job list`.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job has finished.")
    ] = False,
) -> None:
    """Print a job's log (every attempt's, with the portal's own notes)."""
    with _stored_client() as client:
        for chunk in client.logs(job_id, follow=follow):
            typer.echo(chunk["text"], nl=False)


@job_app.command("wait", epilog=f"Exit status: {WAIT_HELP}")
def job_wait(
    job_id: Annotated[int, typer.Argument(help="Id from `job list`.")],
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Give up waiting after this many seconds.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Write the output case here if the job succeeds."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace the output file if it exists.")] = False,
) -> None:
    """Wait until a job has finished; print how it ended (and fetch its output)."""
    if output is not None and output.exists() and not output.is_dir() and not force:
        raise _fail(f"{output} exists already; give --force to replace it.")
    with _stored_client() as client:
        _waiting(job_id)
        job = client.wait(job_id, timeout=timeout)
        typer.echo(job_outcome(job))
        if output is not None and job["state"] == "succeeded":
            written = client.result(job["id"], output, progress=_progress("Downloading output"))
            typer.echo(f"Wrote output case {job['output_case_id']} to {written}.")
        elif output is not None:
            kept = job["output_case_id"]
            hint = f"; its output case: `aimms-portal case download {kept}`" if kept else ""
            typer.echo(f"Nothing written to {output}: the job did not succeed{hint}.", err=True)
    _exit_as_job(job)


# -- desktop sessions ----------------------------------------------------------------------


@app.command("desktop")
def desktop_session(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="The app.")],
    version: Annotated[str | None, typer.Option(help="A release (default: latest).")] = None,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Only print the app's address.")
    ] = False,
) -> None:
    """Run an app on this computer as a desktop session (one of your seats) and open it in
    the browser; its solves go to the portal as jobs. Ctrl-C ends it."""
    import logging

    from aimms_portal.desktop import run_desktop

    # the runner's progress (preparing the runtime, the app's port) goes to stderr
    logger = logging.getLogger("aimms_portal")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with _stored_client() as client:
            ended = run_desktop(
                client, app_name, version=version, open_browser=not no_browser, say=typer.echo
            )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
    summary = f"Desktop session {ended.session_id} {ended.state}"
    summary += f": {ended.reason}." if ended.reason else "."
    if ended.state != "stopped":
        raise _fail(summary)
    typer.echo(summary)


if __name__ == "__main__":
    main()
