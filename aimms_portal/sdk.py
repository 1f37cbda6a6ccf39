"""The apps' SDK: hand solves over to the portal from inside a session (standard library).

An app runs on its runtime's Python, which carries the app's own packages and not the
portal's; so this module needs nothing but the standard library. Every session's
runner puts it on the app's path as ``aimms_portal_sdk``, and the session's environment
says where the portal is and who the session works for::

    import aimms_portal_sdk as portal

    if portal.configured():
        job = portal.submit("solve", input_bytes=json.dumps(case).encode())
        job = portal.wait(job["id"])
        output = json.loads(portal.result(job["id"]))

Environment (set by the portal in every session): ``AIMMS_PORTAL_URL``,
``AIMMS_PORTAL_TOKEN`` (the session's token: it may submit jobs and read and write cases
for the session's user, nothing else), ``AIMMS_PORTAL_APP`` and
``AIMMS_PORTAL_APP_VERSION`` (the app and release the session runs, the default for
:func:`submit`). The full client for scripts and the CLI is ``aimms_portal.client``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

FINISHED = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
#: Direct connections only: the portal is where the session was told it is.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PortalError(Exception):
    """The portal refused a call (``status`` >= 400) or could not be reached (0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.status = status
        self.code = code
        self.message = message


def configured() -> bool:
    """Whether this process runs in a portal session (the variables are set)."""
    return bool(os.environ.get("AIMMS_PORTAL_URL") and os.environ.get("AIMMS_PORTAL_TOKEN"))


def _call(
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    content_type: str = "application/json",
    params: dict[str, Any] | None = None,
    timeout: float = 60.0,
) -> bytes:
    if not configured():
        raise PortalError(0, "not_configured", "not in a portal session")
    url = os.environ["AIMMS_PORTAL_URL"].rstrip("/") + "/api/v1" + path
    if not url.startswith(("http://", "https://")):
        raise PortalError(0, "not_configured", "AIMMS_PORTAL_URL is not an http(s) address")
    if params:
        url += "?" + urllib.parse.urlencode(params)
    headers = {"Authorization": f"Bearer {os.environ['AIMMS_PORTAL_TOKEN']}"}
    if body is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(  # noqa: S310  (http(s) only, checked above)
        url, data=body, method=method, headers=headers
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())["error"]
            raise PortalError(exc.code, error["code"], error["message"]) from None
        except (ValueError, KeyError, TypeError):
            raise PortalError(exc.code, "http_error", f"HTTP {exc.code}") from None
    except OSError as exc:
        raise PortalError(0, "unreachable", f"cannot reach the portal: {exc}") from exc


def upload_case(data: bytes, name: str = "input.json") -> dict[str, Any]:
    """Store ``data`` as an input case of the session's user; the case."""
    params = {"name": name, "app": os.environ.get("AIMMS_PORTAL_APP", "")}
    raw = _call("POST", "/cases", body=data, content_type="application/octet-stream", params=params)
    return dict(json.loads(raw))


def submit(
    procedure: str,
    *,
    input_bytes: bytes | None = None,
    input_name: str = "input.json",
    arguments: dict[str, Any] | None = None,
    app: str | None = None,
    version: str | None = None,
    priority: int = 0,
) -> dict[str, Any]:
    """Queue a job of ``procedure`` (of this session's app and release, by default)."""
    body: dict[str, Any] = {
        "app": app or os.environ.get("AIMMS_PORTAL_APP", ""),
        "procedure": procedure,
        "priority": priority,
    }
    release = version or (None if app else os.environ.get("AIMMS_PORTAL_APP_VERSION"))
    if release:
        body["version"] = release
    if arguments is not None:
        body["arguments"] = arguments
    if input_bytes is not None:
        body["input_case_id"] = upload_case(input_bytes, input_name)["id"]
    return dict(json.loads(_call("POST", "/jobs", body=json.dumps(body).encode())))


def job(job_id: int) -> dict[str, Any]:
    """The job as it is now."""
    return dict(json.loads(_call("GET", f"/jobs/{int(job_id)}")))


def wait(job_id: int, *, timeout: float | None = None, poll: float = 0.3) -> dict[str, Any]:
    """Wait until the job has finished; the job then.

    Raises:
        PortalError: code ``timeout`` when ``timeout`` seconds passed first.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = job(job_id)
        if current["state"] in FINISHED:
            return current
        if deadline is not None and time.monotonic() > deadline:
            raise PortalError(0, "timeout", f"job {job_id} is still {current['state']}")
        time.sleep(poll)
        poll = min(poll * 1.25, 2.0)


def result(job_id: int) -> bytes:
    """The output case of a job that succeeded.

    Raises:
        PortalError: ``job_failed`` (the message carries the state and reason) or
            ``no_output``.
    """
    current = job(job_id)
    if current["state"] != "succeeded":
        reason = f": {current['reason']}" if current.get("reason") else ""
        raise PortalError(0, "job_failed", f"job {job_id} {current['state']}{reason}")
    if not current.get("output_case_id"):
        raise PortalError(0, "no_output", f"job {job_id} wrote no output case")
    return _call("GET", f"/cases/{current['output_case_id']}/content", timeout=300)


def output(job_id: int) -> bytes | None:
    """The output case of a finished job whatever its state (a procedure may write one
    when it fails, saying why), or ``None`` when it wrote none."""
    current = job(job_id)
    if not current.get("output_case_id"):
        return None
    return _call("GET", f"/cases/{current['output_case_id']}/content", timeout=300)
