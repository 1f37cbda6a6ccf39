"""Jobs over REST: submit rules, privacy, cancel, delete (also in bulk), state hooks,
retention. Jobs here never run (no scheduler): what is tested is what the API accepts
and refuses, and what it records."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert
from sqlmodel import col, select

from aimms_portal import config
from aimms_portal.db import session_scope
from aimms_portal.models import Case, HookDelivery, Job, Role, User, utcnow
from aimms_portal.scheduler import hooks
from aimms_portal.services import app_access, cases, jobs
from tests.api.support import API, error, quick_user
from tests.helpers import bearer
from tests.solving import SOLVER_APP, publish_solver_app

pytestmark = pytest.mark.sqlite


@pytest.fixture
def uma(db: None, tmp_path: Path) -> User:
    """A user who may run the test app (published by pete)."""
    return publish_solver_app(tmp_path)[1]


def _submit(client: TestClient, user: User, **fields: Any) -> Any:
    body = {"app": SOLVER_APP, "procedure": "echo"} | fields
    return client.post(f"{API}/jobs", json=body, headers=bearer(user))


def test_a_submitted_job_is_queued_with_its_settings(client: TestClient, uma: User) -> None:
    with session_scope() as session:
        case = cases.upload_case(session, actor=uma, name="in.json", source=[b"{}"])

    response = _submit(
        client, uma, input_case_id=case.id, arguments={"n": 3}, priority=-10, time_limit_s=30
    )

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["state"] == "queued" and job["attempt"] == 0
    assert (job["app"], job["version"], job["procedure"], job["owner"]) == (
        SOLVER_APP,
        "1.0",
        "echo",
        "uma",
    )
    assert (job["priority"], job["time_limit_s"], job["arguments"]) == (-10, 30, {"n": 3})
    assert job["input_case_id"] == case.id and job["hook_secret"] is None
    listed = client.get(f"{API}/jobs", headers=bearer(uma)).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]


def test_the_time_limit_defaults_to_the_apps(client: TestClient, uma: User) -> None:
    assert _submit(client, uma).json()["time_limit_s"] == 120  # the test app's resources


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"app": "no-such-app"}, 404, "not_found"),
        ({"version": "9.9"}, 404, "not_found"),
        ({"procedure": "nope"}, 422, "unknown_procedure"),
        ({"input_case_id": 999999}, 404, "not_found"),
        ({"arguments": ["not", "an", "object"]}, 422, "invalid_request"),
        ({"arguments": {"big": "x" * 70_000}}, 422, "invalid_arguments"),
        ({"priority": 1}, 422, "invalid_priority"),
        ({"priority": 101}, 422, "invalid_request"),
        ({"time_limit_s": 121}, 422, "invalid_time_limit"),
        ({"time_limit_s": 0}, 422, "invalid_request"),
        ({"start_at": "2030-01-01T10:00:00"}, 422, "invalid_start"),
        ({"start_at": "2099-01-01T10:00:00Z"}, 422, "invalid_start"),
        ({"hook_url": "ftp://example.org/x"}, 422, "invalid_hook_url"),
        ({"hook_url": "javascript:alert(1)"}, 422, "invalid_hook_url"),
        ({"hook_url": "http://user:pw@example.org/"}, 422, "invalid_hook_url"),
        ({"hook_url": "https:///no-host"}, 422, "invalid_hook_url"),
        ({"unknown": 1}, 422, "invalid_request"),
    ],
)
def test_bad_submissions_are_refused_and_nothing_is_queued(
    client: TestClient, uma: User, fields: dict[str, Any], status: int, code: str
) -> None:
    message = error(_submit(client, uma, **fields), status, code)

    assert message
    with session_scope() as session:
        assert session.exec(select(Job)).all() == []


def test_no_run_right_no_job(client: TestClient, uma: User) -> None:
    reader = quick_user("rita")
    with session_scope() as session:
        publisher = session.exec(select(User).where(User.username == "pete")).one()
        app_access.set_grant(
            session,
            actor=publisher,
            name=SOLVER_APP,
            principal_type="user",
            principal_name="rita",
            right="read",
            effect="allow",
        )
    error(_submit(client, reader), 403, "forbidden")
    error(_submit(client, quick_user("nobody")), 404, "not_found")  # cannot even see it


def test_another_users_input_case_cannot_be_used(client: TestClient, uma: User) -> None:
    other = quick_user("olga")
    with session_scope() as session:
        hers = cases.upload_case(session, actor=other, name="secret.json", source=[b"{}"])

    error(_submit(client, uma, input_case_id=hers.id), 404, "not_found")


def test_admins_may_raise_the_priority_and_the_time_limit(client: TestClient, uma: User) -> None:
    boss = quick_user("boss", Role.admin.value)
    job = _submit(client, boss, priority=50, time_limit_s=3600).json()
    assert (job["priority"], job["time_limit_s"]) == (50, 3600)


def test_a_start_time_ahead_schedules_the_job(client: TestClient, uma: User) -> None:
    at = (utcnow() + timedelta(hours=2)).isoformat()
    job = _submit(client, uma, start_at=at).json()
    assert job["state"] == "scheduled"
    states = client.get(f"{API}/jobs?state=active", headers=bearer(uma)).json()["items"]
    assert [j["id"] for j in states] == [job["id"]]


def test_other_users_jobs_are_not_found(client: TestClient, uma: User) -> None:
    job = _submit(client, uma).json()
    other = quick_user("olga")
    for method, path in [
        ("GET", f"/jobs/{job['id']}"),
        ("GET", f"/jobs/{job['id']}/log"),
        ("POST", f"/jobs/{job['id']}/cancel"),
        ("DELETE", f"/jobs/{job['id']}"),
        ("GET", "/jobs/99999999999999999999"),
    ]:
        response = client.request(method, f"{API}{path}", headers=bearer(other))
        assert response.status_code in (404, 422), (path, response.text)
    assert client.get(f"{API}/jobs", headers=bearer(other)).json()["total"] == 0
    # the admin sees all of them, on asking
    boss = quick_user("boss", Role.admin.value)
    assert client.get(f"{API}/jobs", headers=bearer(boss, "read", "admin")).json()["total"] == 0
    everyone = client.get(f"{API}/jobs?all=true", headers=bearer(boss, "read", "admin"))
    assert [j["id"] for j in everyone.json()["items"]] == [job["id"]]


def test_cancel_and_delete(client: TestClient, uma: User) -> None:
    job = _submit(client, uma).json()
    error(client.delete(f"{API}/jobs/{job['id']}", headers=bearer(uma)), 409, "job_active")

    cancelled = client.post(f"{API}/jobs/{job['id']}/cancel", headers=bearer(uma)).json()
    assert cancelled["state"] == "cancelled" and cancelled["reason"] == "cancelled by uma"
    error(client.post(f"{API}/jobs/{job['id']}/cancel", headers=bearer(uma)), 409, "job_finished")

    assert client.delete(f"{API}/jobs/{job['id']}", headers=bearer(uma)).status_code == 204
    error(client.get(f"{API}/jobs/{job['id']}", headers=bearer(uma)), 404, "not_found")


def test_bulk_delete_removes_thousands_of_finished_jobs_and_their_cases(
    client: TestClient, uma: User
) -> None:
    keep = _submit(client, uma).json()  # still queued: stays
    with session_scope() as session:
        template = session.get(Job, keep["id"])
        assert template is not None
        done = utcnow()
        rows = [
            {
                "owner_id": uma.id,
                "app_id": template.app_id,
                "release_id": template.release_id,
                "version": "1.0",
                "procedure": "echo",
                "arguments": "{}",
                "priority": 0,
                "time_limit_s": 60,
                "state": "succeeded",
                "attempt": 1,
                "max_attempts": 3,
                "cancel_requested": False,
                "reason": "",
                "hook_url": "",
                "created_at": done,
                "updated_at": done,
                "finished_at": done,
            }
            for _ in range(3000)
        ]
        session.execute(insert(Job), rows)
        first = session.exec(select(Job).where(Job.state == "succeeded")).first()
        assert first is not None
        output = cases.upload_case(session, actor=uma, name="out.json", source=[b"[]"])
    with session_scope() as session:
        case = session.get(Case, output.id)
        assert case is not None
        case.job_id, case.kind = first.id, "output"
        session.add(case)

    response = client.post(f"{API}/jobs/delete", json={"state": "finished"}, headers=bearer(uma))

    assert response.json() == {"deleted": 3000}
    with session_scope() as session:
        assert [j.id for j in session.exec(select(Job)).all()] == [keep["id"]]
        assert session.get(Case, output.id) is None


# -- state hooks --------------------------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """An HTTP server on loopback that records every POST."""
    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver.received
    finally:
        server.shutdown()


def test_state_hooks_are_signed_and_arrive_in_order(
    client: TestClient, uma: User, receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, received = receiver
    job = _submit(client, uma, hook_url=url).json()
    client.post(f"{API}/jobs/{job['id']}/cancel", headers=bearer(uma))

    with hooks.make_client() as http_client:
        assert hooks.deliver_due(http_client) == 2

    assert [json.loads(body)["state"] for _, body in received] == ["queued", "cancelled"]
    secret = job["hook_secret"]
    assert secret
    for headers, body in received:
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Aimms-Portal-Signature"] == f"sha256={expected}"
    with session_scope() as session:
        assert all(d.delivered_at for d in session.exec(select(HookDelivery)).all())


def test_a_failed_hook_is_retried_later(client: TestClient, uma: User) -> None:
    job = _submit(client, uma, hook_url="http://127.0.0.1:9/nothing-listens").json()

    with hooks.make_client() as http_client:
        assert hooks.deliver_due(http_client) == 0

    with session_scope() as session:
        delivery = session.exec(select(HookDelivery).where(HookDelivery.job_id == job["id"])).one()
    assert delivery.tries == 1 and delivery.delivered_at is None
    assert delivery.next_try_at > utcnow() and delivery.last_error


@pytest.fixture
def public_hooks_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings that send hooks to public addresses only (the production default)."""
    monkeypatch.setenv("AIMMS_PORTAL_HOOK_PRIVATE_ADDRESSES", "false")
    config.get_settings.cache_clear()
    yield
    monkeypatch.undo()
    config.get_settings.cache_clear()


def test_hooks_to_private_addresses_can_be_refused(
    client: TestClient,
    uma: User,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
    public_hooks_only: None,
) -> None:
    url, received = receiver
    # an address is refused at once
    for refused in (url, "http://[::1]:80/", "http://10.1.2.3/", "http://169.254.169.254/x"):
        message = error(_submit(client, uma, hook_url=refused), 422, "invalid_hook_url")
        assert "not public" in message, refused
    # a name is checked when the hook is sent: what it resolves to then is what counts
    port = url.split(":")[2].split("/")[0]
    job = _submit(client, uma, hook_url=f"http://localhost:{port}/hook").json()
    with hooks.make_client() as http_client:
        assert hooks.deliver_due(http_client) == 0
    assert received == []
    with session_scope() as session:
        delivery = session.exec(select(HookDelivery).where(HookDelivery.job_id == job["id"])).one()
    assert delivery.tries == hooks.MAX_TRIES  # final: not tried again
    assert delivery.last_error.startswith("refused: localhost resolves to ")
    assert "which is not a public address" in delivery.last_error


def test_hooks_to_public_addresses_go_through_the_checked_connection(
    client: TestClient,
    uma: User,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
    public_hooks_only: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, received = receiver
    port = url.split(":")[2].split("/")[0]
    job = _submit(client, uma, hook_url=f"http://localhost:{port}/hook").json()
    # the tests have no public receiver: let loopback count as public, and nothing else
    checked: list[str] = []
    monkeypatch.setattr(hooks, "public", lambda a: checked.append(str(a)) or a.is_loopback)
    with hooks.make_client() as http_client:
        assert hooks.deliver_due(http_client) == 1
    assert "127.0.0.1" in checked  # (and ::1, where localhost has both)
    ((headers, body),) = received
    assert json.loads(body)["state"] == "queued" and json.loads(body)["job_id"] == job["id"]
    expected = hmac.new(job["hook_secret"].encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Aimms-Portal-Signature"] == f"sha256={expected}"


def test_retention_deletes_old_finished_jobs_only(client: TestClient, uma: User) -> None:
    old = _submit(client, uma).json()
    recent = _submit(client, uma).json()
    waiting = _submit(client, uma).json()
    for job in (old, recent):
        client.post(f"{API}/jobs/{job['id']}/cancel", headers=bearer(uma))
    with session_scope() as session:
        row = session.get(Job, old["id"])
        assert row is not None
        row.finished_at = utcnow() - timedelta(days=31)
        session.add(row)

    with session_scope() as session:
        assert jobs.purge_finished(session, retention_days=30) == 1

    with session_scope() as session:
        left = session.exec(select(Job.id).order_by(col(Job.id))).all()
    assert list(left) == [recent["id"], waiting["id"]]
