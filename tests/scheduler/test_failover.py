"""What happens when something dies: a runner, a session's heartbeat, the portal itself.

Runner processes are real (the local launcher); so are the portal processes of the
restart tests, which are killed with SIGKILL and started again on the same database.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

from sqlmodel import col, select

from aimms_portal.db import session_scope
from aimms_portal.launchers import SessionSpec
from aimms_portal.launchers.local import LocalLauncher
from aimms_portal.models import AppSession, Case, Job
from tests.solving import (
    SolvePortal,
    backend_processes,
    journal_runs,
    process_alive,
    runner_pid,
    submit,
    wait_for_runs,
)


def _session_of(portal: SolvePortal, job_id: int) -> AppSession:
    job = portal.wait_for(job_id, lambda j: j.session_id is not None)
    with session_scope() as session:
        app_session = session.get(AppSession, job.session_id)
        assert app_session is not None
    return app_session


def _outputs(job_id: int) -> list[Case]:
    with session_scope() as session:
        return list(
            session.exec(select(Case).where(Case.job_id == job_id, Case.kind == "output")).all()
        )


def _log_text(portal: SolvePortal, job_id: int) -> str:
    with portal.client() as client:
        log = client.request("GET", f"/jobs/{job_id}/log")
    return "".join(chunk["text"] for chunk in log["chunks"])


def test_a_runner_killed_mid_solve_is_requeued_and_recorded_once(
    solve_portal: SolvePortal,
) -> None:
    journal = solve_portal.folder / "journal"
    job_id = submit(solve_portal, "sleep", arguments={"seconds": 2, "journal": str(journal)})
    first = wait_for_runs(journal, 1)[0]
    app_session = _session_of(solve_portal, job_id)

    os.kill(runner_pid(app_session), signal.SIGKILL)
    job = solve_portal.wait_state(job_id, "succeeded", "failed", timeout=90)

    assert job.state == "succeeded", job.reason
    assert job.attempt == 2
    runs = journal_runs(journal)
    assert [r.job_id for r in runs] == [job_id, job_id]
    assert runs[0] == first and first.end is None  # the first attempt never finished
    assert not process_alive(first.pid)  # its procedure went down with its session
    outputs = _outputs(job_id)
    assert [(c.id, c.attempt) for c in outputs] == [(job.output_case_id, 2)]
    assert "attempt 1 lost: the session ended" in _log_text(solve_portal, job_id)
    with session_scope() as session:
        ended = session.get(AppSession, app_session.id)
        assert ended is not None and ended.state == "failed"


def test_a_session_that_stops_heartbeating_loses_its_job_to_another(
    solve_portal: SolvePortal,
) -> None:
    journal = solve_portal.folder / "journal"
    job_id = submit(solve_portal, "sleep", arguments={"seconds": 2, "journal": str(journal)})
    first = wait_for_runs(journal, 1)[0]
    frozen = _session_of(solve_portal, job_id)

    # a frozen runner: its process lives, but no heartbeat comes any more
    os.kill(runner_pid(frozen), signal.SIGSTOP)
    job = solve_portal.wait_state(job_id, "succeeded", "failed", timeout=90)

    assert (job.state, job.attempt) == ("succeeded", 2)
    assert job.session_id != frozen.id
    assert not process_alive(first.pid) and not process_alive(runner_pid(frozen))
    assert "no heartbeat for 4 s" in _log_text(solve_portal, job_id)


def test_cancel_stops_a_running_procedure(solve_portal: SolvePortal) -> None:
    journal = solve_portal.folder / "journal"
    job_id = submit(solve_portal, "sleep", arguments={"seconds": 60, "journal": str(journal)})
    run = wait_for_runs(journal, 1)[0]
    solve_portal.wait_state(job_id, "running")

    with solve_portal.client() as client:
        asked = client.request("POST", f"/jobs/{job_id}/cancel")
    job = solve_portal.wait_state(job_id, "cancelled", "succeeded", "failed", timeout=30)

    assert asked["cancel_requested"] is True
    assert job.state == "cancelled" and job.attempt == 1
    assert not process_alive(run.pid)
    assert job.finished_at is not None


def test_the_time_limit_kills_the_procedure(solve_portal: SolvePortal) -> None:
    journal = solve_portal.folder / "journal"
    job_id = submit(
        solve_portal,
        "sleep",
        arguments={"seconds": 60, "journal": str(journal)},
        time_limit_s=1,
    )
    run = wait_for_runs(journal, 1)[0]

    job = solve_portal.wait_state(job_id, "timed_out", "succeeded", "failed", timeout=30)

    assert (job.state, job.reason) == ("timed_out", "time limit 1 s")
    assert not process_alive(run.pid)


def test_children_of_a_cancelled_procedure_end_too(solve_portal: SolvePortal) -> None:
    journal = solve_portal.folder / "journal"
    job_id = submit(solve_portal, "spawn", arguments={"journal": str(journal)})
    child = wait_for_runs(journal, 1)[0]
    with solve_portal.client() as client:
        client.request("POST", f"/jobs/{job_id}/cancel")

    solve_portal.wait_state(job_id, "cancelled", timeout=30)

    deadline = time.monotonic() + 10
    while process_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(child.pid)


# -- whole portal processes -------------------------------------------------------------


def _wait_all_finished(job_ids: list[int], timeout: float) -> list[Job]:
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as session:
            jobs = list(session.exec(select(Job).where(col(Job.id).in_(job_ids))).all())
        if all(j.finished_at is not None for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            states = sorted((j.id, j.state, j.reason) for j in jobs)
            raise AssertionError(f"jobs did not finish: {states}")
        time.sleep(0.2)


def _assert_never_twice_at_once(journal: Path) -> None:
    """No job's procedure ran twice at the same time: a later run of a job starts only
    after the earlier one ended, or after the session of a killed one ended."""
    by_job: dict[int, list] = {}
    for run in journal_runs(journal):
        by_job.setdefault(run.job_id, []).append(run)
    for job_id, runs in by_job.items():
        for earlier, later in zip(runs, runs[1:], strict=False):
            assert earlier.end is not None or not process_alive(earlier.pid), (job_id, runs)
            if earlier.end is not None:
                assert later.start >= earlier.end, (job_id, runs)


def test_a_portal_killed_while_dispatching_loses_no_job_and_runs_none_twice(
    solve_portal: SolvePortal,
) -> None:
    journal = solve_portal.folder / "journal"
    rng = random.Random(4)
    with backend_processes(solve_portal, 1, AIMMS_PORTAL_MAX_SOLVE_SESSIONS="2") as (portal,):
        job_ids = [
            submit(solve_portal, "sleep", arguments={"seconds": 0.5, "journal": str(journal)})
            for _ in range(8)
        ]
        # crash the portal again and again while it dispatches and its sessions run
        for _ in range(4):
            time.sleep(rng.uniform(0.3, 1.5))
            portal.kill()
            portal.start()
        jobs = _wait_all_finished(job_ids, timeout=180)

    assert [j.state for j in jobs] == ["succeeded"] * len(job_ids), [j.reason for j in jobs]
    for job in jobs:
        assert [(c.id, c.attempt) for c in _outputs(job.id or 0)] == [
            (job.output_case_id, job.attempt)
        ]
    _assert_never_twice_at_once(journal)
    assert {r.job_id for r in journal_runs(journal)} == set(job_ids)


def test_two_portal_processes_never_dispatch_one_job_twice(solve_portal: SolvePortal) -> None:
    journal = solve_portal.folder / "journal"
    with backend_processes(
        solve_portal, 2, shared_url=True, AIMMS_PORTAL_MAX_SOLVE_SESSIONS="3"
    ) as processes:
        job_ids = [
            submit(solve_portal, "sleep", arguments={"seconds": 0.2, "journal": str(journal)})
            for _ in range(12)
        ]
        time.sleep(2)
        processes[0].kill()  # whichever leads, the other must take over
        jobs = _wait_all_finished(job_ids, timeout=180)

    assert [j.state for j in jobs] == ["succeeded"] * len(job_ids)
    runs = journal_runs(journal)
    _assert_never_twice_at_once(journal)
    # every job ran to its end exactly once (a killed leader's runners were adopted)
    finished = sorted(r.job_id for r in runs if r.end is not None)
    assert finished == sorted(job_ids)


def test_session_processes_nobody_owns_are_stopped(solve_portal: SolvePortal) -> None:
    # a session process the database knows nothing of (left by a lost portal, say)
    stray = LocalLauncher(
        solve_portal.launcher.sessions_dir,
        runner_command=[sys.executable, "-c", "import time; time.sleep(600)"],
    )
    handle = stray.start(
        SessionSpec(session_id=987654, kind="solve", portal_url=solve_portal.url, token="ast_x")
    )
    pid = int(handle.split(":")[2])
    assert process_alive(pid)

    solve_portal.scheduler.reaper.reconcile()

    assert not process_alive(pid)
    assert 987654 not in solve_portal.launcher.list_sessions()
