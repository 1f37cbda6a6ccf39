"""Runtime versions: upload (signed packages only), list, show, delete.

An upload may take minutes, so :func:`upload_runtime` opens its own short units of
work around it instead of holding a database connection for the whole transfer.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from packaging.version import Version
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from aimms_portal.auth.access import Action, require
from aimms_portal.config import get_settings
from aimms_portal.db import session_scope
from aimms_portal.errors import Conflict, InvalidInput, NotFound
from aimms_portal.models import Release, RuntimeVersion, User
from aimms_portal.packages import inspect_runtime, signing
from aimms_portal.services import audit
from aimms_portal.services.signing_keys import trusted_key
from aimms_portal.services.uploads import Spool
from aimms_portal.storage import get_storage
from aimms_portal.storage.base import Readable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeUsage:
    """A runtime version with how many releases run on it."""

    runtime: RuntimeVersion
    releases: int


def upload_runtime(
    *,
    actor: User,
    source: Readable | Iterable[bytes],
    signature: bytes,
    source_ip: str = "",
) -> RuntimeVersion:
    """Receive a signed runtime package, verify it, store it and record it.

    ``signature`` is the package's ``.sig`` file (see docs/formats.md). The signing key
    must be trusted before the package is read at all; the signature is checked against
    the SHA-256 computed while the package streams into storage; then the whole archive
    and its manifest are validated. Anything refused leaves no row and no object.

    Raises:
        PermissionDenied: the actor may not manage runtimes.
        InvalidInput: bad signature file, untrusted key, signature that does not match,
            invalid archive or manifest.
        TooLarge: the package exceeds the upload limit.
        Conflict: this runtime name and version exist already.
    """
    require(actor, Action.manage_runtimes)
    sig = signing.Signature.from_json(signature)
    with session_scope() as session:
        key = trusted_key(session, sig.key)
        if key is None:
            raise InvalidInput(
                f"The package is signed by a key this portal does not trust ({sig.key[:16]}).",
                code="untrusted_key",
            )
        key_text, key_name = key.public_key, key.name

    settings = get_settings()
    storage_key = f"runtimes/{uuid.uuid4().hex}.pkg"
    with Spool(get_storage(), storage_key, max_bytes=settings.upload_max_bytes) as spool:
        stored = spool.receive(source)
        if not signing.verify(key_text, stored.sha256, sig):
            raise InvalidInput(
                "The signature does not match the package: it was changed after signing, "
                "or signed by another key.",
                code="bad_signature",
            )
        manifest = inspect_runtime(spool.path)
        spool.finish()  # (storage finished the object while the package was inspected)

        with session_scope() as session:
            _refuse_duplicate(session, manifest.name, manifest.version)
            runtime = RuntimeVersion(
                name=manifest.name,
                version=manifest.version,
                python_requires=manifest.python,
                description=manifest.description,
                sha256=stored.sha256,
                size=stored.size,
                storage_key=storage_key,
                signature=sig.signature,
                signer_fingerprint=sig.key,
                signer_name=key_name,
                uploaded_by=actor.username,
            )
            session.add(runtime)
            try:
                session.flush()
            except IntegrityError as exc:  # a concurrent upload of the same version won
                raise Conflict(
                    f"Runtime {manifest.name} {manifest.version} exists already.",
                    code="duplicate_version",
                ) from exc
            audit.record(
                session,
                action="runtime.upload",
                actor=actor,
                target_type="runtime",
                target_id=runtime.id or "",
                target_name=f"{runtime.name} {runtime.version}",
                source_ip=source_ip,
                detail=f"sha256={stored.sha256[:16]} signer={key_name}",
            )
            session.commit()
            spool.keep()
    logger.info("runtime %s %s uploaded by %s", runtime.name, runtime.version, actor.username)
    return runtime


def _refuse_duplicate(session: Session, name: str, version: str) -> None:
    exists = session.exec(
        select(RuntimeVersion.id).where(
            RuntimeVersion.name == name, RuntimeVersion.version == version
        )
    ).first()
    if exists is not None:
        raise Conflict(f"Runtime {name} {version} exists already.", code="duplicate_version")


def list_runtimes(session: Session, *, actor: User) -> list[RuntimeUsage]:
    """Every runtime version, by name and newest version first, with its release count."""
    require(actor, Action.manage_runtimes)
    counts = dict(
        session.exec(
            select(Release.runtime_version_id, func.count()).group_by(
                col(Release.runtime_version_id)
            )
        ).all()
    )
    runtimes = list(session.exec(select(RuntimeVersion)).all())
    # two stable sorts: by name, and within a name the newest version first
    runtimes.sort(key=lambda r: Version(r.version), reverse=True)
    runtimes.sort(key=lambda r: r.name)
    return [RuntimeUsage(r, counts.get(r.id or 0, 0)) for r in runtimes]


def get_runtime(session: Session, *, actor: User, name: str, version: str) -> RuntimeVersion:
    """One runtime version."""
    require(actor, Action.manage_runtimes)
    runtime = session.exec(
        select(RuntimeVersion).where(RuntimeVersion.name == name, RuntimeVersion.version == version)
    ).first()
    if runtime is None:
        raise NotFound(f"No runtime {name} {version}.")
    return runtime


def show_runtime(session: Session, *, actor: User, name: str, version: str) -> RuntimeUsage:
    """One runtime version with how many releases run on it."""
    runtime = get_runtime(session, actor=actor, name=name, version=version)
    releases = session.exec(
        select(func.count()).select_from(Release).where(Release.runtime_version_id == runtime.id)
    ).one()
    return RuntimeUsage(runtime, releases)


def delete_runtime(
    session: Session, *, actor: User, name: str, version: str, source_ip: str = ""
) -> None:
    """Delete an unused runtime version and its package.

    Raises:
        Conflict: releases run on it (code ``in_use``; the message names them).
    """
    runtime = get_runtime(session, actor=actor, name=name, version=version)
    users = _releases_on(session, runtime)
    if users:
        raise Conflict(
            f"Runtime {name} {version} is used by {', '.join(users[:5])}"
            + (f" and {len(users) - 5} more" if len(users) > 5 else "")
            + "; delete or move those releases first.",
            code="in_use",
        )
    _delete(session, actor=actor, runtime=runtime, source_ip=source_ip)


def delete_unused_runtimes(session: Session, *, actor: User, source_ip: str = "") -> list[str]:
    """Delete every runtime version no release uses; returns ``name version`` of each."""
    require(actor, Action.manage_runtimes)
    used = select(Release.runtime_version_id)
    unused = session.exec(select(RuntimeVersion).where(col(RuntimeVersion.id).not_in(used))).all()
    deleted = []
    for runtime in unused:
        _delete(session, actor=actor, runtime=runtime, source_ip=source_ip)
        deleted.append(f"{runtime.name} {runtime.version}")
    return deleted


def _releases_on(session: Session, runtime: RuntimeVersion) -> list[str]:
    from aimms_portal.models import App

    rows = session.exec(
        select(App.name, Release.version)
        .join(Release, col(Release.app_id) == App.id)
        .where(Release.runtime_version_id == runtime.id)
        .order_by(col(App.name), col(Release.id))
    ).all()
    return [f"{app} {version}" for app, version in rows]


def _delete(session: Session, *, actor: User, runtime: RuntimeVersion, source_ip: str) -> None:
    # the row goes first: a failure to remove the object leaves an orphan blob, never a
    # row that points at nothing
    session.delete(runtime)
    session.flush()
    audit.record(
        session,
        action="runtime.delete",
        actor=actor,
        target_type="runtime",
        target_id=runtime.id or "",
        target_name=f"{runtime.name} {runtime.version}",
        source_ip=source_ip,
    )
    session.commit()
    get_storage().delete(runtime.storage_key)
