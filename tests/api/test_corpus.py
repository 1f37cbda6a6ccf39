"""Hostile uploads through REST, on a local storage folder and on S3 (moto's server).

Every file of the corpus (tests/corpus) is sent as a client sends it: a runtime package
as the body of ``POST /api/v1/runtimes`` with its ``.sig`` file base64-encoded in
``X-Runtime-Signature`` (no header at all for an unsigned one), a bundle as the body of
``POST /api/v1/apps``. A refused file must get the status, error code and phrase of its
case and leave nothing behind: no row in the publishing tables, no publish in the audit
log, no object in storage (nor an unfinished multipart upload, nor a temporary file in
the storage folder or the local scratch folder). Bodies larger than the upload limit are
refused the same way, whether they declare their length or arrive chunked.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import func, select

from aimms_portal import config, storage
from aimms_portal.db import session_scope
from aimms_portal.models import App, AppGrant, AuditEvent, Release, Role, RuntimeVersion
from tests import publishing
from tests.api.support import API, error, quick_user
from tests.corpus import CASES, Case
from tests.helpers import bearer
from tests.servers import s3_client

pytestmark = pytest.mark.sqlite

REFUSED = [case for case in CASES.values() if case.code is not None]
ACCEPTED = [case for case in CASES.values() if case.code is None]
#: Status of each refusal: a duplicate clashes with what is there, the rest is bad input.
STATUS = {"duplicate_version": 409}
SIGNATURE_HEADER = "X-Runtime-Signature"
MIB = 1024 * 1024

_TABLES = (RuntimeVersion, App, Release, AppGrant)
_PUBLISHES = ("runtime.upload", "release.publish")


@dataclass
class Backend:
    """The storage the portal uses in this test, and a way to see all it holds."""

    name: str
    #: Every object (and unfinished upload) in the store, by key, with its size.
    objects: Callable[[], dict[str, int]]


def _folder_objects(root: Path) -> dict[str, int]:
    # everything below the root, temporary uploads (.incoming) included
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()
    }


def _bucket_objects(client: Any, bucket: str) -> dict[str, int]:
    found = {
        item["Key"]: item["Size"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for item in page.get("Contents", [])
    }
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        found[f"(unfinished multipart) {upload['Key']}"] = 0
    return found


@pytest.fixture(params=["local", "s3"])
def backend(
    request: pytest.FixtureRequest, db: None, settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    """The portal's storage: the test's storage folder, or a fresh bucket on moto."""
    if request.param == "local":
        root = settings_env / "storage"
        return Backend("local", lambda: _folder_objects(root))
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    monkeypatch.setenv("AIMMS_PORTAL_STORAGE_URL", f"s3://{bucket}/portal")
    monkeypatch.setenv("AIMMS_PORTAL_S3_ENDPOINT_URL", endpoint)
    config.get_settings.cache_clear()
    storage.get_storage.cache_clear()
    client = s3_client(endpoint)
    return Backend("s3", lambda: _bucket_objects(client, bucket))


@pytest.fixture
def scratch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private temporary folder for this test: spooled uploads must not stay in it."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def publisher(backend: Backend, client: Any) -> dict[str, str]:
    """Headers of a publisher's token; the corpus's test key is trusted."""
    root = quick_user("root", Role.admin.value)
    publishing.trust_test_key(root)
    return bearer(quick_user("pete", Role.publisher.value))


@dataclass(frozen=True)
class Snapshot:
    rows: dict[str, int]
    publishes: int
    objects: dict[str, int]
    scratch: list[str]


def snapshot(backend: Backend, scratch: Path) -> Snapshot:
    """What the portal holds right now: rows, publish events, objects, scratch files."""
    with session_scope() as session:
        rows = {
            table.__tablename__: session.exec(select(func.count()).select_from(table)).one()
            for table in _TABLES
        }
        publishes = session.exec(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action.in_(_PUBLISHES))  # type: ignore[attr-defined]
        ).one()
    leftovers = sorted(p.relative_to(scratch).as_posix() for p in scratch.rglob("*"))
    return Snapshot(rows, publishes, backend.objects(), leftovers)


def upload(client: Any, headers: dict[str, str], case: Case) -> Any:
    """Send a corpus file the way a client does."""
    if case.kind == "bundle":
        return client.post(f"{API}/apps", content=case.path.read_bytes(), headers=headers)
    extra = {}
    if case.signature_path is not None:
        extra[SIGNATURE_HEADER] = base64.b64encode(case.signature_path.read_bytes()).decode()
    return client.post(f"{API}/runtimes", content=case.path.read_bytes(), headers=headers | extra)


def _prepare(client: Any, headers: dict[str, str], case: Case) -> None:
    """Put in place what the case needs: its ``first`` file, or the runtime a bundle needs
    (so that nothing but the file itself can be the reason for a refusal)."""
    needed = ["runtime_valid.zip"] if case.kind == "bundle" else []
    needed += [case.first] if case.first else []
    for name in needed:
        response = upload(client, headers, CASES[name])
        assert response.status_code == 201, response.text


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.file)
def test_a_hostile_file_is_refused_and_leaves_nothing(
    client, backend, publisher, scratch, case: Case
):
    _prepare(client, publisher, case)
    before = snapshot(backend, scratch)

    response = upload(client, publisher, case)

    message = error(response, STATUS.get(case.code or "", 422), case.code)
    assert case.phrase.lower() in message.lower(), message
    assert snapshot(backend, scratch) == before


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda case: case.file)
def test_a_valid_reference_file_is_accepted(client, backend, publisher, scratch, case: Case):
    if case.kind == "bundle":
        _prepare(client, publisher, case)
    before = snapshot(backend, scratch)

    response = upload(client, publisher, case)

    assert response.status_code == 201, response.text
    after = snapshot(backend, scratch)
    new_objects = set(after.objects) - set(before.objects)
    assert after.publishes == before.publishes + 1
    assert after.scratch == []
    if case.kind == "runtime":
        assert response.json()["name"] == "corpus-runtime"
        assert after.rows["runtime_versions"] == before.rows["runtime_versions"] + 1
        assert len(new_objects) == 1
        assert after.objects[new_objects.pop()] == case.path.stat().st_size
    else:
        assert after.rows["releases"] == before.rows["releases"] + 1
        assert after.rows["app_grants"] == before.rows["app_grants"] + 3  # the publisher's
        # the bundle as it came, and the icon taken out of it
        assert sorted(after.objects[k] for k in new_objects)[-1] == case.path.stat().st_size
        assert len(new_objects) == 2


def test_html_in_texts_is_stored_verbatim(client, backend, publisher):
    _prepare(client, publisher, CASES["bundle_html_in_text.zip"])
    assert upload(client, publisher, CASES["bundle_html_in_text.zip"]).status_code == 201

    [app] = client.get(f"{API}/apps", headers=publisher).json()
    # the API hands text over as it is; escaping is the UI's job
    assert app["title"] == "<script>alert(1)</script>"
    assert "<img src=x onerror=alert(2)>" in app["description"]
    assert app["category"] == "<i>html</i>"


def test_an_unsigned_upload_names_the_missing_header(client, backend, publisher, scratch):
    before = snapshot(backend, scratch)
    for extra in ({}, {SIGNATURE_HEADER: ""}, {SIGNATURE_HEADER: "   "}):
        response = client.post(
            f"{API}/runtimes",
            content=CASES["runtime_valid.zip"].path.read_bytes(),
            headers=publisher | extra,
        )
        message = error(response, 422, "unsigned")
        assert SIGNATURE_HEADER in message and "not signed" in message
    assert snapshot(backend, scratch) == before


@pytest.mark.parametrize(
    "header",
    ["not base64!", base64.b64encode(b"{}").decode(), base64.b64encode(b"\xff" * 10).decode()],
    ids=["not-base64", "not-a-signature-file", "not-json"],
)
def test_a_malformed_signature_header_is_refused(client, backend, publisher, scratch, header):
    before = snapshot(backend, scratch)
    response = client.post(
        f"{API}/runtimes",
        content=CASES["runtime_valid.zip"].path.read_bytes(),
        headers=publisher | {SIGNATURE_HEADER: header},
    )
    message = error(response, 422, "invalid_signature")
    assert "signature" in message.lower()
    assert snapshot(backend, scratch) == before


# -- the upload limit ---------------------------------------------------------------------


def _set_limit(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    monkeypatch.setenv("AIMMS_PORTAL_UPLOAD_MAX_BYTES", str(limit))
    config.get_settings.cache_clear()


def _upload_request(kind: str) -> tuple[str, dict[str, str]]:
    """Path and extra headers of an upload of ``kind`` that passes every check made
    before the body is read (a trusted, well-formed signature for runtimes)."""
    if kind == "bundle":
        return f"{API}/apps", {}
    sig = CASES["runtime_valid.zip"].signature_path
    assert sig is not None
    return f"{API}/runtimes", {SIGNATURE_HEADER: base64.b64encode(sig.read_bytes()).decode()}


def _zeros(total: int, chunk: int = MIB) -> Iterator[bytes]:
    while total > 0:
        yield bytes(min(chunk, total))
        total -= chunk


@pytest.mark.parametrize("kind", ["runtime", "bundle"])
def test_a_declared_length_over_the_limit_is_a_413(
    client, backend, publisher, scratch, monkeypatch, kind
):
    _set_limit(monkeypatch, 4096)
    path, extra = _upload_request(kind)
    before = snapshot(backend, scratch)

    response = client.post(path, content=bytes(4097), headers=publisher | extra)

    message = error(response, 413, "too_large")
    assert "4097" in message and "4096" in message
    assert snapshot(backend, scratch) == before


@pytest.mark.parametrize("kind", ["runtime", "bundle"])
def test_a_chunked_body_over_the_limit_is_a_413(
    client, backend, publisher, scratch, monkeypatch, kind
):
    # 9 MiB + 1: past S3's first 8 MiB part, so a multipart upload is under way (and
    # must be aborted) when the limit is hit
    limit = 9 * MIB + 1
    _set_limit(monkeypatch, limit)
    path, extra = _upload_request(kind)
    before = snapshot(backend, scratch)

    body = _zeros(12 * MIB)
    response = client.post(path, content=body, headers=publisher | extra)

    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.request.headers["transfer-encoding"] == "chunked"
    message = error(response, 413, "too_large")
    assert str(limit) in message
    assert snapshot(backend, scratch) == before
