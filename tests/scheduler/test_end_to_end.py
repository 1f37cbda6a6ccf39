"""Solve jobs end to end: REST submit, scheduler, local launcher, runner, result."""

from __future__ import annotations

import json

from tests.solving import SolvePortal, submit, upload_input


def test_echo_job_runs_and_records_its_output(solve_portal: SolvePortal) -> None:
    case_id = upload_input(solve_portal, b'{"hello": "world"}')
    job_id = submit(solve_portal, "echo", input_case_id=case_id, arguments={"reverse": True})

    job = solve_portal.wait_state(job_id, "succeeded", "failed", timeout=90)

    assert job.state == "succeeded", job.reason
    assert job.attempt == 1 and job.exit_code == 0
    assert job.output_case_id is not None
    with solve_portal.client() as client:
        out = solve_portal.folder / "out"
        client.download_case(job.output_case_id, out)
        assert out.read_bytes() == b'{"hello": "world"}'[::-1]
        log = client.request("GET", f"/jobs/{job_id}/log")
    text = "".join(c["text"] for c in log["chunks"])
    assert "echo: 18 bytes" in text and "a line on stderr" in text
    assert log["finished"] is True
    json.dumps(log)


def test_procedures_run_in_the_runtime_environment(solve_portal: SolvePortal) -> None:
    wheel = submit(solve_portal, "wheel")
    env = submit(solve_portal, "env")

    for job_id in (wheel, env):
        assert solve_portal.wait_state(job_id, "succeeded", "failed").state == "succeeded"
    with solve_portal.client() as client:
        client.download_case(solve_portal.job(wheel).output_case_id, solve_portal.folder / "w")
        client.download_case(solve_portal.job(env).output_case_id, solve_portal.folder / "e")
    assert (solve_portal.folder / "w").read_text() == "1.0"  # corpus_demo from the wheel
    seen = json.loads((solve_portal.folder / "e").read_text())
    assert seen["AIMMS_PORTAL_URL"] == solve_portal.url
    assert seen["AIMMS_PORTAL_JOB_ID"] == str(env)
    assert seen["token"] is True and seen["VIRTUAL_ENV"].endswith("/env")


def test_a_failing_procedure_fails_the_job_with_its_exit_code(solve_portal: SolvePortal) -> None:
    job_id = submit(solve_portal, "fail", arguments={"code": 7})

    job = solve_portal.wait_state(job_id, "succeeded", "failed")

    assert (job.state, job.exit_code, job.reason) == ("failed", 7, "exit code 7")
    assert job.attempt == 1  # a procedure's own failure is not retried
    with solve_portal.client() as client:
        log = client.request("GET", f"/jobs/{job_id}/log")
    assert any(c["stream"] == "stderr" and "went wrong" in c["text"] for c in log["chunks"])


def test_a_warm_session_takes_the_next_job(solve_portal: SolvePortal) -> None:
    first = submit(solve_portal, "echo")
    solve_portal.wait_state(first, "succeeded")
    second = submit(solve_portal, "echo")
    solve_portal.wait_state(second, "succeeded")

    assert solve_portal.job(first).session_id == solve_portal.job(second).session_id
    assert len([s for s in solve_portal.sessions() if s.kind == "solve"]) == 1
