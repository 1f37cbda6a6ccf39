"""The runner's HTTP client of the portal's REST API (standard library only).

The runner starts in every session, so it stays light: ``http.client``, one keep-alive
connection per thread, JSON in and out, and streamed downloads and uploads that never
hold an object whole. A portal that cannot be reached (restarting, say) is retried with
a growing pause for up to :data:`RETRY_SECONDS`; an answer with an error status raises
:class:`PortalAPIError` at once, with the portal's code.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode, urlsplit

logger = logging.getLogger(__name__)

API = "/api/v1"
#: How long a call keeps trying to reach a portal that does not answer.
RETRY_SECONDS = 60.0
CHUNK = 1024 * 1024


class PortalAPIError(Exception):
    """The portal answered with an error (``status`` >= 400) or could not be reached (0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


class PortalAPI:
    """Calls ``/api/v1/...`` of one portal with a session token."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 60.0,
        stop: threading.Event | None = None,
    ) -> None:
        """``stop``, once set, ends any waiting for an unreachable portal at once (the
        session is ending: no call is worth a minute of retries then)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) portal address: {url!r}")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "User-Agent": "aimms-portal-runner"}
        self._timeout = timeout
        self._stop = stop
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = (
                http.client.HTTPSConnection
                if self._scheme == "https"
                else http.client.HTTPConnection
            )
            conn = cls(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _path(self, path: str, params: dict[str, Any] | None) -> str:
        query = f"?{urlencode(params)}" if params else ""
        return f"{self._prefix}{API}{path}{query}"

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        retry: bool = True,
    ) -> http.client.HTTPResponse:
        """Send one request, retrying while the portal cannot be reached."""
        deadline = time.monotonic() + RETRY_SECONDS
        pause = 0.2
        fresh = False
        while True:
            # a kept-alive connection the server has closed meanwhile fails at once:
            # the first retry is on a new connection, without a pause
            fresh = fresh or getattr(self._local, "conn", None) is None
            conn = self._connection()
            try:
                if timeout is not None:
                    conn.timeout = timeout
                    if conn.sock is not None:
                        conn.sock.settimeout(timeout)
                conn.request(method, path, body=body, headers={**self._headers, **(headers or {})})
                response = conn.getresponse()
                if timeout is not None:
                    conn.timeout = self._timeout
                return response
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                seekable = body is None or isinstance(body, bytes)
                if seekable and not fresh:
                    fresh = True
                    continue
                stopping = self._stop is not None and self._stop.is_set()
                if not retry or not seekable or stopping or time.monotonic() > deadline:
                    raise PortalAPIError(
                        0, "unreachable", f"cannot reach the portal: {exc}"
                    ) from exc
                logger.warning("portal not reachable (%s); trying again", type(exc).__name__)
                if self._stop is not None:
                    self._stop.wait(pause)
                else:
                    time.sleep(pause)
                pause = min(pause * 2, 5.0)

    @staticmethod
    def _error(response: http.client.HTTPResponse) -> PortalAPIError:
        raw = response.read(64 * 1024)
        try:
            error = json.loads(raw)["error"]
            return PortalAPIError(response.status, str(error["code"]), str(error["message"]))
        except (ValueError, KeyError, TypeError):
            return PortalAPIError(response.status, "http_error", f"HTTP {response.status}")

    def call(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        """One JSON call; returns the status and the decoded body (``None`` if empty).

        Raises:
            PortalAPIError: an error status, or the portal stayed unreachable.
        """
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        response = self._send(
            method, self._path(path, params), body=body, headers=headers, timeout=timeout
        )
        if response.status >= 400:
            raise self._error(response)
        raw = response.read()
        return response.status, (json.loads(raw) if raw else None)

    def download(
        self, path: str, dest: Path, *, params: dict[str, Any] | None = None
    ) -> tuple[str, int]:
        """Stream a GET into ``dest`` (written to a temporary file first); its SHA-256
        and size.

        Raises:
            PortalAPIError: an error status, unreachable, or the answer was cut short.
        """
        response = self._send("GET", self._path(path, params))
        if response.status >= 400:
            raise self._error(response)
        expected = response.getheader("Content-Length")
        digest = hashlib.sha256()
        size = 0
        partial = dest.with_name(f".{dest.name}.part")
        try:
            with open(partial, "wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            if expected is not None and int(expected) != size:
                raise PortalAPIError(0, "short_read", f"got {size} of {expected} bytes")
            os.replace(partial, dest)
        except BaseException:
            partial.unlink(missing_ok=True)
            self._drop_connection()
            raise
        return digest.hexdigest(), size

    def upload(self, path: str, source: Path, *, params: dict[str, Any] | None = None) -> Any:
        """Stream the file ``source`` as a PUT body; the decoded answer.

        Raises:
            PortalAPIError: an error status, or unreachable (an upload is not retried
                once it has begun).
        """
        size = source.stat().st_size
        with open(source, "rb") as stream:
            response = self._send(
                "PUT",
                self._path(path, params),
                body=_FileBody(stream),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                retry=False,
            )
        if response.status >= 400:
            raise self._error(response)
        raw = response.read()
        return json.loads(raw) if raw else None


class _FileBody:
    """A file as an iterable of chunks, so http.client streams it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def __iter__(self) -> Any:
        while chunk := self._stream.read(CHUNK):
            yield chunk
