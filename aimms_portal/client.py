"""Python client of the portal's REST API, used by the CLI and by scripts.

>>> client = PortalClient("https://portal.example", token="apt_...")
>>> client.me()["username"]

Errors from the portal arrive as :class:`PortalClientError` with the portal's code and
message; a portal that cannot be reached gives code ``unreachable``, an address that is
not http(s) gives ``invalid_url``, and an answer that is not the portal's JSON gives
``unexpected_response``.

Uploads (runtime packages, app bundles) are streamed from their file in chunks of
:data:`UPLOAD_CHUNK_SIZE` with a ``Content-Length``: a package is never held whole in
memory, whatever its size.

Solve jobs hand a procedure of an app to the portal, which runs it in a solve session:

>>> job = client.submit("transport", "solve", input="data/example.json")
>>> client.wait(job["id"])["state"]
'succeeded'
>>> plan = client.result(job["id"])  # the output case, as bytes (or give a file)

Every session the portal starts gives its app the portal's address and a token for it
(scoped to jobs, cases and apps) in ``AIMMS_PORTAL_URL`` and ``AIMMS_PORTAL_TOKEN``.
:meth:`PortalClient.from_environment` reads them, so an app can hand solves over with
no configuration of its own (a script elsewhere may set them to the portal's address
and a personal API token):

>>> with PortalClient.from_environment() as client:
...     client.submit("transport", "solve", input_case_id=12)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, overload
from urllib.parse import quote

import httpx

DEFAULT_TIMEOUT = 30.0
#: How long an upload may wait for the answer once all of it is sent: the portal reads
#: the whole archive again to validate it before it answers.
UPLOAD_ANSWER_TIMEOUT = 600.0
UPLOAD_CHUNK_SIZE = 1024 * 1024
#: The request header that carries a runtime package's ``.sig`` file (base64).
SIGNATURE_HEADER = "X-Runtime-Signature"

#: Called with (bytes sent so far, bytes in all) while an upload streams.
Progress = Callable[[int, int], None]

#: The environment variables every session the portal starts has (see the module text).
ENV_URL = "AIMMS_PORTAL_URL"
ENV_TOKEN = "AIMMS_PORTAL_TOKEN"  # noqa: S105  (a variable name, not a secret)

#: The job states after which nothing more happens to a job.
FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
#: Waiting and following a log poll more rarely while nothing changes, up to this often.
MAX_POLL_INTERVAL = 2.0
POLL_GROWTH = 1.25
#: Most log chunks the portal returns for one call.
LOG_PAGE = 1000
#: The largest output case :meth:`PortalClient.result` returns as bytes; a larger one is
#: written to a file (``dest``) instead of filling the memory unasked.
RESULT_BYTES_LIMIT = 16 * 1024 * 1024


class PortalClientError(Exception):
    """The portal refused a request, or could not be reached."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({self.code})" if self.status else self.message


class JobFailedError(PortalClientError):
    """A job finished without success: it failed, was cancelled or timed out.

    The code is ``job_<state>`` (``job_failed``, ``job_cancelled``, ``job_timed_out``);
    the message gives the state and the portal's reason; ``job`` is the whole job.
    """

    def __init__(self, job: dict[str, Any]) -> None:
        message = job_outcome(job)
        if job.get("output_case_id"):
            message += (
                f" It wrote output case {job['output_case_id']}, which may say more "
                "(download it as a case)."
            )
        super().__init__(0, f"job_{job['state']}", message)
        self.job = job


def job_outcome(job: dict[str, Any]) -> str:
    """One line on where a job stands: ``Job 12 failed: exit code 7.``"""
    state = str(job["state"])
    # a reason that only repeats the state says nothing more
    reason = f": {job['reason']}" if job.get("reason") not in (None, "", state) else ""
    return f"Job {job['id']} {state.replace('_', ' ')}{reason}."


class PortalClient:
    """A connection to one portal, authenticated with a personal API token.

    Raises:
        PortalClientError: ``url`` is not an http:// or https:// address.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": f"aimms-portal-client (Python {platform.python_version()})"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        if not self.url.lower().startswith(("http://", "https://")):
            raise PortalClientError(
                0,
                "invalid_url",
                f"The portal address must start with http:// or https://, not {url!r}.",
            )
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> PortalClient:
        """A client of the portal named by ``AIMMS_PORTAL_URL``, with ``AIMMS_PORTAL_TOKEN``.

        Every session the portal starts has both (its token may reach jobs, cases and
        apps), so an app needs no configuration to hand solves over. ``environ``
        defaults to ``os.environ``.

        Raises:
            PortalClientError: a variable is missing or empty (code ``not_configured``),
                or the address is not http(s) (``invalid_url``).
        """
        env = os.environ if environ is None else environ
        url = env.get(ENV_URL, "").strip()
        token = env.get(ENV_TOKEN, "").strip()
        missing = [name for name, value in ((ENV_URL, url), (ENV_TOKEN, token)) if not value]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise PortalClientError(
                0,
                "not_configured",
                f"{' and '.join(missing)} {verb} not set: a session the portal started has "
                f"both; elsewhere, set {ENV_URL} to the portal's address and {ENV_TOKEN} to "
                "an API token.",
            )
        return cls(url, token, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PortalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request to ``/api/v1{path}``; the decoded JSON body, or ``None``.

        Raises:
            PortalClientError: the portal answered with an error, or was unreachable.
        """
        try:
            response = self._http.request(method, f"/api/v1{path}", **kwargs)
        except httpx.WriteError as exc:
            # a portal may refuse an upload (no right, too large) before reading all of
            # it and close the connection: the sender then sees only this
            raise PortalClientError(
                0,
                "connection_closed",
                f"The portal at {self.url} closed the connection while the request was "
                "sent; it may have refused the upload (check the upload limit and your "
                "rights).",
            ) from exc
        except httpx.TransportError as exc:
            raise PortalClientError(
                0, "unreachable", f"Cannot reach the portal at {self.url}: {exc}"
            ) from exc
        if response.is_error:
            try:
                error = response.json()["error"]
                code, message = error["code"], error["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", f"HTTP {response.status_code} from {self.url}"
            raise PortalClientError(response.status_code, code, message)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            # e.g. a web server or proxy at this address that is not the portal
            raise PortalClientError(
                response.status_code,
                "unexpected_response",
                f"{self.url} did not answer like an aimms_portal (no JSON from {path}).",
            ) from exc

    # -- log-on --------------------------------------------------------------------------

    def log_on_for_token(
        self,
        username: str,
        password: str,
        *,
        token_name: str,
        scopes: list[str],
        expires_in_days: int = 90,
    ) -> dict[str, Any]:
        """Log on with a password, create an API token, and log off again.

        Returns the created token (its ``token`` field holds the secret). An admin's
        token also gets the ``admin`` scope, since admins use the CLI for admin work.
        """
        login = self.request(
            "POST", "/auth/login", json={"username": username, "password": password}
        )
        if login["user"]["role"] == "admin" and "admin" not in scopes:
            scopes = [*scopes, "admin"]
        csrf = {"X-CSRF-Token": login["csrf_token"]}
        try:
            return self.request(  # type: ignore[no-any-return]
                "POST",
                "/tokens",
                headers=csrf,
                json={"name": token_name, "scopes": scopes, "expires_in_days": expires_in_days},
            )
        finally:
            # best effort: a failed log-off must not hide the token or the real error,
            # and the log-on expires by itself
            with contextlib.suppress(PortalClientError):
                self.request("POST", "/auth/logout", headers=csrf)
            self._http.cookies.clear()

    # -- resources -----------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        return self.request("GET", "/me")  # type: ignore[no-any-return]

    def list_tokens(self, *, include_revoked: bool = False) -> list[dict[str, Any]]:
        return self._all("/tokens", params={"include_revoked": include_revoked})

    def create_token(
        self, name: str, scopes: list[str], expires_in_days: int = 90
    ) -> dict[str, Any]:
        return self.request(  # type: ignore[no-any-return]
            "POST",
            "/tokens",
            json={"name": name, "scopes": scopes, "expires_in_days": expires_in_days},
        )

    def revoke_token(self, token_id: int) -> None:
        self.request("DELETE", f"/tokens/{token_id}")

    # -- runtime versions and signing keys -----------------------------------------------

    def list_runtimes(self) -> list[dict[str, Any]]:
        """Every runtime version, with how many releases run on it."""
        return self.request("GET", "/runtimes")  # type: ignore[no-any-return]

    def upload_runtime(
        self, package: str | os.PathLike[str], signature: bytes, *, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Upload a runtime package, streamed from its file, with its ``.sig`` file's bytes.

        Raises:
            PortalClientError: refused (unsigned, untrusted key, bad signature, invalid
                package, duplicate version, too large) or unreachable.
        """
        headers = {SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii")}
        return self._upload("/runtimes", package, headers=headers, progress=progress)

    def delete_runtime(self, name: str, version: str) -> None:
        self.request("DELETE", f"/runtimes/{_segment(name)}/{_segment(version)}")

    def delete_unused_runtimes(self) -> list[str]:
        """Delete every runtime version no release uses; the deleted ``name version``s."""
        return self.request("POST", "/runtimes/delete-unused")["deleted"]  # type: ignore[no-any-return]

    def trust_signing_key(self, name: str, public_key: str) -> dict[str, Any]:
        """Make the portal accept packages signed by ``public_key`` (``ed25519:...``)."""
        return self.request(  # type: ignore[no-any-return]
            "POST", "/signing-keys", json={"name": name, "public_key": public_key}
        )

    def portal_key(self) -> dict[str, Any]:
        """The portal's public key for encrypted bundles: ``fingerprint``, ``public_pem``."""
        return self.request("GET", "/portal-key")  # type: ignore[no-any-return]

    # -- apps ----------------------------------------------------------------------------

    def publish_bundle(
        self,
        bundle: str | os.PathLike[str],
        *,
        hide_previous: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Publish an app bundle, streamed from its file; the new release.

        Raises:
            PortalClientError: refused (invalid bundle, no matching runtime, duplicate
                version, no right, too large) or unreachable.
        """
        params = {"hide_previous": "true"} if hide_previous else None
        return self._upload("/apps", bundle, params=params, progress=progress)

    def list_apps(self) -> list[dict[str, Any]]:
        """The catalogue: the apps the caller may read."""
        return self.request("GET", "/apps")  # type: ignore[no-any-return]

    def list_releases(self, name: str) -> list[dict[str, Any]]:
        """The app's releases, newest first."""
        return self.request("GET", f"/apps/{_segment(name)}/releases")  # type: ignore[no-any-return]

    def set_latest(self, name: str, version: str) -> dict[str, Any]:
        """Move the app's ``latest`` tag to ``version`` (roll back or forward)."""
        return self.request(  # type: ignore[no-any-return]
            "PUT", f"/apps/{_segment(name)}/latest", json={"version": version}
        )

    def set_grant(
        self, name: str, *, principal_type: str, principal_name: str, right: str, effect: str
    ) -> dict[str, Any]:
        """Allow or deny ``right`` on the app to a user or group."""
        body = {
            "principal_type": principal_type,
            "principal_name": principal_name,
            "right": right,
            "effect": effect,
        }
        return self.request(  # type: ignore[no-any-return]
            "POST", f"/apps/{_segment(name)}/access", json=body
        )

    def explain_rights(self, name: str, username: str) -> dict[str, Any]:
        """A user's effective rights on the app and which grant decided each."""
        return self.request(  # type: ignore[no-any-return]
            "GET", f"/apps/{_segment(name)}/access/effective", params={"user": username}
        )

    # -- cases ---------------------------------------------------------------------------

    def upload_case(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        app: str | None = None,
        kind: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Upload a file as a case, streamed; named after the file unless ``name`` is given.

        Raises:
            PortalClientError: refused (bad name, unknown app, too large) or unreachable.
        """
        params = {"name": name if name is not None else Path(path).name}
        if app is not None:
            params["app"] = app
        if kind is not None:
            params["kind"] = kind
        return self._upload("/cases", path, params=params, progress=progress)

    def list_cases(
        self, *, app: str | None = None, kind: str | None = None, all_users: bool = False
    ) -> list[dict[str, Any]]:
        """Your cases, newest first (every user's with ``all_users``, for admins)."""
        params: dict[str, Any] = {"all": all_users}
        if app is not None:
            params["app"] = app
        if kind is not None:
            params["kind"] = kind
        return self._all("/cases", params=params)

    def get_case(self, case_id: int) -> dict[str, Any]:
        return self.request("GET", f"/cases/{int(case_id)}")  # type: ignore[no-any-return]

    def delete_case(self, case_id: int) -> None:
        self.request("DELETE", f"/cases/{int(case_id)}")

    def download_case(
        self,
        case_id: int,
        dest_path: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
    ) -> Path:
        """Download a case's content (uncompressed) to ``dest_path``, replacing any file.

        The content streams into a temporary file beside ``dest_path``, its SHA-256 is
        checked against the portal's, and only then is it renamed to ``dest_path``: a
        failed download leaves nothing behind.

        Raises:
            PortalClientError: refused (code ``not_found`` for a case that is not yours),
                cut off or damaged on the way (``download_failed``), the file cannot be
                written (``unwritable``), or the portal is unreachable.
        """
        dest = Path(dest_path)
        try:
            fd, temporary = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        except OSError as exc:
            raise PortalClientError(
                0, "unwritable", f"Cannot write to {dest.parent}: {exc.strerror or exc}."
            ) from exc
        try:
            with os.fdopen(fd, "wb") as out:
                self._download(f"/cases/{int(case_id)}/content", out, progress)
            os.replace(temporary, dest)
        except OSError as exc:
            Path(temporary).unlink(missing_ok=True)
            raise PortalClientError(
                0, "unwritable", f"Cannot write {dest}: {exc.strerror or exc}."
            ) from exc
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return dest

    def _download(self, path: str, out: BinaryIO, progress: Progress | None) -> None:
        """Stream the body of ``GET /api/v1{path}`` into ``out``, checking its SHA-256."""
        timeout = httpx.Timeout(DEFAULT_TIMEOUT, read=UPLOAD_ANSWER_TIMEOUT)
        try:
            with self._http.stream("GET", f"/api/v1{path}", timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    try:
                        error = response.json()["error"]
                        code, message = error["code"], error["message"]
                    except (ValueError, KeyError, TypeError):
                        code, message = "http_error", f"HTTP {response.status_code} from {self.url}"
                    raise PortalClientError(response.status_code, code, message)
                expected = response.headers.get("x-case-sha256", "")
                total = int(response.headers.get("content-length") or 0)
                digest = hashlib.sha256()
                received = 0
                for chunk in response.iter_bytes(UPLOAD_CHUNK_SIZE):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if progress is not None:
                        progress(received, total)
        except httpx.TransportError as exc:
            # a portal that finds a damaged case mid-stream cuts the answer off
            raise PortalClientError(
                0,
                "download_failed",
                f"The download from {self.url} broke off ({exc}); nothing was kept. The "
                "stored case may be damaged, or the connection failed: try again.",
            ) from exc
        if expected and digest.hexdigest() != expected:
            raise PortalClientError(
                0,
                "download_failed",
                "The downloaded content does not match the case's SHA-256; nothing was kept.",
            )

    # -- jobs ----------------------------------------------------------------------------

    def submit(
        self,
        app: str,
        procedure: str,
        *,
        input: str | os.PathLike[str] | None = None,
        input_case_id: int | None = None,
        version: str | None = None,
        arguments: dict[str, Any] | None = None,
        priority: int = 0,
        time_limit_s: int | None = None,
        start_at: datetime | str | None = None,
        hook_url: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Submit a job: run ``procedure`` of ``app``'s latest release (or ``version``).

        ``input`` is a file, uploaded first as an input case of the app (``progress``
        follows that upload); ``input_case_id`` names a case uploaded before (give at
        most one). ``arguments`` (a JSON object) reach the procedure as a file.
        ``start_at`` (with a time zone) holds the job as ``scheduled`` until then;
        ``hook_url`` receives a signed POST on every change of state. Returns the job;
        its ``id`` is what the other job methods take.

        Raises:
            ValueError: both ``input`` and ``input_case_id`` were given.
            PortalClientError: refused (unknown app, release or procedure, no run right,
                a value outside the portal's rules, an unreadable input file) or
                unreachable. An input uploaded for a job the portal refused is deleted.
        """
        if input is not None and input_case_id is not None:
            raise ValueError("Give input or input_case_id, not both.")
        uploaded: int | None = None
        if input is not None:
            case = self.upload_case(input, app=app, kind="input", progress=progress)
            uploaded = input_case_id = int(case["id"])

        body: dict[str, Any] = {"app": app, "procedure": procedure, "priority": priority}
        optional = {
            "version": version,
            "input_case_id": input_case_id,
            "arguments": arguments,
            "time_limit_s": time_limit_s,
            "start_at": start_at.isoformat() if isinstance(start_at, datetime) else start_at,
            "hook_url": hook_url,
        }
        body.update({name: value for name, value in optional.items() if value is not None})
        try:
            return self.request("POST", "/jobs", json=body)  # type: ignore[no-any-return]
        except PortalClientError as exc:
            # only a refusal proves there is no job; after a lost answer there may be one
            # that needs its input
            if uploaded is not None and exc.status:
                with contextlib.suppress(PortalClientError):
                    self.delete_case(uploaded)
            raise

    def get_job(self, job_id: int) -> dict[str, Any]:
        """One job of yours (any job, for admins)."""
        return self.request("GET", f"/jobs/{int(job_id)}")  # type: ignore[no-any-return]

    def list_jobs(
        self, *, state: str | None = None, app: str | None = None, all_users: bool = False
    ) -> list[dict[str, Any]]:
        """Your jobs, newest first (every user's with ``all_users``, for admins).

        ``state`` is one job state, or ``active`` (not finished) or ``finished``.
        """
        params: dict[str, Any] = {"all": all_users}
        if state is not None:
            params["state"] = state
        if app is not None:
            params["app"] = app
        return self._all("/jobs", params=params)

    def cancel_job(self, job_id: int) -> dict[str, Any]:
        """Cancel a job; the job after the request.

        A waiting job is ``cancelled`` at once; a running one keeps its state, with
        ``cancel_requested`` set, until its session has stopped it (about a second).

        Raises:
            PortalClientError: ``job_finished`` (a 409) when it has finished already.
        """
        return self.request("POST", f"/jobs/{int(job_id)}/cancel")  # type: ignore[no-any-return]

    def delete_job(self, job_id: int) -> None:
        """Delete a finished job with its log and its cases.

        Raises:
            PortalClientError: ``job_active`` (a 409) when it has not finished.
        """
        self.request("DELETE", f"/jobs/{int(job_id)}")

    def delete_jobs(
        self,
        ids: list[int] | None = None,
        *,
        state: str | None = None,
        app: str | None = None,
        all_users: bool = False,
    ) -> int:
        """Delete finished jobs in bulk; how many went. Jobs still going are left alone.

        ``ids`` picks jobs; without it every finished job of yours matching ``state`` and
        ``app`` goes (with no filter at all: every finished job of yours; with
        ``all_users``, an admin's call: everyone's).
        """
        body: dict[str, Any] = {"all": all_users}
        if ids is not None:
            body["ids"] = [int(i) for i in ids]
        if state is not None:
            body["state"] = state
        if app is not None:
            body["app"] = app
        return int(self.request("POST", "/jobs/delete", json=body)["deleted"])

    def wait(
        self, job_id: int, *, timeout: float | None = None, poll: float = 0.5
    ) -> dict[str, Any]:
        """Wait until the job has finished; the job then, whatever its outcome.

        The job is asked for every ``poll`` seconds at first, then a little less often
        each time, up to every :data:`MAX_POLL_INTERVAL` seconds, so that a long job
        costs the portal little. Without ``timeout`` this waits as long as it takes.

        Raises:
            PortalClientError: ``timeout`` seconds passed first (code ``timeout``; the
                job goes on), no such job (``not_found``), or the portal is unreachable.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = poll
        while True:
            job = self.get_job(job_id)
            if job["state"] in FINISHED_STATES:
                return job
            pause = interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PortalClientError(
                        0,
                        "timeout",
                        f"Job {job['id']} has not finished within {timeout:g} s: it is "
                        f"{job['state']} (it goes on; wait again or cancel it).",
                    )
                pause = min(pause, left)
            time.sleep(pause)
            interval = _slower(interval, poll)

    @overload
    def result(
        self, job_id: int, dest: None = None, *, progress: Progress | None = None
    ) -> bytes: ...

    @overload
    def result(
        self, job_id: int, dest: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> Path: ...

    def result(
        self,
        job_id: int,
        dest: str | os.PathLike[str] | None = None,
        *,
        progress: Progress | None = None,
    ) -> Path | bytes:
        """The output case of a job that succeeded: written to ``dest``, or as bytes.

        With ``dest`` the content is downloaded as :meth:`download_case` does (checked,
        whole or not at all, replacing any file; into a folder under the case's name)
        and the file's path is returned. Without it the content is returned as bytes,
        up to :data:`RESULT_BYTES_LIMIT`; a larger output needs ``dest``. This does not
        wait for the job: call :meth:`wait` first.

        Raises:
            JobFailedError: the job failed, was cancelled or timed out (its state and
                reason are in the message).
            PortalClientError: the job has not finished (``not_finished``), it succeeded
                without writing an output (``no_output``), the output is too large to
                return as bytes (``too_large``), or as :meth:`download_case`.
        """
        job = self.get_job(job_id)
        if job["state"] not in FINISHED_STATES:
            raise PortalClientError(
                0,
                "not_finished",
                f"Job {job['id']} is {job['state']}: it has no result yet (wait for it).",
            )
        if job["state"] != "succeeded":
            raise JobFailedError(job)
        case_id = job["output_case_id"]
        if case_id is None:
            raise PortalClientError(
                0, "no_output", f"Job {job['id']} succeeded but wrote no output case."
            )

        if dest is not None:
            path = Path(dest)
            if path.is_dir():
                name = Path(str(self.get_case(case_id)["name"])).name
                path = path / (name if name not in ("", ".", "..") else f"job-{job['id']}")
            return self.download_case(case_id, path, progress=progress)
        size = int(self.get_case(case_id)["size"])
        if size > RESULT_BYTES_LIMIT:
            raise PortalClientError(
                0,
                "too_large",
                f"The output of job {job['id']} takes {size:,} bytes, more than "
                f"{RESULT_BYTES_LIMIT:,} returned as bytes: give a file to write it to.",
            )
        buffer = io.BytesIO()
        self._download(f"/cases/{int(case_id)}/content", buffer, progress)
        return buffer.getvalue()

    def logs(
        self, job_id: int, *, follow: bool = False, poll: float = 0.5
    ) -> Iterator[dict[str, Any]]:
        """The job's log chunks, oldest first: ``{id, attempt, stream, text, at}``.

        ``stream`` is ``stdout`` or ``stderr`` of the procedure, or ``portal`` for the
        portal's own notes (a retry, a cancel). Without ``follow`` this yields what has
        been written so far; with it, it keeps asking for newer chunks (polling as
        :meth:`wait` does) until the job has finished and its last chunks were read.

        Raises:
            PortalClientError: no such job (``not_found``), or the portal is unreachable.
        """
        after = 0
        finished_before = False
        interval = poll
        while True:
            page = self.request(
                "GET", f"/jobs/{int(job_id)}/log", params={"after": after, "limit": LOG_PAGE}
            )
            chunks = page["chunks"]
            yield from chunks
            if chunks:
                after = int(chunks[-1]["id"])
                interval = poll
            if len(chunks) >= LOG_PAGE:
                continue  # more are waiting
            if not follow or finished_before:
                return
            if page["finished"]:
                # the portal reads the chunks before the state: ask once more, so lines
                # written just before the job finished are not lost
                finished_before = True
                continue
            time.sleep(interval)
            interval = _slower(interval, poll)

    # -- helpers -------------------------------------------------------------------------

    def _upload(
        self,
        path: str,
        file: str | os.PathLike[str],
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """POST the file at ``file`` as the raw request body, streamed, with its length.

        Raises:
            PortalClientError: the file cannot be read (code ``unreadable``), or the
                portal refused the upload or could not be reached.
        """
        try:
            stream = open(file, "rb")  # noqa: SIM115 (closed below, after the request)
        except OSError as exc:
            raise PortalClientError(
                0, "unreadable", f"Cannot read {file}: {exc.strerror or exc}."
            ) from exc
        with stream:
            size = os.fstat(stream.fileno()).st_size
            headers = {
                **(headers or {}),
                "Content-Type": "application/octet-stream",
                # the length is known, so the body is not sent chunked: the portal can
                # refuse an oversized upload before reading it
                "Content-Length": str(size),
            }
            timeout = httpx.Timeout(DEFAULT_TIMEOUT, read=UPLOAD_ANSWER_TIMEOUT)
            return self.request(  # type: ignore[no-any-return]
                "POST",
                path,
                content=_chunks(stream, size, progress),
                headers=headers,
                params=params,
                timeout=timeout,
            )

    def _all(self, path: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every item of a paginated list."""
        items: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self.request(
                "GET", path, params={**(params or {}), "limit": 200, "offset": offset}
            )
            items.extend(page["items"])
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return items


def _slower(interval: float, poll: float) -> float:
    """The next pause between polls: a little longer, up to MAX_POLL_INTERVAL (or ``poll``
    if that is longer)."""
    return max(poll, min(interval * POLL_GROWTH, MAX_POLL_INTERVAL))


def _segment(value: str) -> str:
    """``value`` as one path segment: a name cannot reach another route."""
    return quote(value, safe="")


def _chunks(stream: BinaryIO, size: int, progress: Progress | None) -> Iterator[bytes]:
    """The rest of ``stream`` in chunks of :data:`UPLOAD_CHUNK_SIZE`, reporting progress.

    httpx asks for the next chunk only when the last one is sent, so only one chunk at
    a time is in memory.
    """
    sent = 0
    while chunk := stream.read(UPLOAD_CHUNK_SIZE):
        sent += len(chunk)
        yield chunk
        if progress is not None:
            progress(sent, size)
