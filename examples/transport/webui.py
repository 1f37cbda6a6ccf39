"""The Transportation planner's WebUI: a small web server on the standard library only.

The runtime carries highspy and numpy and nothing else, so this server uses
``http.server``. It listens on 127.0.0.1:``$PORT`` (default 8080) and serves every
page under ``$AIMMS_PORTAL_BASE_PATH`` (default ``/``): the portal forwards
``/s/<session>/...`` to it unchanged. The page links and fetches relative to that
base, so it works under any prefix.

Routes, relative to the base:

- ``GET``  (the base itself), ``index.html``, ``static/...``, ``icon.svg``: the page;
- ``GET``  ``healthz``: ``ok`` once the server answers (the launcher waits on it);
- ``GET``  ``api/case``: the case being edited (a case document, see model.py);
- ``PUT``  ``api/case``: replace it; 422 ``{"problems": [...]}`` if it is no valid
  case, else 200 ``{"warnings": [...]}`` (e.g. why it has no solution);
- ``POST`` ``api/case/reset``: back to the example case; returns it;
- ``POST`` ``api/solve``: solve the case; returns the output case. In a portal session
  (the portal's SDK is importable and configured) the solve is handed to the portal as
  a job of this app's ``solve`` procedure and the output case comes back with the job's
  id under ``job``; run by hand, it is solved in this process;
- ``GET``  ``api/result``: ``{"result": <output case of the last solve or null>}``,
  null once the case has changed since.

Requests that change anything must carry ``Content-Type: application/json``: a page
on another site cannot send that without the browser asking first, so a forged form
post is refused (415) before it reaches the case.

The case lives in this process's memory for as long as the session runs. SIGTERM and
SIGINT stop the server cleanly (exit code 0).
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import signal
import socketserver
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import model

try:  # the portal puts its SDK on the path of every session
    import aimms_portal_sdk as portal
except ImportError:  # run by hand: solve here
    portal = None

logger = logging.getLogger("transport.webui")

HERE = Path(__file__).resolve().parent
EXAMPLE_CASE = HERE / "data" / "example.json"
MAX_BODY = 2 * 1024 * 1024

# every file the server hands out, by its path below the base; nothing else is served
FILES = {
    "": ("static/index.html", "text/html; charset=utf-8"),
    "index.html": ("static/index.html", "text/html; charset=utf-8"),
    "static/app.js": ("static/app.js", "text/javascript; charset=utf-8"),
    "static/app.css": ("static/app.css", "text/css; charset=utf-8"),
    "icon.svg": ("icon.svg", "image/svg+xml"),
}

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'self'"
    ),
}


# status, body, content type and extra headers of an answer
Reply = tuple[int, bytes, str, dict[str, str]]


class HttpError(Exception):
    """A request the server refuses; ``body`` is the JSON sent back."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


class Planner:
    """The case being edited and the result of its last solve, shared by all requests."""

    def __init__(self, case: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._case = case
        self._revision = 0
        self._result: dict[str, Any] | None = None

    def case(self) -> tuple[dict[str, Any], int]:
        """The current case and its revision (raised by every change)."""
        with self._lock:
            return self._case, self._revision

    def replace_case(self, case: dict[str, Any]) -> None:
        """Make the valid ``case`` the current one; a different one drops the result."""
        with self._lock:
            if case != self._case:
                self._case = case
                self._revision += 1
                self._result = None

    def keep_result(self, result: dict[str, Any], revision: int) -> None:
        """Keep ``result`` unless the case changed while it was being solved."""
        with self._lock:
            if revision == self._revision:
                self._result = result

    def result(self) -> dict[str, Any] | None:
        with self._lock:
            return self._result


# HiGHS instances solving at once in several threads of one process have crashed it
# (ERGO-Code/HiGHS#3141); a session has one user, so one solve at a time costs nothing
_solve_lock = threading.Lock()


def solve_here(case: dict[str, Any]) -> dict[str, Any]:
    """Solve ``case`` in this process with HiGHS and return the output case."""
    with _solve_lock:
        return model.solve(case)


#: Longest a solve handed to the portal may take before the page is told it failed.
PORTAL_SOLVE_TIMEOUT_S = 600.0


def solve_on_the_portal(case: dict[str, Any]) -> dict[str, Any]:
    """Hand ``case`` to the portal as a job of this app's ``solve`` procedure and wait
    for its output case; the output case, with the job's id under ``job``.

    Raises:
        HttpError: 502 when the job did not succeed (the message says why).
    """
    try:
        job = portal.submit(
            "solve", input_bytes=json.dumps(case).encode(), input_name="transport-case.json"
        )
        logger.info("solve handed to the portal as job %s", job["id"])
        job = portal.wait(job["id"], timeout=PORTAL_SOLVE_TIMEOUT_S)
        # a procedure that finds no plan fails the job, and still writes why
        data = portal.output(job["id"])
        if data is None:
            raise HttpError(502, f"the solve job {job['id']} {job['state']}: {job['reason']}")
        result = json.loads(data)
    except portal.PortalError as error:
        raise HttpError(502, f"the portal could not solve it: {error.message}") from error
    result["job"] = job["id"]
    return result


def solve(case: dict[str, Any]) -> dict[str, Any]:
    """Solve on the portal when this runs in one of its sessions, else right here."""
    if portal is not None and portal.configured():
        return solve_on_the_portal(case)
    return solve_here(case)


class PlannerServer(http.server.ThreadingHTTPServer):
    """An HTTP server that knows its base path, the planner state and the page files."""

    def __init__(self, address: tuple[str, int], base_path: str, planner: Planner) -> None:
        self.base_path = base_path
        self.planner = planner
        # read once at start: a missing file fails the start, not a user's request
        self.files = {
            route: ((HERE / name).read_bytes(), content_type)
            for route, (name, content_type) in FILES.items()
        }
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's full name, a DNS query that can
        # stall a start on a closed network; the name is only used in CGI variables
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = self.server_address[1]


class Handler(http.server.BaseHTTPRequestHandler):
    server: PlannerServer
    protocol_version = "HTTP/1.1"
    # The head and the body leave in two writes; with Nagle's algorithm on, the body
    # waits for the client's delayed ACK of the head, about 40 ms on every answer.
    disable_nagle_algorithm = True
    server_version = "TransportPlanner/1.0"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        try:
            status, body, content_type, headers = self._route(method, urlsplit(self.path).path)
        except HttpError as error:
            status, body, content_type, headers = _json(error.status, error.body)
        except Exception:
            logger.exception("%s %s failed", method, self.path)
            failure = {"error": "the planner failed; see the session log"}
            status, body, content_type, headers = _json(500, failure)
        self._send(status, body, content_type, headers)

    def _route(self, method: str, path: str) -> Reply:
        base = self.server.base_path
        if base != "/" and path == base.rstrip("/"):
            # relative links only work below "<base>/": send the browser there
            return 308, b"", "text/plain; charset=utf-8", {"Location": base}
        if not path.startswith(base):
            raise HttpError(404, "not found")
        route = path[len(base) :]

        if (method, route) in API:
            return _json(200, API[(method, route)](self))
        if method == "GET" and route in self.server.files:
            body, content_type = self.server.files[route]
            return 200, body, content_type, {"Cache-Control": "no-cache"}
        if method == "GET" and route == "healthz":
            return 200, b"ok", "text/plain; charset=utf-8", {}
        allowed = [known_method for known_method, known in API if known == route]
        if allowed:
            raise HttpError(405, f"use {' or '.join(allowed)}")
        raise HttpError(404, "not found")

    # the API, one method per route; each returns the JSON body of a 200 answer

    def get_case(self) -> Any:
        return self.server.planner.case()[0]

    def put_case(self) -> Any:
        data = self._read_json()
        problems = model.validate_case(data)
        if problems:
            raise HttpError(422, "the case is not valid", problems=problems)
        case = model.clean_case(data)
        self.server.planner.replace_case(case)
        warning = model.explain_infeasibility(case)
        return {"warnings": [warning] if warning else []}

    def reset_case(self) -> Any:
        self._read_json()
        case = load_example()
        self.server.planner.replace_case(case)
        return case

    def solve(self) -> Any:
        self._read_json()
        case, revision = self.server.planner.case()
        result = solve(case)
        self.server.planner.keep_result(result, revision)
        logger.info("solved: %s, objective %s", result["status"], result["objective"])
        return result

    def get_result(self) -> Any:
        return {"result": self.server.planner.result()}

    def _read_json(self) -> Any:
        """The request's JSON body (None when empty); refuse anything but JSON."""
        if self.headers.get_content_type() != "application/json":
            self.close_connection = True
            raise HttpError(415, "send the request as application/json")
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise HttpError(411, "send the body with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            # the body stays unread, so this connection cannot carry another request
            self.close_connection = True
            raise HttpError(413, f"the body must be at most {MAX_BODY} bytes")
        body = self.rfile.read(length)
        if not body:
            return None
        try:
            return json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as error:
            raise HttpError(400, f"the body is not JSON: {error}") from None

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **headers}.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # the launcher polls healthz while the session starts: keep that out of the log
        if not urlsplit(self.path).path.endswith("/healthz"):
            super().log_request(code, size)

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s " + format, self.address_string(), *args)


def _json(status: int, body: Any) -> Reply:
    return status, json.dumps(body).encode(), "application/json", {"Cache-Control": "no-store"}


API = {
    ("GET", "api/case"): Handler.get_case,
    ("PUT", "api/case"): Handler.put_case,
    ("POST", "api/case/reset"): Handler.reset_case,
    ("POST", "api/solve"): Handler.solve,
    ("GET", "api/result"): Handler.get_result,
}


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def load_example() -> dict[str, Any]:
    """The example case shipped with the app (valid: it is checked in the tests)."""
    return json.loads(EXAMPLE_CASE.read_text(encoding="utf-8"))


def base_path_from(value: str) -> str:
    """The base path with one leading and one trailing slash (``/`` when empty)."""
    return "/" + "".join(f"{part}/" for part in value.split("/") if part)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    port = int(os.environ.get("PORT", "8080"))
    base_path = base_path_from(os.environ.get("AIMMS_PORTAL_BASE_PATH", "/"))
    server = PlannerServer(("127.0.0.1", port), base_path, Planner(load_example()))

    def stop(signum: int, _frame: Any) -> None:
        logger.info("stopping on signal %d", signum)
        # shutdown() waits for serve_forever() to return, which runs in this very
        # thread: ask from another one
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    logger.info("serving on http://127.0.0.1:%d%s", server.server_port, base_path)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
