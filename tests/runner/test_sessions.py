"""The runner in real sessions: encrypted bundles, runtimes prepared by two sessions at
once, and a runtime whose signing key is no longer trusted."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from aimms_portal.db import session_scope
from aimms_portal.models import AppSession, Release, SigningKey
from aimms_portal.packages import pack_app
from aimms_portal.services import apps, portal_keys, signing_keys
from aimms_portal.storage import get_storage
from tests.api.support import quick_user
from tests.solving import SOLVER_APP, SolvePortal, submit


def _publish_encrypted(portal: SolvePortal, version: str) -> None:
    """Release ``version`` of the test app, encrypted for this portal."""
    with session_scope() as session:
        public_pem = portal_keys.ensure_portal_key(session).public_pem.encode()
    source = portal.folder / f"solver-{version}"
    if not source.exists():
        from tests.solving import solver_bundle

        solver_bundle(portal.folder, version)
    bundle = portal.folder / f"solver-{version}.enc"
    pack_app(source, bundle, encrypt_for=public_pem)
    with open(bundle, "rb") as stream:
        release = apps.publish_bundle(actor=portal.publisher, source=stream)
    assert release.encrypted


def test_an_encrypted_bundle_runs_and_stays_encrypted(solve_portal: SolvePortal) -> None:
    _publish_encrypted(solve_portal, "2.0")

    job_id = submit(solve_portal, "wheel")
    job = solve_portal.wait_state(job_id, "succeeded", "failed", timeout=90)

    assert job.state == "succeeded", job.reason
    assert job.version == "2.0"  # the encrypted release, decrypted in the session
    with session_scope() as session:
        release = session.exec(select(Release).where(Release.version == "2.0")).one()
    with get_storage().open(release.bundle_key) as stored:
        assert stored.read(8) == b"AIMMSENC"  # still encrypted in storage


def test_two_sessions_prepare_one_new_runtime_at_once(
    solve_portal: SolvePortal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a runtime cache nobody has used: both sessions must build (or wait for) the env
    from aimms_portal import config

    fresh = tmp_path / "fresh-cache"
    monkeypatch.setenv("AIMMS_PORTAL_RUNTIME_CACHE_DIR", str(fresh))
    config.get_settings.cache_clear()
    solve_portal.scheduler.settings = config.get_settings()
    second = quick_user("ulf")
    from aimms_portal.services import app_access

    with session_scope() as session:
        for right in ("read", "run"):
            app_access.set_grant(
                session,
                actor=solve_portal.publisher,
                name=SOLVER_APP,
                principal_type="user",
                principal_name="ulf",
                right=right,
                effect="allow",
            )

    first_job = submit(solve_portal, "wheel")
    with solve_portal.client(second) as client:
        second_job = int(
            client.request("POST", "/jobs", json={"app": SOLVER_APP, "procedure": "wheel"})["id"]
        )
    done = [
        solve_portal.wait_state(j, "succeeded", "failed", timeout=120)
        for j in (first_job, second_job)
    ]

    assert [j.state for j in done] == ["succeeded", "succeeded"], [j.reason for j in done]
    assert done[0].session_id != done[1].session_id
    ready = list(fresh.glob("runtimes/*/READY"))
    assert len(ready) == 1  # one environment, built once


def test_a_runtime_signed_by_a_key_no_longer_trusted_does_not_run(
    solve_portal: SolvePortal, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from aimms_portal import config

    monkeypatch.setenv("AIMMS_PORTAL_RUNTIME_CACHE_DIR", str(tmp_path / "other-cache"))
    monkeypatch.setenv("AIMMS_PORTAL_JOB_MAX_ATTEMPTS", "1")
    config.get_settings.cache_clear()
    solve_portal.scheduler.settings = config.get_settings()
    admin = quick_user("boss", "admin")
    with session_scope() as session:
        root = session.exec(select(SigningKey)).one()
        signing_keys.delete_signing_key(session, actor=admin, key_id=root.id or 0)

    job_id = submit(solve_portal, "echo")
    job = solve_portal.wait_state(job_id, "succeeded", "failed", timeout=90)

    assert job.state == "failed"
    assert "its signing key is no longer trusted" in job.reason, job.reason
    with session_scope() as session:
        app_session = session.get(AppSession, job.session_id) if job.session_id else None
        ended = session.exec(select(AppSession)).all()
    assert [s.id for s in ended] == [job.session_id]  # one attempt: one session
    assert app_session is not None and app_session.state == "failed"
    assert "no longer trusted" in app_session.reason
