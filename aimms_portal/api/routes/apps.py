"""Apps: publish bundles (streamed), the catalogue, releases, latest, access rights."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from sqlmodel import Session

from aimms_portal.api import API_PREFIX
from aimms_portal.api.deps import CallerDep, client_ip
from aimms_portal.api.schemas import (
    AppPublic,
    GrantCreate,
    GrantPublic,
    LatestSet,
    LaunchTarget,
    ReleasePublic,
    ReleaseUpdate,
    RightExplained,
    RightsExplained,
    RightsOut,
)
from aimms_portal.api.uploads import with_request_body
from aimms_portal.db import session_scope
from aimms_portal.models import App, Release, RuntimeVersion
from aimms_portal.services import app_access, apps

router = APIRouter(prefix=f"{API_PREFIX}/apps", tags=["apps"])

#: Icons are publisher-supplied: never let a browser run or sniff them.
ICON_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, max-age=300",
}


def _app_public(view: apps.AppView) -> AppPublic:
    app, latest = view.app, view.latest
    return AppPublic(
        name=app.name,
        title=app.title or app.name,
        description=app.description,
        category=app.category,
        icon_url=f"{API_PREFIX}/apps/{app.name}/icon" if latest and latest.icon_key else None,
        latest_version=latest.version if latest else None,
        rights=RightsOut(**{r: d.allowed for r, d in view.rights.items()}),
    )


def _release_public(app: App, release: Release, runtime: str) -> ReleasePublic:
    manifest = json.loads(release.manifest)
    return ReleasePublic(
        version=release.version,
        latest=release.id == app.latest_release_id,
        hidden=release.hidden,
        runtime=runtime,
        runtime_spec=release.runtime_spec,
        encrypted=release.encrypted,
        bundle_sha256=release.bundle_sha256,
        bundle_size=release.bundle_size,
        webui=bool(manifest.get("webui")),
        procedures=sorted(manifest.get("procedures") or {}),
        created_at=release.created_at,
        published_by=release.published_by,
    )


@router.get("", response_model=list[AppPublic])
def list_apps(
    caller: CallerDep,
    q: Annotated[str, Query(max_length=80)] = "",
    category: Annotated[str, Query(max_length=40)] = "",
) -> list[AppPublic]:
    """The catalogue: apps you may read; `q` searches, `category` filters."""
    with session_scope() as session:
        views = apps.catalogue(session, actor=caller.user, query=q, category=category)
        return [_app_public(v) for v in views]


@router.post(
    "",
    response_model=ReleasePublic,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def publish(
    request: Request, caller: CallerDep, hide_previous: bool = False
) -> ReleasePublic:
    """Publish a bundle sent as the request body; it becomes the app's latest release."""
    release = await with_request_body(
        request,
        apps.publish_bundle,
        actor=caller.user,
        hide_previous=hide_previous,
        source_ip=client_ip(request),
    )
    with session_scope() as session:
        app = session.get(App, release.app_id)
        assert app is not None
        return _release_public(app, release, _runtime_label(session, release))


def _runtime_label(session: Session, release: Release) -> str:
    runtime = session.get(RuntimeVersion, release.runtime_version_id)
    return f"{runtime.name} {runtime.version}" if runtime else "?"


@router.get("/{name}", response_model=AppPublic)
def read_app(name: str, caller: CallerDep) -> AppPublic:
    """One app you may read."""
    with session_scope() as session:
        return _app_public(apps.get_app(session, actor=caller.user, name=name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_app(name: str, caller: CallerDep, request: Request) -> None:
    """Delete an app with all its releases (write right)."""
    with session_scope() as session:
        apps.delete_app(session, actor=caller.user, name=name, source_ip=client_ip(request))


@router.get("/{name}/icon", response_class=Response)
def read_icon(name: str, caller: CallerDep) -> Response:
    """The icon of the app's latest release, served so that it cannot run scripts."""
    with session_scope() as session:
        data, content_type = apps.app_icon(session, actor=caller.user, name=name)
    return Response(data, media_type=content_type, headers=ICON_HEADERS)


@router.get("/{name}/releases", response_model=list[ReleasePublic])
def list_releases(name: str, caller: CallerDep) -> list[ReleasePublic]:
    """Releases, newest first (hidden ones only for writers)."""
    with session_scope() as session:
        view = apps.get_app(session, actor=caller.user, name=name)
        releases = apps.list_releases(session, actor=caller.user, name=name)
        return [_release_public(view.app, r, _runtime_label(session, r)) for r in releases]


@router.patch("/{name}/releases/{version}", response_model=ReleasePublic)
def update_release(
    name: str, version: str, body: ReleaseUpdate, caller: CallerDep, request: Request
) -> ReleasePublic:
    """Hide or show a release (not the latest)."""
    with session_scope() as session:
        release = apps.set_hidden(
            session,
            actor=caller.user,
            name=name,
            version=version,
            hidden=body.hidden,
            source_ip=client_ip(request),
        )
        app = session.get(App, release.app_id)
        assert app is not None
        return _release_public(app, release, _runtime_label(session, release))


@router.delete("/{name}/releases/{version}", status_code=status.HTTP_204_NO_CONTENT)
def delete_release(name: str, version: str, caller: CallerDep, request: Request) -> None:
    """Delete a release that is not the latest."""
    with session_scope() as session:
        apps.delete_release(
            session,
            actor=caller.user,
            name=name,
            version=version,
            source_ip=client_ip(request),
        )


@router.put("/{name}/latest", response_model=ReleasePublic)
def set_latest(name: str, body: LatestSet, caller: CallerDep, request: Request) -> ReleasePublic:
    """Move the latest tag to a release (roll back or forward)."""
    with session_scope() as session:
        release = apps.set_latest(
            session,
            actor=caller.user,
            name=name,
            version=body.version,
            source_ip=client_ip(request),
        )
        app = session.get(App, release.app_id)
        assert app is not None
        return _release_public(app, release, _runtime_label(session, release))


@router.get("/{name}/launch", response_model=LaunchTarget)
def resolve_launch(name: str, caller: CallerDep, version: str | None = None) -> LaunchTarget:
    """What a launch would start (run right needed); starting it comes with sessions."""
    with session_scope() as session:
        app, release = apps.resolve_launch(session, actor=caller.user, name=name, version=version)
        manifest = json.loads(release.manifest)
        return LaunchTarget(
            app=app.name,
            version=release.version,
            title=app.title or app.name,
            webui=bool(manifest.get("webui")),
            message="You may run this release. Starting sessions arrives with data sessions.",
        )


@router.get("/{name}/access", response_model=list[GrantPublic])
def list_grants(name: str, caller: CallerDep) -> list[GrantPublic]:
    """The app's grants (write right)."""
    with session_scope() as session:
        views = app_access.list_grants(session, actor=caller.user, name=name)
        return [
            GrantPublic(
                id=v.grant.id or 0,
                principal_type=v.grant.principal_type,
                principal_name=v.principal_name,
                right=v.grant.right,
                effect=v.grant.effect,
                created_by=v.grant.created_by,
            )
            for v in views
        ]


@router.post("/{name}/access", response_model=GrantPublic, status_code=status.HTTP_201_CREATED)
def set_grant(name: str, body: GrantCreate, caller: CallerDep, request: Request) -> GrantPublic:
    """Allow or deny a right to a user or group (replaces their grant for that right)."""
    with session_scope() as session:
        grant = app_access.set_grant(
            session,
            actor=caller.user,
            name=name,
            principal_type=body.principal_type,
            principal_name=body.principal_name,
            right=body.right,
            effect=body.effect,
            source_ip=client_ip(request),
        )
        return GrantPublic(
            id=grant.id or 0,
            principal_type=grant.principal_type,
            principal_name=body.principal_name.strip().lower(),
            right=grant.right,
            effect=grant.effect,
            created_by=grant.created_by,
        )


@router.delete("/{name}/access/{grant_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_grant(name: str, grant_id: int, caller: CallerDep, request: Request) -> None:
    """Remove a grant."""
    with session_scope() as session:
        app_access.delete_grant(
            session,
            actor=caller.user,
            name=name,
            grant_id=grant_id,
            source_ip=client_ip(request),
        )


@router.get("/{name}/access/effective", response_model=RightsExplained)
def explain_rights(
    name: str, caller: CallerDep, user: Annotated[str, Query(min_length=1, max_length=64)]
) -> RightsExplained:
    """The effective rights of a user on the app, and which grant decided each."""
    with session_scope() as session:
        target, decisions = app_access.explain_rights(
            session, actor=caller.user, name=name, username=user
        )
        return RightsExplained(
            app=name,
            user=target.username,
            rights={
                r: RightExplained(allowed=d.allowed, reason=d.reason, grant_id=d.grant_id)
                for r, d in decisions.items()
            },
        )
