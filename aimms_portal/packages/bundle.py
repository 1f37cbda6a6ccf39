"""App bundles: packing a folder into one, and validating an uploaded one.

A bundle is an archive with ``app.json`` at its top plus the app's files
(docs/formats.md, "App bundle"), optionally encrypted for one portal
(:mod:`aimms_portal.packages.encryption`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aimms_portal.errors import InvalidInput
from aimms_portal.packages import encryption
from aimms_portal.packages.archives import (
    DEFAULT_EXCLUDE,
    DEFAULT_LIMITS,
    Entry,
    Limits,
    exclusion_filter,
    read_member,
    scan_archive,
    write_zip,
)
from aimms_portal.packages.icons import MAX_ICON_BYTES, check_icon, icon_error
from aimms_portal.packages.manifests import (
    MAX_MANIFEST_BYTES,
    AppManifest,
    ManifestError,
    parse_app_manifest,
)

logger = logging.getLogger(__name__)

MANIFEST_NAME = "app.json"


@dataclass(frozen=True)
class InspectedBundle:
    """What :func:`inspect_bundle` found in a valid bundle.

    Attributes:
        manifest: The validated ``app.json``.
        icon: The icon's bytes, or None if the manifest names no icon.
        icon_type: The icon's content type (see :func:`~.icons.check_icon`), or None.
        encrypted: Whether the file is an encrypted bundle.
        key_fingerprint: The portal key it is encrypted for, or None.
        entries: The files and folders of the (decrypted) archive.
    """

    manifest: AppManifest
    icon: bytes | None
    icon_type: str | None
    encrypted: bool
    key_fingerprint: str | None
    entries: list[Entry] = field(default_factory=list)


def pack_app(
    src_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    encrypt_for: bytes | None = None,
) -> AppManifest:
    """Pack the app folder ``src_dir`` into a bundle at ``out_path``; return its manifest.

    ``app.json`` and the icon are validated before anything is written, and the packed
    ZIP is checked as the portal will check it. With ``encrypt_for`` (a portal's public
    key PEM) the bundle is written encrypted for that portal. Files matching
    :data:`~.archives.DEFAULT_EXCLUDE` are left out.

    Raises:
        InvalidInput: invalid ``app.json`` (``invalid_manifest``) or icon
            (``invalid_icon``), an unsafe folder (``invalid_archive``: links, bad names),
            or an unusable ``encrypt_for`` key (``invalid_key``).
    """
    src = Path(src_dir)
    out = Path(out_path)
    manifest_path = src / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ManifestError(MANIFEST_NAME, [f"not found in {src}"])
    manifest = parse_app_manifest(_read_at_most(manifest_path, MAX_MANIFEST_BYTES))
    if manifest.icon is not None:
        icon_path = src / manifest.icon
        if icon_path.is_symlink() or not icon_path.is_file():
            raise _missing_icon(manifest.icon)
        check_icon(_read_at_most(icon_path, MAX_ICON_BYTES), manifest.icon)
    if encrypt_for is not None:
        encryption.public_fingerprint(encrypt_for)  # a bad key fails before the work

    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".zip", dir=out.parent)
    os.close(fd)
    plain = Path(tmp_name)
    try:
        write_zip(src, plain, exclude=_exclusion(src, out))
        inspect_bundle(plain)
        if encrypt_for is None:
            os.replace(plain, out)
        else:
            encryption.encrypt_file(plain, out, encrypt_for)
    finally:
        plain.unlink(missing_ok=True)
    logger.info("packed %s %s into %s", manifest.name, manifest.version, out)
    return manifest


def _exclusion(src: Path, out: Path) -> Callable[[str], bool]:
    # an earlier bundle written into the app's own folder must not be packed into the next
    skip = exclusion_filter(DEFAULT_EXCLUDE)
    own = os.path.realpath(out)
    return lambda rel: skip(rel) or os.path.realpath(src / rel) == own


def _read_at_most(path: Path, limit: int) -> bytes:
    # one byte more than the limit, so that the parser reports "larger than"
    with open(path, "rb") as file:
        return file.read(limit + 1)


def _missing_icon(icon: str) -> ManifestError:
    return ManifestError(MANIFEST_NAME, [f"'icon' names {icon!r}, which is not a file of the app"])


def inspect_bundle(
    path: str | os.PathLike[str],
    *,
    private_pem: bytes | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> InspectedBundle:
    """Validate a whole bundle, encrypted or not, and return what it holds.

    Every entry is checked and read (archive rules and limits), ``app.json`` must be at
    the top and valid, and the icon it names must be a file of the bundle and a valid
    icon. An encrypted bundle is decrypted with ``private_pem`` (the portal's private
    key) into a temporary file that is removed again before this returns.

    Raises:
        ArchiveError: the archive breaks a rule (``invalid_archive``).
        InvalidInput: ``invalid_manifest``, ``invalid_icon``; for encrypted bundles
            ``key_required`` (no ``private_pem``), ``wrong_portal``, ``tampered``.
    """
    if not encryption.is_encrypted(path):
        return _inspect_plain(path, limits, encrypted=False, key_fingerprint=None)
    header = encryption.read_header(path)
    if private_pem is None:
        raise InvalidInput("encrypted bundle needs the portal's key", code="key_required")
    with tempfile.TemporaryDirectory(prefix="aimms-bundle-") as work:
        plain = Path(work) / "bundle"
        encryption.decrypt_file(path, plain, private_pem)
        return _inspect_plain(plain, limits, encrypted=True, key_fingerprint=header.key)


def _inspect_plain(
    path: str | os.PathLike[str],
    limits: Limits,
    *,
    encrypted: bool,
    key_fingerprint: str | None,
) -> InspectedBundle:
    entries, kept = scan_archive(path, {MANIFEST_NAME: limits.max_manifest_bytes}, limits)
    if MANIFEST_NAME not in kept:
        raise ManifestError(MANIFEST_NAME, ["not found at the top of the bundle"])
    manifest = parse_app_manifest(kept[MANIFEST_NAME], max_bytes=limits.max_manifest_bytes)

    icon: bytes | None = None
    icon_type: str | None = None
    if manifest.icon is not None:
        if not any(e.name == manifest.icon and not e.is_dir for e in entries):
            raise _missing_icon(manifest.icon)
        size = next(e.size for e in entries if e.name == manifest.icon)
        if size > MAX_ICON_BYTES:
            raise icon_error(manifest.icon, "is larger than 512 KiB")
        icon = read_member(path, manifest.icon, MAX_ICON_BYTES, limits)
        icon_type = check_icon(icon, manifest.icon)
    return InspectedBundle(
        manifest=manifest,
        icon=icon,
        icon_type=icon_type,
        encrypted=encrypted,
        key_fingerprint=key_fingerprint,
        entries=entries,
    )
