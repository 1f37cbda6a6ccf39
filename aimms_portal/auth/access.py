"""The one place that decides whether a user may do an action on an object.

Every REST route and every UI event handler reaches this module through the service
functions, which call :func:`require` before they touch anything. The rules:

* only admins manage users, groups and roles and read the audit log;
* admins and publishers may list groups and users' names (to grant app rights);
* everyone manages their own API tokens and browser log-ons, and nobody else's
  (admins may revoke anyone's);
* an object that belongs to someone else is reported as *not found*, not as
  *forbidden*, so ids cannot be probed.
"""

from __future__ import annotations

from enum import StrEnum

from aimms_portal.errors import NotFound, PermissionDenied
from aimms_portal.models import ApiToken, Role, User


class Action(StrEnum):
    """Actions the portal checks. App actions arrive with publishing."""

    manage_users = "users.manage"
    list_groups = "groups.list"
    manage_groups = "groups.manage"
    read_audit = "audit.read"
    manage_own_tokens = "tokens.manage_own"
    manage_token = "tokens.manage"  # noqa: S105  (an action name, not a secret)


#: Actions that a role grants by itself, without an object.
_ROLE_ACTIONS: dict[str, frozenset[Action]] = {
    Role.admin.value: frozenset(Action),
    Role.publisher.value: frozenset({Action.list_groups, Action.manage_own_tokens}),
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
