"""Request and response bodies of the REST API.

Field limits here are the first line of defence (a clear 422 before any work); the
services check the same rules again, because the UI calls them directly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from aimms_portal.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

T = TypeVar("T")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable identifier of the kind of error.")
    message: str = Field(description="What went wrong, in words for people.")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class PageOut(BaseModel, Generic[T]):
    """One page of a list: ``items`` from ``offset``, out of ``total``."""

    items: list[T]
    total: int
    limit: int
    offset: int


class PageQuery(BaseModel):
    """``limit`` and ``offset`` of a list, as a query model (for lean routes).

    Frozen: a lean route shares one parsed query between requests, and uses it as a key.
    """

    model_config = ConfigDict(frozen=True)

    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


# -- auth ------------------------------------------------------------------------------


class LoginIn(_Strict):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class LoginOut(BaseModel):
    user: UserPublic
    csrf_token: str = Field(description="Send as X-CSRF-Token on state-changing calls.")
    expires_at: datetime


# -- users -----------------------------------------------------------------------------


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    email: str
    full_name: str
    role: str
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None


class UserListQuery(PageQuery):
    """The query of ``GET /users``."""

    q: str = Field("", max_length=64)
    role: str | None = Field(None, max_length=16)
    active: bool | None = None


class MeOut(UserPublic):
    groups: list[str]
    auth: str = Field(description="`cookie` or `token`.")
    scopes: list[str] | None = Field(description="The token's scopes; null for a log-on.")


class UserCreate(_Strict):
    username: str = Field(min_length=2, max_length=64)
    password: str = Field(min_length=1, max_length=256)
    role: str = Field("user", max_length=16)
    email: str = Field("", max_length=254)
    full_name: str = Field("", max_length=128)


class UserUpdate(_Strict):
    email: str | None = Field(None, max_length=254)
    full_name: str | None = Field(None, max_length=128)
    role: str | None = Field(None, max_length=16)
    is_active: bool | None = None


class PasswordReset(_Strict):
    password: str = Field(min_length=1, max_length=256)


class PasswordChange(_Strict):
    current_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)


# -- groups ----------------------------------------------------------------------------


class GroupPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str
    builtin: bool
    created_at: datetime


class GroupCreate(_Strict):
    name: str = Field(min_length=2, max_length=64)
    description: str = Field("", max_length=255)


class GroupUpdate(_Strict):
    description: str = Field(max_length=255)


class MemberAdd(_Strict):
    user_id: int


# -- tokens ----------------------------------------------------------------------------


class TokenPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    prefix: str
    scopes: str
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreate(_Strict):
    name: str = Field(min_length=1, max_length=64)
    scopes: list[str] = Field(default_factory=lambda: ["read", "write"], max_length=3)
    expires_in_days: int = Field(90, ge=1, le=365)


class TokenCreated(TokenPublic):
    token: str = Field(description="The token itself. Shown this once; store it now.")


# -- audit -----------------------------------------------------------------------------


class AuditEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    actor_id: int | None
    actor_name: str
    action: str
    target_type: str
    target_id: str
    target_name: str
    outcome: str
    source_ip: str
    detail: str


LoginOut.model_rebuild()


# -- signing keys, portal key, runtimes ------------------------------------------------


class SigningKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    public_key: str
    fingerprint: str
    created_at: datetime
    created_by: str


class SigningKeyCreate(_Strict):
    name: str = Field(min_length=1, max_length=64)
    public_key: str = Field(min_length=1, max_length=100, description="`ed25519:<base64>`")


class PortalKeyPublic(BaseModel):
    fingerprint: str
    public_pem: str = Field(description="RSA public key; encrypt bundles for it.")


class RuntimePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    version: str
    python_requires: str
    description: str
    sha256: str
    size: int
    signer_name: str
    signer_fingerprint: str
    created_at: datetime
    uploaded_by: str
    releases: int = Field(0, description="How many releases run on this version.")


class DeletedOut(BaseModel):
    deleted: list[str]


# -- apps, releases, access --------------------------------------------------------------


class RightsOut(BaseModel):
    read: bool
    write: bool
    run: bool


class AppPublic(BaseModel):
    name: str
    title: str
    description: str
    category: str
    icon_url: str | None
    latest_version: str | None
    rights: RightsOut


class ReleasePublic(BaseModel):
    version: str
    latest: bool
    hidden: bool
    runtime: str
    runtime_spec: str
    encrypted: bool
    bundle_sha256: str
    bundle_size: int
    webui: bool
    procedures: list[str]
    created_at: datetime
    published_by: str


class ReleaseUpdate(_Strict):
    hidden: bool


class LatestSet(_Strict):
    version: str = Field(min_length=1, max_length=64)


class GrantPublic(BaseModel):
    id: int
    principal_type: str
    principal_name: str
    right: str
    effect: str
    created_by: str


class GrantCreate(_Strict):
    principal_type: str = Field(pattern="^(user|group)$")
    principal_name: str = Field(min_length=1, max_length=64)
    right: str = Field(pattern="^(read|write|run)$")
    effect: str = Field("allow", pattern="^(allow|deny)$")


class RightExplained(BaseModel):
    allowed: bool
    reason: str
    grant_id: int | None


class RightsExplained(BaseModel):
    app: str
    user: str
    rights: dict[str, RightExplained]


class LaunchTarget(BaseModel):
    app: str
    version: str
    title: str
    webui: bool
    message: str


# -- cases -------------------------------------------------------------------------------


class CaseOut(BaseModel):
    id: int
    name: str
    kind: str = Field(description="`input`, `output` (written by a job) or `saved`.")
    owner: str = Field(description="User name of the owner.")
    app: str | None = Field(description="The app the case is for, if any.")
    job_id: int | None
    attempt: int | None = Field(description="The attempt of the job that wrote an output.")
    size: int = Field(description="Bytes of the content (uncompressed).")
    stored_size: int = Field(description="Bytes in storage (compressed).")
    sha256: str = Field(description="SHA-256 of the content (uncompressed).")
    created_at: datetime
    content_url: str = Field(description="Where to download the content.")


# -- jobs ------------------------------------------------------------------------------


class JobCreate(_Strict):
    app: str = Field(min_length=1, max_length=64)
    #: A release version; omitted: the release tagged latest.
    version: str | None = Field(default=None, max_length=64)
    procedure: str = Field(min_length=1, max_length=64)
    input_case_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    arguments: dict[str, Any] | None = None
    priority: int = Field(default=0, ge=-100, le=100)
    time_limit_s: int | None = Field(default=None, ge=1)
    #: Not before this time (with a time zone); omitted or past: now.
    start_at: datetime | None = None
    #: Receives a signed POST on every state change.
    hook_url: str | None = Field(default=None, max_length=2000)


class JobPublic(BaseModel):
    id: int
    app: str
    version: str
    procedure: str
    owner: str
    state: str
    priority: int
    attempt: int
    max_attempts: int
    time_limit_s: int
    start_at: datetime | None
    input_case_id: int | None
    output_case_id: int | None
    arguments: dict[str, Any]
    exit_code: int | None
    reason: str
    cancel_requested: bool
    hook_url: str
    #: Key of the HMAC-SHA256 signature of the state hooks (only with a hook URL).
    hook_secret: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class JobsDelete(_Strict):
    """Which finished jobs to delete: ``ids``, or every finished one matching the filters."""

    ids: list[int] | None = Field(default=None, max_length=10_000)
    state: str | None = Field(default=None, max_length=16)
    app: str | None = Field(default=None, max_length=64)
    all: bool = False


class JobsDeleted(BaseModel):
    deleted: int


class LogChunkPublic(BaseModel):
    id: int
    attempt: int
    stream: str
    text: str
    at: datetime


class JobLogOut(BaseModel):
    """Log chunks after ``after``; follow by asking again with the last id while ``state``
    has not finished."""

    chunks: list[LogChunkPublic]
    state: str
    finished: bool


# -- sessions ----------------------------------------------------------------------------


class SessionCreate(_Strict):
    app: str = Field(min_length=1, max_length=64)
    #: A release version; omitted: the release tagged latest.
    version: str | None = Field(default=None, max_length=64)
    #: ``webui`` (runs on the portal, opened through its proxy) or ``desktop`` (runs on
    #: the caller's own computer, e.g. through ``aimms-portal desktop``).
    kind: str = Field(default="webui", pattern="^(webui|desktop)$")


class SessionPublic(BaseModel):
    id: int
    kind: str
    app: str
    version: str
    owner: str
    state: str
    reason: str
    #: Where the browser opens a WebUI session (through the portal's proxy).
    url: str | None
    created_at: datetime
    ready_at: datetime | None
    ended_at: datetime | None
    last_activity_at: datetime | None
    last_heartbeat_at: datetime | None
    peak_memory_bytes: int | None
    cpu_seconds: float | None
    job_id: int | None


class SessionLaunched(SessionPublic):
    #: A desktop session's token, shown once: the client on the user's computer runs
    #: the app with it. Never set for WebUI sessions (their token stays on the portal).
    token: str | None = None


class SessionEventPublic(BaseModel):
    state: str
    detail: str
    at: datetime


class SessionLogOut(BaseModel):
    lines: list[str]
