"""The one place that decides whether a user may do an action on an object.

Every REST route and every UI event handler reaches this module through the service
functions, which call :func:`require` or :func:`app_rights` before they touch anything.
The rules:

* only admins manage users, groups and roles, trusted signing keys, and read the audit
  log;
* admins and publishers may list groups (to grant app rights), upload and delete
  runtime versions and create apps;
* on an app, a user holds ``read`` (see it), ``write`` (edit, publish, grant, delete)
  and ``run`` (launch, submit jobs) only through grants to them or to a group they are
  in; an explicit deny beats any allow; no grant, no right; admins hold every right;
* everyone manages their own API tokens and browser log-ons, and nobody else's
  (admins may revoke anyone's);
* an object that belongs to someone else is reported as *not found*, not as
  *forbidden*, so ids cannot be probed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from aimms_portal.errors import NotFound, PermissionDenied
from aimms_portal.models import ApiToken, AppGrant, AppRight, Role, User


class Action(StrEnum):
    """Actions a role allows by itself. Rights on one app come from grants instead."""

    manage_users = "users.manage"
    list_groups = "groups.list"
    manage_groups = "groups.manage"
    read_audit = "audit.read"
    manage_own_tokens = "tokens.manage_own"
    manage_token = "tokens.manage"  # noqa: S105  (an action name, not a secret)
    manage_signing_keys = "signing_keys.manage"
    manage_runtimes = "runtimes.manage"
    create_app = "apps.create"


#: Actions that a role grants by itself, without an object.
_ROLE_ACTIONS: dict[str, frozenset[Action]] = {
    Role.admin.value: frozenset(Action),
    Role.publisher.value: frozenset(
        {Action.list_groups, Action.manage_own_tokens, Action.manage_runtimes, Action.create_app}
    ),
    Role.user.value: frozenset({Action.manage_own_tokens}),
}


def allowed(actor: User | None, action: Action, obj: object | None = None) -> bool:
    """Whether ``actor`` may do ``action`` (on ``obj`` where the action needs one)."""
    if actor is None or not actor.is_active:
        return False
    if actor.is_admin:
        return True
    if action is Action.manage_token:
        return isinstance(obj, ApiToken) and obj.user_id == actor.id
    return action in _ROLE_ACTIONS.get(actor.role, frozenset())


def require(actor: User | None, action: Action, obj: object | None = None) -> None:
    """Raise unless ``actor`` may do ``action``.

    Raises:
        NotFound: the object belongs to someone else (its existence is not revealed).
        PermissionDenied: the actor's role does not allow the action.
    """
    if allowed(actor, action, obj):
        return
    if obj is not None:
        raise NotFound("No such object.")
    raise PermissionDenied("You do not have the rights for this action.")


@dataclass(frozen=True)
class RightDecision:
    """Whether a user holds one right on an app, and what decided it."""

    right: str
    allowed: bool
    #: In words, e.g. ``deny to group 'contractors'``, ``no grant``, ``admin``.
    reason: str
    #: The grant that decided, if one did.
    grant_id: int | None = None


def app_rights(
    user: User | None,
    grants: Iterable[AppGrant],
    group_ids: Iterable[int],
    principal_names: dict[tuple[str, int], str] | None = None,
) -> dict[str, RightDecision]:
    """Every right of ``user`` on one app, from that app's ``grants``.

    ``group_ids`` are the groups the user is in (``everyone`` included);
    ``principal_names`` names users and groups in the reasons.
    """
    names = principal_names or {}
    if user is None or not user.is_active:
        return {r.value: RightDecision(r.value, False, "not signed on") for r in AppRight}
    if user.is_admin:
        return {r.value: RightDecision(r.value, True, "admins hold every right") for r in AppRight}

    mine = {("user", user.id)} | {("group", gid) for gid in group_ids}
    relevant = [g for g in grants if (g.principal_type, g.principal_id) in mine]
    decisions = {}
    for right in AppRight:
        matching = [g for g in relevant if g.right == right.value]
        deciding = next((g for g in matching if g.effect == "deny"), None) or next(
            (g for g in matching if g.effect == "allow"), None
        )
        if deciding is None:
            decisions[right.value] = RightDecision(right.value, False, "no grant")
            continue
        who = names.get(
            (deciding.principal_type, deciding.principal_id), str(deciding.principal_id)
        )
        decisions[right.value] = RightDecision(
            right.value,
            deciding.effect == "allow",
            f"{deciding.effect} to {deciding.principal_type} {who!r}",
            deciding.id,
        )
    return decisions
