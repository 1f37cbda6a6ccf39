"""App bundles: packing a folder (plain and encrypted) and validating what is uploaded."""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from aimms_portal.errors import InvalidInput
from aimms_portal.packages import (
    ArchiveError,
    InspectedBundle,
    encryption,
    inspect_bundle,
    pack_app,
)
from tests.corpus.crafting import RawEntry, TarMember, png_bytes, raw_zip, tar_bytes

Keys = tuple[bytes, bytes]


def app_json(**changes: Any) -> bytes:
    doc: dict[str, Any] = {
        "format": 1,
        "name": "transport",
        "version": "1.0",
        "description": "Ship goods at the least cost.",
        "icon": "icon.png",
        "runtime": {"name": "highs", "version": ">=1.7"},
        "webui": {"command": ["python", "webui.py"]},
    }
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    src = tmp_path / "app"
    (src / "model").mkdir(parents=True)
    (src / "app.json").write_bytes(app_json())
    (src / "icon.png").write_bytes(png_bytes())
    (src / "webui.py").write_text("print('webui')\n")
    (src / "model" / "transport.py").write_text("print('model')\n")
    (src / "model" / "__pycache__").mkdir()
    (src / "model" / "__pycache__" / "transport.cpython-311.pyc").write_bytes(b"\0")
    return src


def bundle_of(write: Any, files: dict[str, bytes], name: str = "b.zip") -> Path:
    return write(name, raw_zip(RawEntry(n, d) for n, d in files.items()))


def valid_files(**extra: bytes) -> dict[str, bytes]:
    return {"app.json": app_json(), "icon.png": png_bytes(), "webui.py": b"", **extra}


# --- packing ---------------------------------------------------------------------------


def test_pack_app(app_dir: Path, tmp_path: Path):
    out = tmp_path / "transport.zip"
    manifest = pack_app(app_dir, out)
    assert (manifest.name, manifest.version, manifest.icon) == ("transport", "1.0", "icon.png")
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == ["app.json", "icon.png", "model/transport.py", "webui.py"]
    inspected = inspect_bundle(out)
    assert inspected.manifest == manifest
    assert (inspected.icon, inspected.icon_type) == (png_bytes(), "image/png")
    assert (inspected.encrypted, inspected.key_fingerprint) == (False, None)
    assert [e.name for e in inspected.entries] == [
        "app.json",
        "icon.png",
        "model/transport.py",
        "webui.py",
    ]


def test_pack_app_into_its_own_folder_twice(app_dir: Path):
    out = app_dir / "transport.zip"
    pack_app(app_dir, out)
    pack_app(app_dir, out)
    with zipfile.ZipFile(out) as archive:
        assert "transport.zip" not in archive.namelist()


@pytest.mark.parametrize(
    ("change", "error", "phrase"),
    [
        ("no app.json", "invalid_manifest", "app.json: not found"),
        ("bad app.json", "invalid_manifest", "'version' is missing"),
        ("no icon", "invalid_manifest", "'icon' names 'icon.png', which is not a file"),
        ("bad icon", "invalid_icon", "is not a PNG, JPEG, GIF, WebP or SVG image"),
        ("icon link", "invalid_manifest", "which is not a file"),
        ("link", "invalid_archive", "symbolic link"),
        ("bad key", "invalid_key", "not a PEM public key"),
    ],
)
def test_pack_app_refuses(app_dir: Path, tmp_path: Path, change: str, error: str, phrase: str):
    encrypt_for = None
    if change == "no app.json":
        (app_dir / "app.json").unlink()
    elif change == "bad app.json":
        (app_dir / "app.json").write_bytes(b'{"format": 1}')
    elif change == "no icon":
        (app_dir / "icon.png").unlink()
    elif change == "bad icon":
        (app_dir / "icon.png").write_text("<html>no image</html>")
    elif change == "icon link":
        (app_dir / "icon.png").unlink()
        (app_dir / "icon.png").symlink_to(tmp_path / "elsewhere.png")
        (tmp_path / "elsewhere.png").write_bytes(png_bytes())
    elif change == "link":
        (app_dir / "data").symlink_to("/etc")
    elif change == "bad key":
        encrypt_for = b"not a key"
    out = tmp_path / "out" / "transport.zip"
    out.parent.mkdir()
    with pytest.raises(InvalidInput) as caught:
        pack_app(app_dir, out, encrypt_for=encrypt_for)
    assert caught.value.code == error
    assert phrase in caught.value.message
    assert list(out.parent.iterdir()) == []  # nothing written, no temporary file left


def test_pack_app_checks_the_result_as_the_portal_will(app_dir: Path, tmp_path: Path):
    # the folder itself is fine, but a file name the portal refuses must stop the pack
    (app_dir / "model" / "a\\b.py").write_text("")
    with pytest.raises(ArchiveError, match="backslash"):
        pack_app(app_dir, tmp_path / "out.zip")


# --- encrypted bundles -----------------------------------------------------------------


def test_pack_encrypted_and_inspect(app_dir: Path, tmp_path: Path, portal_key: Keys):
    out = tmp_path / "transport.aimmsenc"
    manifest = pack_app(app_dir, out, encrypt_for=portal_key[1])
    assert encryption.is_encrypted(out)
    assert b"webui.py" not in out.read_bytes()

    inspected = inspect_bundle(out, private_pem=portal_key[0])
    assert inspected.manifest == manifest
    assert inspected.encrypted
    assert inspected.key_fingerprint == encryption.public_fingerprint(portal_key[1])
    assert inspected.icon_type == "image/png"


def test_inspect_encrypted_needs_the_key(app_dir: Path, tmp_path: Path, portal_key: Keys):
    out = tmp_path / "transport.aimmsenc"
    pack_app(app_dir, out, encrypt_for=portal_key[1])
    with pytest.raises(InvalidInput) as caught:
        inspect_bundle(out)
    assert caught.value.code == "key_required"
    assert caught.value.message == "encrypted bundle needs the portal's key"


def test_inspect_encrypted_for_another_portal(
    app_dir: Path, tmp_path: Path, portal_key: Keys, other_portal_key: Keys
):
    out = tmp_path / "transport.aimmsenc"
    pack_app(app_dir, out, encrypt_for=other_portal_key[1])
    with pytest.raises(InvalidInput) as caught:
        inspect_bundle(out, private_pem=portal_key[0])
    assert caught.value.code == "wrong_portal"


def test_inspect_encrypted_validates_the_decrypted_archive(
    write: Any, tmp_path: Path, portal_key: Keys, monkeypatch: pytest.MonkeyPatch
):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    plain = bundle_of(write, valid_files(**{"../evil.py": b"x"}))
    sealed = tmp_path / "evil.aimmsenc"
    encryption.encrypt_file(plain, sealed, portal_key[1])
    with pytest.raises(ArchiveError, match="'..' segment"):
        inspect_bundle(sealed, private_pem=portal_key[0])
    # the decrypted copy is gone again, also after a failure
    assert list(scratch.iterdir()) == []


def test_inspect_tampered_encrypted_bundle(app_dir: Path, tmp_path: Path, portal_key: Keys):
    out = tmp_path / "transport.aimmsenc"
    pack_app(app_dir, out, encrypt_for=portal_key[1])
    data = bytearray(out.read_bytes())
    data[-40] ^= 1
    out.write_bytes(bytes(data))
    with pytest.raises(InvalidInput) as caught:
        inspect_bundle(out, private_pem=portal_key[0])
    assert caught.value.code == "tampered"


# --- inspecting ------------------------------------------------------------------------


def test_inspect_a_tar_bundle(write: Any):
    members = [TarMember("app.json", app_json()), TarMember("icon.png", png_bytes())]
    inspected = inspect_bundle(write("b.tar.gz", tar_bytes(members, gz=True)))
    assert isinstance(inspected, InspectedBundle)
    assert inspected.icon_type == "image/png"


def test_inspect_a_bundle_without_icon(write: Any):
    doc = json.loads(app_json())
    del doc["icon"]
    inspected = inspect_bundle(bundle_of(write, {"app.json": json.dumps(doc).encode()}))
    assert (inspected.icon, inspected.icon_type) == (None, None)


def test_svg_icon(write: Any):
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="3"/></svg>'
    files = {"app.json": app_json(icon="img/icon.svg"), "img/icon.svg": svg}
    inspected = inspect_bundle(bundle_of(write, files))
    assert (inspected.icon, inspected.icon_type) == (svg, "image/svg+xml")


@pytest.mark.parametrize(
    ("files", "code", "phrase"),
    [
        ({"webui.py": b""}, "invalid_manifest", "app.json: not found at the top of the bundle"),
        ({"app/app.json": app_json()}, "invalid_manifest", "not found at the top"),
        ({"app.json": b"{"}, "invalid_manifest", "app.json: not valid JSON"),
        (
            {"app.json": app_json()[:-1] + b" " * 70_000 + b"}"},
            "invalid_manifest",
            "larger than 64 KiB",
        ),
        ({"app.json": app_json(name="<b>x</b>")}, "invalid_manifest", "'name' must be 2-64"),
        (
            {"app.json": app_json()},
            "invalid_manifest",
            "'icon' names 'icon.png', which is not a file",
        ),
        ({"app.json": app_json(), "icon.png/": b""}, "invalid_manifest", "which is not a file"),
        ({"app.json": app_json(), "icon.png": b"GIF89a junk"}, "invalid_icon", "not a valid GIF"),
        (
            {"app.json": app_json(), "icon.png": bytes(600 * 1024)},
            "invalid_icon",
            "larger than 512 KiB",
        ),
        (valid_files(**{"a/../../x": b""}), "invalid_archive", "'..' segment"),
    ],
)
def test_inspect_refuses(write: Any, files: dict[str, bytes], code: str, phrase: str):
    with pytest.raises(InvalidInput) as caught:
        inspect_bundle(bundle_of(write, files))
    assert caught.value.code == code
    assert phrase in caught.value.message


def test_inspect_refuses_what_is_no_archive(write: Any):
    with pytest.raises(ArchiveError, match="not a ZIP or tar archive"):
        inspect_bundle(write("x.zip", b"just text"))
