"""The runner's routes: session tokens (forged, expired, ended), what they reach, and
fencing (a stale attempt can change nothing)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import select

from aimms_portal import config
from aimms_portal.db import session_scope
from aimms_portal.models import AppSession, Case, Job, JobLogChunk, User, utcnow
from aimms_portal.scheduler.dispatcher import dispatch_once, requeue_or_fail
from aimms_portal.services import jobs
from tests.api.support import API, error
from tests.fakes import RecordingLauncher
from tests.helpers import bearer
from tests.solving import SOLVER_APP, publish_solver_app

pytestmark = pytest.mark.sqlite


@pytest.fixture
def uma(db: None, tmp_path: Path) -> User:
    return publish_solver_app(tmp_path)[1]


def _job(user: User) -> int:
    with session_scope() as session:
        return jobs.submit_job(session, actor=user, app=SOLVER_APP, procedure="echo").job.id or 0


def _dispatch() -> RecordingLauncher:
    launcher = RecordingLauncher()
    config.get_settings.cache_clear()
    dispatch_once(launcher, config.get_settings())
    return launcher


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _started_session(user: User) -> tuple[int, str]:
    """A job handed to a new session whose runner is ready: (job id, session token)."""
    job_id = _job(user)
    token = _dispatch().started[0].token
    return job_id, token


def test_the_runner_routes_want_a_session_token(client: TestClient, uma: User) -> None:
    for headers, code in [
        ({}, "not_authenticated"),
        (bearer(uma), "not_authenticated"),  # a personal token is not a session's
        (_as("ast_forged-token-that-nobody-issued"), "invalid_session_token"),
    ]:
        error(client.get(f"{API}/runner/session", headers=headers), 401, code)


def test_an_ended_or_expired_session_is_refused(client: TestClient, uma: User) -> None:
    _, token = _started_session(uma)
    assert client.get(f"{API}/runner/session", headers=_as(token)).status_code == 200

    with session_scope() as session:
        session.execute(update(AppSession).values(token_expires_at=utcnow() - timedelta(seconds=1)))
    error(client.get(f"{API}/runner/session", headers=_as(token)), 401, "session_token_expired")
    with session_scope() as session:
        session.execute(update(AppSession).values(state="stopped"))
    error(client.get(f"{API}/runner/session", headers=_as(token)), 401, "session_ended")


def test_a_session_token_acts_for_its_owner_on_jobs_only(client: TestClient, uma: User) -> None:
    _, token = _started_session(uma)

    mine = client.get(f"{API}/jobs", headers=_as(token))
    assert mine.status_code == 200 and mine.json()["total"] == 1
    submitted = client.post(
        f"{API}/jobs", json={"app": SOLVER_APP, "procedure": "echo"}, headers=_as(token)
    )
    assert submitted.status_code == 201 and submitted.json()["owner"] == "uma"
    for path in ("/tokens", "/users", "/audit", "/runtimes"):
        error(client.get(f"{API}{path}", headers=_as(token)), 403, "session_token_scope")


def test_the_runner_fetches_its_runtime_bundle_and_job(client: TestClient, uma: User) -> None:
    job_id, token = _started_session(uma)
    info = client.get(f"{API}/runner/session", headers=_as(token)).json()
    assert (info["app"], info["version"], info["kind"]) == (SOLVER_APP, "1.0", "solve")
    assert info["runtime"]["signer_public_key"].startswith("ed25519:")

    package = client.get(f"{API}/runner/runtime", headers=_as(token))
    assert package.status_code == 200 and len(package.content) == info["runtime"]["size"]
    bundle = client.get(f"{API}/runner/bundle", headers=_as(token))
    assert len(bundle.content) == info["bundle"]["size"]
    assert client.get(f"{API}/runner/bundle-key", headers=_as(token)).json() == {"key": None}

    assert client.post(f"{API}/runner/ready", headers=_as(token)).status_code == 204
    job = client.post(f"{API}/runner/next", headers=_as(token)).json()["job"]
    assert (job["job_id"], job["attempt"], job["command"]) == (
        job_id,
        1,
        ["python", "procs.py", "echo"],
    )


def test_a_stale_attempt_can_change_nothing(client: TestClient, uma: User) -> None:
    job_id, old_token = _started_session(uma)
    client.post(f"{API}/runner/ready", headers=_as(old_token))
    client.post(f"{API}/runner/next", headers=_as(old_token))
    client.post(f"{API}/runner/jobs/{job_id}/started", json={"attempt": 1}, headers=_as(old_token))
    # the portal gives up on attempt 1 (as if its session were lost) and starts attempt 2
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        requeue_or_fail(session, job, "lost: test")
    new_token = _dispatch().started[0].token
    client.post(f"{API}/runner/ready", headers=_as(new_token))
    assert client.post(f"{API}/runner/next", headers=_as(new_token)).json()["job"]["attempt"] == 2

    stale = {"attempt": 1}
    for method, path, body in [
        ("POST", "heartbeat", stale),
        ("POST", "started", stale),
        ("POST", "log", stale | {"lines": [["stdout", "from the old attempt\n"]]}),
        ("POST", "finish", stale | {"outcome": "succeeded", "exit_code": 0}),
    ]:
        response = client.request(
            method, f"{API}/runner/jobs/{job_id}/{path}", json=body, headers=_as(old_token)
        )
        error(response, 409, "stale_attempt")
    upload = client.put(
        f"{API}/runner/jobs/{job_id}/output?attempt=1", content=b"old", headers=_as(old_token)
    )
    error(upload, 409, "stale_attempt")
    # the right number from the wrong session is just as stale
    error(
        client.post(
            f"{API}/runner/jobs/{job_id}/heartbeat", json={"attempt": 2}, headers=_as(old_token)
        ),
        409,
        "stale_attempt",
    )

    # the current attempt reports, once
    current = {"attempt": 2}
    client.post(f"{API}/runner/jobs/{job_id}/started", json=current, headers=_as(new_token))
    client.put(
        f"{API}/runner/jobs/{job_id}/output?attempt=2&name=out.json",
        content=b"new",
        headers=_as(new_token),
    )
    done = client.post(
        f"{API}/runner/jobs/{job_id}/finish",
        json=current | {"outcome": "succeeded", "exit_code": 0},
        headers=_as(new_token),
    )
    assert done.status_code == 200, done.text
    again = client.post(
        f"{API}/runner/jobs/{job_id}/finish",
        json=current | {"outcome": "failed", "exit_code": 1},
        headers=_as(new_token),
    )
    error(again, 409, "stale_attempt")
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.state, job.attempt, job.exit_code) == ("succeeded", 2, 0)
        outputs = session.exec(select(Case).where(Case.job_id == job_id)).all()
        assert [(c.attempt, c.id) for c in outputs] == [(2, job.output_case_id)]
        texts = [c.text for c in session.exec(select(JobLogChunk)).all()]
        assert not any("old attempt" in t for t in texts)


def test_bad_reports_are_refused(client: TestClient, uma: User) -> None:
    job_id, token = _started_session(uma)
    client.post(f"{API}/runner/ready", headers=_as(token))
    client.post(f"{API}/runner/next", headers=_as(token))
    base = f"{API}/runner/jobs/{job_id}"
    error(
        client.post(f"{base}/finish", json={"attempt": 1, "outcome": "great"}, headers=_as(token)),
        422,
    )
    error(
        client.post(
            f"{base}/log", json={"attempt": 1, "lines": [["stdin", "x"]]}, headers=_as(token)
        ),
        422,
    )
    error(client.post(f"{base}/heartbeat", json={"attempt": 0}, headers=_as(token)), 422)
    error(
        client.post(
            f"{base}/heartbeat",
            content=b"{",
            headers=_as(token) | {"Content-Type": "application/json"},
        ),
        400,
    )
    error(
        client.get(f"{API}/runner/jobs/{job_id + 1}/input?attempt=1", headers=_as(token)),
        409,
        "stale_attempt",
    )
