"""The SDK's solve-job methods against a live portal with real runner processes.

Every test runs on ``solve_portal`` (tests/solving.py): the REST API on a loopback port,
a scheduler with the local launcher, and the test app ``solver-app`` whose procedures
echo their input, sleep, or fail. The client acts as the plain user ``uma``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from aimms_portal import client as client_module
from aimms_portal.client import (
    FINISHED_STATES,
    JobFailedError,
    PortalClient,
    PortalClientError,
)
from tests.solving import SOLVER_APP, SolvePortal

#: Long enough for a cold solve session (runtime environment, bundle) to start.
JOB_TIMEOUT = 90


def test_submit_with_a_file_input_waits_and_returns_the_echo(solve_portal: SolvePortal):
    content = b'{"demand": [3, 1, 4, 1, 5]}'
    source = solve_portal.folder / "demand.json"
    source.write_bytes(content)

    with solve_portal.client() as client:
        submitted = client.submit(SOLVER_APP, "echo", input=source)
        done = client.wait(submitted["id"], timeout=JOB_TIMEOUT)
        as_bytes = client.result(submitted["id"])
        as_file = client.result(submitted["id"], solve_portal.folder / "out.json")
        folder = solve_portal.folder / "results"
        folder.mkdir()
        in_folder = client.result(submitted["id"], folder)
        input_case = client.get_case(submitted["input_case_id"])

    assert submitted["state"] == "queued"
    assert (submitted["app"], submitted["version"], submitted["procedure"]) == (
        SOLVER_APP,
        "1.0",
        "echo",
    )
    # the file went up as an input case of the app, and is the job's
    assert (input_case["name"], input_case["kind"], input_case["app"]) == (
        "demand.json",
        "input",
        SOLVER_APP,
    )
    assert input_case["job_id"] == submitted["id"]
    assert done["state"] == "succeeded" and done["exit_code"] == 0
    assert as_bytes == content
    assert as_file == solve_portal.folder / "out.json" and as_file.read_bytes() == content
    assert in_folder.parent == folder and in_folder.read_bytes() == content


def test_submit_sends_arguments_and_options(solve_portal: SolvePortal):
    start = datetime.now(UTC) + timedelta(hours=2)

    with solve_portal.client() as client:
        job = client.submit(
            SOLVER_APP,
            "echo",
            version="1.0",
            arguments={"reverse": True, "note": "x"},
            priority=-5,
            time_limit_s=30,
            start_at=start,
            hook_url="http://127.0.0.1:9/hook",
        )
        shown = client.get_job(job["id"])
        cancelled = client.cancel_job(job["id"])
        with pytest.raises(JobFailedError) as no_result:
            client.result(job["id"])

    assert shown["state"] == "scheduled"  # held until its start time
    assert shown["arguments"] == {"reverse": True, "note": "x"}
    assert (shown["priority"], shown["time_limit_s"]) == (-5, 30)
    assert datetime.fromisoformat(shown["start_at"]) == start
    assert shown["hook_url"] == "http://127.0.0.1:9/hook" and shown["hook_secret"]
    assert cancelled["state"] == "cancelled"  # a waiting job is cancelled at once
    assert no_result.value.code == "job_cancelled"
    assert str(no_result.value) == f"Job {job['id']} cancelled: cancelled by uma."


def test_a_refused_submit_removes_the_input_it_uploaded(solve_portal: SolvePortal):
    source = solve_portal.folder / "in.json"
    source.write_bytes(b"{}")

    with solve_portal.client() as client:
        with pytest.raises(PortalClientError) as unknown_procedure:
            client.submit(SOLVER_APP, "optimise", input=source)
        with pytest.raises(PortalClientError) as unknown_app:
            client.submit("no-such-app", "echo", input=source)
        with pytest.raises(ValueError, match="not both"):
            client.submit(SOLVER_APP, "echo", input=source, input_case_id=1)
        left = client.list_cases()

    assert unknown_procedure.value.code == "unknown_procedure"
    assert "has no procedure 'optimise' (it has: echo, env, fail" in str(unknown_procedure.value)
    assert (unknown_app.value.status, unknown_app.value.code) == (404, "not_found")
    assert "no-such-app" in unknown_app.value.message
    assert left == []


def test_logs_follow_yields_the_lines_while_the_job_runs_and_stops_at_its_end(
    solve_portal: SolvePortal,
):
    seen_running: list[bool] = []

    with solve_portal.client() as client:
        job = client.submit(SOLVER_APP, "sleep", arguments={"seconds": 2})
        chunks = []
        for chunk in client.logs(job["id"], follow=True, poll=0.1):
            chunks.append(chunk)
            seen_running.append(solve_portal.job(job["id"]).state == "running")
        state_at_end = solve_portal.job(job["id"]).state
        again = list(client.logs(job["id"]))

    text = "".join(c["text"] for c in chunks)
    worked = [float(line.split()[1]) for line in text.splitlines() if line.startswith("working")]
    # lines came while the procedure still ran, not only after its end
    assert seen_running[0] is True
    assert worked[0] == 0.0 and worked[-1] >= 1.7 and len(worked) >= 10
    assert state_at_end == "succeeded"
    assert [c["id"] for c in chunks] == sorted({c["id"] for c in chunks})
    # following read the whole log: nothing was written after it stopped
    assert again == chunks
    assert {c["stream"] for c in chunks} == {"stdout"}
    assert all(c["attempt"] == 1 for c in chunks)


def test_logs_without_follow_reads_every_page(solve_portal: SolvePortal, monkeypatch):
    monkeypatch.setattr(client_module, "LOG_PAGE", 2)

    with solve_portal.client() as client:
        job = client.submit(SOLVER_APP, "sleep", arguments={"seconds": 2.5})
        client.wait(job["id"], timeout=JOB_TIMEOUT)
        chunks = list(client.logs(job["id"]))
        raw = client.request("GET", f"/jobs/{job['id']}/log")["chunks"]

    assert len(raw) > 2
    assert chunks == raw


def test_a_failed_job_result_raises_with_its_state_and_reason(solve_portal: SolvePortal):
    with solve_portal.client() as client:
        job = client.submit(SOLVER_APP, "fail", arguments={"code": 7})
        done = client.wait(job["id"], timeout=JOB_TIMEOUT)
        with pytest.raises(JobFailedError) as caught:
            client.result(job["id"])
        log = "".join(c["text"] for c in client.logs(job["id"]))

    assert (done["state"], done["exit_code"], done["reason"]) == ("failed", 7, "exit code 7")
    error = caught.value
    assert isinstance(error, PortalClientError)
    assert error.code == "job_failed"
    assert str(error) == f"Job {job['id']} failed: exit code 7."
    assert error.job["exit_code"] == 7
    assert "something went wrong" in log


def test_a_job_without_output_says_so(solve_portal: SolvePortal):
    with solve_portal.client() as client:
        job = client.submit(SOLVER_APP, "echo")  # no input: it writes an empty output
        client.wait(job["id"], timeout=JOB_TIMEOUT)
        empty = client.result(job["id"])
        output_case = solve_portal.job(job["id"]).output_case_id
        assert output_case is not None
        client.delete_case(output_case)
        with pytest.raises(PortalClientError) as caught:
            client.result(job["id"])

    assert empty == b""
    assert caught.value.code == "no_output"
    assert str(caught.value) == f"Job {job['id']} succeeded but wrote no output case."


def test_an_output_too_large_for_bytes_needs_a_file(solve_portal: SolvePortal, monkeypatch):
    source = solve_portal.folder / "in.bin"
    source.write_bytes(b"x" * 1000)
    monkeypatch.setattr(client_module, "RESULT_BYTES_LIMIT", 999)

    with solve_portal.client() as client:
        job = client.submit(SOLVER_APP, "echo", input=source)
        client.wait(job["id"], timeout=JOB_TIMEOUT)
        with pytest.raises(PortalClientError) as caught:
            client.result(job["id"])
        written = client.result(job["id"], solve_portal.folder / "out.bin")

    assert caught.value.code == "too_large"
    assert "1,000 bytes, more than 999" in str(caught.value)
    assert written.read_bytes() == b"x" * 1000


def test_wait_gives_up_after_its_timeout_and_cancel_stops_the_job(solve_portal: SolvePortal):
    with solve_portal.client() as client:
        job = client.submit(SOLVER_APP, "sleep", arguments={"seconds": 60})
        solve_portal.wait_state(job["id"], "running", timeout=JOB_TIMEOUT)

        started = time.monotonic()
        with pytest.raises(PortalClientError) as timed_out:
            client.wait(job["id"], timeout=0.7, poll=0.1)
        waited = time.monotonic() - started
        with pytest.raises(PortalClientError) as not_finished:
            client.result(job["id"])
        with pytest.raises(PortalClientError) as still_running:
            client.delete_job(job["id"])

        asked = client.cancel_job(job["id"])
        done = client.wait(job["id"], timeout=30)
        with pytest.raises(JobFailedError) as cancelled:
            client.result(job["id"])
        with pytest.raises(PortalClientError) as twice:
            client.cancel_job(job["id"])

    assert timed_out.value.code == "timeout"
    assert str(timed_out.value) == (
        f"Job {job['id']} has not finished within 0.7 s: it is running "
        "(it goes on; wait again or cancel it)."
    )
    assert 0.7 <= waited < 3
    assert not_finished.value.code == "not_finished"
    assert (still_running.value.status, still_running.value.code) == (409, "job_active")
    # a running job keeps running until its session has stopped it
    assert asked["state"] == "running" and asked["cancel_requested"] is True
    assert done["state"] == "cancelled"
    assert cancelled.value.code == "job_cancelled"
    assert str(cancelled.value).startswith(f"Job {job['id']} cancelled")
    assert (twice.value.status, twice.value.code) == (409, "job_finished")


def test_wait_polls_less_often_while_nothing_changes(monkeypatch):
    pauses: list[float] = []
    monkeypatch.setattr(
        client_module, "time", SimpleNamespace(sleep=pauses.append, monotonic=time.monotonic)
    )
    states = iter(["queued"] * 3 + ["running"] * 20 + ["succeeded"])
    client = PortalClient("http://127.0.0.1:1")
    monkeypatch.setattr(client, "get_job", lambda job_id: {"id": job_id, "state": next(states)})

    done = client.wait(5, poll=0.5)

    assert done == {"id": 5, "state": "succeeded"}
    assert len(pauses) == 23
    assert pauses[:3] == [0.5, 0.625, 0.78125]
    assert pauses == sorted(pauses)
    assert pauses[-1] == client_module.MAX_POLL_INTERVAL


def test_list_and_delete_jobs(solve_portal: SolvePortal):
    later = datetime.now(UTC) + timedelta(days=1)
    with solve_portal.client() as client:
        first = client.submit(SOLVER_APP, "echo")
        second = client.submit(SOLVER_APP, "fail")
        for job in (first, second):
            client.wait(job["id"], timeout=JOB_TIMEOUT)
        # more than one page of 200: scheduled a day ahead, they never run here
        waiting = [client.submit(SOLVER_APP, "echo", start_at=later)["id"] for _ in range(201)]

        everything = client.list_jobs()
        succeeded = client.list_jobs(state="succeeded")
        finished = client.list_jobs(state="finished", app=SOLVER_APP)
        active = client.list_jobs(state="active")
        other_app = client.list_jobs(app="no-such-app")
        with pytest.raises(PortalClientError) as bad_state:
            client.list_jobs(state="sleeping")

        client.delete_job(first["id"])
        none_active = client.delete_jobs(ids=waiting[:5])
        rest = client.delete_jobs(app=SOLVER_APP)
        left = client.list_jobs(state="finished")
        with pytest.raises(PortalClientError) as gone:
            client.get_job(first["id"])

    ids = [job["id"] for job in everything]
    assert ids == sorted([first["id"], second["id"], *waiting], reverse=True)
    assert [job["id"] for job in succeeded] == [first["id"]]
    assert [job["id"] for job in finished] == [second["id"], first["id"]]
    assert len(active) == 201 and other_app == []
    assert bad_state.value.status == 422 and "sleeping" in bad_state.value.message
    assert none_active == 0  # jobs that have not finished are left alone
    assert rest == 1 and left == []
    assert gone.value.status == 404


def test_from_environment_reads_the_portal_and_token(solve_portal: SolvePortal, monkeypatch):
    with solve_portal.client():
        token = solve_portal.tokens["uma"]
    monkeypatch.setenv("AIMMS_PORTAL_URL", solve_portal.url + "/")
    monkeypatch.setenv("AIMMS_PORTAL_TOKEN", token)

    with PortalClient.from_environment() as client:
        me = client.me()
        job = client.submit(SOLVER_APP, "echo")
        done = client.wait(job["id"], timeout=JOB_TIMEOUT)

    assert client.url == solve_portal.url
    assert me["username"] == "uma"
    assert done["state"] == "succeeded"
    given = {"AIMMS_PORTAL_URL": solve_portal.url, "AIMMS_PORTAL_TOKEN": token}
    with PortalClient.from_environment(given) as client:
        assert client.me()["username"] == "uma"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "AIMMS_PORTAL_URL and AIMMS_PORTAL_TOKEN are not set"),
        ({"AIMMS_PORTAL_URL": "http://127.0.0.1:1"}, "AIMMS_PORTAL_TOKEN is not set"),
        ({"AIMMS_PORTAL_URL": " ", "AIMMS_PORTAL_TOKEN": "apt_x"}, "AIMMS_PORTAL_URL is not set"),
    ],
)
def test_from_environment_names_what_is_missing(environ: dict[str, str], message: str):
    with pytest.raises(PortalClientError) as caught:
        PortalClient.from_environment(environ)

    assert caught.value.code == "not_configured"
    assert str(caught.value).startswith(message)


def test_from_environment_refuses_an_address_that_is_not_http():
    with pytest.raises(PortalClientError) as caught:
        PortalClient.from_environment(
            {"AIMMS_PORTAL_URL": "127.0.0.1:3000", "AIMMS_PORTAL_TOKEN": "apt_x"}
        )

    assert caught.value.code == "invalid_url"


def test_finished_states_are_the_portals():
    from aimms_portal.models import FINISHED_STATES as PORTAL_FINISHED

    assert {s.value for s in PORTAL_FINISHED} == FINISHED_STATES


def test_wait_on_an_unknown_job_is_not_found(solve_portal: SolvePortal):
    with solve_portal.client() as client, pytest.raises(PortalClientError) as caught:
        client.wait(999_999)

    assert (caught.value.status, caught.value.code) == (404, "not_found")
