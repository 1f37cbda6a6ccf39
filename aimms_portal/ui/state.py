"""The signed-on user of a browser tab, checked on the server for every page and event.

The log-on cookie is HttpOnly: the browser sends it with the socket's opening request
and Reflex keeps those headers on the server (it never sends the cookie back to the
page). Each page load and each event re-checks the cookie against the database, so a
log-off, an ended session or a disabled account takes effect at the next click.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import reflex as rx

from aimms_portal.api.deps import SESSION_COOKIE
from aimms_portal.db import session_scope
from aimms_portal.errors import NotAuthenticated, PortalError
from aimms_portal.models import User
from aimms_portal.services import auth

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Events that fill a page once its guard has confirmed who is signed on, by route.
#: Filled when the app is built; never changed while it runs.
PAGE_LOADERS: dict[str, list[Any]] = {}


def _run_in_session(fn: Callable[..., T], kwargs: dict[str, Any]) -> T:
    with session_scope() as session:
        return fn(session, **kwargs)


async def call_service(fn: Callable[..., T], /, **kwargs: Any) -> T:
    """Run a service function in its own unit of work, off the event loop."""
    return await asyncio.to_thread(_run_in_session, fn, kwargs)


class SessionState(rx.State):
    """Who is signed on in this tab; filled by :meth:`check_login` on every page load."""

    user_id: int = 0
    username: str = ""
    full_name: str = ""
    role: str = ""

    @rx.var
    def signed_on(self) -> bool:
        return self.user_id > 0

    @rx.var
    def is_admin(self) -> bool:
        return self.role == "admin"

    @rx.var
    def is_publisher(self) -> bool:
        return self.role in ("admin", "publisher")

    async def current_user(self) -> User:
        """The signed-on user, checked against the database now.

        Raises:
            NotAuthenticated: no cookie, or its log-on ended or was revoked.
        """
        return await _user_of_tab(self)

    def _forget(self) -> None:
        self.user_id, self.username, self.full_name, self.role = 0, "", "", ""

    async def _confirm(self) -> Any:
        """Fill in the signed-on user; an event to send the browser away if there is none."""
        try:
            user = await self.current_user()
        except NotAuthenticated:
            self._forget()
            return rx.redirect(f"/login?next={quote(self.router.url.path or '/')}")
        except PortalError as exc:
            self._forget()
            return rx.toast.error(exc.message)
        self.user_id = user.id or 0
        self.username = user.username
        self.full_name = user.full_name
        self.role = user.role
        return None

    def _page_loaders(self) -> list[Any]:
        route = (self.router.route_id or "").strip("/")
        # Reflex names the start page's route "index"
        return PAGE_LOADERS.get("/" + ("" if route == "index" else route), [])

    @rx.event
    async def check_login(self) -> Any:
        """Page guard: send the browser to log on, or load the page's data."""
        return await self._confirm() or self._page_loaders()

    @rx.event
    async def check_admin(self) -> Any:
        """Page guard for admin pages: others go back to the start page."""
        away = await self._confirm()
        if away is not None:
            return away
        if self.role != "admin":
            return [rx.redirect("/"), rx.toast.error("That page is for admins.")]
        return self._page_loaders()

    @rx.event
    async def check_publisher(self) -> Any:
        """Page guard for publishers' pages (admins too): others go back to the start page."""
        away = await self._confirm()
        if away is not None:
            return away
        if self.role not in ("admin", "publisher"):
            return [rx.redirect("/"), rx.toast.error("That page is for publishers.")]
        return self._page_loaders()


def _session_secret(raw_cookie: str) -> str | None:
    cookie: SimpleCookie = SimpleCookie()
    try:
        cookie.load(raw_cookie)
    except Exception:  # a malformed Cookie header is the client's problem
        return None
    morsel = cookie.get(SESSION_COOKIE)
    return morsel.value if morsel else None


async def _user_of_tab(state: rx.State) -> User:
    # the router belongs to the tab's root state: any state (or background proxy) reads it
    secret = _session_secret(state.router.headers.cookie or "")
    if not secret:
        raise NotAuthenticated("Please log on.")
    caller = await call_service(auth.caller_from_session, session_secret=secret)
    return caller.user


async def background_actor(state: rx.State) -> User:
    """The signed-on user behind a background event, checked against the database now.

    Background handlers must not hold their state's lock during a database call, and
    :func:`actor_of` needs it (``get_state``); this reads the tab's log-on cookie
    without it.
    """
    return await _user_of_tab(state)


def path_segments(state: rx.State) -> list[str]:
    """The decoded segments of the tab's current URL path, e.g. ``["apps", "demo"]``."""
    return [unquote(part) for part in (state.router.url.path or "").split("/") if part]


async def actor_of(state: rx.State) -> User:
    """The signed-on user behind an event of any state (checked on the server)."""
    session = await state.get_state(SessionState)
    return await session.current_user()


def failure(exc: PortalError) -> Any:
    """What the UI does with a service error: a toast, or back to log-on."""
    if isinstance(exc, NotAuthenticated):
        return rx.redirect("/login")
    return rx.toast.error(exc.message)


async def call_as_user(state: rx.State, fn: Callable[..., T], /, **kwargs: Any) -> T:
    """Run a service function on behalf of the signed-on user of ``state``'s tab.

    The user is looked up from the log-on cookie again for this one call, so rights
    are always those of now; the service itself checks them. Services that audit get
    the browser's address as ``source_ip``.
    """
    actor = await actor_of(state)
    if "source_ip" in inspect.signature(fn).parameters:
        kwargs.setdefault("source_ip", state.router.session.client_ip or "")
    return await call_service(fn, actor=actor, **kwargs)


def when(moment: Any) -> str:
    """A timestamp for tables: ``2026-12-03 18:42`` (UTC), or an empty string."""
    return moment.strftime("%Y-%m-%d %H:%M") if moment else ""
