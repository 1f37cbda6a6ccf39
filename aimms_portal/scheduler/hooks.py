"""Delivery of state hooks: a signed POST to a job's hook URL on every state change.

The state change writes a :class:`~aimms_portal.models.HookDelivery` row in its own unit
of work (an outbox), so a hook is never lost to a crash; the leader sends what is due,
oldest first, and retries failures with a growing pause (at least once, in order of
the changes as long as the receiver answers).

Every POST carries ``X-Aimms-Portal-Signature: sha256=<hex HMAC-SHA256 of the body>``,
keyed with the job's hook secret (shown to the job's owner), and
``X-Aimms-Portal-Delivery: <delivery id>`` so a receiver can drop repeats.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import timedelta

import httpx
from sqlmodel import col, select

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
        error = _post(client, item)
        with session_scope() as session:
            row = session.get(HookDelivery, item.id)
            if row is None:  # the job was deleted meanwhile
                continue
            row.tries += 1
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


def _post(client: httpx.Client, item: HookDelivery) -> str | None:
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature(item.job_id, item.body),
        DELIVERY_HEADER: str(item.id),
        "User-Agent": "aimms-portal-hooks",
    }
    try:
        response = client.post(item.url, content=item.body.encode(), headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.is_success:
        return None
    return f"HTTP {response.status_code}"


def make_client() -> httpx.Client:
    # no redirects: a hook URL is checked when the job is submitted, a redirect is not
    return httpx.Client(timeout=TIMEOUT, follow_redirects=False, trust_env=False)
