"""What the scheduler decides: order, capacity, start times, leadership, state machine.

Sessions here are started by a launcher that starts nothing (tests/fakes.py); the test
plays each session's runner by calling the runner's service functions with the token
the launcher was given, so every decision goes through the real code and database.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from aimms_portal import config
from aimms_portal.db import session_scope
from aimms_portal.errors import Conflict
from aimms_portal.launchers import SessionSpec
from aimms_portal.models import AppSession, HookDelivery, Job, JobState, Role, User, utcnow
from aimms_portal.scheduler import lifecycle
from aimms_portal.scheduler.dispatcher import dispatch_once
from aimms_portal.scheduler.leader import LeaderLeaseKeeper
from aimms_portal.services import jobs, runner_ops
from tests.api.support import quick_user
from tests.fakes import RecordingLauncher
from tests.helpers import USE_SQLITE
from tests.solving import SOLVER_APP, publish_solver_app

pytestmark = pytest.mark.sqlite


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Capacity settings; a test changes them before it calls :func:`_settings`."""
    values = {
        "AIMMS_PORTAL_MAX_SOLVE_SESSIONS": "10",
        "AIMMS_PORTAL_MAX_JOBS_PER_USER": "10",
        "AIMMS_PORTAL_MAX_JOBS_PER_APP": "10",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def _settings(monkeypatch: pytest.MonkeyPatch, **values: str) -> config.Settings:
    for name, value in values.items():
        monkeypatch.setenv(f"AIMMS_PORTAL_{name.upper()}", value)
    config.get_settings.cache_clear()
    return config.get_settings()


@pytest.fixture
def people(db: None, tmp_path: Path, limits: dict[str, str]) -> tuple[User, User, User]:
    """The publisher and two users who may run the test app."""
    publisher, uma = publish_solver_app(tmp_path, runners=("uma", "ulf"))
    with session_scope() as session:
        ulf = session.exec(select(User).where(User.username == "ulf")).one()
    return publisher, uma, ulf


def _submit(user: User, procedure: str = "echo", **fields: object) -> int:
    with session_scope() as session:
        view = jobs.submit_job(session, actor=user, app=SOLVER_APP, procedure=procedure, **fields)
        return view.job.id or 0


def _runner(spec: SessionSpec) -> runner_ops.RunnerSession:
    """Be the runner of a started session: ready, and return who it is."""
    with session_scope() as session:
        runner = runner_ops.session_from_token(session, spec.token)
        runner_ops.mark_ready(session, runner=runner)
    return runner


def _take(runner: runner_ops.RunnerSession) -> Job | None:
    with session_scope() as session:
        return runner_ops.next_job(session, runner=runner)


def _finish(runner: runner_ops.RunnerSession, job: Job) -> Job | None:
    with session_scope() as session:
        runner_ops.job_started(session, runner=runner, job_id=job.id or 0, attempt=job.attempt)
    with session_scope() as session:
        return runner_ops.finish_job(
            session, runner=runner, job_id=job.id or 0, attempt=job.attempt, outcome="succeeded"
        )


def _states(*job_ids: int) -> list[str]:
    with session_scope() as session:
        return [session.get(Job, i).state for i in job_ids]  # type: ignore[union-attr]


def test_higher_priority_first_then_first_in_first_out(
    people: tuple[User, User, User], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(monkeypatch, max_solve_sessions="1")
    boss = quick_user("boss", Role.admin.value)  # admins may also raise a priority
    a = _submit(boss)
    b = _submit(boss, priority=-5)
    c = _submit(boss)
    d = _submit(boss, priority=-5)
    e = _submit(boss, priority=10)

    launcher = RecordingLauncher()
    dispatch_once(launcher, settings)
    assert len(launcher.started) == 1  # one session at most
    order = []
    runner = _runner(launcher.started[0])
    job = _take(runner)
    while job is not None:
        order.append(job.id)
        job = _finish(runner, job)

    assert order == [e, a, c, b, d]


def test_a_warm_session_never_jumps_the_queue(
    people: tuple[User, User, User], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(monkeypatch, max_solve_sessions="1")
    _, uma, ulf = people
    first = _submit(uma)
    launcher = RecordingLauncher()
    dispatch_once(launcher, settings)
    runner = _runner(launcher.started[0])
    job = _take(runner)
    assert job is not None and job.id == first
    ulfs = _submit(ulf)  # another user's job is now the head of the queue
    later = _submit(uma)

    # uma's session finishes, but ulf's job comes first: the session goes idle
    assert _finish(runner, job) is None
    assert _states(ulfs, later) == ["queued", "queued"]
    # the dispatcher makes room (stops uma's idle session) and starts one for ulf
    dispatch_once(launcher, settings)
    assert launcher.stopped == [f"fake:{launcher.started[0].session_id}"]
    dispatch_once(launcher, settings)
    assert len(launcher.started) == 2
    assert _states(ulfs, later) == ["starting", "queued"]


def test_capacity_per_user_and_per_app(
    people: tuple[User, User, User], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(monkeypatch, max_jobs_per_user="2", max_jobs_per_app="3")
    _, uma, ulf = people
    umas = [_submit(uma) for _ in range(3)]
    ulfs = [_submit(ulf) for _ in range(2)]

    launcher = RecordingLauncher()
    dispatch_once(launcher, settings)

    # uma: 2 of 3 (per user); ulf: 1 of 2 (the app's 3 are taken)
    assert _states(*umas) == ["starting", "starting", "queued"]
    assert _states(*ulfs) == ["starting", "queued"]
    assert len(launcher.started) == 3

    # a finished job frees its slot: uma's warm session takes her third job
    runner = _runner(launcher.started[0])
    job = _take(runner)
    assert job is not None
    nxt = _finish(runner, job)
    assert nxt is not None and nxt.id == umas[2]


def test_the_session_limit_holds(
    people: tuple[User, User, User], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(monkeypatch, max_solve_sessions="2")
    _, uma, ulf = people
    ids = [_submit(uma), _submit(ulf), _submit(ulf)]
    launcher = RecordingLauncher()

    for _ in range(3):
        dispatch_once(launcher, settings)

    assert len(launcher.started) == 2
    assert sorted(_states(*ids)) == ["queued", "starting", "starting"]


def test_a_scheduled_job_waits_for_its_start_time(
    people: tuple[User, User, User], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(monkeypatch)
    _, uma, _ = people
    job_id = _submit(uma, start_at=utcnow() + timedelta(hours=1))
    launcher = RecordingLauncher()

    dispatch_once(launcher, settings)
    assert _states(job_id) == ["scheduled"] and launcher.started == []

    with session_scope() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(start_at=utcnow() - timedelta(seconds=1))  # type: ignore[arg-type]
        )
    dispatch_once(launcher, settings)
    assert _states(job_id) == ["starting"]


def test_two_dispatchers_at_once_hand_out_each_job_once(
    people: tuple[User, User, User], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(
        monkeypatch, max_solve_sessions="100", max_jobs_per_user="100", max_jobs_per_app="100"
    )
    _, uma, ulf = people
    ids = [_submit(uma if i % 2 else ulf) for i in range(40)]
    launchers = [RecordingLauncher(), RecordingLauncher()]
    barrier = threading.Barrier(2)

    def dispatch(launcher: RecordingLauncher) -> None:
        barrier.wait()
        for _ in range(5):
            dispatch_once(launcher, settings)

    threads = [threading.Thread(target=dispatch, args=(launcher,)) for launcher in launchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    with session_scope() as session:
        handed = session.exec(select(Job).where(col(Job.id).in_(ids))).all()
        sessions = session.exec(select(AppSession)).all()
    assert all(j.state == "starting" and j.attempt == 1 for j in handed)
    assert sorted(s.job_id for s in sessions) == sorted(ids)  # one session per job
    assert len(launchers[0].started) + len(launchers[1].started) == len(ids)


def test_one_leader_at_a_time(db: None) -> None:
    ttl = timedelta(seconds=1)
    first = LeaderLeaseKeeper("test-lease", "first", ttl)
    second = LeaderLeaseKeeper("test-lease", "second", ttl)

    assert first.try_hold() and not second.try_hold()
    assert first.try_hold()  # renewing
    time.sleep(1.2)  # first stops renewing (a crash)
    assert second.try_hold()
    assert not first.try_hold()
    second.release()
    assert first.try_hold()


def test_jobs_move_only_along_their_lifecycle(people: tuple[User, User, User]) -> None:
    _, uma, _ = people
    job_id = _submit(uma)
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        with pytest.raises(Conflict):
            lifecycle.move_job(session, job, JobState.running)  # queued -> running skips
        lifecycle.move_job(session, job, JobState.cancelled)
        for state in JobState:
            with pytest.raises(Conflict):
                lifecycle.move_job(session, job, state)  # a finished job stays finished


def _hook_states(job_id: int) -> list[tuple[str, int]]:
    with session_scope() as session:
        rows = session.exec(
            select(HookDelivery).where(HookDelivery.job_id == job_id).order_by(col(HookDelivery.id))
        ).all()
    return [(json.loads(r.body)["state"], json.loads(r.body)["attempt"]) for r in rows]


def test_every_state_change_of_a_warm_session_queues_its_hook(
    people: tuple[User, User, User], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(monkeypatch, max_solve_sessions="1")
    _, uma, _ = people
    hook = "http://127.0.0.1:9/hook"
    first, second = _submit(uma, hook_url=hook), _submit(uma, hook_url=hook)
    launcher = RecordingLauncher()
    dispatch_once(launcher, settings)
    runner = _runner(launcher.started[0])

    job = _take(runner)
    assert job is not None and job.id == first
    nxt = _finish(runner, job)  # started, finished, and the next one taken at once
    assert nxt is not None and nxt.id == second
    assert _finish(runner, nxt) is None

    expected = [("queued", 0), ("starting", 1), ("running", 1), ("succeeded", 1)]
    assert _hook_states(first) == expected
    assert _hook_states(second) == expected


def test_a_cancel_asked_for_keeps_who_asked_and_a_failure_says_its_exit_code(
    people: tuple[User, User, User], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(monkeypatch)
    _, uma, _ = people
    cancelled, failed, quiet = _submit(uma), _submit(uma), _submit(uma)
    launcher = RecordingLauncher()
    dispatch_once(launcher, settings)
    runners = {}
    for spec in launcher.started:
        runner = _runner(spec)
        job = _take(runner)
        assert job is not None
        runners[job.id] = (runner, job.attempt)
        with session_scope() as session:
            runner_ops.job_started(session, runner=runner, job_id=job.id or 0, attempt=1)
    with session_scope() as session:
        jobs.cancel_job(session, actor=uma, job_id=cancelled)

    outcomes = {cancelled: ("cancelled", None), failed: ("failed", 3), quiet: ("cancelled", None)}
    for job_id, (outcome, code) in outcomes.items():
        runner, attempt = runners[job_id]
        with session_scope() as session:
            runner_ops.finish_job(
                session,
                runner=runner,
                job_id=job_id,
                attempt=attempt,
                outcome=outcome,
                exit_code=code,
            )

    with session_scope() as session:
        reasons = [session.get(Job, i).reason for i in (cancelled, failed, quiet)]  # type: ignore[union-attr]
    assert reasons == ["cancelled by uma", "exit code 3", "cancelled"]
    assert _states(cancelled, failed, quiet) == ["cancelled", "failed", "cancelled"]


def test_a_repeated_started_report_only_renews_the_lease(
    people: tuple[User, User, User], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(monkeypatch)
    _, uma, _ = people
    job_id = _submit(uma)
    launcher = RecordingLauncher()
    dispatch_once(launcher, settings)
    runner = _runner(launcher.started[0])
    assert _take(runner) is not None
    with session_scope() as session:
        runner_ops.job_started(session, runner=runner, job_id=job_id, attempt=1)
    with session_scope() as session:
        first = session.get(Job, job_id)
        assert first is not None
        session.execute(
            update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow())  # type: ignore[arg-type]
        )

    with session_scope() as session:
        runner_ops.job_started(session, runner=runner, job_id=job_id, attempt=1)

    with session_scope() as session:
        again = session.get(Job, job_id)
        assert again is not None
    assert again.state == "running" and again.started_at == first.started_at
    assert again.lease_expires_at is not None and again.lease_expires_at > utcnow()
    assert [state for state, _ in _hook_states(job_id)] == []  # no hook: nothing queued


def _warm_sessions(monkeypatch: pytest.MonkeyPatch, *users: User) -> list[runner_ops.RunnerSession]:
    """One warm, idle session of the test app per user in ``users`` (in that order)."""
    settings = _settings(monkeypatch, max_solve_sessions=str(len(users)))
    warmups = [_submit(user) for user in users]
    launcher = RecordingLauncher()
    dispatch_once(launcher, settings)
    runners = [_runner(spec) for spec in launcher.started]
    by_job = {}
    for runner in runners:
        job = _take(runner)
        assert job is not None and job.id in warmups
        by_job[job.id] = runner
        assert _finish(runner, job) is None  # warm and idle now
    return [by_job[job_id] for job_id in warmups]


@pytest.mark.skipif(USE_SQLITE, reason="SQLite runs one unit of work at a time")
def test_claiming_sessions_of_other_users_pass_each_other(
    people: tuple[User, User, User], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, uma, ulf = people
    umas, ulfs = _warm_sessions(monkeypatch, uma, ulf)
    _settings(monkeypatch, max_jobs_per_user="1")  # the claims lock their users
    head, after = _submit(uma), _submit(ulf)

    # uma's session takes the head and has not committed yet; ulf's passes over it
    # (SKIP LOCKED) to the next job instead of waiting or finding nothing
    with session_scope() as holding:
        taken = runner_ops.next_job(holding, runner=umas)
        assert taken is not None and taken.id == head
        with session_scope() as session:
            other = runner_ops.next_job(session, runner=ulfs)
            assert other is not None and other.id == after

    assert _states(head, after) == ["starting", "starting"]


@pytest.mark.skipif(USE_SQLITE, reason="SQLite runs one unit of work at a time")
def test_claims_at_once_never_exceed_a_users_limit(
    people: tuple[User, User, User], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, uma, _ = people
    first, second = _warm_sessions(monkeypatch, uma, uma)
    _settings(monkeypatch, max_jobs_per_user="1")
    head, after = _submit(uma), _submit(uma)

    # the first session takes the head and holds its unit of work open
    outcome: list[Job | None] = []
    with session_scope() as holding:
        taken = runner_ops.next_job(holding, runner=first)
        assert taken is not None and taken.id == head
        # the dispatcher, meanwhile, does not hand uma's next job to the idle session:
        # it never waits for a claimer, it skips the job (and runs again soon)
        assert dispatch_once(RecordingLauncher(), config.get_settings()) == 0
        assert _states(after) == ["queued"]

        # the second session claims: it waits, then counts the first claim, takes nothing
        def claim() -> None:
            with session_scope() as session:
                outcome.append(runner_ops.next_job(session, runner=second))

        waiting = threading.Thread(target=claim)
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive(), "the second claim did not wait for the first"
    waiting.join(timeout=30)
    assert outcome == [None]
    assert _states(head, after) == ["starting", "queued"]
