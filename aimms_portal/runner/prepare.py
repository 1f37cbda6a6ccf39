"""Preparing a session: the runtime's environment (cached) and the app's bundle.

The runtime environment is built once per runtime package and machine, keyed by the
package's SHA-256 under the cache folder, and shared by every later session of that
runtime: ``<cache>/runtimes/<sha256>/env`` is a virtual environment with the package's
wheels installed offline (``pip --no-index``). Two sessions that prepare the same
runtime at once take turns on a lock file; the second finds it ready. A folder left
half-built by a crash has no ``READY`` mark and is built again.

The package is verified before anything is built from it: its SHA-256 must be the one
the portal recorded, and its Ed25519 signature must verify with the signer's key, which
the portal still trusts (a key an admin removed leaves runtimes it signed unusable).

The bundle is fetched for every session (it is small, and it may be encrypted: a
decrypted bundle is never kept beyond the session's own working folder), checked
against its digest, decrypted with the data key the portal unwraps for this session,
and unpacked under the same archive rules the portal applied at publishing.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from aimms_portal.runner.api import PortalAPI

logger = logging.getLogger(__name__)

READY_MARK = "READY"
#: How long building one runtime environment may take, in seconds.
BUILD_TIMEOUT = 900


class PrepareError(Exception):
    """The session cannot be prepared; the message says why (it goes to the session log)."""


def prepare_runtime(api: PortalAPI, runtime: dict[str, Any], cache_dir: Path) -> Path:
    """The ready environment of ``runtime`` (from the session document): its folder.

    Raises:
        PrepareError: download, digest, signature, Python version or install failed.
    """
    sha = runtime["sha256"]
    root = cache_dir / "runtimes" / sha
    env_dir = root / "env"
    if (root / READY_MARK).exists():
        return env_dir
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{sha}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / READY_MARK).exists():
            logger.info("runtime %s was prepared by another session", runtime["name"])
            return env_dir
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        try:
            _build(api, runtime, root)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        (root / READY_MARK).write_text(sha + "\n")
    return env_dir


def _build(api: PortalAPI, runtime: dict[str, Any], root: Path) -> None:
    from aimms_portal.packages import archives, signing

    _check_python(runtime.get("python_requires") or "")
    label = f"{runtime['name']} {runtime['version']}"
    logger.info("preparing runtime %s", label)
    package = root / "package.zip"
    digest, _ = api.download("/runner/runtime", package)
    if digest != runtime["sha256"]:
        raise PrepareError(f"runtime {label}: the package's SHA-256 is not the recorded one")
    public_key = runtime.get("signer_public_key")
    if not public_key:
        raise PrepareError(f"runtime {label}: its signing key is no longer trusted")
    signature = signing.Signature.from_json(json.dumps(runtime["signature"]).encode())
    if not signing.verify(public_key, digest, signature):
        raise PrepareError(f"runtime {label}: the signature does not verify")

    contents = root / "package"
    archives.extract_all(package, contents)
    package.unlink()
    env_dir = root / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], "create the environment")
    wheels = sorted((contents / "wheels").glob("*.whl")) if (contents / "wheels").is_dir() else []
    if wheels:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(env_dir / "bin" / "python"),
                "install",
                "--no-index",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--find-links",
                str(contents / "wheels"),
                *[str(w) for w in wheels],
            ],
            "install the runtime's wheels",
        )
    logger.info("runtime %s ready (%d wheels)", label, len(wheels))


def _check_python(spec: str) -> None:
    if not spec:
        return
    from packaging.specifiers import SpecifierSet

    here = ".".join(str(p) for p in sys.version_info[:3])
    if here not in SpecifierSet(spec):
        raise PrepareError(f"the runtime needs Python {spec}; this session has {here}")


def _run(argv: list[str], what: str) -> None:
    """Run one build step as a process group of its own, so that an interruption (a
    timeout, the session being stopped) ends the step's every process before the
    half-built folder is removed."""
    try:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            process_group=0,
        )
    except OSError as exc:
        raise PrepareError(f"could not {what}: {exc}") from exc
    try:
        out, err = process.communicate(timeout=BUILD_TIMEOUT)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise PrepareError(f"could not {what} within {BUILD_TIMEOUT} s") from exc
        raise
    if process.returncode != 0:
        tail = (err or out).strip().splitlines()[-5:]
        raise PrepareError(f"could not {what}: " + " | ".join(tail))


def prepare_bundle(api: PortalAPI, bundle: dict[str, Any], work_dir: Path) -> Path:
    """Fetch, check, decrypt and unpack the session's bundle; the app's folder.

    Raises:
        PrepareError: the bundle does not match its digest or does not decrypt.
    """
    from aimms_portal.errors import InvalidInput
    from aimms_portal.packages import archives

    app_dir = work_dir / "app"
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=".bundle-") as scratch:
        stored = Path(scratch) / "bundle"
        digest, _ = api.download("/runner/bundle", stored)
        if digest != bundle["sha256"]:
            raise PrepareError("the bundle's SHA-256 is not the recorded one")
        plain = stored
        if bundle.get("encrypted"):
            from aimms_portal.packages import encryption

            _, answer = api.call("GET", "/runner/bundle-key")
            key = base64.b64decode(answer["key"])
            plain = Path(scratch) / "bundle.plain"
            try:
                encryption.decrypt_with_key(stored, plain, key)
            except InvalidInput as exc:
                raise PrepareError(f"the bundle does not decrypt: {exc.message}") from exc
            finally:
                key = b""
            stored.unlink()
        try:
            archives.extract_all(plain, app_dir)
        except archives.ArchiveError as exc:
            raise PrepareError(f"the bundle cannot be unpacked: {exc}") from exc
    return app_dir
