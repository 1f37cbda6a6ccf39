"""``aimms-portal job ...`` against a live portal with real runner processes.

The portal is ``solve_portal`` (tests/solving.py: the REST API on a loopback port, a
scheduler with the local launcher, the test app ``solver-app``). The commands run
in-process, logged on as ``uma`` the way a user pastes a token: ``login --token``, which
keeps it in a temporary config folder.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aimms_portal.cli import JOB_EXIT_CODES
from tests import test_cli
from tests.solving import SOLVER_APP, SolvePortal
from tests.test_cli import assert_clean_failure, cli

cli_home = test_cli.cli_home

JOB_TIMEOUT = 90


@pytest.fixture
def logged_on(solve_portal: SolvePortal, cli_home: Path) -> SolvePortal:
    """The CLI logged on to the solve portal as ``uma`` with an API token."""
    with solve_portal.client():
        token = solve_portal.tokens["uma"]
    result = cli("login", solve_portal.url, "--token", "--password-stdin", input=token + "\n")
    assert result.exit_code == 0, result.output
    return solve_portal


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder that is also the current one."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def ok(*args: str) -> str:
    """Run a command that must succeed; its standard output."""
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def submitted_id(output: str) -> int:
    """The job id from the first line of `job submit`: ``Job 12 queued: ...``."""
    first = output.splitlines()[0].split()
    assert first[0] == "Job", output
    return int(first[1])


def listed(output: str) -> list[tuple[int, str]]:
    """(id, state) of each row of `job list`."""
    return [(int(line.split()[0]), line.split()[1]) for line in output.splitlines()[1:]]


def test_submit_wait_then_show_list_logs_and_output(logged_on: SolvePortal, workdir: Path):
    (workdir / "in.json").write_bytes(b'{"x": 1}')

    submitted = ok("job", "submit", SOLVER_APP, "echo", "--input", "in.json", "--wait")
    job_id = submitted_id(submitted)
    job = logged_on.job(job_id)
    shown = ok("job", "show", str(job_id))
    as_json = json.loads(ok("job", "show", str(job_id), "--json"))
    listing = ok("job", "list")
    log = ok("job", "logs", str(job_id))
    waited = ok("job", "wait", str(job_id), "--output", "out.json")

    assert submitted.splitlines() == [
        f"Job {job_id} queued: {SOLVER_APP} 1.0, procedure echo, input case {job.input_case_id}.",
        f"Job {job_id} succeeded.",
    ]
    assert shown.splitlines()[0] == f"Job {job_id}: {SOLVER_APP} 1.0, procedure echo"
    assert "  state        succeeded\n" in shown
    assert f"  output case  {job.output_case_id}\n" in shown
    assert "  attempt      1 of " in shown and "  exit code    0\n" in shown
    assert as_json["id"] == job_id and as_json["state"] == "succeeded"
    header, row = listing.splitlines()
    assert header.split() == ["ID", "STATE", "APP", "VERSION", "PROCEDURE", "CREATED", "REASON"]
    assert row.split()[:5] == [str(job_id), "succeeded", SOLVER_APP, "1.0", "echo"]
    assert "echo: 8 bytes\n" in log and "a line on stderr\n" in log
    assert waited.splitlines() == [
        f"Job {job_id} succeeded.",
        f"Wrote output case {job.output_case_id} to out.json.",
    ]
    assert (workdir / "out.json").read_bytes() == b'{"x": 1}'

    # an output file that exists is kept unless --force
    refused = cli("job", "wait", str(job_id), "--output", "out.json")
    assert_clean_failure(refused, "out.json exists already; give --force to replace it.")
    ok("job", "wait", str(job_id), "--output", "out.json", "--force")


def test_a_failed_job_exits_non_zero_with_its_reason(logged_on: SolvePortal, workdir: Path):
    result = cli("job", "submit", SOLVER_APP, "fail", "--arg", "code=7", "--wait")

    job_id = submitted_id(result.stdout)
    assert result.exit_code == JOB_EXIT_CODES["failed"] == 3
    assert result.stdout.splitlines()[-1] == f"Job {job_id} failed: exit code 7."
    assert "Traceback" not in result.output

    waited = cli("job", "wait", str(job_id), "--output", "out.json")
    assert waited.exit_code == 3
    assert waited.stdout == f"Job {job_id} failed: exit code 7.\n"
    assert "Nothing written to out.json: the job did not succeed." in waited.stderr
    assert not (workdir / "out.json").exists()
    assert listed(ok("job", "list", "--state", "failed")) == [(job_id, "failed")]
    assert listed(ok("job", "list", "--state", "succeeded")) == []
    assert "exit code 7" in ok("job", "list").splitlines()[1]


def test_logs_follow_prints_the_lines_until_the_job_ends(logged_on: SolvePortal, workdir: Path):
    job_id = submitted_id(
        ok("job", "submit", SOLVER_APP, "sleep", "--arg", "seconds=2", "--priority", "-1")
    )

    followed = ok("job", "logs", str(job_id), "--follow")

    assert logged_on.job(job_id).state == "succeeded"
    worked = [line for line in followed.splitlines() if line.startswith("working")]
    assert worked[0] == "working 0.0" and len(worked) >= 10
    assert followed == ok("job", "logs", str(job_id))  # nothing came after it stopped


def test_wait_timeout_cancel_and_delete(logged_on: SolvePortal, workdir: Path):
    long = submitted_id(ok("job", "submit", SOLVER_APP, "sleep", "--arg", "seconds=60"))
    logged_on.wait_state(long, "running", timeout=JOB_TIMEOUT)

    timed_out = cli("job", "wait", str(long), "--timeout", "0.5")
    assert_clean_failure(timed_out, f"Job {long} has not finished within 0.5 s: it is running")
    active = cli("job", "delete", str(long))
    assert_clean_failure(active, f"Job {long} is running; cancel it before deleting it.")

    assert ok("job", "cancel", str(long)) == (
        f"Job {long} is running: asked to stop, it ends within about a second.\n"
    )
    cancelled = cli("job", "wait", str(long), "--timeout", "30")
    assert cancelled.exit_code == JOB_EXIT_CODES["cancelled"] == 4
    assert cancelled.stdout.startswith(f"Job {long} cancelled")
    again = cli("job", "cancel", str(long))
    assert_clean_failure(again, f"Job {long} has cancelled already.")

    # a waiting job is cancelled at once
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    waiting = submitted_id(ok("job", "submit", SOLVER_APP, "echo", "--start-at", later))
    assert ok("job", "cancel", str(waiting)) == f"Job {waiting} cancelled.\n"
    done = submitted_id(ok("job", "submit", SOLVER_APP, "echo", "--wait"))
    running = submitted_id(ok("job", "submit", SOLVER_APP, "sleep", "--arg", "seconds=60"))

    assert ok("job", "delete", str(done)) == f"Job {done} deleted.\n"
    assert ok("job", "delete", "--finished", "--app", "other-app") == (
        "No finished jobs to delete.\n"
    )
    assert ok("job", "delete", "--finished", "--app", SOLVER_APP) == (
        "Deleted 2 finished job(s).\n"
    )
    # the job that has not finished is left alone
    assert [job_id for job_id, _ in listed(ok("job", "list"))] == [running]
    assert ok("job", "delete", "--finished") == "No finished jobs to delete.\n"
    ok("job", "cancel", str(running))


def test_submit_reads_arguments_from_a_file_and_the_command_line(
    logged_on: SolvePortal, workdir: Path
):
    (workdir / "args.json").write_text(json.dumps({"seconds": 1, "keep": [1, 2], "n": 1}))
    later = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)

    submitted = ok(
        "job",
        "submit",
        SOLVER_APP,
        "sleep",
        "--arguments-file",
        "args.json",
        "--arg",
        "n=3",
        "--arg",
        "flag=true",
        "--arg",
        "ratio=0.5",
        "--arg",
        'quoted="7"',
        "--arg",
        "name=plain text",
        "--arg",
        "equation=a=b",
        "--arg",
        "nan=NaN",
        "--arg",
        "empty=",
        "--arg",
        'nested={"a": [1, null]}',
        "--version",
        "1.0",
        "--priority",
        "-3",
        "--time-limit",
        "50",
        "--start-at",
        later.isoformat().replace("+00:00", "Z"),
        "--hook-url",
        "http://127.0.0.1:9/hook",
    )
    job_id = submitted_id(submitted)
    job = json.loads(ok("job", "show", str(job_id), "--json"))

    assert submitted.splitlines()[0] == (
        f"Job {job_id} scheduled: {SOLVER_APP} 1.0, procedure sleep."
    )
    assert submitted.splitlines()[1] == (
        f"Its state hooks are signed with the key {job['hook_secret']}."
    )
    assert job["arguments"] == {
        "seconds": 1,
        "keep": [1, 2],
        "n": 3,
        "flag": True,
        "ratio": 0.5,
        "quoted": "7",
        "name": "plain text",
        "equation": "a=b",
        "nan": "NaN",
        "empty": "",
        "nested": {"a": [1, None]},
    }
    assert (job["priority"], job["time_limit_s"]) == (-3, 50)
    assert datetime.fromisoformat(job["start_at"]) == later
    assert job["hook_url"] == "http://127.0.0.1:9/hook"
    shown = ok("job", "show", str(job_id))
    assert "  state        scheduled\n" in shown
    assert f"  start at     {later.strftime('%Y-%m-%d %H:%M:%S')} UTC\n" in shown
    ok("job", "cancel", str(job_id))


def test_submit_with_an_input_case_uploaded_before(logged_on: SolvePortal, workdir: Path):
    (workdir / "in.json").write_bytes(b"abc")
    uploaded = ok("case", "upload", "in.json", "--app", SOLVER_APP)
    case_id = int(uploaded.split()[2])

    result = ok(
        "job",
        "submit",
        SOLVER_APP,
        "echo",
        "--input-case",
        str(case_id),
        "--arg",
        "reverse=true",
        "--wait",
    )
    job_id = submitted_id(result)
    ok("job", "wait", str(job_id), "-o", "out")

    assert f"input case {case_id}." in result.splitlines()[0]
    assert (workdir / "out").read_bytes() == b"cba"


def test_bad_input_is_a_clear_error(logged_on: SolvePortal, workdir: Path):
    (workdir / "in.json").write_bytes(b"{}")
    (workdir / "list.json").write_text("[1, 2]")
    (workdir / "broken.json").write_text("{broken")

    cases = [
        (("nope-app", "echo"), "No app called 'nope-app'."),
        (("nope-app", "echo", "--input", "in.json"), "No app called 'nope-app'."),
        ((SOLVER_APP, "optimise"), "has no procedure 'optimise' (it has: echo, env, fail"),
        ((SOLVER_APP, "echo", "--arg", "novalue"), "--arg takes KEY=VALUE, not 'novalue'."),
        ((SOLVER_APP, "echo", "--arg", "=1"), "--arg takes KEY=VALUE, not '=1'."),
        ((SOLVER_APP, "echo", "--arguments-file", "list.json"), "must hold a JSON object"),
        ((SOLVER_APP, "echo", "--arguments-file", "broken.json"), "is not valid JSON"),
        ((SOLVER_APP, "echo", "--arguments-file", "missing.json"), "missing.json"),
        ((SOLVER_APP, "echo", "--input", "missing.json"), "missing.json is not a file."),
        (
            (SOLVER_APP, "echo", "--input", "in.json", "--input-case", "1"),
            "Give --input or --input-case, not both.",
        ),
        ((SOLVER_APP, "echo", "--start-at", "tomorrow"), "--start-at takes an ISO 8601 time"),
        ((SOLVER_APP, "echo", "--start-at", "2030-01-01T08:00"), "needs a time zone"),
        ((SOLVER_APP, "echo", "--priority", "5"), "Only admins may raise a job's priority"),
        ((SOLVER_APP, "echo", "--time-limit", "99999"), "time_limit_s must be between 1 and"),
        ((SOLVER_APP, "echo", "--hook-url", "ftp://x"), "must start with http:// or https://"),
        ((SOLVER_APP, "echo", "--input-case", "99999"), "No case 99999."),
    ]
    for args, message in cases:
        assert_clean_failure(cli("job", "submit", *args), message)

    assert_clean_failure(cli("job", "show", "99999"), "No job 99999.")
    assert_clean_failure(cli("job", "logs", "99999"), "No job 99999.")
    assert_clean_failure(cli("job", "wait", "99999"), "No job 99999.")
    assert_clean_failure(cli("job", "list", "--state", "sleeping"), "Unknown job state")
    assert_clean_failure(cli("job", "delete"), "Give a job id, or --finished")
    assert_clean_failure(cli("job", "delete", "1", "--finished"), "Give a job id, or --finished")
    assert_clean_failure(cli("job", "delete", "1", "--app", "x"), "--app and --all go with")
    # nothing was left behind by the refused submissions
    assert ok("job", "list").splitlines()[1:] == []
    assert ok("case", "list").splitlines()[1:] == []


def test_job_commands_need_a_log_on(cli_home: Path):
    result = cli("job", "list")

    assert_clean_failure(result, "Not logged in; run `aimms-portal login URL` first.")


def test_inside_a_session_the_cli_uses_the_sessions_address_and_token(
    solve_portal: SolvePortal, cli_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no log-on: the portal gives every session these two variables
    with solve_portal.client():
        token = solve_portal.tokens["uma"]
    monkeypatch.setenv("AIMMS_PORTAL_URL", solve_portal.url)
    monkeypatch.setenv("AIMMS_PORTAL_TOKEN", token)

    submitted = ok("job", "submit", SOLVER_APP, "echo", "--wait")

    assert submitted.splitlines()[-1] == f"Job {submitted_id(submitted)} succeeded."
    monkeypatch.delenv("AIMMS_PORTAL_TOKEN")
    assert_clean_failure(cli("job", "list"), "Not logged in")
