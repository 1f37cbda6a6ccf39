"""The portal's Reflex app: the UI pages with the REST API mounted around them."""

from __future__ import annotations

import asyncio
import logging

import reflex as rx
from fastapi import FastAPI
from starlette.types import ASGIApp

from aimms_portal.api import proxy
from aimms_portal.api.app import ApiFront, create_api
from aimms_portal.config import get_settings
from aimms_portal.db import session_scope
from aimms_portal.errors import PortalError
from aimms_portal.launchers import LauncherError, get_launcher
from aimms_portal.logs import configure_logging
from aimms_portal.scheduler.service import Scheduler
from aimms_portal.services import audit, jobs
from aimms_portal.ui.pages import (
    account,
    admin_audit,
    admin_groups,
    admin_keys,
    admin_users,
    app_details,
    catalogue,
    job_details,
    launch,
    login,
    new_job,
    publish,
    runtimes,
    sessions,
    tokens,
    upcoming,
)
from aimms_portal.ui.pages import jobs as jobs_ui
from aimms_portal.ui.state import PAGE_LOADERS, SessionState

logger = logging.getLogger(__name__)

configure_logging(get_settings())

#: How often expired audit events are removed.
RETENTION_INTERVAL_SECONDS = 3600


async def enforce_retention() -> None:
    """Delete audit events past the retention period, hourly.

    Runs in every worker; the delete is idempotent, so running it twice is harmless.
    """
    while True:
        try:
            days = get_settings().retention_days
            await asyncio.to_thread(_purge, days)
        except PortalError as exc:
            logger.warning("retention: %s", exc.log_detail or exc.message)
        await asyncio.sleep(RETENTION_INTERVAL_SECONDS)


def _purge(days: int) -> None:
    with session_scope() as session:
        audit.purge_expired(session, retention_days=days)


def _purge_jobs() -> None:
    with session_scope() as session:
        jobs.purge_finished(session, retention_days=get_settings().retention_days)


async def run_scheduler() -> None:
    """This process's scheduler (leader-elected: one process of the portal dispatches).

    Stopping the portal gives the leadership up at once; running sessions go on and are
    adopted by the next leader.
    """
    try:
        launcher = get_launcher()
    except LauncherError as exc:
        # the portal still serves everything else; jobs wait until a launcher is set up
        logger.error("no scheduler in this process: %s", exc.message)
        return
    scheduler = Scheduler(launcher, get_settings(), maintenance=_purge_jobs)
    scheduler.start()
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.to_thread(scheduler.stop)


async def close_proxy_connections() -> None:
    """Keep the proxy's pooled connections to apps until the portal stops."""
    try:
        await asyncio.Event().wait()
    finally:
        await proxy.close_clients()


class PortalApp(rx.App):
    """Reflex's app with the session proxy and the REST API in front of all of Reflex's
    own layers.

    A WebUI session's every request passes the proxy (``/s/<id>/...``), and the API's
    requests are many and small; Reflex's context, CORS and mount layers would only add
    to each one's cost.
    """

    def __call__(self) -> ASGIApp:
        api = self.api_transformer
        if not isinstance(api, FastAPI):
            raise TypeError("the portal's api_transformer must be its REST API (create_api)")
        return proxy.SessionProxy(ApiFront(super().__call__(), api=api))


app = PortalApp(api_transformer=create_api())
app.register_lifespan_task(enforce_retention)
app.register_lifespan_task(run_scheduler)
app.register_lifespan_task(close_proxy_connections)

app.add_page(login.login_page, route="/login", title="Log on · aimms portal")

# every other page is guarded: the server checks the log-on (and role) on each load
_signed_on = [
    (catalogue.catalogue_page, "/", "Apps", [catalogue.CatalogueState.load]),
    (app_details.app_page, "/apps/[name]", "App", [app_details.AppState.load]),
    (launch.launch_page, "/launch/[name]", "Launch", [launch.LaunchState.load]),
    (launch.launch_version_page, "/launch/[name]/[version]", "Launch", [launch.LaunchState.load]),
    # publishers, and writers of an app who are not publishers: the service decides
    (publish.publish_page, "/publish", "Publish", []),
    (jobs_ui.jobs_page, "/jobs", "Jobs", [jobs_ui.JobsState.open]),
    (new_job.new_job_page, "/jobs/new", "New job", [new_job.NewJobState.load]),
    (job_details.job_page, "/jobs/[id]", "Job", [job_details.JobState.load]),
    (sessions.sessions_page, "/sessions", "Sessions", [sessions.SessionsState.open]),
    (tokens.tokens_page, "/tokens", "API tokens", [tokens.TokensState.load]),
    (account.account_page, "/account", "Your account", []),
]
_publisher_only = [
    (runtimes.runtimes_page, "/runtimes", "Runtimes", [runtimes.RuntimesState.load]),
]
_admin_only = [
    (upcoming.operator_page, "/operator", "Operator", []),
    (admin_users.users_page, "/admin/users", "Users", [admin_users.UsersState.load]),
    (admin_groups.groups_page, "/admin/groups", "Groups", [admin_groups.GroupsState.load]),
    (admin_keys.keys_page, "/admin/keys", "Signing keys", [admin_keys.KeysState.load]),
    (admin_audit.audit_page, "/admin/audit", "Audit log", [admin_audit.AuditState.load]),
]
for guard, pages in (
    (SessionState.check_login, _signed_on),
    (SessionState.check_publisher, _publisher_only),
    (SessionState.check_admin, _admin_only),
):
    for component, route, title, loaders in pages:
        # the guard runs the loaders only once it has confirmed the log-on and role
        PAGE_LOADERS[route] = loaders
        app.add_page(component, route=route, title=f"{title} · aimms portal", on_load=guard)

# the catalogue lives at "/", its apps under /apps/<name>: /apps itself leads there too
app.add_page(rx.fragment, route="/apps", title="Apps · aimms portal", on_load=rx.redirect("/"))
