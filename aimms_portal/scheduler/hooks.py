"""Delivery of state hooks: a signed POST to a job's hook URL on every state change.

The state change writes a :class:`~aimms_portal.models.HookDelivery` row in its own unit
of work (an outbox), so a hook is never lost to a crash; the leader sends what is due,
oldest first, and retries failures with a growing pause (at least once, in order of
the changes as long as the receiver answers).

Every POST carries ``X-Aimms-Portal-Signature: sha256=<hex HMAC-SHA256 of the body>``,
keyed with the job's hook secret (shown to the job's owner), and
``X-Aimms-Portal-Delivery: <delivery id>`` so a receiver can drop repeats.

Unless ``hook_private_addresses`` allows it, a hook goes only to public addresses: the
host name is resolved when the connection is made and the address checked is the one
connected to, so a name that points elsewhere on a second look (DNS rebinding) gains
nothing. A refused address is final: that delivery is not tried again.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import httpcore
import httpx
from sqlmodel import col, select

from aimms_portal.config import get_settings
from aimms_portal.db import session_scope
from aimms_portal.models import HookDelivery, utcnow
from aimms_portal.scheduler.lifecycle import hook_secret

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Aimms-Portal-Signature"
DELIVERY_HEADER = "X-Aimms-Portal-Delivery"
#: Attempts per delivery before it is given up (the last error stays on the row).
MAX_TRIES = 8
BATCH = 20
TIMEOUT = 5.0


def signature(job_id: int, body: str) -> str:
    """The signature header's value for ``body`` of a hook of job ``job_id``."""
    digest = hmac.new(hook_secret(job_id).encode(), body.encode(), hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def deliver_due(client: httpx.Client) -> int:
    """Send the hooks that are due; returns how many were delivered."""
    now = utcnow()
    with session_scope() as session:
        due = list(
            session.exec(
                select(HookDelivery)
                .where(
                    col(HookDelivery.delivered_at).is_(None),
                    HookDelivery.tries < MAX_TRIES,
                    col(HookDelivery.next_try_at) <= now,
                )
                .order_by(col(HookDelivery.id))
                .limit(BATCH)
            ).all()
        )
    delivered = 0
    failed_jobs: set[int] = set()
    for item in due:
        if item.job_id in failed_jobs:
            continue  # keep one job's hooks in order: retry the first failure first
        error, final = _post(client, item)
        with session_scope() as session:
            row = session.get(HookDelivery, item.id)
            if row is None:  # the job was deleted meanwhile
                continue
            row.tries = MAX_TRIES if final else row.tries + 1
            if error is None:
                row.delivered_at = utcnow()
                delivered += 1
            else:
                failed_jobs.add(item.job_id)
                row.last_error = error[:500]
                row.next_try_at = utcnow() + timedelta(seconds=min(2**row.tries, 300))
                logger.info(
                    "hook %s of job %s failed (try %d): %s", row.id, row.job_id, row.tries, error
                )
            session.add(row)
    return delivered


def _post(client: httpx.Client, item: HookDelivery) -> tuple[str | None, bool]:
    """Send one delivery: the error (None when delivered), and whether it is final."""
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature(item.job_id, item.body),
        DELIVERY_HEADER: str(item.id),
        "User-Agent": "aimms-portal-hooks",
    }
    try:
        response = client.post(item.url, content=item.body.encode(), headers=headers)
    except NotPublic as exc:
        return str(exc), True
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}", False
    if response.is_success:
        return None, False
    return f"HTTP {response.status_code}", False


def public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether hooks may reach ``address`` when private addresses are refused."""
    return address.is_global


class NotPublic(httpx.ConnectError):
    """The hook's host resolves to an address hooks may not reach."""


class _PublicOnly(httpcore.SyncBackend):
    """Connects only to public addresses: resolves the host itself, checks every
    address it gets, and connects to one of those (TLS still checks the host name)."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"{host}: {exc}") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in found]
        for address in addresses:
            if not public(address):
                raise NotPublic(
                    f"refused: {host} resolves to {address}, which is not a public address "
                    "(AIMMS_PORTAL_HOOK_PRIVATE_ADDRESSES)"
                )
        failure = httpcore.ConnectError(f"{host}: no address")
        for address in addresses:  # in the resolver's order, as a plain connect would
            try:
                return super().connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure


class _HookTransport(httpx.BaseTransport):
    """Small requests through a connection pool that reaches public addresses only."""

    def __init__(self) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=_PublicOnly()
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            answer = self._pool.request(
                request.method,
                str(request.url),
                headers=request.headers.raw,
                content=request.read(),
                extensions={"timeout": request.extensions.get("timeout", {})},
            )
        except NotPublic:
            raise
        except httpcore.TimeoutException as exc:
            raise httpx.TimeoutException(str(exc), request=request) from exc
        except httpcore.NetworkError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except httpcore.ProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        return httpx.Response(answer.status, headers=answer.headers, content=answer.content)

    def close(self) -> None:
        self._pool.close()


def make_client() -> httpx.Client:
    """The client hooks are sent with (public addresses only, unless the settings allow
    others)."""
    # no redirects: a hook URL is checked when the job is submitted, a redirect is not
    transport = None if get_settings().hooks_may_reach_private_addresses else _HookTransport()
    return httpx.Client(
        timeout=TIMEOUT, follow_redirects=False, trust_env=False, transport=transport
    )
