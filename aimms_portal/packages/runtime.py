"""Runtime packages: building one from a folder, and validating an uploaded one.

A runtime package is an archive of ``runtime.json`` plus ``wheels/*.whl``
(docs/formats.md, "Runtime package"). Its signature is a separate matter
(:mod:`aimms_portal.packages.signing`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from aimms_portal.errors import InvalidInput
from aimms_portal.packages.archives import (
    DEFAULT_LIMITS,
    Limits,
    scan_archive,
    write_zip,
)
from aimms_portal.packages.manifests import ManifestError, RuntimeManifest, parse_runtime_manifest

logger = logging.getLogger(__name__)

MANIFEST_NAME = "runtime.json"
REQUIREMENTS_NAME = "requirements.txt"
WHEELS_DIR = "wheels"


def build_runtime(
    src_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    wheel_dir: str | os.PathLike[str] | None = None,
    pip_args: Sequence[str] = (),
) -> RuntimeManifest:
    """Build a runtime package at ``out_path`` from ``src_dir``; return its manifest.

    ``src_dir`` holds ``runtime.json`` and optionally ``requirements.txt``. The wheels
    are the ``*.whl`` files of ``wheel_dir`` if given (offline builds); otherwise pip
    downloads the requirements and all their dependencies as wheels only
    (``pip download --only-binary=:all:``) for the Python running this, with
    ``pip_args`` added (e.g. ``--index-url``). The package is checked with
    :func:`inspect_runtime` before it is written to ``out_path``.

    Raises:
        InvalidInput: an invalid ``runtime.json`` (``invalid_manifest``), a bad wheel
            name (``invalid_package``), or pip failing (``build_failed``, with pip's
            last words). Nothing is written to ``out_path`` then.
    """
    src = Path(src_dir)
    manifest_path = src / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ManifestError(MANIFEST_NAME, [f"not found in {src}"])
    manifest_bytes = manifest_path.read_bytes()
    manifest = parse_runtime_manifest(manifest_bytes)

    with tempfile.TemporaryDirectory(prefix="aimms-runtime-") as work:
        stage = Path(work) / "package"
        wheels = stage / WHEELS_DIR
        wheels.mkdir(parents=True)
        (stage / MANIFEST_NAME).write_bytes(manifest_bytes)
        if wheel_dir is not None:
            for wheel in sorted(Path(wheel_dir).glob("*.whl")):
                shutil.copyfile(wheel, wheels / wheel.name)
        elif (src / REQUIREMENTS_NAME).is_file():
            _download_wheels(src / REQUIREMENTS_NAME, wheels, pip_args)
        package = Path(work) / "package.zip"
        write_zip(stage, package, exclude=())
        # checked before it is put in place: out_path never holds a package that fails
        inspect_runtime(package)
        _move_into_place(package, Path(out_path))

    logger.info("built runtime %s %s at %s", manifest.name, manifest.version, out_path)
    return manifest


def _move_into_place(source: Path, target: Path) -> None:
    # a copy beside the target first (the temporary folder may be on another file
    # system), then an atomic rename
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp_name)
        os.chmod(tmp_name, 0o644)  # mkstemp made it 0600
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _download_wheels(requirements: Path, dest: Path, pip_args: Sequence[str]) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-input",
        "--only-binary=:all:",
        "--dest",
        str(dest),
        "-r",
        str(requirements),
        *pip_args,
    ]
    logger.info("fetching wheels: %s", " ".join(command[1:]))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise InvalidInput(f"pip could not fetch the wheels:\n{tail}", code="build_failed")


def inspect_runtime(
    path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS
) -> RuntimeManifest:
    """Validate a whole runtime package and return its manifest.

    Every entry is checked and read (archive rules and limits), ``runtime.json`` must be
    at the top and valid, and every other file must be a ``wheels/<name>.whl`` with a
    valid wheel file name.

    Raises:
        ArchiveError: the archive breaks a rule (``invalid_archive``).
        InvalidInput: ``invalid_manifest`` (missing, oversized or invalid manifest),
            ``invalid_package`` (a file that does not belong in a runtime package).
    """
    entries, kept = scan_archive(path, {MANIFEST_NAME: limits.max_manifest_bytes}, limits)
    if MANIFEST_NAME not in kept:
        raise ManifestError(MANIFEST_NAME, ["not found at the top of the package"])
    for entry in entries:
        if entry.name == MANIFEST_NAME or (entry.is_dir and entry.name == WHEELS_DIR):
            continue
        _check_wheel_entry(entry.name, entry.is_dir)
    return parse_runtime_manifest(kept[MANIFEST_NAME], max_bytes=limits.max_manifest_bytes)


def _check_wheel_entry(name: str, is_dir: bool) -> None:
    folder, _, file_name = name.rpartition("/")
    if is_dir or folder != WHEELS_DIR or not file_name.endswith(".whl"):
        raise InvalidInput(
            f"{name!r} does not belong in a runtime package: it holds runtime.json and "
            "wheels/*.whl only",
            code="invalid_package",
        )
    try:
        parse_wheel_filename(file_name)
    except InvalidWheelFilename:
        raise InvalidInput(
            f"{name!r} is not a valid wheel file name", code="invalid_package"
        ) from None
