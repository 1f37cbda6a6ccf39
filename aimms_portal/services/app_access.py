"""Grants on an app (who may read, write, run it) and the explanation of rights."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, col, select

from aimms_portal.auth.access import RightDecision, app_rights
from aimms_portal.errors import InvalidInput, NotFound
from aimms_portal.models import AppGrant, AppRight, Group, User
from aimms_portal.services import accounts, audit
from aimms_portal.services.apps import app_with_right, needing_read

PRINCIPAL_TYPES = ("user", "group")
EFFECTS = ("allow", "deny")


@dataclass(frozen=True)
class GrantView:
    """A grant with the name of the user or group it is for."""

    grant: AppGrant
    principal_name: str


def _names(session: Session, grants: list[AppGrant]) -> dict[tuple[str, int], str]:
    user_ids = [g.principal_id for g in grants if g.principal_type == "user"]
    group_ids = [g.principal_id for g in grants if g.principal_type == "group"]
    names: dict[tuple[str, int], str] = {}
    if user_ids:
        for uid, name in session.exec(
            select(User.id, User.username).where(col(User.id).in_(user_ids))
        ).all():
            names[("user", uid or 0)] = name
    if group_ids:
        for gid, name in session.exec(
            select(Group.id, Group.name).where(col(Group.id).in_(group_ids))
        ).all():
            names[("group", gid or 0)] = name
    return names


def list_grants(session: Session, *, actor: User, name: str) -> list[GrantView]:
    """The app's grants (writers only), by principal, then right."""
    app, _ = app_with_right(session, actor, name, AppRight.write)
    grants = list(session.exec(select(AppGrant).where(AppGrant.app_id == app.id)).all())
    names = _names(session, grants)
    views = [
        GrantView(g, names.get((g.principal_type, g.principal_id), f"#{g.principal_id}"))
        for g in grants
    ]
    order = {r.value: i for i, r in enumerate(AppRight)}
    views.sort(key=lambda v: (v.grant.principal_type, v.principal_name, order[v.grant.right]))
    return views


def _principal(session: Session, principal_type: str, principal_name: str) -> tuple[str, int]:
    if principal_type not in PRINCIPAL_TYPES:
        raise InvalidInput("Grant rights to a 'user' or a 'group'.", code="invalid_principal")
    name = principal_name.strip().lower()
    if principal_type == "user":
        uid = session.exec(select(User.id).where(User.username == name)).first()
        if uid is None:
            raise InvalidInput(f"There is no user called {name[:64]!r}.", code="unknown_user")
        return "user", uid
    gid = session.exec(select(Group.id).where(Group.name == name)).first()
    if gid is None:
        raise InvalidInput(f"There is no group called {name[:64]!r}.", code="unknown_group")
    return "group", gid


def set_grant(
    session: Session,
    *,
    actor: User,
    name: str,
    principal_type: str,
    principal_name: str,
    right: str,
    effect: str,
    source_ip: str = "",
) -> AppGrant:
    """Allow or deny one right on the app to a user or group (writers only).

    A grant for the same principal and right is replaced, so there is at most one.
    """
    app, _ = app_with_right(session, actor, name, AppRight.write)
    if right not in {r.value for r in AppRight}:
        raise InvalidInput("The right is one of read, write, run.", code="invalid_right")
    if effect not in EFFECTS:
        raise InvalidInput("A grant allows or denies.", code="invalid_effect")
    kind, pid = _principal(session, principal_type, principal_name)
    grant = session.exec(
        select(AppGrant).where(
            AppGrant.app_id == app.id,
            AppGrant.principal_type == kind,
            AppGrant.principal_id == pid,
            AppGrant.right == right,
        )
    ).first()
    if grant is None:
        grant = AppGrant(
            app_id=app.id or 0,
            principal_type=kind,
            principal_id=pid,
            right=right,
            effect=effect,
            created_by=actor.username,
        )
    grant.effect = effect
    session.add(grant)
    session.flush()
    audit.record(
        session,
        action="app.grant",
        actor=actor,
        target_type="app",
        target_id=app.id or "",
        target_name=app.name,
        source_ip=source_ip,
        detail=f"{effect} {right} to {kind} {principal_name.strip().lower()}",
    )
    return grant


def delete_grant(
    session: Session, *, actor: User, name: str, grant_id: int, source_ip: str = ""
) -> None:
    """Remove one grant of the app (writers only)."""
    app, _ = app_with_right(session, actor, name, AppRight.write)
    grant = session.get(AppGrant, grant_id) if 1 <= grant_id <= 2**31 - 1 else None
    if grant is None or grant.app_id != app.id:
        raise NotFound(f"{app.name} has no grant {grant_id}.")
    names = _names(session, [grant])
    audit.record(
        session,
        action="app.revoke",
        actor=actor,
        target_type="app",
        target_id=app.id or "",
        target_name=app.name,
        source_ip=source_ip,
        detail=f"{grant.effect} {grant.right} to {grant.principal_type} "
        f"{names.get((grant.principal_type, grant.principal_id), grant.principal_id)}",
    )
    session.delete(grant)


def explain_rights(
    session: Session, *, actor: User, name: str, username: str
) -> tuple[User, dict[str, RightDecision]]:
    """The effective rights of ``username`` on the app and the grant that decided each.

    Writers may ask about anyone; others only about themselves.
    """
    target = session.exec(select(User).where(User.username == username.strip().lower())).first()
    asks_self = target is not None and target.id == actor.id
    app, _ = app_with_right(session, actor, name, AppRight.read if asks_self else AppRight.write)
    if target is None:
        raise InvalidInput(f"There is no user called {username[:64]!r}.", code="unknown_user")
    grants = list(session.exec(select(AppGrant).where(AppGrant.app_id == app.id)).all())
    group_ids = [g.id or 0 for g in accounts.groups_of(session, user=target)]
    return target, needing_read(app_rights(target, grants, group_ids, _names(session, grants)))
