"""Users, groups and memberships: the use cases admins run from the UI, REST and CLI."""

from __future__ import annotations

import logging
import re
import secrets
import string

from sqlmodel import Session, col, delete, func, or_, select, update

from aimms_portal.auth import passwords
from aimms_portal.auth.access import Action, require
from aimms_portal.cache import ExactCache
from aimms_portal.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from aimms_portal.models import (
    EVERYONE,
    ApiToken,
    AppGrant,
    BrowserSession,
    Group,
    Membership,
    Role,
    User,
    utcnow,
)
from aimms_portal.services import audit
from aimms_portal.services.pagination import DEFAULT_LIMIT, Page, paginate

logger = logging.getLogger(__name__)

#: Ids are 32-bit in every database we run on. A client may send any integer, and
#: SQLite raises OverflowError beyond 64 bits instead of finding nothing.
MAX_ID = 2**31 - 1

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def normalize_name(name: str, *, what: str = "user name") -> str:
    """Lower-case ``name`` and check it is 2-64 of ``a-z 0-9 . _ -``, starting alphanumeric.

    Raises:
        InvalidInput: the name does not fit.
    """
    normalized = name.strip().lower()
    if not _NAME_RE.match(normalized):
        raise InvalidInput(
            f"A {what} has 2 to 64 characters: letters a-z, digits, '.', '_' or '-', "
            "starting with a letter or digit.",
            code="invalid_name",
        )
    return normalized


def _check_profile(email: str, full_name: str) -> None:
    if email and (len(email) > 254 or not _EMAIL_RE.match(email)):
        raise InvalidInput("The e-mail address is not valid.", code="invalid_email")
    if len(full_name) > 128:
        raise InvalidInput("The full name may have at most 128 characters.", code="too_long")


def valid_id(object_id: int) -> bool:
    """Whether ``object_id`` could name a row at all (unknown ids are still possible)."""
    return 1 <= object_id <= MAX_ID


def _check_role(role: str) -> str:
    if role not in {r.value for r in Role}:
        raise InvalidInput(
            f"Unknown role {role!r}; choose one of admin, publisher, user.", code="invalid_role"
        )
    return role


# -- users ---------------------------------------------------------------------------


def get_user(session: Session, *, actor: User, user_id: int) -> User:
    """One user by id (admins only)."""
    require(actor, Action.manage_users)
    user = session.get(User, user_id) if valid_id(user_id) else None
    if user is None:
        raise NotFound(f"No user with id {user_id}.")
    return user


def get_user_by_username(session: Session, *, actor: User, username: str) -> User:
    """One user by exact user name (admins only).

    Raises:
        NotFound: no user has that name.
    """
    require(actor, Action.manage_users)
    name = username.strip().lower()
    user = session.exec(select(User).where(User.username == name)).first()
    if user is None:
        raise NotFound(f"There is no user called {name[:64]!r}.")
    return user


def list_users(
    session: Session,
    *,
    actor: User,
    query: str = "",
    role: str | None = None,
    active: bool | None = None,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
) -> Page[User]:
    """Users ordered by name; ``query`` matches name, full name or e-mail (admins only)."""
    require(actor, Action.manage_users)
    statement = select(User)
    if query:
        # autoescape: a '%' or '_' in the query matches itself, not any text
        needle = query.lower()
        statement = statement.where(
            or_(
                col(User.username).contains(needle, autoescape=True),
                func.lower(User.full_name).contains(needle, autoescape=True),
                func.lower(User.email).contains(needle, autoescape=True),
            )
        )
    if role:
        statement = statement.where(User.role == _check_role(role))
    if active is not None:
        statement = statement.where(User.is_active == active)
    return paginate(
        session,
        statement.order_by(col(User.username)),
        limit=limit,
        offset=offset,
        count_with_page=True,
    )


def create_user(
    session: Session,
    *,
    actor: User | None,
    username: str,
    password: str | None,
    role: str = Role.user.value,
    email: str = "",
    full_name: str = "",
    source_ip: str = "",
) -> User:
    """Create a user (admins only; ``actor=None`` is the bootstrap from the command line).

    Raises:
        InvalidInput: bad name, e-mail, role or a password that fails the policy.
        Conflict: the user name is taken.
    """
    if actor is not None:
        require(actor, Action.manage_users)
    username = normalize_name(username)
    _check_profile(email, full_name)
    _check_role(role)
    if password is not None:
        passwords.check_policy(password)
    if session.exec(select(User.id).where(User.username == username)).first() is not None:
        raise Conflict(f"The user name {username!r} is taken.", code="name_taken")

    user = User(
        username=username,
        email=email,
        full_name=full_name,
        role=role,
        password_hash=passwords.hash_password(password) if password is not None else None,
    )
    session.add(user)
    session.flush()
    audit.record(
        session,
        action="user.create",
        actor=actor,
        actor_name="system",
        target=user,
        source_ip=source_ip,
        detail=f"role={role}",
    )
    return user


def update_user(
    session: Session,
    *,
    actor: User,
    user_id: int,
    email: str | None = None,
    full_name: str | None = None,
    role: str | None = None,
    is_active: bool | None = None,
    source_ip: str = "",
) -> User:
    """Change a user's profile, role or active flag (admins only).

    Disabling a user ends their browser log-ons and revokes their API tokens in the same
    unit of work, so they stop at once. Admins cannot demote or disable themselves,
    which would lock the portal out of its last admin.
    """
    user = get_user(session, actor=actor, user_id=user_id)
    _check_profile(email or "", full_name or "")
    if user.id == actor.id and (
        (role is not None and role != Role.admin.value) or is_active is False
    ):
        raise PermissionDenied(
            "You cannot remove your own admin role or disable yourself.", code="self_lockout"
        )
    changes = []
    if email is not None and email != user.email:
        user.email = email
        changes.append("email")
    if full_name is not None and full_name != user.full_name:
        user.full_name = full_name
        changes.append("full_name")
    if role is not None and _check_role(role) != user.role:
        audit.record(
            session,
            action="user.role",
            actor=actor,
            target=user,
            source_ip=source_ip,
            detail=f"{user.role} -> {role}",
        )
        user.role = role
    if is_active is not None and is_active != user.is_active:
        user.is_active = is_active
        audit.record(
            session,
            action="user.enable" if is_active else "user.disable",
            actor=actor,
            target=user,
            source_ip=source_ip,
        )
        if not is_active:
            revoked = end_all_access(session, user_id=user.id or 0)
            logger.info("user %s disabled; %d log-ons and tokens revoked", user.id, revoked)
    if changes:
        audit.record(
            session,
            action="user.update",
            actor=actor,
            target=user,
            source_ip=source_ip,
            detail="changed " + ", ".join(changes),
        )
    user.updated_at = utcnow()
    session.add(user)
    return user


def end_all_access(session: Session, *, user_id: int) -> int:
    """Revoke every browser log-on and API token of a user; returns how many."""
    now = utcnow()
    sessions = session.exec(
        update(BrowserSession)
        .where(col(BrowserSession.user_id) == user_id, col(BrowserSession.revoked_at).is_(None))
        .values(revoked_at=now)
    )
    tokens = session.exec(
        update(ApiToken)
        .where(col(ApiToken.user_id) == user_id, col(ApiToken.revoked_at).is_(None))
        .values(revoked_at=now)
    )
    return (sessions.rowcount or 0) + (tokens.rowcount or 0)


def reset_password(
    session: Session, *, actor: User, user_id: int, new_password: str, source_ip: str = ""
) -> User:
    """Set a new password for a user (admins only); ends the user's browser log-ons."""
    user = get_user(session, actor=actor, user_id=user_id)
    passwords.check_policy(new_password)
    user.password_hash = passwords.hash_password(new_password)
    user.updated_at = utcnow()
    session.add(user)
    session.exec(
        update(BrowserSession)
        .where(col(BrowserSession.user_id) == user.id, col(BrowserSession.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )
    audit.record(
        session, action="user.password_reset", actor=actor, target=user, source_ip=source_ip
    )
    return user


def change_own_password(
    session: Session,
    *,
    actor: User,
    current_password: str,
    new_password: str,
    source_ip: str = "",
) -> User:
    """Let a user change their own password after proving the current one."""
    if not passwords.verify_password(actor.password_hash, current_password):
        raise InvalidInput("The current password is wrong.", code="wrong_password")
    passwords.check_policy(new_password)
    user = session.get(User, actor.id)
    if user is None:
        raise NotFound("No such user.")
    user.password_hash = passwords.hash_password(new_password)
    user.updated_at = utcnow()
    session.add(user)
    audit.record(
        session, action="user.password_change", actor=actor, target=user, source_ip=source_ip
    )
    return user


def generate_password() -> str:
    """A random password that meets the policy."""
    alphabet = string.ascii_letters + string.digits
    core = "".join(secrets.choice(alphabet) for _ in range(18))
    return f"{core[:6]}-{core[6:12]}-{core[12:]}{secrets.choice(string.digits)}!"


def ensure_admin(
    session: Session, *, username: str, password: str | None, email: str = ""
) -> tuple[User, str | None]:
    """Make sure at least one admin exists; create ``username`` as admin if none does.

    Returns the admin and, when a password had to be generated, that password (to be
    shown once). With an admin already present nothing changes and ``None`` comes back.
    """
    existing = session.exec(
        select(User).where(User.role == Role.admin.value).order_by(col(User.id))
    ).first()
    if existing is not None:
        return existing, None
    generated = None
    if password is None:
        generated = password = generate_password()
    user = create_user(
        session,
        actor=None,
        username=username,
        password=password,
        role=Role.admin.value,
        email=email,
    )
    return user, generated


# -- groups --------------------------------------------------------------------------


def ensure_builtin_groups(session: Session) -> None:
    """Create the built-in ``everyone`` group if it is missing."""
    if session.exec(select(Group.id).where(Group.name == EVERYONE)).first() is None:
        session.add(Group(name=EVERYONE, description="Every user of the portal.", builtin=True))
        session.flush()


def list_groups(
    session: Session,
    *,
    actor: User,
    query: str = "",
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
) -> Page[Group]:
    """Groups ordered by name (admins and publishers)."""
    require(actor, Action.list_groups)
    statement = select(Group)
    if query:
        statement = statement.where(col(Group.name).contains(query.lower(), autoescape=True))
    return paginate(session, statement.order_by(col(Group.name)), limit=limit, offset=offset)


def get_group(session: Session, *, actor: User, group_id: int) -> Group:
    """One group by id (admins and publishers)."""
    require(actor, Action.list_groups)
    group = session.get(Group, group_id) if valid_id(group_id) else None
    if group is None:
        raise NotFound(f"No group with id {group_id}.")
    return group


def create_group(
    session: Session, *, actor: User, name: str, description: str = "", source_ip: str = ""
) -> Group:
    """Create a group (admins only)."""
    require(actor, Action.manage_groups)
    name = normalize_name(name, what="group name")
    if len(description) > 255:
        raise InvalidInput("The description may have at most 255 characters.", code="too_long")
    if session.exec(select(Group.id).where(Group.name == name)).first() is not None:
        raise Conflict(f"The group name {name!r} is taken.", code="name_taken")
    group = Group(name=name, description=description)
    session.add(group)
    session.flush()
    audit.record(session, action="group.create", actor=actor, target=group, source_ip=source_ip)
    return group


def update_group(
    session: Session, *, actor: User, group_id: int, description: str, source_ip: str = ""
) -> Group:
    """Change a group's description (admins only)."""
    require(actor, Action.manage_groups)
    group = get_group(session, actor=actor, group_id=group_id)
    if len(description) > 255:
        raise InvalidInput("The description may have at most 255 characters.", code="too_long")
    group.description = description
    session.add(group)
    audit.record(session, action="group.update", actor=actor, target=group, source_ip=source_ip)
    return group


def delete_group(session: Session, *, actor: User, group_id: int, source_ip: str = "") -> None:
    """Delete a group and its memberships (admins only; not the built-in groups)."""
    require(actor, Action.manage_groups)
    group = get_group(session, actor=actor, group_id=group_id)
    if group.builtin:
        raise Conflict(f"The built-in group {group.name!r} cannot be deleted.", code="builtin")
    audit.record(session, action="group.delete", actor=actor, target=group, source_ip=source_ip)
    # grants have no foreign key to their group (they may name a user instead)
    session.exec(
        delete(AppGrant).where(
            col(AppGrant.principal_type) == "group", col(AppGrant.principal_id) == group.id
        )
    )
    session.delete(group)


def list_members(
    session: Session, *, actor: User, group_id: int, limit: int = DEFAULT_LIMIT, offset: int = 0
) -> Page[User]:
    """Members of a group ordered by name; ``everyone`` lists every active user."""
    group = get_group(session, actor=actor, group_id=group_id)
    statement = select(User)
    if group.name == EVERYONE:
        statement = statement.where(User.is_active == True)  # noqa: E712
    else:
        statement = statement.join(Membership, col(Membership.user_id) == User.id).where(
            Membership.group_id == group.id
        )
    return paginate(session, statement.order_by(col(User.username)), limit=limit, offset=offset)


def add_member(
    session: Session, *, actor: User, group_id: int, user_id: int, source_ip: str = ""
) -> None:
    """Put a user in a group (admins only); adding a member twice is a no-op."""
    require(actor, Action.manage_groups)
    group = get_group(session, actor=actor, group_id=group_id)
    if group.builtin:
        raise Conflict(f"Membership of {group.name!r} is implicit.", code="builtin")
    user = get_user(session, actor=actor, user_id=user_id)
    if session.get(Membership, (group.id, user.id)) is not None:
        return
    session.add(Membership(group_id=group.id or 0, user_id=user.id or 0))
    audit.record(
        session,
        action="group.member_add",
        actor=actor,
        target=group,
        source_ip=source_ip,
        detail=f"user={user.username}",
    )


def remove_member(
    session: Session, *, actor: User, group_id: int, user_id: int, source_ip: str = ""
) -> None:
    """Take a user out of a group (admins only)."""
    require(actor, Action.manage_groups)
    group = get_group(session, actor=actor, group_id=group_id)
    membership = session.get(Membership, (group.id, user_id)) if valid_id(user_id) else None
    if membership is None:
        raise NotFound(f"User {user_id} is not a member of {group.name!r}.")
    session.delete(membership)
    audit.record(
        session,
        action="group.member_remove",
        actor=actor,
        target=group,
        source_ip=source_ip,
        detail=f"user_id={user_id}",
    )


#: user id -> the names of the groups the user is in, ``everyone`` included.
_group_names: ExactCache[int, tuple[str, ...]] = ExactCache(
    "group names", tables=("groups", "memberships"), maxsize=20_000
)


def cached_group_names(*, user: User) -> tuple[str, ...] | None:
    """:func:`group_names_of` from the cache alone; ``None`` when the database must be asked."""
    return _group_names.get(user.id or 0)


def group_names_of(session: Session, *, user: User) -> tuple[str, ...]:
    """The names of the groups ``user`` is in, ``everyone`` included, by name (cached)."""
    names = cached_group_names(user=user)
    if names is None:
        stamp = _group_names.stamp()
        names = tuple(g.name for g in groups_of(session, user=user))
        _group_names.put_after_commit(session, user.id or 0, names, stamp)
    return names


def groups_of(session: Session, *, user: User) -> list[Group]:
    """The groups ``user`` is in, ``everyone`` included."""
    statement = (
        select(Group)
        .outerjoin(
            Membership,
            (col(Membership.group_id) == Group.id) & (col(Membership.user_id) == user.id),
        )
        .where(or_(col(Membership.user_id).is_not(None), Group.name == EVERYONE))
        .order_by(col(Group.name))
    )
    return list(session.exec(statement).all())
