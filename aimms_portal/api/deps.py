"""Dependencies shared by the REST routes: who is calling, and with which rights.

A caller proves who they are with ``Authorization: Bearer <token>`` or with the
browser log-on cookie. Cookie callers must send the CSRF token in ``X-CSRF-Token`` on
every state-changing request, because browsers attach cookies to cross-site requests.
A token caller's rights are cut down to the token's scopes: ``read`` for safe
methods, ``write`` for the others, ``admin`` to act as an admin.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Annotated, Any

from fastapi import Depends, Query, Request

from aimms_portal.aio import run_blocking
from aimms_portal.auth import tokens
from aimms_portal.config import get_settings
from aimms_portal.db import session_scope
from aimms_portal.errors import NotAuthenticated, PermissionDenied
from aimms_portal.scheduler.lifecycle import SESSION_TOKEN_PREFIX
from aimms_portal.services import auth, runner_ops
from aimms_portal.services.auth import Caller
from aimms_portal.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

SESSION_COOKIE = "aimms_portal_session"
CSRF_COOKIE = "aimms_portal_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def client_ip(request: Request) -> str:
    """The address the request came from, for the audit log and the log-on limits.

    The TCP peer's, unless the peer is one of the trusted reverse proxies: then the
    last address in ``X-Forwarded-For`` that is not a trusted proxy (the ones before it
    are the client's to write, and so proof of nothing).
    """
    peer = request.client.host if request.client else ""
    return client_address(peer, ",".join(request.headers.getlist("x-forwarded-for")))


def client_address(peer: str, forwarded: str) -> str:
    """:func:`client_ip` from the TCP peer and the ``X-Forwarded-For`` header's value."""
    trusted = get_settings().trusted_proxy_networks
    if not trusted or not _within(peer, trusted):
        return peer
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        try:
            ip = ip_address(hop)
        except ValueError:  # not an address: the proxy did not write that
            return peer
        if not _within(ip, trusted):
            return str(ip)
    return peer


def _within(address: str | IPv4Address | IPv6Address, networks: tuple[Any, ...]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:  # not an address (e.g. a test client's name)
        return False
    return any(ip in network for network in networks)


def csrf_token(session_secret: str) -> str:
    """The CSRF token of the browser log-on ``session_secret``."""
    return tokens.csrf_token_for(session_secret, get_settings().secret_key.get_secret_value())


def _authorization(request: Request) -> str | None:
    # straight from the ASGI scope: building Starlette's Headers cost more than the rest
    # of a cached log-on check
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None


def _bearer(request: Request) -> str | None:
    header = _authorization(request)
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise NotAuthenticated(
            "Send the token as 'Authorization: Bearer <token>'.", code="invalid_token"
        )
    return value.strip()


#: What an app session's token may reach besides the runner's own routes: the calls an
#: app makes to hand solves over (jobs, cases) and to find its way (apps, me).
SESSION_TOKEN_ROUTES = ("/api/v1/jobs", "/api/v1/cases", "/api/v1/apps", "/api/v1/me")


def _caller_from_session_token(request: Request, token: str) -> Caller:
    path = request.url.path
    if not any(path == p or path.startswith(p + "/") for p in SESSION_TOKEN_ROUTES):
        raise PermissionDenied(
            "An app session's token may only be used for jobs, cases and apps.",
            code="session_token_scope",
        )
    with session_scope() as session:
        runner = runner_ops.session_from_token(session, token)
    caller = Caller(
        user=runner.owner, scopes=frozenset({"read", "write"}), app_session_id=runner.app_session.id
    )
    # an admin's app acts with an admin's rights only where a publisher has them
    return Caller(
        user=auth.effective_user(caller), scopes=caller.scopes, app_session_id=caller.app_session_id
    )


def get_runner(request: Request) -> runner_ops.RunnerSession:
    """The app session whose runner calls, from its session token; or 401."""
    token = _bearer(request)
    if token is None or not token.startswith(SESSION_TOKEN_PREFIX):
        raise NotAuthenticated(
            "Send the session's token as 'Authorization: Bearer <token>'.",
            code="not_authenticated",
        )
    with session_scope() as session:
        return runner_ops.session_from_token(session, token)


RunnerDep = Annotated[runner_ops.RunnerSession, Depends(get_runner)]


def _caller_from_database(token: str | None, session_secret: str | None) -> Caller:
    with session_scope() as session:
        if token is not None:
            return auth.caller_from_token(session, token, cache=False)
        assert session_secret is not None
        return auth.caller_from_session(session, session_secret, cache=False)


async def get_caller(request: Request) -> Caller:
    """The authenticated caller, or 401; checks CSRF and token scopes on the way.

    Asynchronous so that a caller found in the cache costs no hop to a worker thread;
    otherwise one hop reads the database.
    """
    token = _bearer(request)
    if token is not None and token.startswith(SESSION_TOKEN_PREFIX):
        return await run_blocking(_caller_from_session_token, request, token)
    secret = None
    if token is None:
        secret = request.cookies.get(SESSION_COOKIE)
        if not secret:
            raise NotAuthenticated("Log on, or send an API token.", code="not_authenticated")
    caller = auth.cached_caller(token=token, session_secret=secret)
    if caller is None:
        caller = await run_blocking(_caller_from_database, token, secret)

    unsafe = request.scope["method"] not in SAFE_METHODS
    if caller.session_secret is not None and unsafe:
        sent = request.headers.get(CSRF_HEADER, "")
        if not tokens.same_secret(sent, csrf_token(caller.session_secret)):
            raise PermissionDenied(
                f"Missing or wrong {CSRF_HEADER} header for a cookie-authenticated request.",
                code="csrf_failed",
            )
    if caller.scopes is not None:
        needed = "write" if unsafe else "read"
        if needed not in caller.scopes:
            raise PermissionDenied(
                f"This API token lacks the {needed!r} scope.", code="insufficient_scope"
            )
    user = auth.effective_user(caller)
    if user is caller.user:
        return caller
    return Caller(
        user=user,
        scopes=caller.scopes,
        token_id=caller.token_id,
        session_secret=caller.session_secret,
    )


CallerDep = Annotated[Caller, Depends(get_caller)]


class PageParams:
    """``limit`` and ``offset`` query parameters of every list route."""

    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> None:
        self.limit = limit
        self.offset = offset


PageDep = Annotated[PageParams, Depends()]
