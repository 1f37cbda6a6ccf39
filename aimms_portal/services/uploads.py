"""Receiving a package or bundle: into storage and, at the same time, into a local copy.

The object goes straight to its final storage key while it streams in (so a large
upload is sent once, at the speed of the storage), and a copy lands in a temporary
local folder where the archive can be inspected with random access. Storage that keeps
objects as local files needs no copy: the stored file itself is inspected. Until the
caller calls :meth:`Spool.keep`, leaving the ``with`` block removes the stored object
again, so a refused or failed upload leaves nothing behind.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from aimms_portal.storage import Storage, StoredObject
from aimms_portal.storage.base import Readable

logger = logging.getLogger(__name__)


class _Tee:
    """A readable that copies everything read through it into ``copy``."""

    def __init__(self, source: Readable | Iterable[bytes], copy: BinaryIO) -> None:
        self._read = getattr(source, "read", None)
        self._chunks: Iterator[bytes] | None = None if self._read else iter(source)  # type: ignore[arg-type]
        self._pending = b""
        self._copy = copy

    def read(self, size: int = -1) -> bytes:
        data = bytes(self._read(size) or b"") if self._read else self._from_chunks(size)
        self._copy.write(data)
        return data

    def _from_chunks(self, size: int) -> bytes:
        assert self._chunks is not None
        if not self._pending:
            self._pending = next(self._chunks, b"")
        if size < 0:
            size = len(self._pending)
        data, self._pending = self._pending[:size], self._pending[size:]
        return bytes(data)


class Spool:
    """One incoming upload: stored under ``key`` and copied to :attr:`path`.

    Use as a context manager; call :meth:`receive` once, inspect :attr:`path`, then
    :meth:`keep` once the upload is accepted and recorded.
    """

    def __init__(
        self, storage: Storage, key: str, *, max_bytes: int, spool_dir: Path | None = None
    ) -> None:
        self.storage = storage
        self.key = key
        self.max_bytes = max_bytes
        self._spool_dir = spool_dir
        self._folder: Path | None = None
        self._stored_file: Path | None = None
        self._received = False
        self._kept = False

    def __enter__(self) -> Spool:
        if self._spool_dir is not None:
            self._spool_dir.mkdir(parents=True, exist_ok=True)
        self._folder = Path(tempfile.mkdtemp(prefix="upload-", dir=self._spool_dir))
        return self

    @property
    def path(self) -> Path:
        """A local file of what was received (read it only): the copy, or the stored file."""
        assert self._folder is not None, "use Spool as a context manager"
        return self._stored_file or self._folder / "upload"

    def receive(self, source: Readable | Iterable[bytes]) -> StoredObject:
        """Stream ``source`` into storage and, unless storage keeps local files, the copy.

        Raises:
            TooLarge: more than ``max_bytes`` arrived (nothing is kept).
            Unavailable: the storage failed (nothing is kept).
        """
        self._received = True
        stored_file = self.storage.local_path(self.key)
        if stored_file is not None:
            # writing the same bytes to the same disk twice would halve the throughput
            stored = self.storage.put(self.key, source, max_bytes=self.max_bytes)
            self._stored_file = stored_file
        else:
            with open(self.path, "wb") as copy:
                stored = self.storage.put(self.key, _Tee(source, copy), max_bytes=self.max_bytes)
        logger.info("received %s: %d bytes, sha256 %s", self.key, stored.size, stored.sha256[:12])
        return stored

    def keep(self) -> None:
        """The upload is accepted: leave the stored object in place."""
        self._kept = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._received and not self._kept:
            try:
                self.storage.delete(self.key)
            except Exception:  # the original error matters more; the orphan is logged
                logger.exception("could not remove refused upload %s", self.key)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
