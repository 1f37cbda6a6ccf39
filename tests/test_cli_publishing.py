"""``aimms-portal runtime ...``, ``app ...`` and ``admin trust-key`` against a real server.

The REST API runs under uvicorn on a loopback port (the ``portal`` fixture of
test_cli.py); the commands run in-process with their credentials in a temporary config
folder. Runtime packages are built offline from the corpus's one small wheel; bundles
are packed from the corpus's valid app folder.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from aimms_portal import config
from aimms_portal.client import SIGNATURE_HEADER, UPLOAD_CHUNK_SIZE, PortalClient
from aimms_portal.models import Role, User
from aimms_portal.packages import generate_portal_keypair, signing
from tests import test_cli
from tests.corpus import CORPUS_DIR
from tests.test_cli import assert_clean_failure, cli, cli_login, credentials

pytestmark = pytest.mark.sqlite

# the served portal and the CLI's config folder, as test_cli.py makes them
portal = test_cli.portal
cli_home = test_cli.cli_home

RUNTIME = "corpus-runtime"
APP = "corpus-app"


# -- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder that is also the current one (default output files land here)."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def logged_on_admin(portal: str, cli_home: Path, admin: User) -> str:
    """The CLI logged on to the served portal as the admin ``root``; returns the URL."""
    result = cli_login(portal, "root")
    assert result.exit_code == 0, result.output
    return portal


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    """A folder holding the corpus's one small wheel (for offline runtime builds)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    with zipfile.ZipFile(CORPUS_DIR / "runtime_valid.zip") as package:
        for name in package.namelist():
            if name.startswith("wheels/") and name.endswith(".whl"):
                (folder / Path(name).name).write_bytes(package.read(name))
    assert any(folder.iterdir())
    return folder


def runtime_source(folder: Path, version: str = "1.0") -> Path:
    """A runtime folder: the corpus's runtime.json at ``version`` and a requirements.txt."""
    source = folder / f"runtime-src-{version}"
    source.mkdir()
    with zipfile.ZipFile(CORPUS_DIR / "runtime_valid.zip") as package:
        manifest = json.loads(package.read("runtime.json"))
    manifest["version"] = version
    (source / "runtime.json").write_text(json.dumps(manifest))
    (source / "requirements.txt").write_text("corpus-demo\n")
    return source


def app_source(folder: Path, version: str) -> Path:
    """The corpus's valid app folder with ``version`` in its app.json."""
    source = folder / f"app-src-{version}"
    with zipfile.ZipFile(CORPUS_DIR / "bundle_valid.zip") as bundle:
        bundle.extractall(source)  # noqa: S202  (the corpus's own valid file)
    manifest_path = source / "app.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = version
    manifest_path.write_text(json.dumps(manifest))
    return source


def ok(*args: str) -> str:
    """Run a command that must succeed; its standard output."""
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def make_signed_runtime(workdir: Path, wheels: Path, version: str = "1.0") -> tuple[Path, Path]:
    """keygen (once), build and sign; returns (package, private key)."""
    key = workdir / "publisher.key"
    if not key.exists():
        ok("runtime", "keygen", str(key))
    package = workdir / f"{RUNTIME}-{version}.zip"
    ok("runtime", "build", str(runtime_source(workdir, version)), "--wheels", str(wheels))
    ok("runtime", "sign", str(package), "--key", str(key))
    return package, key


def api(portal: str, cli_home: Path) -> httpx.Client:
    """An HTTP client with the CLI's stored token, to check what the commands did."""
    token = credentials(cli_home)["token"]
    return httpx.Client(base_url=f"{portal}/api/v1", headers={"Authorization": f"Bearer {token}"})


# -- the whole flow -----------------------------------------------------------------------


def test_publishing_flow_from_keygen_to_effective_rights(
    logged_on_admin,
    cli_home,
    workdir,
    wheels,
    make_user: Callable[..., User],
):
    portal_url = logged_on_admin
    make_user("ann")

    # a key, a runtime package built offline, its signature
    key_out = ok("runtime", "keygen", "publisher.key")
    key, public = workdir / "publisher.key", workdir / "publisher.key.pub"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    public_text = public.read_text().strip()
    assert public_text.startswith("ed25519:")
    assert signing.fingerprint(public_text) in key_out
    assert signing.public_text_of(key.read_bytes()) == public_text

    built = ok("runtime", "build", str(runtime_source(workdir)), "--wheels", str(wheels))
    package = workdir / f"{RUNTIME}-1.0.zip"
    assert f"Built runtime {RUNTIME} 1.0 into {package.name}" in built
    with zipfile.ZipFile(package) as archive:
        assert sorted(archive.namelist()) == [
            "runtime.json",
            "wheels/corpus_demo-1.0-py3-none-any.whl",
        ]

    ok("runtime", "sign", str(package), "--key", str(key))
    sig = signing.Signature.from_json((workdir / f"{package.name}.sig").read_bytes())
    assert sig.sha256 == signing.sha256_file(package)
    assert sig.key == signing.fingerprint(public_text)

    # the admin trusts the key; the signed package is accepted
    trusted = ok("admin", "trust-key", "publisher", str(public))
    assert f"Trusted key 'publisher' (fingerprint {sig.key})" in trusted
    uploaded = ok("runtime", "upload", str(package))
    assert f"Uploaded runtime {RUNTIME} 1.0" in uploaded and "signed by publisher" in uploaded
    listed = ok("runtime", "list")
    row = next(line for line in listed.splitlines() if line.startswith(RUNTIME))
    assert row.split()[:4] == [RUNTIME, "1.0", ">=3.11", "0"]

    # two releases of the app, then roll back
    ok("app", "pack", str(app_source(workdir, "1.0")))
    ok("app", "pack", str(app_source(workdir, "1.1")), "-o", "second.zip")
    first = ok("app", "publish", f"{APP}-1.0.zip")
    assert "release 1.0 is now latest" in first and f"runtime {RUNTIME} 1.0" in first
    second = ok("app", "publish", "second.zip", "--hide-previous")
    assert "release 1.1 is now latest" in second and "previous latest is hidden" in second

    apps = ok("app", "list")
    assert next(line for line in apps.splitlines() if line.startswith(APP)).split()[:5] == [
        APP,
        "1.1",
        "read",
        "write",
        "run",
    ]
    releases = ok("app", "releases", APP).splitlines()
    assert releases[1].split()[:2] == ["1.1", "latest"]
    assert releases[2].split()[:2] == ["1.0", "hidden"]

    rolled = ok("app", "latest", APP, "1.0")
    assert f"{APP}: latest is now 1.0." in rolled
    with api(portal_url, cli_home) as http:
        assert http.get(f"/apps/{APP}").json()["latest_version"] == "1.0"
    assert "1.0" in ok("app", "list").split(APP, 1)[1].split()[0]

    # rights: ann sees nothing until a grant, deny wins
    before = ok("app", "rights", APP, "--user", "ann")
    assert before.startswith(f"Rights of ann on {APP}:")
    assert all(" denied " in line for line in before.splitlines()[1:])
    allowed = ok("app", "grant", APP, "--group", "everyone", "--right", "run")
    assert f"Allowed run on {APP} to group everyone." in allowed
    ok("app", "grant", APP, "--group", "everyone", "--right", "read")
    run_line = next(
        line
        for line in ok("app", "rights", APP, "--user", "ann").splitlines()
        if line.split()[0] == "run"
    )
    assert run_line.split()[1] == "allowed" and "everyone" in run_line
    denied = ok("app", "grant", APP, "--user", "ann", "--right", "run", "--deny")
    assert f"Denied run on {APP} to user ann." in denied
    rights = {
        line.split()[0]: line.split()[1]
        for line in ok("app", "rights", APP, "--user", "ann").splitlines()[1:]
    }
    assert rights == {"read": "allowed", "write": "denied", "run": "denied"}

    # a runtime in use cannot go; an unused one goes with delete-unused
    in_use = cli("runtime", "delete", RUNTIME, "1.0")
    assert_clean_failure(in_use, f"Runtime {RUNTIME} 1.0 is used by")
    assert "(in_use)" in in_use.stderr
    other, _ = make_signed_runtime(workdir, wheels, "0.9")
    ok("runtime", "upload", str(other))
    assert f"{RUNTIME} 0.9" in ok("runtime", "delete-unused")
    assert "No unused runtime versions." in ok("runtime", "delete-unused")
    ok("runtime", "upload", str(other))
    assert f"Runtime {RUNTIME} 0.9 deleted." in ok("runtime", "delete", RUNTIME, "0.9")


def test_encrypt_for_portal_publishes_an_encrypted_release(
    logged_on_admin,
    cli_home,
    workdir,
    wheels,
):
    package, _ = make_signed_runtime(workdir, wheels)
    ok("admin", "trust-key", "publisher", str(workdir / "publisher.key.pub"))
    ok("runtime", "upload", str(package))
    with api(logged_on_admin, cli_home) as http:
        portal_fingerprint = http.get("/portal-key").json()["fingerprint"]

    packed = ok("app", "pack", str(app_source(workdir, "2.0")), "--encrypt-for-portal")
    published = ok("app", "publish", f"{APP}-2.0.aimmsenc")

    assert f"key fingerprint {portal_fingerprint}" in packed
    assert (workdir / f"{APP}-2.0.aimmsenc").read_bytes().startswith(b"AIMMSENC")
    assert "release 2.0 is now latest" in published and "encrypted" in published
    assert ok("app", "releases", APP).splitlines()[1].split()[:2] == ["2.0", "latest,encrypted"]


# -- bad input: one clear line, status 1 ---------------------------------------------------


def test_a_package_signed_by_an_untrusted_key_is_refused(
    logged_on_admin,
    workdir,
    wheels,
):
    package, _ = make_signed_runtime(workdir, wheels)

    result = cli("runtime", "upload", str(package))

    assert_clean_failure(result, "does not trust")
    assert "(untrusted_key)" in result.stderr
    assert RUNTIME not in ok("runtime", "list")


def test_a_package_changed_after_signing_is_refused(logged_on_admin, workdir, wheels):
    package, _ = make_signed_runtime(workdir, wheels)
    ok("admin", "trust-key", "publisher", str(workdir / "publisher.key.pub"))
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0x01
    package.write_bytes(bytes(data))

    result = cli("runtime", "upload", str(package))

    assert_clean_failure(result, "The signature does not match the package")
    assert "(bad_signature)" in result.stderr


def test_uploading_without_a_signature_file_says_how_to_sign(logged_on_admin, workdir, wheels):
    package, _ = make_signed_runtime(workdir, wheels)
    (workdir / f"{package.name}.sig").unlink()

    result = cli("runtime", "upload", package.name)

    assert_clean_failure(result, f"No signature: {package.name}.sig is missing")
    assert "aimms-portal runtime sign" in result.stderr


def test_a_bundle_encrypted_for_another_portal_is_refused(
    logged_on_admin,
    workdir,
    wheels,
):
    package, _ = make_signed_runtime(workdir, wheels)
    ok("admin", "trust-key", "publisher", str(workdir / "publisher.key.pub"))
    ok("runtime", "upload", str(package))
    _, other_public = generate_portal_keypair()
    (workdir / "other.pem").write_bytes(other_public)

    ok("app", "pack", str(app_source(workdir, "1.0")), "--encrypt-for", "other.pem")
    result = cli("app", "publish", f"{APP}-1.0.aimmsenc")

    assert_clean_failure(result, "encrypted for another portal")


def test_publishing_needs_the_runtime_it_names(logged_on_admin, workdir):
    ok("app", "pack", str(app_source(workdir, "1.0")))

    result = cli("app", "publish", f"{APP}-1.0.zip")

    assert result.exit_code == 1 and "Traceback" not in result.output
    assert RUNTIME in result.stderr


def test_an_upload_over_the_limit_is_refused_with_the_limit(logged_on_admin, workdir, monkeypatch):
    monkeypatch.setenv("AIMMS_PORTAL_UPLOAD_MAX_BYTES", "1000")
    config.get_settings.cache_clear()
    (workdir / "big.zip").write_bytes(os.urandom(5 * UPLOAD_CHUNK_SIZE))

    result = cli("app", "publish", "big.zip")

    assert_clean_failure(result, "exceeds the limit of 1000 bytes. (too_large)")


def test_keygen_refuses_to_overwrite_a_key(workdir):
    ok("runtime", "keygen", "k")
    before = (workdir / "k").read_bytes()
    (workdir / "k.pub").unlink()

    result = cli("runtime", "keygen", "k")

    assert_clean_failure(result, "k exists already; refusing to overwrite it.")
    assert (workdir / "k").read_bytes() == before
    assert not (workdir / "k.pub").exists()


def test_build_with_an_invalid_manifest_names_the_problem(workdir, wheels):
    source = runtime_source(workdir)
    (source / "runtime.json").write_text('{"format": 1, "name": "x y"}')

    result = cli("runtime", "build", str(source), "-o", "out.zip", "--wheels", str(wheels))

    assert_clean_failure(result, "runtime.json:")
    assert "'version' is missing" in result.stderr
    assert not (workdir / "out.zip").exists()


def test_signing_with_a_missing_key_file_is_a_clear_error(workdir, wheels):
    ok("runtime", "build", str(runtime_source(workdir)), "--wheels", str(wheels))

    result = cli("runtime", "sign", f"{RUNTIME}-1.0.zip", "--key", "nowhere.key")

    assert_clean_failure(result, "nowhere.key: No such file or directory")


def test_pack_refuses_two_encryption_targets(workdir):
    result = cli(
        "app", "pack", str(app_source(workdir, "1.0")), "--encrypt-for", "x", "--encrypt-for-portal"
    )

    assert_clean_failure(result, "not both")


def test_grant_needs_exactly_one_principal(logged_on_admin):
    assert_clean_failure(cli("app", "grant", APP, "--right", "run"), "exactly one of --user")
    assert_clean_failure(
        cli("app", "grant", APP, "--right", "run", "--user", "a", "--group", "b"),
        "exactly one of --user",
    )
    assert_clean_failure(cli("app", "grant", APP, "--right", "fly", "--user", "a"), "--right")


def test_a_publisher_cannot_trust_keys(portal, cli_home, workdir, make_user):
    make_user("pub", role=Role.publisher.value)
    assert cli_login(portal, "pub").exit_code == 0
    ok("runtime", "keygen", "k")

    result = cli("admin", "trust-key", "mine", "k.pub")

    assert_clean_failure(result, "You do not have the rights for this action. (forbidden)")


# -- the client streams uploads ------------------------------------------------------------


class RecordingTransport(httpx.BaseTransport):
    """Answers every request with 201 after reading its body chunk by chunk as sent.

    (httpx's MockTransport reads the whole body first, which would hide the chunks.)
    """

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.chunks: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.headers = dict(request.headers)
        assert isinstance(request.stream, httpx.SyncByteStream)
        self.chunks = [len(chunk) for chunk in request.stream]
        return httpx.Response(201, json={"version": "1.0"})


@pytest.fixture
def recorded_upload() -> Iterator[tuple[PortalClient, RecordingTransport]]:
    """A client whose transport records one upload's headers and chunk sizes."""
    transport = RecordingTransport()
    with PortalClient("http://portal.test", "t", transport=transport) as client:
        yield client, transport


def test_uploads_stream_the_file_in_chunks_with_its_length(recorded_upload, tmp_path):
    client, seen = recorded_upload
    package = tmp_path / "big.zip"
    size = 3 * UPLOAD_CHUNK_SIZE + 17
    package.write_bytes(os.urandom(size))
    progress: list[tuple[int, int]] = []

    client.upload_runtime(package, b'{"sig": 1}', progress=lambda *p: progress.append(p))

    headers = seen.headers
    assert headers["content-length"] == str(size)
    assert "transfer-encoding" not in headers
    assert base64.b64decode(headers[SIGNATURE_HEADER.lower()]) == b'{"sig": 1}'
    assert seen.chunks == [UPLOAD_CHUNK_SIZE] * 3 + [17]
    assert progress[-1] == (size, size) and len(progress) == 4


def test_publishing_a_missing_file_is_a_client_error(recorded_upload, tmp_path):
    client, _ = recorded_upload

    with pytest.raises(Exception, match="Cannot read"):
        client.publish_bundle(tmp_path / "nothing.zip")
