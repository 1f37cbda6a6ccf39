"""Python client of the portal's REST API, used by the CLI and by scripts.

>>> client = PortalClient("https://portal.example", token="apt_...")
>>> client.me()["username"]

Errors from the portal arrive as :class:`PortalClientError` with the portal's code and
message; a portal that cannot be reached gives code ``unreachable``, an address that is
not http(s) gives ``invalid_url``, and an answer that is not the portal's JSON gives
``unexpected_response``.
"""

from __future__ import annotations

import contextlib
import platform
from typing import Any

import httpx

DEFAULT_TIMEOUT = 30.0


class PortalClientError(Exception):
    """The portal refused a request, or could not be reached."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({self.code})" if self.status else self.message


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
