"""The transport demo as solve jobs: its ``solve`` procedure on the ``python-highs``
runtime in a live portal, driven through the SDK and through the CLI.

The portal is ``solve_portal`` (tests/solving.py) with the demo published on top, as a
fresh development portal publishes it (``services/demo.py``), from the demo runtime's
wheels (PyPI, once per machine; marker ``network``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import select

from aimms_portal import config
from aimms_portal.db import session_scope
from aimms_portal.models import User
from aimms_portal.services import demo
from tests import test_cli
from tests.examples.conftest import EXAMPLE_CASE
from tests.examples.test_transport import EXAMPLE_OPTIMUM, example, with_demand
from tests.solving import SolvePortal
from tests.test_cli import cli

cli_home = test_cli.cli_home

#: A cold session installs numpy and highspy into the runtime's environment first.
JOB_TIMEOUT = 300


@pytest.fixture
def solve_settings(solve_settings: dict[str, str]) -> dict[str, str]:
    """The solve portal's settings, with a job lease that outlasts a cold runtime build.

    A job's lease runs from the moment it is handed to a new session, but the runner
    heartbeats only once the session is ready: installing numpy and highspy into a
    fresh environment (8-13 s here) outlasts the suite's 4 s lease (and can outlast the
    10 s default), and each lost attempt stops the session mid-build.
    """
    return solve_settings | {"AIMMS_PORTAL_JOB_LEASE_SECONDS": "120"}


@pytest.fixture
def demo_portal(solve_portal: SolvePortal, demo_wheels: Path) -> SolvePortal:
    """The solve portal with the demo runtime and the transport app published for all."""
    with session_scope() as session:
        root = session.exec(select(User).where(User.username == "root")).one()
    summary = demo.publish_demo(config.get_settings(), admin=root, wheel_dir=demo_wheels)
    assert summary.startswith("demo published: runtime python-highs 1.0.0, app transport")
    return solve_portal


def assert_optimal_plan(plan: dict) -> None:
    assert plan["status"] == "optimal"
    assert plan["objective"] == pytest.approx(EXAMPLE_OPTIMUM)
    assert sum(flow["cost"] for flow in plan["flows"]) == pytest.approx(EXAMPLE_OPTIMUM)


@pytest.mark.network
def test_the_demo_solves_through_the_sdk_and_the_cli(
    demo_portal: SolvePortal, cli_home: Path, tmp_path: Path
):
    # the SDK, as a script or an app hands a solve over
    with demo_portal.client() as client:
        job = client.submit("transport", "solve", input=EXAMPLE_CASE)
        done = client.wait(job["id"], timeout=JOB_TIMEOUT)
        plan = json.loads(client.result(job["id"]))
        log = "".join(chunk["text"] for chunk in client.logs(job["id"]))

    assert done["state"] == "succeeded", done["reason"]
    assert_optimal_plan(plan)
    assert "Optimal: total cost 29,580" in log

    # the CLI, logged on with the same user's token
    token = demo_portal.tokens["uma"]
    login = cli("login", demo_portal.url, "--token", "--password-stdin", input=token + "\n")
    assert login.exit_code == 0, login.output
    submitted = cli("job", "submit", "transport", "solve", "--input", str(EXAMPLE_CASE), "--wait")
    assert submitted.exit_code == 0, submitted.output
    job_id = int(submitted.stdout.split()[1])
    assert submitted.stdout.splitlines()[-1] == f"Job {job_id} succeeded."
    output = tmp_path / "plan.json"
    waited = cli("job", "wait", str(job_id), "--output", str(output))
    assert waited.exit_code == 0, waited.output
    assert_optimal_plan(json.loads(output.read_text()))
    assert "Optimal: total cost 29,580" in cli("job", "logs", str(job_id)).stdout

    # a case with no solution: the job fails with the procedure's exit code, and its
    # output case, which says why, is still there to fetch
    infeasible = tmp_path / "infeasible.json"
    infeasible.write_text(json.dumps(with_demand(example(), "Paris", 400)))
    failed = cli("job", "submit", "transport", "solve", "--input", str(infeasible), "--wait")
    assert failed.exit_code == 3, failed.output
    failed_id = int(failed.stdout.split()[1])
    assert failed.stdout.splitlines()[-1] == f"Job {failed_id} failed: exit code 3."
    kept = demo_portal.job(failed_id).output_case_id
    assert kept is not None
    waited = cli("job", "wait", str(failed_id), "--output", str(tmp_path / "nothing.json"))
    assert f"its output case: `aimms-portal case download {kept}`" in waited.stderr
    assert not (tmp_path / "nothing.json").exists()
