"""Apps and releases: publish a bundle, the catalogue, releases, ``latest`` and roll back.

Who may do what on an app is decided by :func:`aimms_portal.auth.access.app_rights`
from the app's grants (see :mod:`aimms_portal.services.app_access`). An app the caller
may not read is reported as not found, so app names cannot be probed.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from packaging.version import Version
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from aimms_portal.auth.access import Action, RightDecision, allowed, app_rights, require
from aimms_portal.config import get_settings
from aimms_portal.db import session_scope
from aimms_portal.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from aimms_portal.models import App, AppGrant, AppRight, Release, RuntimeVersion, User, utcnow
from aimms_portal.packages import AppManifest, RuntimeRequirement, encryption, inspect_bundle
from aimms_portal.services import accounts, audit
from aimms_portal.services.portal_keys import private_key_for
from aimms_portal.services.uploads import Spool
from aimms_portal.storage import StoredObject, get_storage
from aimms_portal.storage.base import Readable

logger = logging.getLogger(__name__)

_ICON_SUFFIX = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/svg+xml": "svg",
}


@dataclass(frozen=True)
class AppView:
    """An app as a caller sees it: the app, its ``latest`` release and the caller's rights."""

    app: App
    latest: Release | None
    rights: dict[str, RightDecision]

    @property
    def can_write(self) -> bool:
        return self.rights[AppRight.write.value].allowed

    @property
    def can_run(self) -> bool:
        return self.rights[AppRight.run.value].allowed


# -- rights ------------------------------------------------------------------------------


def rights_on(
    session: Session, user: User, apps: Iterable[App]
) -> dict[int, dict[str, RightDecision]]:
    """The rights of ``user`` on each of ``apps``, by app id, with one query for grants.

    Write and run count only together with read (see :func:`needing_read`).
    """
    apps = list(apps)
    if not apps:
        return {}
    group_ids = [g.id for g in accounts.groups_of(session, user=user) if g.id is not None]
    grants = session.exec(
        select(AppGrant).where(col(AppGrant.app_id).in_([a.id for a in apps]))
    ).all()
    by_app: dict[int, list[AppGrant]] = {}
    for grant in grants:
        by_app.setdefault(grant.app_id, []).append(grant)
    return {
        a.id or 0: needing_read(app_rights(user, by_app.get(a.id or 0, []), group_ids))
        for a in apps
    }


def needing_read(decisions: dict[str, RightDecision]) -> dict[str, RightDecision]:
    """``decisions`` with write and run refused where read is: an app a user may not
    see does not exist for them, whatever else was granted (so it cannot be probed)."""
    read = decisions[AppRight.read.value]
    if read.allowed:
        return decisions
    return {
        right: decision
        if right == AppRight.read.value or not decision.allowed
        else RightDecision(right, False, f"no read right ({read.reason})", read.grant_id)
        for right, decision in decisions.items()
    }


def app_with_right(session: Session, actor: User, name: str, right: AppRight) -> tuple[App, dict]:
    """The app called ``name`` if ``actor`` holds ``right`` on it.

    Raises:
        NotFound: no such app, or the actor may not even read it.
        PermissionDenied: the actor may read it but lacks ``right``.
    """
    app = session.exec(select(App).where(App.name == name.strip().lower())).first()
    if app is None:
        raise NotFound(f"No app called {name[:64]!r}.")
    rights = rights_on(session, actor, [app])[app.id or 0]
    if not rights[right.value].allowed:
        if not rights[AppRight.read.value].allowed:
            raise NotFound(f"No app called {name[:64]!r}.")
        raise PermissionDenied(
            f"You need the {right.value} right on {app.name!r} for this.", code="forbidden"
        )
    return app, rights


# -- publishing --------------------------------------------------------------------------


def publish_bundle(
    *,
    actor: User,
    source: Readable | Iterable[bytes],
    hide_previous: bool = False,
    source_ip: str = "",
) -> Release:
    """Receive an app bundle, validate all of it, store it and record the release.

    The release becomes ``latest``; with ``hide_previous`` the release that was latest
    is hidden. A new app is created for a publisher, who gets read, write and run on it;
    a release of an existing app needs the write right. An encrypted bundle must be
    encrypted for this portal; it is decrypted only to be validated and stays
    encrypted in storage. The runtime requirement is resolved to the newest matching
    runtime version the portal has. Nothing is recorded or kept unless all of it is
    valid.

    Raises:
        InvalidInput: invalid archive, manifest or icon; encrypted for another portal;
            no matching runtime version.
        TooLarge: the bundle exceeds the upload limit.
        Conflict: this app version exists already.
        NotFound / PermissionDenied: the app exists but the actor may not publish to it.
    """
    with session_scope() as session:
        _refuse_non_publisher(session, actor)
    settings = get_settings()
    storage = get_storage()
    bundle_key = f"bundles/{uuid.uuid4().hex}.bundle"
    with Spool(storage, bundle_key, max_bytes=settings.upload_max_bytes) as spool:
        stored = spool.receive(source)

        private_pem = None
        if encryption.is_encrypted(spool.path):
            header = encryption.read_header(spool.path)
            with session_scope() as session:
                private_pem = private_key_for(session, header.key)
        inspected = inspect_bundle(spool.path, private_pem=private_pem)
        manifest = inspected.manifest
        spool.finish()  # (storage finished the object while the bundle was inspected)

        with session_scope() as session:
            app = session.exec(select(App).where(App.name == manifest.name)).first()
            if app is None:
                require(actor, Action.create_app)
                app = App(name=manifest.name)
                session.add(app)
                try:
                    session.flush()
                except IntegrityError as exc:  # another upload created it a moment ago
                    raise Conflict(
                        f"The app {manifest.name!r} is being created by another upload; "
                        "publish again in a moment.",
                        code="concurrent_publish",
                    ) from exc
                _grant_publisher(session, app, actor)
            else:
                app_with_right(session, actor, app.name, AppRight.write)
            if (
                session.exec(
                    select(Release.id).where(
                        Release.app_id == app.id, Release.version == manifest.version
                    )
                ).first()
                is not None
            ):
                raise Conflict(
                    f"{manifest.name} {manifest.version} is published already; "
                    "raise the version in app.json.",
                    code="duplicate_version",
                )
            runtime = _matching_runtime(session, manifest.runtime)

            icon_key = None
            if inspected.icon is not None and inspected.icon_type is not None:
                suffix = _ICON_SUFFIX[inspected.icon_type]
                icon_key = f"icons/{app.name}/{uuid.uuid4().hex}.{suffix}"
                storage.put(icon_key, [inspected.icon], max_bytes=len(inspected.icon))
            try:
                release = _record_release(
                    session,
                    actor=actor,
                    app=app,
                    runtime=runtime,
                    manifest=manifest,
                    stored=stored,
                    encrypted=inspected.encrypted,
                    key_fingerprint=inspected.key_fingerprint,
                    hide_previous=hide_previous,
                    icon_key=icon_key,
                    icon_type=inspected.icon_type,
                    source_ip=source_ip,
                )
                session.commit()
            except BaseException:
                if icon_key:
                    storage.delete(icon_key)
                raise
            spool.keep()
    logger.info("published %s %s by %s", manifest.name, manifest.version, actor.username)
    return release


def _refuse_non_publisher(session: Session, actor: User) -> None:
    # before a possibly long upload: someone who can neither create apps nor write to
    # any app cannot publish anything
    if allowed(actor, Action.create_app):
        return
    apps = session.exec(
        select(App)
        .join(AppGrant, col(AppGrant.app_id) == App.id)
        .where(AppGrant.right == AppRight.write.value, AppGrant.effect == "allow")
    ).all()
    if not any(r[AppRight.write.value].allowed for r in rights_on(session, actor, apps).values()):
        raise PermissionDenied(
            "Publishing needs the publisher role, or the write right on the app.",
            code="forbidden",
        )


def _grant_publisher(session: Session, app: App, actor: User) -> None:
    for right in AppRight:
        session.add(
            AppGrant(
                app_id=app.id or 0,
                principal_type="user",
                principal_id=actor.id or 0,
                right=right.value,
                effect="allow",
                created_by=actor.username,
            )
        )


def _matching_runtime(session: Session, requirement: RuntimeRequirement) -> RuntimeVersion:
    name, spec = requirement.name, requirement.version
    candidates = session.exec(select(RuntimeVersion).where(RuntimeVersion.name == name)).all()
    # the requirement's own test, not `in SpecifierSet`: packaging lets pre-releases
    # through that the specifier does not name
    matching = [r for r in candidates if requirement.allows(r.name, r.version)]
    if not matching:
        have = ", ".join(sorted(r.version for r in candidates)) or "none"
        raise InvalidInput(
            f"The bundle needs runtime {name} {spec or '(any version)'}, which this portal "
            f"does not have (versions of {name} here: {have}). Upload the runtime first.",
            code="missing_runtime",
        )
    return max(matching, key=lambda r: Version(r.version))


def _record_release(
    session: Session,
    *,
    actor: User,
    app: App,
    runtime: RuntimeVersion,
    manifest: AppManifest,
    stored: StoredObject,
    encrypted: bool,
    key_fingerprint: str | None,
    hide_previous: bool,
    icon_key: str | None,
    icon_type: str | None,
    source_ip: str,
) -> Release:
    release = Release(
        app_id=app.id or 0,
        version=manifest.version,
        runtime_version_id=runtime.id or 0,
        runtime_spec=manifest.runtime.version,
        manifest=manifest.model_dump_json(),
        bundle_key=stored.key,
        bundle_sha256=stored.sha256,
        bundle_size=stored.size,
        encrypted=encrypted,
        portal_key_fingerprint=key_fingerprint,
        icon_key=icon_key,
        icon_type=icon_type,
        published_by=actor.username,
    )
    session.add(release)
    try:
        session.flush()
    except IntegrityError as exc:  # the same version published at the same moment
        # names from the manifest: the failed flush expired `app`, and loading it again
        # in a transaction that must roll back would raise instead of this 409
        raise Conflict(
            f"{manifest.name} {manifest.version} is published already.", code="duplicate_version"
        ) from exc
    previous = session.get(Release, app.latest_release_id) if app.latest_release_id else None
    if previous is not None and hide_previous:
        previous.hidden = True
        session.add(previous)
    app.latest_release_id = release.id
    app.title = (manifest.title or manifest.name)[:80]
    app.description, app.category = manifest.description, manifest.category
    app.updated_at = utcnow()
    session.add(app)
    audit.record(
        session,
        action="release.publish",
        actor=actor,
        target_type="app",
        target_id=app.id or "",
        target_name=f"{app.name} {release.version}",
        source_ip=source_ip,
        detail=f"runtime={runtime.name} {runtime.version} encrypted={encrypted}"
        + (f" hidden_previous={previous.version}" if previous and hide_previous else ""),
    )
    return release


# -- the catalogue and one app ---------------------------------------------------------


def catalogue(
    session: Session, *, actor: User, query: str = "", category: str = ""
) -> list[AppView]:
    """The apps ``actor`` may read, by title; ``query`` matches name, title or
    description, ``category`` must match exactly."""
    statement = select(App).where(col(App.latest_release_id).is_not(None))
    if category:
        statement = statement.where(App.category == category)
    apps = list(session.exec(statement.order_by(col(App.title), col(App.name))).all())
    needle = query.strip().lower()
    if needle:
        apps = [
            a
            for a in apps
            if needle in a.name or needle in a.title.lower() or needle in a.description.lower()
        ]
    rights = rights_on(session, actor, apps)
    visible = [a for a in apps if rights[a.id or 0][AppRight.read.value].allowed]
    latest = _releases_by_id(session, [a.latest_release_id for a in visible])
    return [AppView(a, latest.get(a.latest_release_id or 0), rights[a.id or 0]) for a in visible]


def categories(session: Session, *, actor: User) -> list[str]:
    """The categories of the apps ``actor`` may read."""
    return sorted({v.app.category for v in catalogue(session, actor=actor) if v.app.category})


def _releases_by_id(session: Session, ids: Iterable[int | None]) -> dict[int, Release]:
    wanted = [i for i in ids if i]
    if not wanted:
        return {}
    rows = session.exec(select(Release).where(col(Release.id).in_(wanted))).all()
    return {r.id or 0: r for r in rows}


def get_app(session: Session, *, actor: User, name: str) -> AppView:
    """One app the actor may read, with its latest release and the actor's rights."""
    app, rights = app_with_right(session, actor, name, AppRight.read)
    latest = session.get(Release, app.latest_release_id) if app.latest_release_id else None
    return AppView(app, latest, rights)


def list_releases(session: Session, *, actor: User, name: str) -> list[Release]:
    """The app's releases, newest version first; hidden ones only for writers."""
    app, rights = app_with_right(session, actor, name, AppRight.read)
    releases = list(session.exec(select(Release).where(Release.app_id == app.id)).all())
    if not rights[AppRight.write.value].allowed:
        releases = [r for r in releases if not r.hidden]
    return sorted(releases, key=lambda r: Version(r.version), reverse=True)


def runtime_labels(session: Session, releases: Iterable[Release]) -> dict[int, str]:
    """``name version`` of the runtime version each release runs on, by release id.

    For releases the caller already got through a rights-checked function.
    """
    releases = list(releases)
    wanted = {r.runtime_version_id for r in releases}
    if not wanted:
        return {}
    rows = session.exec(
        select(RuntimeVersion.id, RuntimeVersion.name, RuntimeVersion.version).where(
            col(RuntimeVersion.id).in_(wanted)
        )
    ).all()
    labels = {rid: f"{name} {version}" for rid, name, version in rows}
    return {r.id or 0: labels.get(r.runtime_version_id, "?") for r in releases}


def _release_of(session: Session, app: App, version: str) -> Release:
    release = session.exec(
        select(Release).where(Release.app_id == app.id, Release.version == version)
    ).first()
    if release is None:
        raise NotFound(f"{app.name} has no release {version[:64]!r}.")
    return release


def set_latest(
    session: Session, *, actor: User, name: str, version: str, source_ip: str = ""
) -> Release:
    """Move ``latest`` to another release (roll back or forward); it is unhidden."""
    app, _ = app_with_right(session, actor, name, AppRight.write)
    release = _release_of(session, app, version)
    previous = app.latest_release_id
    release.hidden = False
    app.latest_release_id = release.id
    manifest = json.loads(release.manifest)
    app.title = (manifest.get("title") or app.name)[:80]
    app.description = manifest.get("description", "")[:2000]
    app.category = manifest.get("category", "")[:40]
    app.updated_at = utcnow()
    session.add_all([release, app])
    old = session.get(Release, previous) if previous else None
    audit.record(
        session,
        action="release.latest",
        actor=actor,
        target_type="app",
        target_id=app.id or "",
        target_name=app.name,
        source_ip=source_ip,
        detail=f"{old.version if old else '-'} -> {release.version}",
    )
    return release


def set_hidden(
    session: Session, *, actor: User, name: str, version: str, hidden: bool, source_ip: str = ""
) -> Release:
    """Hide or show a release. The ``latest`` release cannot be hidden."""
    app, _ = app_with_right(session, actor, name, AppRight.write)
    release = _release_of(session, app, version)
    if hidden and release.id == app.latest_release_id:
        raise Conflict(
            f"{app.name} {version} carries the latest tag; move latest to another release "
            "before hiding it.",
            code="is_latest",
        )
    release.hidden = hidden
    session.add(release)
    audit.record(
        session,
        action="release.hide" if hidden else "release.show",
        actor=actor,
        target_type="app",
        target_id=app.id or "",
        target_name=f"{app.name} {version}",
        source_ip=source_ip,
    )
    return release


def delete_release(
    session: Session, *, actor: User, name: str, version: str, source_ip: str = ""
) -> None:
    """Delete a release and its bundle. The ``latest`` release cannot be deleted while
    other releases exist (move latest first); deleting the only release deletes nothing
    else (use :func:`delete_app`)."""
    app, _ = app_with_right(session, actor, name, AppRight.write)
    release = _release_of(session, app, version)
    if release.id == app.latest_release_id:
        raise Conflict(
            f"{app.name} {version} carries the latest tag; move latest to another release "
            "first, or delete the whole app.",
            code="is_latest",
        )
    audit.record(
        session,
        action="release.delete",
        actor=actor,
        target_type="app",
        target_id=app.id or "",
        target_name=f"{app.name} {version}",
        source_ip=source_ip,
    )
    session.delete(release)
    session.commit()
    get_storage().delete(release.bundle_key)
    if release.icon_key:
        get_storage().delete(release.icon_key)


def delete_app(session: Session, *, actor: User, name: str, source_ip: str = "") -> None:
    """Delete an app with all its releases, bundles, icons and grants."""
    app, _ = app_with_right(session, actor, name, AppRight.write)
    releases = list(session.exec(select(Release).where(Release.app_id == app.id)).all())
    keys = [r.bundle_key for r in releases] + [r.icon_key for r in releases if r.icon_key]
    audit.record(
        session,
        action="app.delete",
        actor=actor,
        target_type="app",
        target_id=app.id or "",
        target_name=app.name,
        source_ip=source_ip,
        detail=f"{len(releases)} releases",
    )
    app.latest_release_id = None
    session.add(app)
    session.flush()
    session.delete(app)
    session.commit()
    storage = get_storage()
    for key in keys:
        storage.delete(key)


def app_icon(session: Session, *, actor: User, name: str) -> tuple[bytes, str]:
    """The icon of an app the actor may read, and its content type.

    Raises:
        NotFound: no such app (for this actor), or it has no icon.
    """
    app, _ = app_with_right(session, actor, name, AppRight.read)
    latest = session.get(Release, app.latest_release_id) if app.latest_release_id else None
    if latest is None or not latest.icon_key or not latest.icon_type:
        raise NotFound(f"{app.name} has no icon.")
    with get_storage().open(latest.icon_key) as stream:
        return stream.read(), latest.icon_type


def resolve_launch(
    session: Session, *, actor: User, name: str, version: str | None = None
) -> tuple[App, Release]:
    """The release a launch of ``name`` (at ``version``, else latest) would start.

    Raises:
        NotFound: no such app or release for this actor; a hidden release for a
            non-writer counts as missing.
        PermissionDenied: the actor may see the app but not run it.
    """
    app, rights = app_with_right(session, actor, name, AppRight.run)
    if version is None:
        if app.latest_release_id is None:
            raise NotFound(f"{app.name} has no release to launch.")
        release = session.get(Release, app.latest_release_id)
        assert release is not None
    else:
        release = _release_of(session, app, version)
        if release.hidden and not rights[AppRight.write.value].allowed:
            raise NotFound(f"{app.name} has no release {version[:64]!r}.")
    return app, release
