"""Storage in a folder of the portal's machine (embedded mode, single servers)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from aimms_portal.errors import NotFound, Unavailable
from aimms_portal.storage.base import (
    CHUNK_SIZE,
    HashingReader,
    ObjectInfo,
    Readable,
    StagedPut,
    Storage,
    StoredObject,
    check_key,
    check_prefix,
)

logger = logging.getLogger(__name__)

#: Uploads in progress live here, inside the root so the final rename is atomic.
_TMP = ".incoming"


class LocalStorage(Storage):
    """Objects as files under ``root``; a put writes a temporary file, then renames it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(
        self, key: str, source: Readable | Iterable[bytes], *, max_bytes: int | None = None
    ) -> StoredObject:
        target = self._path(key)
        tmp = self.root / _TMP / uuid.uuid4().hex
        reader = HashingReader(source, max_bytes)
        try:
            with _folder_errors(key):
                tmp.parent.mkdir(parents=True, exist_ok=True)
                out = open(tmp, "xb")  # noqa: SIM115 (closed by the block below)
            with out:
                # only the folder's own steps are wrapped: an OSError of the source (such as
                # the ConnectionResetError of a dropped upload) is not the folder's fault
                while chunk := reader.read(CHUNK_SIZE):
                    with _folder_errors(key):
                        out.write(chunk)
                with _folder_errors(key):
                    out.flush()
                    os.fsync(out.fileno())
            with _folder_errors(key):
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):  # keep the first error, not the clean-up's
                tmp.unlink(missing_ok=True)
            raise
        logger.debug("stored %s (%d bytes)", key, reader.size)
        return StoredObject(key=key, size=reader.size, sha256=reader.sha256)

    def stage(
        self, key: str, *, max_bytes: int | None = None, spool_dir: Path | None = None
    ) -> StagedPut:
        return _LocalStaged(self, key, max_bytes)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(f"No stored object {key!r}.") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # prune folders the object leaves empty, never the root itself
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        folder = check_prefix(prefix).rpartition("/")[0]
        base = self.root / folder if folder else self.root
        if not base.is_dir():
            return
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            if Path(dirpath) == self.root and _TMP in dirnames:
                dirnames.remove(_TMP)
            for filename in filenames:
                path = Path(dirpath) / filename
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(ObjectInfo(key=key, size=path.stat().st_size))
        yield from sorted(found, key=lambda info: info.key)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / _TMP / f"ready-{uuid.uuid4().hex}"
            probe.parent.mkdir(exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise Unavailable(
                f"The storage folder {self.root} is not writable: {exc.strerror}."
            ) from exc

    def free_bytes(self) -> int:
        """Free space on the storage folder's file system."""
        return shutil.disk_usage(self.root).free


#: What os.link raises where a file system has no hard links.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS}


class _LocalStaged(StagedPut):
    """A staged object in the folder's temporary area, linked into place by :meth:`finish`.

    The bytes are written once, beside the objects (no copy elsewhere). :meth:`finish`
    syncs the file and gives it the object's name through a second hard link, so the
    staged file itself stays where it is for whoever still reads it; the object appears
    at once, complete (the link is renamed over the key).
    """

    def __init__(self, storage: LocalStorage, key: str, max_bytes: int | None) -> None:
        self._storage = storage
        self._target = storage._path(key)
        incoming = storage.root / _TMP
        path = incoming / uuid.uuid4().hex
        with _folder_errors(key):
            incoming.mkdir(parents=True, exist_ok=True)
            path.touch(exist_ok=False)
        super().__init__(key, path, max_bytes)

    def written(self, size: int) -> None:
        pass  # the bytes are where they belong already

    def finish(self) -> None:
        link = self._storage.root / _TMP / uuid.uuid4().hex
        try:
            with _folder_errors(self.key):
                with open(self.path, "rb") as staged:
                    os.fsync(staged.fileno())
                _link_or_copy(self.path, link)
                self._target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(link, self._target)
        except BaseException:
            with contextlib.suppress(OSError):  # keep the first error, not the clean-up's
                link.unlink(missing_ok=True)
            raise
        self.finished = True
        logger.debug("stored %s (staged)", self.key)

    def close(self, *, keep: bool) -> None:
        unfinished = keep and not self.finished
        keep = keep and not unfinished
        try:
            if not keep and self.finished:
                self._storage.delete(self.key)
                self.finished = False
        finally:
            self.path.unlink(missing_ok=True)
        if unfinished:
            raise RuntimeError(f"{self.key}: only a finished object can be kept")


def _link_or_copy(source: Path, link: Path) -> None:
    """A second name for ``source``; a synced copy where the file system has no links."""
    try:
        os.link(source, link)
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        shutil.copyfile(source, link)
        with open(link, "rb") as copy:
            os.fsync(copy.fileno())


@contextlib.contextmanager
def _folder_errors(key: str) -> Iterator[None]:
    """Report a failing file-system step as :class:`Unavailable` (the folder, not the input)."""
    try:
        yield
    except OSError as exc:
        raise Unavailable(
            "The storage folder cannot be written.", log_detail=f"{key}: {exc}"
        ) from exc
