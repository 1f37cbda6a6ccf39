"""The transportation problem: ship goods from suppliers to customers at least cost.

A case (the input) is a JSON object::

    {"suppliers": [{"name": "Lyon", "capacity": 350}, ...],
     "customers": [{"name": "Paris", "demand": 260}, ...],
     "costs": [{"from": "Lyon", "to": "Paris", "cost": 23}, ...]}

with one cost for every supplier and customer pair. The model chooses an amount
``x[s, c] >= 0`` for every route so as to

    minimise    sum of cost[s, c] * x[s, c]
    subject to  sum over c of x[s, c] <= capacity[s]   for every supplier s
                sum over s of x[s, c]  = demand[c]     for every customer c

and is solved as a linear program with HiGHS. :func:`solve` returns the output case::

    {"status": "optimal" | "infeasible" | "invalid" | "error",
     "objective": total cost or null,
     "flows": [{"from", "to", "amount", "cost"}, ...]   (used routes only),
     "duals": {"suppliers": {name: value}, "customers": {name: value}}  (or {}),
     "messages": [plain-words lines for the user],
     "solver": "HiGHS <version>", "solve_time_s": seconds}

The duals (shadow prices) are marginal costs: a supplier's value is the change in the
total cost per extra unit of its capacity (zero or negative; zero while it has capacity
to spare); a customer's value is the change in the total cost per extra unit of its
demand. Only an optimal plan has flows, an objective and duals. Everything but
``solve_time_s`` depends on the case only.

This module has no state and does no I/O, so that the WebUI, the solve procedure and
the tests all call the same functions.
"""

from __future__ import annotations

import math
import time
from importlib import metadata
from typing import Any

import highspy
import numpy as np

# Limits that keep a case within what the WebUI shows comfortably and well away from
# the numbers HiGHS treats as infinite (1e20).
MAX_PARTIES = 500
MAX_NAME_LENGTH = 100
MAX_NUMBER = 1e9

# HiGHS answers within its feasibility tolerance (1e-7): amounts this small are zero
ZERO = 1e-7

SOLVER = f"HiGHS {metadata.version('highspy')}"


def validate_case(data: Any) -> list[str]:
    """Return the problems that keep ``data`` from being a case, in plain words.

    An empty list means the case is well formed: every name given once, every number
    zero or more, and one cost for each supplier and customer pair. Whether the demand
    can be met is not checked here (see :func:`explain_infeasibility`): such a case is
    well formed, it just has no solution.
    """
    if not isinstance(data, dict):
        return ["The case must be a JSON object with suppliers, customers and costs."]
    problems: list[str] = []
    suppliers = _check_parties(data, "suppliers", "Supplier", "capacity", problems)
    customers = _check_parties(data, "customers", "Customer", "demand", problems)
    _check_costs(data, suppliers, customers, problems)
    return problems


def _check_parties(
    data: dict[str, Any], key: str, label: str, amount: str, problems: list[str]
) -> list[str]:
    """Check one list of suppliers or customers; return the names that are usable."""
    rows = data.get(key)
    if not isinstance(rows, list):
        problems.append(f"The case needs a list of {key}.")
        return []
    if not rows:
        problems.append(f"Add at least one {label.lower()}.")
    if len(rows) > MAX_PARTIES:
        problems.append(f"At most {MAX_PARTIES} {key} are allowed, not {len(rows)}.")
        return []

    names: list[str] = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            problems.append(f"{label} {number} must be an object with a name and a {amount}.")
            continue
        name = row.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{label} {number} has no name.")
            continue
        if len(name) > MAX_NAME_LENGTH:
            problems.append(
                f"{label} {number}: the name is longer than {MAX_NAME_LENGTH} characters."
            )
            continue
        if name in names:
            problems.append(f'{label} "{name}" appears more than once.')
            continue
        names.append(name)
        problem = _number_problem(row.get(amount))
        if problem:
            problems.append(f'{label} "{name}": the {amount} {problem}.')
    return names


def _check_costs(
    data: dict[str, Any], suppliers: list[str], customers: list[str], problems: list[str]
) -> None:
    rows = data.get("costs")
    if not isinstance(rows, list):
        problems.append("The case needs a list of costs.")
        return
    if len(rows) > MAX_PARTIES * MAX_PARTIES:
        problems.append(f"There are more costs ({len(rows)}) than routes can exist.")
        return

    known_suppliers, known_customers = set(suppliers), set(customers)
    seen: set[tuple[str, str]] = set()
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            problems.append(f"Cost {number} must be an object with from, to and cost.")
            continue
        source, target = row.get("from"), row.get("to")
        if not isinstance(source, str) or not isinstance(target, str):
            problems.append(f"Cost {number} must name a supplier (from) and a customer (to).")
            continue
        route = f"{source} to {target}"
        if source not in known_suppliers:
            problems.append(f'Cost {number} ({route}): there is no supplier "{source}".')
            continue
        if target not in known_customers:
            problems.append(f'Cost {number} ({route}): there is no customer "{target}".')
            continue
        if (source, target) in seen:
            problems.append(f"The cost from {route} is given more than once.")
            continue
        seen.add((source, target))
        problem = _number_problem(row.get("cost"))
        if problem:
            problems.append(f"The cost from {route} {problem}.")

    # the model needs the full cost matrix: say which entries are missing, a few by name
    missing = [(s, c) for s in suppliers for c in customers if (s, c) not in seen]
    for source, target in missing[:10]:
        problems.append(f"The cost from {source} to {target} is missing.")
    if len(missing) > 10:
        problems.append(f"... and {len(missing) - 10} more costs are missing.")


def _number_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable amount (a finite number from 0 to MAX_NUMBER)."""
    # bool is an int subclass in Python, but true is not an amount
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if not math.isfinite(value):
        return "must be a finite number"
    if value < 0:
        return f"must be zero or more, not {format_amount(value)}"
    if value > MAX_NUMBER:
        return f"must be at most {format_amount(MAX_NUMBER)}"
    return None


def clean_case(data: dict[str, Any]) -> dict[str, Any]:
    """The valid case ``data`` with only the fields the model reads (extra keys dropped)."""
    return {
        "suppliers": [
            {"name": row["name"], "capacity": row["capacity"]} for row in data["suppliers"]
        ],
        "customers": [{"name": row["name"], "demand": row["demand"]} for row in data["customers"]],
        "costs": [
            {"from": row["from"], "to": row["to"], "cost": row["cost"]} for row in data["costs"]
        ],
    }


def explain_infeasibility(data: dict[str, Any]) -> str | None:
    """Why a well-formed case has no solution, or None when it has one.

    Every route exists and has no upper limit, so the demand can be met exactly when
    the total capacity covers the total demand.
    """
    capacity = sum(row["capacity"] for row in data["suppliers"])
    demand = sum(row["demand"] for row in data["customers"])
    if demand <= capacity:
        return None
    return (
        f"The customers need {format_amount(demand)} units in all, but the suppliers "
        f"can deliver only {format_amount(capacity)}: "
        f"{format_amount(demand - capacity)} units short. "
        "Raise a capacity or lower a demand."
    )


def solve(data: Any) -> dict[str, Any]:
    """Solve the case ``data`` and return the output case (see the module docstring).

    Never raises for bad input: an ill-formed case comes back with status ``invalid``
    and its problems as messages, a case without solution with status ``infeasible``
    and the reason.
    """
    problems = validate_case(data)
    if problems:
        return invalid(problems)

    suppliers = [row["name"] for row in data["suppliers"]]
    customers = [row["name"] for row in data["customers"]]
    capacity = np.array([row["capacity"] for row in data["suppliers"]], dtype=np.float64)
    demand = np.array([row["demand"] for row in data["customers"]], dtype=np.float64)
    unit_cost = {(row["from"], row["to"]): float(row["cost"]) for row in data["costs"]}

    # column s * len(customers) + c is the amount shipped from supplier s to customer c;
    # this fixed order makes the model, and so the simplex answer, the same every time
    routes = [(s, c) for s in suppliers for c in customers]
    costs = np.array([unit_cost[route] for route in routes], dtype=np.float64)
    highs = _build(len(suppliers), len(customers), costs, capacity, demand)

    started = time.perf_counter()
    _check(highs.run(), "run")
    elapsed = time.perf_counter() - started

    status = highs.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        reason = explain_infeasibility(data) or "HiGHS found that no plan meets every demand."
        return _result("infeasible", [reason], elapsed)
    if status != highspy.HighsModelStatus.kOptimal:
        text = highs.modelStatusToString(status)
        return _result("error", [f"HiGHS stopped without an optimal plan: {text}."], elapsed)

    solution = highs.getSolution()
    amounts = [_clean(value) for value in solution.col_value]
    flows = [
        {"from": s, "to": c, "amount": amount, "cost": _clean(amount * unit_cost[(s, c)])}
        for (s, c), amount in zip(routes, amounts, strict=True)
        if amount > 0
    ]
    row_duals = [_clean(value) for value in solution.row_dual]
    duals = {
        "suppliers": dict(zip(suppliers, row_duals[: len(suppliers)], strict=True)),
        "customers": dict(zip(customers, row_duals[len(suppliers) :], strict=True)),
    }
    objective = _clean(highs.getInfo().objective_function_value)
    messages = _explain_optimum(objective, flows, duals)
    return _result("optimal", messages, elapsed, objective=objective, flows=flows, duals=duals)


def invalid(problems: list[str]) -> dict[str, Any]:
    """The output case for input that is no valid case, with its ``problems``."""
    return _result("invalid", problems)


def _build(
    n_suppliers: int,
    n_customers: int,
    costs: np.ndarray,
    capacity: np.ndarray,
    demand: np.ndarray,
) -> highspy.Highs:
    """The LP in HiGHS, through its low-level API (stable across highspy releases)."""
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    # the simplex method ends on a vertex: as few routes as possible, and duals that are
    # exact marginal costs
    highs.setOptionValue("solver", "simplex")
    n_routes = n_suppliers * n_customers
    no_entries = np.zeros(0, dtype=np.int32)
    _check(
        highs.addCols(
            n_routes,
            costs,
            np.zeros(n_routes),
            np.full(n_routes, highspy.kHighsInf),
            0,
            no_entries,
            no_entries,
            np.zeros(0),
        ),
        "addCols",
    )

    # supplier s's row holds its customers' columns; customer c's row holds column c of
    # every supplier block
    route = np.arange(n_routes, dtype=np.int32).reshape(n_suppliers, n_customers)
    indices = np.concatenate([route.reshape(-1), route.T.reshape(-1)]).astype(np.int32)
    starts = np.concatenate(
        [
            np.arange(n_suppliers, dtype=np.int32) * n_customers,
            n_routes + np.arange(n_customers, dtype=np.int32) * n_suppliers,
        ]
    ).astype(np.int32)
    lower = np.concatenate([np.full(n_suppliers, -highspy.kHighsInf), demand])
    upper = np.concatenate([capacity, demand])
    _check(
        highs.addRows(
            n_suppliers + n_customers,
            lower,
            upper,
            len(indices),
            starts,
            indices,
            np.ones(len(indices)),
        ),
        "addRows",
    )
    return highs


def _check(status: highspy.HighsStatus, step: str) -> None:
    # kWarning is fine (HiGHS warns, for instance, about tiny coefficients it ignores)
    if status == highspy.HighsStatus.kError:
        raise RuntimeError(f"HiGHS refused {step}")


def _explain_optimum(
    objective: float, flows: list[dict[str, Any]], duals: dict[str, dict[str, float]]
) -> list[str]:
    shipped = sum(flow["amount"] for flow in flows)
    messages = [
        f"Optimal plan: {format_amount(shipped)} units over {len(flows)} "
        f"{'route' if len(flows) == 1 else 'routes'} "
        f"for a total cost of {format_amount(objective)}."
    ]
    for name, value in duals["suppliers"].items():
        if value < 0:
            messages.append(
                f"{name} ships all it can: each extra unit of capacity there would "
                f"lower the total cost by {format_amount(-value)}."
            )
    return messages


def _result(
    status: str,
    messages: list[str],
    elapsed: float | None = None,
    *,
    objective: float | None = None,
    flows: list[dict[str, Any]] | None = None,
    duals: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    return {
        "status": status,
        "objective": objective,
        "flows": flows or [],
        "duals": duals or {},
        "messages": messages,
        "solver": SOLVER,
        "solve_time_s": None if elapsed is None else round(elapsed, 6),
    }


def _clean(value: float) -> float:
    """Round away the solver's last-digit noise and negative zero."""
    value = round(float(value), 9)
    return 0.0 if abs(value) < ZERO else value


def format_amount(value: float) -> str:
    """``value`` for people: thousands separated, decimals only where there are any."""
    if float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.2f}"
