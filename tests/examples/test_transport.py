"""The transport demo app: its model against an independent solver, its solve procedure
and its WebUI as real processes."""

from __future__ import annotations

import copy
import http.client
import json
import math
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.examples.conftest import (
    BASE_PATH,
    EXAMPLE_CASE,
    TRANSPORT,
    WebUI,
    app_env,
    running_webui,
)

#: The example's least total cost, found by ``cheapest_plan_cost`` below (not by HiGHS).
EXAMPLE_OPTIMUM = 29_580


def example() -> dict[str, Any]:
    return json.loads(EXAMPLE_CASE.read_text())


def with_demand(case: dict[str, Any], customer: str, demand: float) -> dict[str, Any]:
    case = copy.deepcopy(case)
    for row in case["customers"]:
        if row["name"] == customer:
            row["demand"] = demand
    return case


def cheapest_plan_cost(case: dict[str, Any]) -> int | None:
    """The least total cost of a case with integer data, or None if no plan meets demand.

    Found without an LP solver: successive shortest paths (Bellman-Ford) on the network
    source -> supplier (capacity) -> customer (unit cost) -> sink (demand). Each step
    sends flow along a cheapest augmenting path, which keeps the flow cost-minimal.
    """
    suppliers = [row["name"] for row in case["suppliers"]]
    customers = [row["name"] for row in case["customers"]]
    source, sink = 0, 1
    node = {("s", name): 2 + i for i, name in enumerate(suppliers)}
    node |= {("c", name): 2 + len(suppliers) + i for i, name in enumerate(customers)}
    # an edge is [head, residual capacity, cost, index of its reverse edge]
    edges: list[list[list[int]]] = [[] for _ in range(2 + len(node))]

    def add(tail: int, head: int, capacity: int, cost: int) -> None:
        edges[tail].append([head, capacity, cost, len(edges[head])])
        edges[head].append([tail, 0, -cost, len(edges[tail]) - 1])

    need = sum(row["demand"] for row in case["customers"])
    for row in case["suppliers"]:
        add(source, node[("s", row["name"])], row["capacity"], 0)
    for row in case["costs"]:
        add(node[("s", row["from"])], node[("c", row["to"])], need, row["cost"])
    for row in case["customers"]:
        add(node[("c", row["name"])], sink, row["demand"], 0)

    sent = total = 0
    while sent < need:
        distance: list[float] = [math.inf] * len(edges)
        previous: list[tuple[int, int] | None] = [None] * len(edges)
        distance[source] = 0
        for _ in range(len(edges) - 1):
            for tail, out in enumerate(edges):
                for index, (head, capacity, cost, _) in enumerate(out):
                    if capacity > 0 and distance[tail] + cost < distance[head]:
                        distance[head] = distance[tail] + cost
                        previous[head] = (tail, index)
        if distance[sink] == math.inf:
            return None
        path = []
        at = sink
        while at != source:
            step = previous[at]
            assert step is not None
            path.append(step)
            at = step[0]
        push = min([need - sent] + [edges[tail][index][1] for tail, index in path])
        for tail, index in path:
            edge = edges[tail][index]
            edge[1] -= push
            edges[edge[0]][edge[3]][1] += push
        sent += push
        total += push * int(distance[sink])
    return total


# --- the model -------------------------------------------------------------------------


def test_independent_solver_agrees_with_a_hand_checked_case():
    # B serves Y (3 < 6) and A serves X (4 < 5): 20 * 4 + 30 * 3 = 170
    case = {
        "suppliers": [{"name": "A", "capacity": 30}, {"name": "B", "capacity": 40}],
        "customers": [{"name": "X", "demand": 20}, {"name": "Y", "demand": 30}],
        "costs": [
            {"from": "A", "to": "X", "cost": 4},
            {"from": "A", "to": "Y", "cost": 6},
            {"from": "B", "to": "X", "cost": 5},
            {"from": "B", "to": "Y", "cost": 3},
        ],
    }
    assert cheapest_plan_cost(case) == 170
    assert cheapest_plan_cost(example()) == EXAMPLE_OPTIMUM


def test_solve_hand_checked_case(transport_model: ModuleType):
    case = {
        "suppliers": [{"name": "A", "capacity": 30}, {"name": "B", "capacity": 40}],
        "customers": [{"name": "X", "demand": 20}, {"name": "Y", "demand": 30}],
        "costs": [
            {"from": "A", "to": "X", "cost": 4},
            {"from": "A", "to": "Y", "cost": 6},
            {"from": "B", "to": "X", "cost": 5},
            {"from": "B", "to": "Y", "cost": 3},
        ],
    }

    result = transport_model.solve(case)

    assert result["status"] == "optimal"
    assert result["objective"] == 170
    assert result["flows"] == [
        {"from": "A", "to": "X", "amount": 20, "cost": 80},
        {"from": "B", "to": "Y", "amount": 30, "cost": 90},
    ]
    # both suppliers have capacity to spare; each customer pays its cheapest route
    assert result["duals"] == {"suppliers": {"A": 0, "B": 0}, "customers": {"X": 4, "Y": 3}}


def test_solve_example_finds_the_least_cost(transport_model: ModuleType):
    result = transport_model.solve(example())

    assert result["status"] == "optimal"
    assert result["objective"] == pytest.approx(EXAMPLE_OPTIMUM)
    assert result["messages"][0] == (
        "Optimal plan: 1,000 units over 6 routes for a total cost of 29,580."
    )
    assert result["solver"].startswith("HiGHS ")


def test_solve_example_plan_is_feasible_and_costs_the_objective(transport_model: ModuleType):
    case = example()
    unit_cost = {(row["from"], row["to"]): row["cost"] for row in case["costs"]}

    result = transport_model.solve(case)

    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    for flow in result["flows"]:
        assert flow["amount"] > 0
        assert flow["cost"] == pytest.approx(flow["amount"] * unit_cost[flow["from"], flow["to"]])
        sent[flow["from"]] = sent.get(flow["from"], 0) + flow["amount"]
        received[flow["to"]] = received.get(flow["to"], 0) + flow["amount"]
    for row in case["suppliers"]:
        assert sent.get(row["name"], 0) <= row["capacity"] + 1e-9
    for row in case["customers"]:
        assert received[row["name"]] == pytest.approx(row["demand"])
    assert sum(flow["cost"] for flow in result["flows"]) == pytest.approx(result["objective"])


def test_duals_are_a_feasible_dual_solution_with_the_same_value(transport_model: ModuleType):
    case = example()
    result = transport_model.solve(case)
    supplier_price = result["duals"]["suppliers"]
    customer_price = result["duals"]["customers"]
    used = {(flow["from"], flow["to"]) for flow in result["flows"]}

    # the dual LP: max sum capacity * u + sum demand * v, u <= 0, u_s + v_c <= cost
    assert all(price <= 0 for price in supplier_price.values())
    for row in case["costs"]:
        reduced_cost = row["cost"] - supplier_price[row["from"]] - customer_price[row["to"]]
        assert reduced_cost >= -1e-9
        if (row["from"], row["to"]) in used:
            assert reduced_cost == pytest.approx(0)
    dual_value = sum(row["capacity"] * supplier_price[row["name"]] for row in case["suppliers"])
    dual_value += sum(row["demand"] * customer_price[row["name"]] for row in case["customers"])
    assert dual_value == pytest.approx(EXAMPLE_OPTIMUM)
    # Katowice is full and its shadow price is not zero: the example shows a real price
    assert supplier_price["Katowice"] < 0


def test_solve_is_deterministic(transport_model: ModuleType):
    first = transport_model.solve(example())
    second = transport_model.solve(example())

    first.pop("solve_time_s")
    second.pop("solve_time_s")
    assert first == second


def test_solve_with_no_demand_ships_nothing(transport_model: ModuleType):
    case = example()
    for row in case["customers"]:
        row["demand"] = 0

    result = transport_model.solve(case)

    assert (result["status"], result["objective"], result["flows"]) == ("optimal", 0, [])


def test_demand_beyond_capacity_is_infeasible_and_explained(transport_model: ModuleType):
    case = with_demand(example(), "Paris", 400)
    assert cheapest_plan_cost(case) is None

    result = transport_model.solve(case)

    assert result["status"] == "infeasible"
    assert result["objective"] is None
    assert result["flows"] == []
    assert result["messages"] == [
        "The customers need 1,140 units in all, but the suppliers can deliver only 1,050: "
        "90 units short. Raise a capacity or lower a demand."
    ]
    assert transport_model.validate_case(case) == []


def test_validate_example_finds_nothing(transport_model: ModuleType):
    assert transport_model.validate_case(example()) == []


def _break(case: dict[str, Any], how: str) -> Any:
    if how == "negative capacity":
        case["suppliers"][1]["capacity"] = -5
    elif how == "demand not a number":
        case["customers"][0]["demand"] = "260"
    elif how == "demand true":
        case["customers"][0]["demand"] = True
    elif how == "infinite cost":
        case["costs"][0]["cost"] = math.inf
    elif how == "unknown supplier":
        case["costs"][0]["from"] = "Lille"
    elif how == "unknown customer":
        case["costs"][0]["to"] = "Lille"
    elif how == "missing cost":
        case["costs"] = [row for row in case["costs"] if row != case["costs"][5]]
    elif how == "duplicate cost":
        case["costs"].append(dict(case["costs"][0]))
    elif how == "duplicate supplier":
        case["suppliers"].append({"name": "Lyon", "capacity": 1})
    elif how == "nameless customer":
        case["customers"][2]["name"] = "  "
    elif how == "no customers":
        case["customers"] = []
        case["costs"] = []
    elif how == "not an object":
        return ["suppliers"]
    return case


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("negative capacity", 'Supplier "Lyon": the capacity must be zero or more, not -5.'),
        ("demand not a number", 'Customer "Paris": the demand must be a number.'),
        ("demand true", 'Customer "Paris": the demand must be a number.'),
        ("infinite cost", "The cost from Rotterdam to Paris must be a finite number."),
        ("unknown supplier", 'Cost 1 (Lille to Paris): there is no supplier "Lille".'),
        ("unknown customer", 'Cost 1 (Rotterdam to Lille): there is no customer "Lille".'),
        ("missing cost", "The cost from Lyon to Paris is missing."),
        ("duplicate cost", "The cost from Rotterdam to Paris is given more than once."),
        ("duplicate supplier", 'Supplier "Lyon" appears more than once.'),
        ("nameless customer", "Customer 3 has no name."),
        ("no customers", "Add at least one customer."),
        ("not an object", "The case must be a JSON object with suppliers, customers and costs."),
    ],
)
def test_validate_names_each_problem(transport_model: ModuleType, how: str, problem: str):
    problems = transport_model.validate_case(_break(example(), how))

    assert problem in problems


def test_unknown_supplier_also_leaves_its_cost_missing(transport_model: ModuleType):
    problems = transport_model.validate_case(_break(example(), "unknown supplier"))

    assert problems == [
        'Cost 1 (Lille to Paris): there is no supplier "Lille".',
        "The cost from Rotterdam to Paris is missing.",
    ]


def test_solve_refuses_invalid_case_with_its_problems(transport_model: ModuleType):
    case = _break(example(), "negative capacity")

    result = transport_model.solve(case)

    assert result["status"] == "invalid"
    assert result["messages"] == transport_model.validate_case(case)
    assert (result["objective"], result["flows"], result["duals"]) == (None, [], {})


# --- the solve procedure ---------------------------------------------------------------


def run_solve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "solve.py", *args],
        cwd=TRANSPORT,
        env=app_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_solve_procedure_reads_and_writes_the_cases_named_by_the_portal(tmp_path: Path):
    output = tmp_path / "output.json"

    done = run_solve(AIMMS_PORTAL_INPUT=str(EXAMPLE_CASE), AIMMS_PORTAL_OUTPUT=str(output))

    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(output.read_text())
    assert result["status"] == "optimal"
    assert result["objective"] == pytest.approx(EXAMPLE_OPTIMUM)
    assert "Optimal: total cost 29,580" in done.stdout
    assert f"Wrote the output case {output}" in done.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["output.json"]


def test_solve_procedure_runs_by_hand_with_paths(tmp_path: Path):
    output = tmp_path / "out.json"

    done = run_solve(str(EXAMPLE_CASE), str(output))

    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(output.read_text())["objective"] == pytest.approx(EXAMPLE_OPTIMUM)


def test_solve_procedure_exits_2_and_prints_the_problems(tmp_path: Path):
    source, output = tmp_path / "in.json", tmp_path / "out.json"
    source.write_text(json.dumps(_break(example(), "unknown customer")))

    done = run_solve(AIMMS_PORTAL_INPUT=str(source), AIMMS_PORTAL_OUTPUT=str(output))

    assert done.returncode == 2
    assert 'there is no customer "Lille"' in done.stdout
    result = json.loads(output.read_text())
    assert result["status"] == "invalid"
    assert 'Cost 1 (Rotterdam to Lille): there is no customer "Lille".' in result["messages"]


@pytest.mark.parametrize("text", ['{"suppliers": NaN}', "{not json", ""])
def test_solve_procedure_exits_2_on_unreadable_input(tmp_path: Path, text: str):
    source, output = tmp_path / "in.json", tmp_path / "out.json"
    source.write_text(text)

    done = run_solve(str(source), str(output))

    assert done.returncode == 2
    assert "The input case cannot be read" in done.stdout
    assert json.loads(output.read_text())["status"] == "invalid"


def test_solve_procedure_exits_3_and_explains_an_infeasible_case(tmp_path: Path):
    source, output = tmp_path / "in.json", tmp_path / "out.json"
    source.write_text(json.dumps(with_demand(example(), "Paris", 400)))

    done = run_solve(str(source), str(output))

    assert done.returncode == 3
    assert "90 units short" in done.stdout
    result = json.loads(output.read_text())
    assert result["status"] == "infeasible"
    assert "90 units short" in result["messages"][0]


def test_solve_procedure_without_paths_says_how_to_call_it():
    done = run_solve()

    assert done.returncode == 64
    assert "usage: python solve.py INPUT OUTPUT" in done.stderr


# --- the WebUI -------------------------------------------------------------------------


def raw_get(webui: WebUI, path: str) -> http.client.HTTPResponse:
    """GET ``path`` exactly as written (no client-side clean-up of ``..``)."""
    connection = http.client.HTTPConnection("127.0.0.1", webui.port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_webui_serves_its_page_below_the_base_path(webui: WebUI):
    with webui.client() as client:
        page = client.get("")
        script = client.get("static/app.js")
        style = client.get("static/app.css")
        icon = client.get("icon.svg")

    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="static/app.js" defer></script>' in page.text
    # every link is relative, so the page works below any base path
    for attribute in ("src", "href"):
        assert f'{attribute}="/' not in page.text
        assert f'{attribute}="http' not in page.text
    assert '"api/case"' in script.text and '"/api' not in script.text
    # the script builds the page from text nodes: data never goes through the HTML parser
    assert "innerHTML" not in script.text and "insertAdjacentHTML" not in script.text
    assert style.headers["content-type"] == "text/css; charset=utf-8"
    assert icon.headers["content-type"] == "image/svg+xml"


def test_webui_sends_the_base_without_slash_to_the_base(webui: WebUI):
    response = raw_get(webui, BASE_PATH.rstrip("/"))

    assert response.status == 308
    assert response.getheader("Location") == BASE_PATH


@pytest.mark.parametrize(
    "path", ["/", "/s/other/", "/index.html", f"{BASE_PATH}static/../webui.py", f"{BASE_PATH}x"]
)
def test_webui_serves_nothing_else(webui: WebUI, path: str):
    assert raw_get(webui, path).status == 404


def test_webui_without_a_base_path_serves_from_the_root(tmp_path: Path):
    with running_webui(tmp_path, None) as webui, webui.client() as client:
        page = client.get("/")
        case = client.get("/api/case")

    assert page.status_code == 200 and "Transportation planner" in page.text
    assert case.json() == example()


def test_webui_healthz(webui: WebUI):
    with webui.client() as client:
        response = client.get("healthz")

    assert (response.status_code, response.text) == (200, "ok")


def test_webui_case_round_trip(webui: WebUI):
    changed = with_demand(example(), "Paris", 250)
    with webui.client() as client:
        first = client.get("api/case").json()
        saved = client.put("api/case", json=changed)
        after = client.get("api/case").json()

    assert first == example()
    assert (saved.status_code, saved.json()) == (200, {"warnings": []})
    assert after == changed


def test_webui_refuses_an_invalid_case_with_its_problems(webui: WebUI):
    with webui.client() as client:
        refused = client.put("api/case", json=_break(example(), "negative capacity"))
        after = client.get("api/case").json()

    assert refused.status_code == 422
    assert (
        'Supplier "Lyon": the capacity must be zero or more, not -5.'
        in (refused.json()["problems"])
    )
    assert after == example()


def test_webui_keeps_an_infeasible_case_with_a_warning(webui: WebUI):
    with webui.client() as client:
        saved = client.put("api/case", json=with_demand(example(), "Paris", 400))
        solved = client.post("api/solve", json={})

    assert saved.status_code == 200
    assert "90 units short" in saved.json()["warnings"][0]
    assert solved.json()["status"] == "infeasible"


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "text/plain"}, b"{}", 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"a=b", 415),
        ({"Content-Type": "application/json"}, b'{"suppliers": NaN}', 400),
        ({"Content-Type": "application/json"}, b"{broken", 400),
        ({"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, b"{}", 411),
    ],
)
def test_webui_refuses_bodies_it_cannot_take(
    webui: WebUI, headers: dict[str, str], body: bytes, status: int
):
    with webui.client() as client:
        refused = client.put("api/case", content=body, headers=headers)
        after = client.get("api/case").json()

    assert refused.status_code == status
    assert "error" in refused.json()
    assert after == example()


def test_webui_refuses_a_body_over_its_limit_before_reading_it(webui: WebUI):
    # the length alone decides: the server answers without waiting for the body
    connection = http.client.HTTPConnection("127.0.0.1", webui.port, timeout=10)
    connection.putrequest("PUT", f"{BASE_PATH}api/case")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(2 * 1024 * 1024 + 1))
    connection.endheaders()
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()

    assert response.status == 413
    assert body == {"error": "the body must be at most 2097152 bytes"}
    assert response.getheader("Connection") == "close"


def test_webui_refuses_a_solve_that_is_not_sent_as_json(webui: WebUI):
    with webui.client() as client:
        refused = client.post("api/solve", content=b"", headers={"Content-Type": "text/plain"})
        result = client.get("api/result").json()

    assert refused.status_code == 415
    assert result == {"result": None}


def test_webui_solves_and_keeps_the_result_until_the_case_changes(webui: WebUI):
    with webui.client() as client:
        solved = client.post("api/solve", json={})
        kept = client.get("api/result").json()
        client.put("api/case", json=with_demand(example(), "Paris", 250))
        dropped = client.get("api/result").json()

    assert solved.status_code == 200
    result = solved.json()
    assert result["status"] == "optimal"
    assert result["objective"] == pytest.approx(EXAMPLE_OPTIMUM)
    assert kept == {"result": result}
    assert dropped == {"result": None}


def test_webui_solves_the_edited_case(webui: WebUI):
    changed = with_demand(example(), "Paris", 200)
    expected = cheapest_plan_cost(changed)
    assert expected is not None and expected != EXAMPLE_OPTIMUM

    with webui.client() as client:
        client.put("api/case", json=changed)
        result = client.post("api/solve", json={}).json()

    assert result["objective"] == pytest.approx(expected)


def test_webui_reset_brings_back_the_example(webui: WebUI):
    with webui.client() as client:
        client.put("api/case", json=with_demand(example(), "Paris", 250))
        reset = client.post("api/case/reset", json={})
        after = client.get("api/case").json()

    assert reset.json() == example()
    assert after == example()


def test_webui_names_the_methods_a_route_takes(webui: WebUI):
    with webui.client() as client:
        response = client.get("api/solve")

    assert response.status_code == 405
    assert response.json() == {"error": "use POST"}


def test_webui_stops_cleanly_on_sigterm(webui: WebUI):
    webui.process.send_signal(signal.SIGTERM)

    assert webui.process.wait(timeout=10) == 0
    assert "stopping on signal 15" in webui.log.read_text()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", webui.port), timeout=5).close()
