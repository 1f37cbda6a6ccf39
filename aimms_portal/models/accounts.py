"""Users, groups and memberships."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, ForeignKey, Integer
from sqlmodel import Field, SQLModel

from aimms_portal.models.base import UTCDateTime, utcnow

#: Name of the built-in group every user belongs to without a membership row.
EVERYONE = "everyone"


class Role(StrEnum):
    """What a user may do on the portal as a whole; app rights come on top."""

    admin = "admin"
    publisher = "publisher"
    user = "user"


class User(SQLModel, table=True):
    """A person (or robot) that logs on to the portal."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=64, unique=True, index=True)
    email: str = Field(default="", max_length=254)
    full_name: str = Field(default="", max_length=128)
    role: str = Field(default=Role.user.value, max_length=16)
    #: Argon2id hash; ``None`` for accounts that only log on through single sign-on.
    password_hash: str | None = Field(default=None, max_length=255)
    is_active: bool = Field(default=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_login_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.admin.value


class Group(SQLModel, table=True):
    """A named set of users that app rights can be granted to."""

    __tablename__ = "groups"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True, index=True)
    description: str = Field(default="", max_length=255)
    #: Built-in groups (``everyone``) cannot be deleted or renamed.
    builtin: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Membership(SQLModel, table=True):
    """One user in one group."""

    __tablename__ = "memberships"

    group_id: int = Field(
        sa_column=Column(Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    )
    user_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
        )
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
