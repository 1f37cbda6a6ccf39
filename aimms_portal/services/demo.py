"""The demo content a newcomer sees on the embedded default's first start.

In development mode, when the portal has no runtime versions and no apps yet, this
builds the demo runtime (`examples/runtime-highs`, wheels fetched from PyPI) and the
demo app (`examples/transport`), signs the runtime with a development key that only
this portal trusts, publishes both as the first admin, and lets ``everyone`` read and
run the app. A failure (no network for the wheels, say) is reported and leaves the
portal as it was; the next start tries again.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from sqlmodel import select

from aimms_portal.config import Settings
from aimms_portal.db import REPO_ROOT, session_scope
from aimms_portal.errors import PortalError
from aimms_portal.models import EVERYONE, App, RuntimeVersion, SigningKey, User
from aimms_portal.packages import build_runtime, pack_app, signing
from aimms_portal.services import app_access, apps, runtimes

logger = logging.getLogger(__name__)

EXAMPLES = REPO_ROOT / "examples"
RUNTIME_DIR = EXAMPLES / "runtime-highs"
APP_DIR = EXAMPLES / "transport"
DEV_KEY_NAME = "development key (this portal only)"


def wanted(settings: Settings) -> bool:
    """Whether the demo should be published: development mode, nothing published yet."""
    if settings.environment != "development" or not settings.demo:
        return False
    with session_scope() as session:
        has_runtime = session.exec(select(RuntimeVersion.id)).first() is not None
        has_app = session.exec(select(App.id)).first() is not None
    return not (has_runtime or has_app)


def publish_demo(settings: Settings, *, admin: User, wheel_dir: Path | None = None) -> str:
    """Build, sign and publish the demo runtime and app; returns a one-line summary.

    ``wheel_dir`` offers wheels to use instead of downloading them.

    Raises:
        PortalError: building or publishing failed; the message says why. Nothing stays
            published then (the development key stays trusted, for the next try).
    """
    key_path = settings.data_dir / "development-signing-key.pem"
    private_pem = _development_key(key_path, admin)
    with tempfile.TemporaryDirectory(prefix="demo-") as scratch:
        folder = Path(scratch)
        package = folder / "runtime.zip"
        manifest = build_runtime(RUNTIME_DIR, package, wheel_dir=wheel_dir)
        signature = signing.sign_file(private_pem, package)
        # the app is packed (and so checked) before anything is published
        bundle = folder / "transport.zip"
        app_manifest = pack_app(APP_DIR, bundle)

        with open(package, "rb") as stream:
            runtimes.upload_runtime(actor=admin, source=stream, signature=signature.to_json())
        try:
            with open(bundle, "rb") as stream:
                apps.publish_bundle(actor=admin, source=stream)
        except BaseException:
            # a runtime alone would make wanted() false: the next start would not try again
            _withdraw_runtime(admin, manifest.name, manifest.version)
            raise
    with session_scope() as session:
        for right in ("read", "run"):
            app_access.set_grant(
                session,
                actor=admin,
                name=app_manifest.name,
                principal_type="group",
                principal_name=EVERYONE,
                right=right,
                effect="allow",
            )
    return (
        f"demo published: runtime {manifest.name} {manifest.version}, "
        f"app {app_manifest.name} {app_manifest.version} (everyone may run it)"
    )


def _withdraw_runtime(admin: User, name: str, version: str) -> None:
    """Delete the demo runtime again after the app failed to publish (it has no releases)."""
    try:
        with session_scope() as session:
            runtimes.delete_runtime(session, actor=admin, name=name, version=version)
    except Exception:  # the publishing error is the one to report; this one is logged
        logger.exception("could not withdraw the demo runtime %s %s", name, version)


def _development_key(path: Path, admin: User) -> bytes:
    """This portal's development signing key, created and trusted on first use."""
    if path.exists():
        private_pem = path.read_bytes()
    else:
        private_pem, _ = signing.generate_signing_key()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_bytes(private_pem)
    public = signing.public_text_of(private_pem)
    with session_scope() as session:
        if (
            session.exec(
                select(SigningKey.id).where(SigningKey.fingerprint == signing.fingerprint(public))
            ).first()
            is None
        ):
            from aimms_portal.services.signing_keys import add_signing_key

            add_signing_key(session, actor=admin, name=DEV_KEY_NAME, public_key=public)
    return private_pem


def publish_demo_if_wanted(settings: Settings, admin: User) -> str | None:
    """:func:`publish_demo` on a fresh development portal; a failure is logged, not raised."""
    if not wanted(settings):
        return None
    try:
        return publish_demo(settings, admin=admin)
    except (PortalError, OSError) as exc:
        message = exc.message if isinstance(exc, PortalError) else str(exc)
        logger.warning("demo content not published: %s", message)
        return f"demo content not published: {message}"
