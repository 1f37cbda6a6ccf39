"""Runtime versions through the REST API: upload, list, show, delete, delete unused.

Who may call each route is in test_authorization.py; hostile packages and bodies over
the upload limit (by Content-Length and chunked) in test_corpus.py, on both storages.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from aimms_portal.db import session_scope
from aimms_portal.models import Role, RuntimeVersion
from tests import publishing
from tests.api.support import API, CLIENT_IP, audit_events, error, quick_user
from tests.corpus import trusted_key
from tests.helpers import bearer

pytestmark = pytest.mark.sqlite

SIGNATURE_HEADER = "X-Runtime-Signature"


@pytest.fixture
def root(db: None) -> dict[str, str]:
    """Headers of an admin's token."""
    return bearer(quick_user("root", Role.admin.value))


@pytest.fixture
def pete(root: dict[str, str]) -> dict[str, str]:
    """Headers of a publisher's token."""
    return bearer(quick_user("pete", Role.publisher.value))


@pytest.fixture
def trusted(client: Any, root: dict[str, str]) -> int:
    """The corpus's test key, trusted through the API; yields its id."""
    response = client.post(
        f"{API}/signing-keys",
        json={"name": "corpus test key", "public_key": trusted_key()},
        headers=root,
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def upload(
    client: Any, headers: dict[str, str], folder: Path, version: str, name: str = "corpus-runtime"
) -> Any:
    package, signature = publishing.runtime_package(folder, version, name)
    return client.post(
        f"{API}/runtimes",
        content=package.read_bytes(),
        headers=headers | {SIGNATURE_HEADER: base64.b64encode(signature).decode()},
    )


def uploaded(client: Any, headers: dict[str, str], folder: Path, version: str, **kw: str) -> dict:
    response = upload(client, headers, folder, version, **kw)
    assert response.status_code == 201, response.text
    return dict(response.json())


def publish(client: Any, headers: dict[str, str], folder: Path, version: str, **kw: Any) -> dict:
    bundle = publishing.app_bundle(folder, version, **kw)
    response = client.post(f"{API}/apps", content=bundle.read_bytes(), headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def storage_files(folder: Path) -> set[str]:
    root = folder / "storage"
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def storage_key(name: str, version: str) -> str:
    with session_scope() as session:
        key = session.exec(
            select(RuntimeVersion.storage_key).where(
                RuntimeVersion.name == name, RuntimeVersion.version == version
            )
        ).one()
    return key


def test_an_upload_is_verified_recorded_and_shown(client, pete, trusted, tmp_path):
    package, _ = publishing.runtime_package(tmp_path, "1.0")

    runtime = uploaded(client, pete, tmp_path, "1.0")

    assert runtime["name"] == "corpus-runtime" and runtime["version"] == "1.0"
    assert runtime["sha256"] == hashlib.sha256(package.read_bytes()).hexdigest()
    assert runtime["size"] == package.stat().st_size
    assert runtime["signer_name"] == "corpus test key"
    assert runtime["uploaded_by"] == "pete" and runtime["releases"] == 0
    assert runtime["python_requires"]
    shown = client.get(f"{API}/runtimes/corpus-runtime/1.0", headers=pete)
    assert shown.status_code == 200 and shown.json() == runtime
    # the stored object is the package, byte for byte
    stored = tmp_path / "storage" / storage_key("corpus-runtime", "1.0")
    assert stored.read_bytes() == package.read_bytes()
    [event] = audit_events(action="runtime.upload")
    assert (event.actor_name, event.target_name, event.source_ip) == (
        "pete",
        "corpus-runtime 1.0",
        CLIENT_IP,
    )
    assert "signer=corpus test key" in event.detail


def test_versions_are_normalised_and_listed_by_name_newest_first(client, pete, trusted, tmp_path):
    for version in ("1.0", "v2.0-beta1", "1.10", "1.9"):
        uploaded(client, pete, tmp_path, version)
    uploaded(client, pete, tmp_path, "0.1", name="another-runtime")

    listed = client.get(f"{API}/runtimes", headers=pete)

    assert listed.status_code == 200
    assert [(r["name"], r["version"]) for r in listed.json()] == [
        ("another-runtime", "0.1"),
        ("corpus-runtime", "2.0b1"),
        ("corpus-runtime", "1.10"),
        ("corpus-runtime", "1.9"),
        ("corpus-runtime", "1.0"),
    ]


def test_an_unknown_version_is_a_404(client, pete, trusted, tmp_path):
    uploaded(client, pete, tmp_path, "1.0")
    error(client.get(f"{API}/runtimes/corpus-runtime/9.9", headers=pete), 404, "not_found")
    error(client.delete(f"{API}/runtimes/corpus-runtime/9.9", headers=pete), 404, "not_found")
    error(client.get(f"{API}/runtimes/no-such/1.0", headers=pete), 404, "not_found")


def test_the_same_name_and_version_twice_is_a_409(client, pete, trusted, tmp_path):
    uploaded(client, pete, tmp_path, "1.0")
    before = storage_files(tmp_path)

    # other bytes (another folder, so another description), same name and version
    response = upload(client, pete, tmp_path / "again", "1.0")

    assert "exists already" in error(response, 409, "duplicate_version")
    assert storage_files(tmp_path) == before


def test_deleting_an_unused_version_removes_row_and_object(client, pete, trusted, tmp_path):
    uploaded(client, pete, tmp_path, "1.0")
    key = storage_key("corpus-runtime", "1.0")
    assert key in storage_files(tmp_path)

    response = client.delete(f"{API}/runtimes/corpus-runtime/1.0", headers=pete)

    assert response.status_code == 204, response.text
    error(client.get(f"{API}/runtimes/corpus-runtime/1.0", headers=pete), 404)
    assert storage_files(tmp_path) == set()
    [event] = audit_events(action="runtime.delete")
    assert (event.actor_name, event.target_name, event.source_ip) == (
        "pete",
        "corpus-runtime 1.0",
        CLIENT_IP,
    )


def test_deleting_a_used_version_is_a_409_naming_the_release(client, pete, trusted, tmp_path):
    uploaded(client, pete, tmp_path, "1.0")
    publish(client, pete, tmp_path, "0.9")
    publish(client, pete, tmp_path, "1.0")
    publish(client, pete, tmp_path, "2.0", name="other-app")
    before = storage_files(tmp_path)

    response = client.delete(f"{API}/runtimes/corpus-runtime/1.0", headers=pete)

    message = error(response, 409, "in_use")
    for release in ("corpus-app 0.9", "corpus-app 1.0", "other-app 2.0"):
        assert release in message
    shown = client.get(f"{API}/runtimes/corpus-runtime/1.0", headers=pete).json()
    assert shown["releases"] == 3
    assert storage_files(tmp_path) == before
    assert audit_events(action="runtime.delete") == []


def test_delete_unused_removes_only_unused_versions(client, pete, trusted, tmp_path):
    for version in ("1.0", "1.5", "2.0"):
        uploaded(client, pete, tmp_path, version)
    publish(client, pete, tmp_path, "1.0", runtime="==1.5")
    used_key = storage_key("corpus-runtime", "1.5")
    unused_keys = {storage_key("corpus-runtime", v) for v in ("1.0", "2.0")}
    assert unused_keys <= storage_files(tmp_path)

    response = client.post(f"{API}/runtimes/delete-unused", headers=pete)

    assert response.status_code == 200, response.text
    assert sorted(response.json()["deleted"]) == ["corpus-runtime 1.0", "corpus-runtime 2.0"]
    listed = client.get(f"{API}/runtimes", headers=pete).json()
    assert [(r["version"], r["releases"]) for r in listed] == [("1.5", 1)]
    files = storage_files(tmp_path)
    assert used_key in files and not unused_keys & files
    assert sorted(e.target_name for e in audit_events(action="runtime.delete")) == [
        "corpus-runtime 1.0",
        "corpus-runtime 2.0",
    ]
    # nothing left to delete: an empty answer, not an error
    again = client.post(f"{API}/runtimes/delete-unused", headers=pete)
    assert again.status_code == 200 and again.json() == {"deleted": []}


def test_a_key_no_longer_trusted_signs_nothing_new(client, root, pete, trusted, tmp_path):
    uploaded(client, pete, tmp_path, "1.0")
    assert client.delete(f"{API}/signing-keys/{trusted}", headers=root).status_code == 204

    response = upload(client, pete, tmp_path, "2.0")

    assert "does not trust" in error(response, 422, "untrusted_key")
    # what it signed before stays, with the name of its signer
    versions = [r["version"] for r in client.get(f"{API}/runtimes", headers=pete).json()]
    assert versions == ["1.0"]
    shown = client.get(f"{API}/runtimes/corpus-runtime/1.0", headers=pete).json()
    assert shown["signer_name"] == "corpus test key"
    assert [e.target_name for e in audit_events(action="runtime.upload")] == ["corpus-runtime 1.0"]


def test_a_signature_of_another_package_does_not_match(client, pete, trusted, tmp_path):
    package, _ = publishing.runtime_package(tmp_path, "1.0")
    _, other_signature = publishing.runtime_package(tmp_path, "2.0")

    response = client.post(
        f"{API}/runtimes",
        content=package.read_bytes(),
        headers=pete | {SIGNATURE_HEADER: base64.b64encode(other_signature).decode()},
    )

    assert "does not match" in error(response, 422, "bad_signature")
    assert storage_files(tmp_path) == set()
