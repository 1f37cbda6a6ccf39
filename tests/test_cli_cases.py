"""``aimms-portal case ...`` against a real server.

The REST API runs under uvicorn on a loopback port (the ``portal`` fixture of
test_cli.py); the commands run in-process with their credentials in a temporary config
folder, as in test_cli_publishing.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from aimms_portal import config
from aimms_portal.client import PortalClient, PortalClientError
from aimms_portal.models import Role, User
from tests import test_cli
from tests.services.test_cases import case_rows, compressible, make_app
from tests.test_cli import assert_clean_failure, cli, cli_login, credentials

pytestmark = pytest.mark.sqlite

portal = test_cli.portal
cli_home = test_cli.cli_home

MIB = 1024 * 1024


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder that is also the current one (downloads land here by default)."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def ann(portal: str, cli_home: Path, make_user: Callable[..., User]) -> User:
    """The CLI logged on as ann, a plain user."""
    user = make_user("ann")
    assert cli_login(portal, "ann").exit_code == 0
    return user


def ok(*args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def only_id(listing: str) -> list[int]:
    return [int(line.split()[0]) for line in listing.splitlines()[1:]]


def test_upload_list_download_and_delete(ann, workdir, settings_env):
    make_app("planner", ann)
    data = compressible(3 * MIB)
    (workdir / "demand.csv").write_bytes(data)

    uploaded = ok("case", "upload", "demand.csv", "--app", "planner")
    [row] = case_rows()
    assert uploaded.startswith(f"Uploaded case {row.id} 'demand.csv' for planner (3.0 MiB, ")
    assert f"sha256 {row.sha256[:16]}..." in uploaded
    ok("case", "upload", "demand.csv", "--name", "second copy", "--kind", "saved")

    listing = ok("case", "list").splitlines()
    assert listing[0].split() == ["ID", "KIND", "APP", "SIZE", "CREATED", "NAME"]
    assert listing[1].split()[1:3] == ["saved", "-"] and listing[1].endswith("second copy")
    assert listing[2].split()[:5] == [str(row.id), "input", "planner", "3.0", "MiB"]
    assert listing[2].endswith("demand.csv")
    assert only_id(ok("case", "list", "--app", "planner")) == [row.id]
    assert len(only_id(ok("case", "list", "--kind", "saved"))) == 1

    # the default output is the case's name, which exists here: refused, then forced
    (workdir / "demand.csv").write_bytes(b"local edits")
    refused = cli("case", "download", str(row.id))
    assert_clean_failure(refused, "demand.csv exists already; give --force")
    assert (workdir / "demand.csv").read_bytes() == b"local edits"
    forced = ok("case", "download", str(row.id), "--force")
    assert f"Downloaded case {row.id} 'demand.csv' to demand.csv (3.0 MiB)." in forced
    assert (workdir / "demand.csv").read_bytes() == data
    ok("case", "download", str(row.id), "-o", "copy.csv")
    assert (workdir / "copy.csv").read_bytes() == data
    assert sorted(p.name for p in workdir.iterdir()) == ["copy.csv", "demand.csv"]

    assert ok("case", "delete", str(row.id)) == f"Case {row.id} deleted.\n"
    assert row.id not in only_id(ok("case", "list"))
    gone = cli("case", "download", str(row.id), "-o", "again.csv")
    assert_clean_failure(gone, f"No case {row.id}. (not_found)")
    assert not (workdir / "again.csv").exists()


def test_another_users_case_is_not_found_but_admins_see_it(
    portal, cli_home, workdir, make_user, ann
):
    (workdir / "mine.txt").write_bytes(b"ann's")
    ok("case", "upload", "mine.txt")
    [row] = case_rows()

    make_user("bob")
    assert cli_login(portal, "bob").exit_code == 0
    for command in (("download", str(row.id)), ("delete", str(row.id))):
        assert_clean_failure(cli("case", *command), f"No case {row.id}. (not_found)")
    assert only_id(ok("case", "list")) == []
    assert_clean_failure(
        cli("case", "list", "--all"), "Only admins may list everyone's cases. (forbidden)"
    )

    make_user("root", role=Role.admin.value)
    assert cli_login(portal, "root").exit_code == 0
    everyone = ok("case", "list", "--all").splitlines()
    assert everyone[0].split()[3] == "OWNER"
    assert everyone[1].split()[:4] == [str(row.id), "input", "-", "ann"]
    ok("case", "download", str(row.id), "-o", "seen.txt")
    assert (workdir / "seen.txt").read_bytes() == b"ann's"


def test_refused_uploads_are_one_clear_line(ann, workdir, monkeypatch):
    (workdir / "data.bin").write_bytes(os.urandom(5 * MIB))

    assert_clean_failure(cli("case", "upload", "missing.bin"), "missing.bin is not a file.")
    assert_clean_failure(
        cli("case", "upload", "data.bin", "--name", "a/b"), "(it contains a slash). (invalid_name)"
    )
    assert_clean_failure(cli("case", "upload", "data.bin", "--app", "nope"), "(not_found)")
    monkeypatch.setenv("AIMMS_PORTAL_UPLOAD_MAX_BYTES", "1000")
    config.get_settings.cache_clear()
    assert_clean_failure(
        cli("case", "upload", "data.bin"), "exceeds the limit of 1000 bytes. (too_large)"
    )
    assert case_rows() == []


def test_a_damaged_case_downloads_nothing(ann, workdir, settings_env):
    data = os.urandom(4 * MIB)
    (workdir / "big.bin").write_bytes(data)
    ok("case", "upload", "big.bin")
    [row] = case_rows()
    stored = settings_env / "storage" / row.storage_key
    damaged = bytearray(stored.read_bytes())
    damaged[-100] ^= 0x01  # near the end: megabytes go out before the damage shows
    stored.write_bytes(bytes(damaged))

    result = cli("case", "download", str(row.id), "-o", "out.bin")

    assert_clean_failure(result, "broke off")
    assert sorted(p.name for p in workdir.iterdir()) == ["big.bin"]


def test_the_client_checks_the_sha256_it_was_promised(ann, portal, cli_home, tmp_path, monkeypatch):
    # a proxy that changes bytes on the way: the portal's digest header catches it
    from aimms_portal.api.routes import cases as case_routes

    (tmp_path / "in.txt").write_bytes(b"the real content")
    token = str(credentials(cli_home)["token"])
    with PortalClient(portal, token) as client:
        case = client.upload_case(tmp_path / "in.txt")
        assert client.get_case(case["id"])["name"] == "in.txt"
        monkeypatch.setattr(case_routes, "SHA256_HEADER", "X-Original-SHA256")
        monkeypatch.setitem(case_routes.DOWNLOAD_HEADERS, "X-Case-SHA256", "0" * 64)
        with pytest.raises(PortalClientError) as caught:
            client.download_case(case["id"], tmp_path / "out.txt")
        assert caught.value.code == "download_failed"
        assert not (tmp_path / "out.txt").exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
