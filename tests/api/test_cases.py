"""Cases through the REST API: upload (streamed), list, show, download, delete.

Who may call each route is in test_authorization.py; the service's own behaviour
(compression, damaged objects, purging) in tests/services/test_cases.py. The memory
test sends through httpx's ``ASGITransport``, as tests/services/test_publishing.py
explains: Starlette's ``TestClient`` would hold the whole body itself.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi.testclient import TestClient

from aimms_portal import config
from aimms_portal.api.app import create_api
from aimms_portal.api.routes.cases import SHA256_HEADER, content_disposition
from aimms_portal.errors import Unavailable
from aimms_portal.models import Role
from aimms_portal.storage import local as local_storage
from tests.api.support import API, CLIENT_IP, audit_events, error, quick_user
from tests.helpers import bearer, log_on, run_async
from tests.services import test_cases as service_tests
from tests.services.test_cases import (
    BIG,
    MIB,
    PEAK_LIMIT,
    Backend,
    case_rows,
    compressible,
    make_app,
    traced_peak,
)
from tests.test_cli import serve_in_thread

pytestmark = pytest.mark.sqlite

CASES = f"{API}/cases"

#: The portal's storage: the test's folder, or a bucket on moto.
backend = service_tests.backend


class People:
    """Token headers of ann and bob (users) and root (an admin)."""

    def __init__(self) -> None:
        self.ann_user = quick_user("ann")
        self.bob_user = quick_user("bob")
        self.root_user = quick_user("root", Role.admin.value)
        self.ann = bearer(self.ann_user)
        self.bob = bearer(self.bob_user)
        self.root = bearer(self.root_user)


@pytest.fixture
def people(db: None) -> People:
    return People()


def post(client: Any, headers: dict[str, str], data: Any, **params: Any) -> Any:
    params.setdefault("name", "input.csv")
    return client.post(CASES, content=data, params=params, headers=headers)


def posted(client: Any, headers: dict[str, str], data: bytes, **params: Any) -> dict[str, Any]:
    response = post(client, headers, data, **params)
    assert response.status_code == 201, response.text
    return dict(response.json())


def set_limit(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    monkeypatch.setenv("AIMMS_PORTAL_UPLOAD_MAX_BYTES", str(limit))
    config.get_settings.cache_clear()


def nothing_stored(backend: Backend) -> bool:
    return case_rows() == [] and backend.objects() == []


# -- round trip ------------------------------------------------------------------------------


def test_an_uploaded_case_downloads_as_the_same_bytes(client, backend, people):
    make_app("planner", people.ann_user)
    data = compressible(2 * MIB + 5)

    case = posted(client, people.ann, data, name="demand.csv", app="planner", kind="saved")

    assert {k: case[k] for k in ("name", "kind", "owner", "app", "job_id", "attempt")} == {
        "name": "demand.csv",
        "kind": "saved",
        "owner": "ann",
        "app": "planner",
        "job_id": None,
        "attempt": None,
    }
    assert case["size"] == len(data) and case["sha256"] == hashlib.sha256(data).hexdigest()
    assert case["stored_size"] < len(data) // 10
    assert case["content_url"] == f"{CASES}/{case['id']}/content"
    assert client.get(f"{CASES}/{case['id']}", headers=people.ann).json() == case

    download = client.get(case["content_url"], headers=people.ann)

    assert download.status_code == 200
    assert download.content == data
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-length"] == str(len(data))
    assert download.headers[SHA256_HEADER] == case["sha256"]
    assert download.headers["content-disposition"] == (
        "attachment; filename=\"demand.csv\"; filename*=UTF-8''demand.csv"
    )
    assert download.headers["x-content-type-options"] == "nosniff"
    [row] = case_rows()
    stored = backend.read(row.storage_key)
    assert len(stored) == case["stored_size"] and gzip.decompress(stored) == data


def test_an_empty_case_round_trips(client, people):
    case = posted(client, people.ann, b"", name="empty")

    download = client.get(case["content_url"], headers=people.ann)

    assert download.status_code == 200 and download.content == b""
    assert case["size"] == 0


def test_the_file_name_of_a_download_is_quoted_safely(client, people):
    name = 'plan "final"; v2 – ü%41.csv'
    case = posted(client, people.ann, b"x", name=name)

    disposition = client.get(case["content_url"], headers=people.ann).headers["content-disposition"]

    assert disposition == content_disposition(name)
    fallback, _, encoded = disposition.partition("; filename*=UTF-8''")
    assert fallback == 'attachment; filename="plan _final_; v2 _ __41.csv"'
    assert unquote(encoded) == name
    assert all(c not in encoded for c in ' ";')


def test_a_browser_log_on_may_download_but_must_send_csrf_to_delete(client, people):
    case = posted(client, people.ann, b"for the browser")

    csrf = log_on(client, "ann")
    download = client.get(case["content_url"])
    refused = client.delete(f"{CASES}/{case['id']}")
    deleted = client.delete(f"{CASES}/{case['id']}", headers=csrf)

    assert download.status_code == 200 and download.content == b"for the browser"
    error(refused, 403, "csrf_failed")
    assert deleted.status_code == 204 and case_rows() == []


# -- lists -----------------------------------------------------------------------------------


def test_lists_are_paged_newest_first_and_filtered(client, people):
    make_app("planner", people.ann_user, people.bob_user)
    ids = [
        posted(client, people.ann, b"%d" % i, name=f"c{i}", app="planner" if i % 2 else None)["id"]
        for i in range(5)
    ]
    saved = posted(client, people.ann, b"s", name="s", kind="saved")["id"]
    bobs = posted(client, people.bob, b"b", name="b", app="planner")["id"]

    def listed(headers: dict[str, str], **params: Any) -> dict[str, Any]:
        response = client.get(CASES, params=params, headers=headers)
        assert response.status_code == 200, response.text
        return dict(response.json())

    page = listed(people.ann, limit=2, offset=1)
    assert [c["id"] for c in page["items"]] == [ids[4], ids[3]]
    assert (page["total"], page["limit"], page["offset"]) == (6, 2, 1)
    assert [c["id"] for c in listed(people.ann)["items"]] == [saved, *reversed(ids)]
    assert [c["name"] for c in listed(people.ann, app="planner")["items"]] == ["c3", "c1"]
    assert [c["id"] for c in listed(people.ann, kind="saved")["items"]] == [saved]
    assert listed(people.ann, app="unknown")["items"] == []
    assert [c["id"] for c in listed(people.bob)["items"]] == [bobs]
    everyone = listed(people.root, all="true", app="planner")["items"]
    assert [(c["id"], c["owner"]) for c in everyone] == [
        (bobs, "bob"),
        (ids[3], "ann"),
        (ids[1], "ann"),
    ]
    assert listed(people.root)["items"] == []

    error(client.get(CASES, params={"all": "true"}, headers=people.ann), 403, "forbidden")
    error(client.get(CASES, params={"kind": "weird"}, headers=people.ann), 422, "invalid_kind")
    error(client.get(CASES, params={"limit": 0}, headers=people.ann), 422, "invalid_request")


# -- privacy ---------------------------------------------------------------------------------


def test_another_users_case_is_not_found_and_admins_see_it(client, backend, people):
    case = posted(client, people.bob, b"bob's data", name="bobs.csv")
    path = f"{CASES}/{case['id']}"

    for method, url in (("GET", path), ("GET", f"{path}/content"), ("DELETE", path)):
        error(client.request(method, url, headers=people.ann), 404, "not_found")
    for url in (f"{CASES}/999999", f"{CASES}/{2**40}", f"{CASES}/0"):
        error(client.get(url, headers=people.ann), 404, "not_found")
    assert len(case_rows()) == 1

    assert client.get(path, headers=people.root).json()["owner"] == "bob"
    assert client.get(f"{path}/content", headers=people.root).content == b"bob's data"
    assert client.delete(path, headers=people.root).status_code == 204
    assert nothing_stored(backend)
    [event] = audit_events(action="case.delete")
    assert (event.actor_name, event.target_name, event.source_ip) == ("root", "bobs.csv", CLIENT_IP)
    assert "owner=bob" in event.detail
    error(client.get(path, headers=people.bob), 404, "not_found")


def test_an_owner_deletes_without_an_audit_event(client, backend, people):
    case = posted(client, people.ann, b"x")

    assert client.delete(f"{CASES}/{case['id']}", headers=people.ann).status_code == 204

    assert nothing_stored(backend) and audit_events(action="case.delete") == []


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "a/b", "x\ny", "." * 2, "n" * 129])
def test_a_bad_name_is_a_422_and_stores_nothing(client, backend, people, name):
    message = error(post(client, people.ann, b"data", name=name), 422, "invalid_name")

    assert "1 to 128 characters" in message
    assert nothing_stored(backend)


def test_a_missing_name_or_bad_kind_is_a_422(client, people):
    response = client.post(CASES, content=b"data", headers=people.ann)
    assert "name" in error(response, 422, "invalid_request")
    error(post(client, people.ann, b"data", kind="output"), 422, "invalid_kind")
    assert case_rows() == []


def test_an_unknown_or_unreadable_app_is_a_404(client, people):
    make_app("bobs-app", people.bob_user)
    make_app("denied", people.bob_user, deny=(people.ann_user,))

    for app in ("no-such-app", "bobs-app", "denied"):
        error(post(client, people.ann, b"data", app=app), 404, "not_found")
    assert case_rows() == []
    assert posted(client, people.bob, b"data", app="bobs-app")["app"] == "bobs-app"


def test_a_declared_length_over_the_limit_is_a_413(client, backend, people, monkeypatch):
    set_limit(monkeypatch, 4096)

    response = post(client, people.ann, bytes(4097))

    message = error(response, 413, "too_large")
    assert "4097" in message and "4096" in message
    assert nothing_stored(backend)


def test_a_chunked_body_over_the_limit_is_a_413(client, backend, people, monkeypatch):
    # incompressible and past S3's first part, so a multipart upload is under way (and
    # must be aborted) when the limit is hit
    limit = 9 * MIB + 1
    set_limit(monkeypatch, limit)

    def body() -> Iterator[bytes]:
        for _ in range(12):
            yield os.urandom(MIB)

    response = post(client, people.ann, body())

    assert response.request.headers["transfer-encoding"] == "chunked"
    assert str(limit) in error(response, 413, "too_large")
    assert nothing_stored(backend)


def test_a_storage_failure_is_a_503_and_stores_nothing(client, people, monkeypatch, settings_env):
    def broken(self: Any, key: str, source: Any, *, max_bytes: int | None = None) -> Any:
        source.read(MIB)  # half-way through, the disk goes away
        raise Unavailable("The storage folder cannot be written.")

    monkeypatch.setattr(local_storage.LocalStorage, "put", broken)

    response = post(client, people.ann, os.urandom(3 * MIB))

    error(response, 503, "unavailable")
    assert case_rows() == []
    assert [p for p in (settings_env / "storage").rglob("*") if p.is_file()] == []


# -- damaged objects ---------------------------------------------------------------------------


def test_a_damaged_small_case_is_a_clear_error(client, backend, people):
    case = posted(client, people.ann, b"small but precious")
    [row] = case_rows()
    backend.write(row.storage_key, gzip.compress(b"something else"))

    response = client.get(case["content_url"], headers=people.ann)

    message = error(response, 503, "case_corrupt")
    assert f"The stored data of case {case['id']} is damaged" in message


def test_a_missing_object_is_a_clear_error(client, people, settings_env):
    case = posted(client, people.ann, b"data")
    [row] = case_rows()
    (settings_env / "storage" / row.storage_key).unlink()

    error(client.get(case["content_url"], headers=people.ann), 503, "case_corrupt")


def test_a_damaged_large_case_is_cut_off_before_its_end(db, people, settings_env):
    data = os.urandom(4 * MIB)
    with TestClient(create_api(), raise_server_exceptions=False) as client:
        case = posted(client, people.ann, data)
        [row] = case_rows()
        path = settings_env / "storage" / row.storage_key
        stored = bytearray(path.read_bytes())
        stored[-100] ^= 0x01  # near the end: the damage shows only after megabytes went out
        path.write_bytes(bytes(stored))

        response = client.get(case["content_url"], headers=people.ann)

    assert response.headers["content-length"] == str(len(data))
    assert len(response.content) < len(data)
    assert data.startswith(response.content)


# -- memory ----------------------------------------------------------------------------------


async def _achunks(total: int) -> AsyncIterator[bytes]:
    for _ in range(total // MIB):
        yield os.urandom(MIB)


def test_uploads_and_downloads_stream_through_the_api(people):
    transport = httpx.ASGITransport(app=create_api(), client=(CLIENT_IP, 50000))

    async def upload(size: int) -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://portal") as http:
            return await http.post(
                CASES,
                params={"name": "big.bin"},
                content=_achunks(size),
                headers=people.ann,
                timeout=None,
            )

    # httpx's ASGITransport gathers a whole response before it hands it over, so the
    # download goes through a real server on loopback (its thread is traced too)
    def download(base: str, url: str) -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        with httpx.stream("GET", f"{base}{url}", headers=people.ann, timeout=60) as response:
            assert response.status_code == 200
            for chunk in response.iter_raw(MIB):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    warm = run_async(upload(MIB)).json()  # first-use caches are not the upload
    response, peak_in = traced_peak(lambda: run_async(upload(BIG)))
    assert response.status_code == 201, response.text
    case = response.json()
    with serve_in_thread(create_api()) as base:
        download(base, warm["content_url"])
        (size, sha256), peak_out = traced_peak(lambda: download(base, case["content_url"]))

    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert case["size"] == size == BIG and sha256 == case["sha256"]
    assert peak_in < PEAK_LIMIT, f"upload peak {peak_in / MIB:.1f} MiB for {BIG // MIB} MiB"
    assert peak_out < PEAK_LIMIT, f"download peak {peak_out / MIB:.1f} MiB for {BIG // MIB} MiB"
