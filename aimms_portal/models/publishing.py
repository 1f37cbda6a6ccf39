"""Signing keys, runtime versions, apps, releases and per-app access grants."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, ForeignKey, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from aimms_portal.models.base import UTCDateTime, utcnow


class AppRight(StrEnum):
    """What a grant on an app allows (or, as a deny, forbids)."""

    read = "read"  # see the app and its releases
    write = "write"  # edit, publish releases, grant rights, delete
    run = "run"  # launch sessions and submit jobs


class SigningKey(SQLModel, table=True):
    """A publisher's Ed25519 public key that the portal trusts for runtime packages."""

    __tablename__ = "signing_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    #: ``ed25519:<base64 of the 32 raw bytes>``
    public_key: str = Field(max_length=64)
    fingerprint: str = Field(max_length=64, unique=True, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str = Field(default="", max_length=64)


class PortalKey(SQLModel, table=True):
    """The portal's RSA key pair for encrypted bundles; the private half is encrypted
    with a key derived from the portal's secret key."""

    __tablename__ = "portal_keys"

    id: int | None = Field(default=None, primary_key=True)
    fingerprint: str = Field(max_length=64, unique=True, index=True)
    public_pem: str = Field(sa_column=Column(Text, nullable=False))
    private_pem_encrypted: str = Field(sa_column=Column(Text, nullable=False))
    active: bool = Field(default=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class RuntimeVersion(SQLModel, table=True):
    """A signed runtime package, stored under ``storage_key``."""

    __tablename__ = "runtime_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_runtime_name_version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, index=True)
    version: str = Field(max_length=64)
    python_requires: str = Field(default="", max_length=128)
    description: str = Field(default="", max_length=2000)
    sha256: str = Field(max_length=64)
    size: int
    storage_key: str = Field(max_length=255)
    signature: str = Field(max_length=128)
    #: Copied from the signing key, so the record survives the key's removal.
    signer_fingerprint: str = Field(max_length=64)
    signer_name: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    uploaded_by: str = Field(default="", max_length=64)


class App(SQLModel, table=True):
    """An app: what the catalogue shows. Title, description and category are copied
    from the release tagged ``latest`` (for search); the icon is that release's."""

    __tablename__ = "apps"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True, index=True)
    title: str = Field(default="", max_length=80)
    description: str = Field(default="", max_length=2000)
    category: str = Field(default="", max_length=40, index=True)
    latest_release_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer,
            ForeignKey(
                "releases.id", ondelete="SET NULL", use_alter=True, name="fk_apps_latest_release"
            ),
            nullable=True,
        ),
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Release(SQLModel, table=True):
    """One uploaded bundle of an app, tied to the runtime version it runs on."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("app_id", "version", name="uq_release_app_version"),)

    id: int | None = Field(default=None, primary_key=True)
    app_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("apps.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    version: str = Field(max_length=64)
    runtime_version_id: int = Field(
        sa_column=Column(
            Integer,
            ForeignKey("runtime_versions.id", ondelete="RESTRICT"),
            nullable=False,
            index=True,
        )
    )
    #: The specifier the bundle asked for, e.g. ``>=1.0,<2``.
    runtime_spec: str = Field(max_length=128)
    #: The bundle's manifest as JSON text, as validated at publishing.
    manifest: str = Field(sa_column=Column(Text, nullable=False))
    bundle_key: str = Field(max_length=255)
    bundle_sha256: str = Field(max_length=64)
    bundle_size: int
    icon_key: str | None = Field(default=None, max_length=255)
    icon_type: str | None = Field(default=None, max_length=32)
    encrypted: bool = Field(default=False)
    portal_key_fingerprint: str | None = Field(default=None, max_length=64)
    hidden: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    published_by: str = Field(default="", max_length=64)


class AppGrant(SQLModel, table=True):
    """One right on one app for one user or group, as allow or deny (deny wins)."""

    __tablename__ = "app_grants"
    __table_args__ = (
        UniqueConstraint(
            "app_id", "principal_type", "principal_id", "right", name="uq_grant_principal_right"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    app_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("apps.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    #: ``user`` or ``group``
    principal_type: str = Field(max_length=8)
    principal_id: int = Field(index=True)
    right: str = Field(max_length=8)
    #: ``allow`` or ``deny``
    effect: str = Field(max_length=8)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str = Field(default="", max_length=64)
