"""The portal's one settings class.

Every setting is read from the environment with the prefix ``AIMMS_PORTAL_`` (for
example ``AIMMS_PORTAL_DATABASE_URL``) or from a ``.env`` file in the working folder.
The defaults give the embedded mode: a SQLite file and a storage folder under
``data/``, sessions as local processes. Outside development mode the settings refuse
defaults that are only safe on a laptop.
"""

from __future__ import annotations

import functools
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The secret used when none is configured. Good enough on a laptop, refused elsewhere.
DEVELOPMENT_SECRET = "development-secret-do-not-use-in-production"  # noqa: S105

#: Where the embedded mode keeps its database and storage, relative to the working folder.
DEFAULT_DATA_DIR = Path("data")


class Settings(BaseSettings):
    """Configuration of one portal process; all processes of one portal share it."""

    model_config = SettingsConfigDict(env_prefix="AIMMS_PORTAL_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = Field(
        "development",
        description=(
            "`development` accepts the built-in secret and plain-http cookies; "
            "`production` refuses insecure defaults at start-up."
        ),
    )
    data_dir: Path = Field(
        DEFAULT_DATA_DIR,
        description="Folder for the embedded database and local storage when their URLs are unset.",
    )
    database_url: str = Field(
        "",
        description=(
            "SQLAlchemy URL of the administrative database, e.g. "
            "`postgresql+psycopg2://user@host/db`. Empty: a SQLite file in `data_dir`."
        ),
    )
    storage_url: str = Field(
        "",
        description=(
            "Where packages, bundles and cases are kept: `file:///abs/folder` or "
            "`s3://bucket/prefix`. Empty: the folder `storage` in `data_dir`."
        ),
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint for S3-compatible stores; unset for AWS itself."
    )
    s3_region: str = Field("us-east-1", description="Region of the S3 bucket.")
    launcher: Literal["local", "docker", "ecs"] = Field(
        "local", description="Backend that runs session containers."
    )
    secret_key: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRET),
        description=(
            "Key for CSRF tokens and other server-side signatures; at least 32 characters "
            "outside development mode."
        ),
    )
    public_url: str = Field(
        "http://localhost:3000",
        description="The address users type in their browser; also decides `Secure` cookies.",
    )
    port: int = Field(3000, description="Port `aimms-portal run` serves the portal on.")
    upload_max_bytes: int = Field(
        2 * 1024**3, description="Largest accepted upload (bundle, package or case) in bytes."
    )
    retention_days: int = Field(
        30, ge=1, description="Days finished jobs, their cases and the audit log are kept."
    )
    browser_session_hours: int = Field(
        12, ge=1, le=24 * 30, description="Lifetime of a browser log-on."
    )
    login_failures_per_name: int = Field(
        10,
        ge=1,
        description=(
            "Failed log-ons for one user name from one address within the failure window "
            "after which that name is refused from that address until the window has passed."
        ),
    )
    login_failures_per_address: int = Field(
        50,
        ge=1,
        description=(
            "Failed log-ons from one address, whatever the user names, within the failure "
            "window after which every log-on from that address is refused until it has passed."
        ),
    )
    login_failure_window_minutes: int = Field(
        15, ge=1, le=24 * 60, description="The window in which failed log-ons are counted."
    )
    hook_private_addresses: bool | None = Field(
        None,
        description=(
            "Whether state hooks may go to loopback, private, link-local and other "
            "non-public addresses (checked at each connection, after name resolution). "
            "Unset: allowed in development mode, refused in production."
        ),
    )
    metrics_token: SecretStr | None = Field(
        None,
        description=(
            "If set, `/metrics` answers only requests with `Authorization: Bearer <this "
            "value>` (Prometheus: `authorization: {credentials: ...}`). Unset: open to all."
        ),
    )
    trusted_proxies: str = Field(
        "",
        description=(
            "Comma-separated addresses or networks (e.g. `10.0.0.0/8`) of reverse proxies "
            "whose `X-Forwarded-For` names the client's address (for the audit log and the "
            "log-on limits). Empty: the TCP peer is the client."
        ),
    )
    runner_portal_url: str = Field(
        "",
        description=(
            "Address at which session runners reach the portal's REST API. Empty: "
            "`http://127.0.0.1:<port>` (right for the local launcher)."
        ),
    )
    sessions_dir: Path | None = Field(
        None,
        description=(
            "Folder of the local launcher's session working folders. Unset: `sessions` "
            "in `data_dir`."
        ),
    )
    runtime_cache_dir: Path | None = Field(
        None,
        description=(
            "Folder where local sessions keep prepared runtime environments and unpacked "
            "bundles, by digest. Unset: `runtime-cache` in `data_dir`."
        ),
    )
    max_solve_sessions: int = Field(
        4, ge=1, description="Solve sessions the launcher may run at once (jobs in progress)."
    )
    max_jobs_per_user: int = Field(
        2, ge=1, description="Jobs of one user that may be in progress at once."
    )
    max_jobs_per_app: int = Field(
        4, ge=1, description="Jobs of one app that may be in progress at once."
    )
    job_max_attempts: int = Field(
        3, ge=1, le=20, description="Attempts a job gets before a lost session fails it."
    )
    job_lease_seconds: float = Field(
        10.0,
        gt=0,
        description=(
            "A running job whose session has not heartbeat for this long counts as lost "
            "and goes back to the queue (detected within about this plus one second)."
        ),
    )
    heartbeat_seconds: float = Field(
        2.0, gt=0, description="How often runners heartbeat; well below the lease."
    )
    job_default_time_limit_s: int = Field(
        3600, ge=1, description="Time limit of a job whose release names none."
    )
    job_max_time_limit_s: int = Field(
        24 * 3600, ge=1, description="The longest time limit anyone but an admin may ask for."
    )
    solve_idle_seconds: float = Field(
        300.0,
        ge=0,
        description="How long a solve session waits for another job of its release and user.",
    )
    session_start_timeout_s: float = Field(
        300.0,
        gt=0,
        description=(
            "A session that is not ready this long after its start is stopped and counts "
            "as failed (the first start of a runtime builds its environment)."
        ),
    )
    max_sessions_per_user: int = Field(
        2, ge=1, description="WebUI and desktop sessions one user may have at once (seats)."
    )
    max_webui_sessions: int = Field(
        20, ge=1, description="WebUI sessions the launcher may run at once, for all users."
    )
    webui_idle_minutes: float = Field(
        15.0,
        gt=0,
        description=(
            "A WebUI session without proxied traffic or an open WebSocket for this long "
            "is ended (culled)."
        ),
    )
    webui_max_hours: float = Field(
        12.0, gt=0, description="A WebUI or desktop session is ended this long after its start."
    )
    webui_answer_timeout_s: float = Field(
        60.0,
        gt=0,
        description="How long a WebUI session's app may take to answer once the runtime is ready.",
    )
    desktop_encrypted: bool = Field(
        False,
        description=(
            "Allow desktop client sessions of encrypted releases (their bundle is then "
            "decrypted on the user's computer)."
        ),
    )
    job_log_max_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Log kept per job attempt; the rest is cut off."
    )
    log_level: str = Field("INFO", description="Level of the portal's own loggers.")
    log_format: Literal["text", "json"] = Field(
        "text", description="`json` writes one JSON object per log record."
    )
    admin_username: str = Field(
        "admin", description="User name of the first admin created at first start."
    )
    admin_password: SecretStr | None = Field(
        None,
        description=(
            "Password of the first admin. Unset: a password is generated and printed once "
            "at first start (embedded mode)."
        ),
    )
    admin_email: str = Field("", description="E-mail address of the first admin.")
    demo: bool = Field(
        True,
        description=(
            "Publish the demo runtime and app at the first start of a development portal "
            "(ignored in production mode)."
        ),
    )

    @property
    def hooks_may_reach_private_addresses(self) -> bool:
        if self.hook_private_addresses is None:
            return self.environment != "production"
        return self.hook_private_addresses

    @property
    def trusted_proxy_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        return _networks(self.trusted_proxies)

    @model_validator(mode="after")
    def _check_trusted_proxies(self) -> Settings:
        try:
            _networks(self.trusted_proxies)
        except ValueError as exc:
            raise ValueError(f"AIMMS_PORTAL_TRUSTED_PROXIES: {exc}") from exc
        return self

    @model_validator(mode="after")
    def _refuse_insecure_production(self) -> Settings:
        if self.environment != "production":
            return self
        problems = []
        secret = self.secret_key.get_secret_value()
        if secret == DEVELOPMENT_SECRET or len(secret) < 32:
            problems.append(
                "AIMMS_PORTAL_SECRET_KEY must be set to a random value of at least 32 "
                "characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        if not self.public_url.startswith("https://"):
            problems.append("AIMMS_PORTAL_PUBLIC_URL must be an https:// address")
        if problems:
            raise ValueError("insecure settings refused in production mode: " + "; ".join(problems))
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'portal.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        """The storage URL, defaulting to the embedded storage folder."""
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "storage").resolve().as_uri()

    @property
    def resolved_sessions_dir(self) -> Path:
        return (self.sessions_dir or self.data_dir / "sessions").resolve()

    @property
    def resolved_runtime_cache_dir(self) -> Path:
        return (self.runtime_cache_dir or self.data_dir / "runtime-cache").resolve()

    @property
    def resolved_runner_portal_url(self) -> str:
        return (self.runner_portal_url or f"http://127.0.0.1:{self.port}").rstrip("/")

    @property
    def secure_cookies(self) -> bool:
        """Cookies carry `Secure` when users reach the portal over https."""
        return self.public_url.startswith("https://")


@functools.cache
def _networks(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    return tuple(ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


@functools.cache
def get_settings() -> Settings:
    """The settings of this process, read once from the environment."""
    return Settings()
