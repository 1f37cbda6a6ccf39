"""Make runtime packages and app bundles for tests, from the corpus's valid ones.

Each helper returns files under a folder the test owns; packages are signed with the
corpus's test key, which :func:`trust_test_key` makes the portal trust.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from aimms_portal.db import session_scope
from aimms_portal.models import SigningKey, User
from aimms_portal.packages import pack_app, signing, write_zip
from aimms_portal.services import apps, runtimes, signing_keys
from tests.corpus import CORPUS_DIR, TEST_SIGNING_KEY_FILE, TRUSTED_KEY_FILE

RUNTIME_NAME = "corpus-runtime"
APP_NAME = "corpus-app"


def trust_test_key(admin: User) -> SigningKey:
    """Make the portal trust the corpus's test signing key."""
    with session_scope() as session:
        return signing_keys.add_signing_key(
            session,
            actor=admin,
            name="corpus test key",
            public_key=TRUSTED_KEY_FILE.read_text().strip(),
        )


def _unpack(archive: Path, folder: Path) -> Path:
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(folder)  # noqa: S202  (the corpus's own valid file)
    return folder


def runtime_package(folder: Path, version: str, name: str = RUNTIME_NAME) -> tuple[Path, bytes]:
    """A valid runtime package ``name version`` and its ``.sig`` file's bytes."""
    source = _unpack(CORPUS_DIR / "runtime_valid.zip", folder / f"runtime-{name}-{version}")
    manifest_path = source / "runtime.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(name=name, version=version)
    manifest_path.write_text(json.dumps(manifest))
    package = folder / f"{name}-{version}.zip"
    write_zip(source, package)
    signature = signing.sign_file(TEST_SIGNING_KEY_FILE.read_bytes(), package)
    return package, signature.to_json()


def app_bundle(
    folder: Path,
    version: str,
    name: str = APP_NAME,
    *,
    runtime: str = ">=1.0",
    encrypt_for: bytes | None = None,
    **fields: object,
) -> Path:
    """A valid app bundle ``name version`` needing ``corpus-runtime runtime``."""
    source = _unpack(CORPUS_DIR / "bundle_valid.zip", folder / f"app-{name}-{version}")
    manifest_path = source / "app.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(name=name, version=version, **fields)
    manifest["runtime"]["version"] = runtime
    manifest_path.write_text(json.dumps(manifest))
    bundle = folder / f"{name}-{version}.bundle"
    pack_app(source, bundle, encrypt_for=encrypt_for)
    return bundle


def upload_runtime(actor: User, folder: Path, version: str, name: str = RUNTIME_NAME) -> None:
    """Upload a runtime version through the service."""
    package, signature = runtime_package(folder, version, name)
    with open(package, "rb") as stream:
        runtimes.upload_runtime(actor=actor, source=stream, signature=signature)


def publish(actor: User, bundle: Path, *, hide_previous: bool = False) -> None:
    """Publish a bundle through the service."""
    with open(bundle, "rb") as stream:
        apps.publish_bundle(actor=actor, source=stream, hide_previous=hide_previous)
