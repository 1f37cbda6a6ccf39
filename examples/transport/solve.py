"""The "solve" procedure: read an input case, solve it, write the output case.

In a solve session the portal passes the paths in ``AIMMS_PORTAL_INPUT`` and
``AIMMS_PORTAL_OUTPUT``; by hand, give them as arguments::

    python solve.py data/example.json out.json

Lines printed to stdout become the job's log. Exit codes:

- 0: optimal plan written;
- 2: the input is not a valid case (its problems are printed, and written as the
  output case's messages when an output path is known);
- 3: the case has no solution (the output case says why);
- 1: the solver failed in another way;
- 64: no input or output path was given.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import model

EXIT_CODES = {"optimal": 0, "error": 1, "invalid": 2, "infeasible": 3}
EXIT_USAGE = 64
FAILURES = {
    "invalid": "The input is not a valid case:",
    "infeasible": "The case has no solution:",
    "error": "The solver failed:",
}


def main(argv: list[str]) -> int:
    paths = _paths(argv)
    if paths is None:
        print(
            "usage: python solve.py INPUT OUTPUT\n"
            "   or: set AIMMS_PORTAL_INPUT and AIMMS_PORTAL_OUTPUT",
            file=sys.stderr,
        )
        return EXIT_USAGE
    input_path, output_path = paths

    say(f"Reading the input case {input_path}")
    try:
        data = read_case(input_path)
    except (OSError, ValueError) as error:
        result = model.invalid([f"The input case cannot be read: {error}"])
    else:
        say(
            f"Case with {_count(data, 'suppliers')} suppliers, "
            f"{_count(data, 'customers')} customers and {_count(data, 'costs')} costs"
        )
        say(f"Solving with {model.SOLVER}")
        result = model.solve(data)

    status = result["status"]
    if status == "optimal":
        objective = model.format_amount(result["objective"])
        say(f"Optimal: total cost {objective} in {result['solve_time_s']:.3f} s")
    else:
        say(FAILURES[status])
    for message in result["messages"]:
        say(f"  {message}")

    write_case(output_path, result)
    say(f"Wrote the output case {output_path}")
    return EXIT_CODES[status]


def _paths(argv: list[str]) -> tuple[Path, Path] | None:
    if len(argv) == 2:
        return Path(argv[0]), Path(argv[1])
    if argv:
        return None
    input_path = os.environ.get("AIMMS_PORTAL_INPUT")
    output_path = os.environ.get("AIMMS_PORTAL_OUTPUT")
    if not input_path or not output_path:
        return None
    return Path(input_path), Path(output_path)


def read_case(path: Path) -> Any:
    """The JSON document in ``path``; ValueError if it is not strict JSON."""
    with open(path, encoding="utf-8") as file:
        # NaN and Infinity are not JSON: refuse them rather than solve with them
        return json.load(file, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def write_case(path: Path, case: dict[str, Any]) -> None:
    """Write ``case`` to ``path`` whole or not at all (the runner uploads what it finds)."""
    path = path.resolve()
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as file:
        try:
            json.dump(case, file, indent=2)
            file.write("\n")
        except BaseException:
            os.unlink(file.name)
            raise
    os.replace(file.name, path)


def _count(data: Any, key: str) -> int | str:
    rows = data.get(key) if isinstance(data, dict) else None
    return len(rows) if isinstance(rows, list) else "no"


def say(line: str) -> None:
    # flush at once: the runner streams the log while the procedure runs
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
