"""The storage contract: packages, bundles and cases as immutable objects under keys.

Implementations stream in both directions (objects can be far larger than memory),
compute the SHA-256 of what they store while it streams in, and never leave a partial
object behind: a failed :meth:`Storage.put` stores nothing.

Besides :meth:`Storage.put`, an upload that must be inspected before it is accepted
goes through :meth:`Storage.stage`: its bytes land in a local file that storage sends
on while it grows, and that stays readable while storage finishes the object.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from aimms_portal.errors import InvalidInput, TooLarge, Unavailable

CHUNK_SIZE = 1024 * 1024

_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]{0,254}$")


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class StoredObject:
    """What :meth:`Storage.put` stored."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    """An entry of :meth:`Storage.list`."""

    key: str
    size: int


def check_key(key: str) -> str:
    """Refuse keys that could escape their prefix or mean different things per backend.

    A key is 1-1024 characters of ``/``-separated segments; each segment starts with a
    letter or digit and holds letters, digits and ``. _ + = @ -``.

    Raises:
        InvalidInput: the key does not fit.
    """
    segments = key.split("/")
    if not key or len(key) > 1024 or not all(_KEY_SEGMENT.match(s) for s in segments):
        raise InvalidInput(f"Invalid storage key {key[:80]!r}.", code="invalid_key")
    return key


def check_prefix(prefix: str) -> str:
    """Refuse list prefixes that no valid key could start with (``..``, ``/abs``, ...).

    A prefix is empty, or a key (see :func:`check_key`) that may end with ``/`` or in
    the middle of a segment. Checking it keeps a local folder's listing inside its root.

    Raises:
        InvalidInput: the prefix does not fit.
    """
    folder, _, tail = prefix.rpartition("/")
    if (folder or prefix.startswith("/")) and not _fits_key(folder):
        raise InvalidInput(f"Invalid storage prefix {prefix[:80]!r}.", code="invalid_key")
    if tail and not _KEY_SEGMENT.match(tail):
        raise InvalidInput(f"Invalid storage prefix {prefix[:80]!r}.", code="invalid_key")
    return prefix


def _fits_key(key: str) -> bool:
    try:
        check_key(key)
    except InvalidInput:
        return False
    return True


class HashingReader:
    """Wraps a stream of bytes: hashes and counts what passes, enforces a size limit.

    ``source`` is a readable file object or an iterable of ``bytes`` chunks (a single
    ``bytes`` value counts as one chunk). :meth:`read` behaves like a regular file's:
    it returns exactly ``size`` bytes except at the end of the stream, whatever sizes
    the source hands out, because boto3's transfer manager takes a short read for the
    end of the stream (and would silently store a truncated object).
    """

    def __init__(self, source: Readable | Iterable[bytes], max_bytes: int | None = None) -> None:
        if isinstance(source, bytes | bytearray | memoryview):
            source = [bytes(source)]
        self._read = getattr(source, "read", None)
        self._chunks: Iterator[bytes] | None = (
            None if self._read else iter(source)  # type: ignore[arg-type]
        )
        self._pending = memoryview(b"")
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def read(self, size: int | None = -1) -> bytes:
        """The next ``size`` bytes (all that is left if ``size`` is negative or None).

        Raises:
            TooLarge: the stream went past ``max_bytes``.
        """
        wanted = None if size is None or size < 0 else size
        parts: list[bytes] = []
        got = 0
        while wanted is None or got < wanted:
            # a bounded request even for "everything": a real file preallocates `size`
            data = self._read_some(CHUNK_SIZE if wanted is None else wanted - got)
            if not data:
                break
            self._count(data)
            parts.append(data)
            got += len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _count(self, data: bytes) -> None:
        self.size += len(data)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise TooLarge(f"The upload exceeds the limit of {self.max_bytes} bytes.")
        self._hash.update(data)

    def _read_some(self, size: int) -> bytes:
        """Up to ``size`` bytes from the source; ``b""`` only at its end."""
        if self._read is not None:
            return bytes(self._read(size) or b"")
        assert self._chunks is not None
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return b""
        # slices of a memoryview copy nothing: a large chunk is not copied per read
        data, self._pending = self._pending[:size], self._pending[size:]
        return bytes(data)


class StagedPut(ABC):
    """An object on its way into storage from a local file that is still being written.

    Made by :meth:`Storage.stage`. :meth:`receive` writes the object's bytes into
    :attr:`path`, hashing and counting them, and reports every write to :meth:`written`,
    so remote storage sends complete parts of the file while the rest still arrives.
    Once the file is complete, :meth:`finish` stores the object under :attr:`key`.
    :meth:`close` ends the staging: the local file goes, and unless the object is kept,
    so does the object (or whatever was sent of it). Nothing half-written stays behind.

    :attr:`path` stays in place and readable until :meth:`close`, also while
    :meth:`finish` runs on another thread: the upload can be inspected while storage
    finishes it. Calls must not overlap otherwise (one thread at a time).
    """

    def __init__(self, key: str, path: Path, max_bytes: int | None) -> None:
        self.key = key
        #: The local file of the object's bytes: read it only.
        self.path = path
        self.max_bytes = max_bytes
        self.finished = False

    def receive(
        self, source: Readable | Iterable[bytes], *, read_size: int = CHUNK_SIZE
    ) -> StoredObject:
        """Write everything ``source`` gives into :attr:`path`; its size and SHA-256.

        A readable is read ``read_size`` bytes at a time; chunks of an iterable are
        taken as they come (joining them into reads of one size would copy every byte).

        Raises:
            TooLarge: the source gave more than ``max_bytes``.
            Unavailable: the local file cannot be written, or sending parts failed.
            Exception: whatever the source raised (e.g. the client went away).
        """
        digest = hashlib.sha256()
        size = 0
        with _local_file_errors(self.key):
            out = open(self.path, "wb")  # noqa: SIM115 (closed by the block below)
        with out:
            for chunk in _chunks(source, read_size):
                size += len(chunk)
                if self.max_bytes is not None and size > self.max_bytes:
                    raise TooLarge(f"The upload exceeds the limit of {self.max_bytes} bytes.")
                digest.update(chunk)
                with _local_file_errors(self.key):
                    out.write(chunk)
                    out.flush()  # written() may hand these bytes to other readers
                self.written(size)
        return StoredObject(key=self.key, size=size, sha256=digest.hexdigest())

    @abstractmethod
    def written(self, size: int) -> None:
        """The file holds its final first ``size`` bytes now (``size`` never shrinks).

        Raises:
            Unavailable: storage already failed to take a part (no use sending more).
        """

    @abstractmethod
    def finish(self) -> None:
        """The file is complete: store the object under :attr:`key`; blocks until it is.

        Raises:
            Unavailable: the backend failed; :meth:`close` removes what was sent.
        """

    @abstractmethod
    def close(self, *, keep: bool) -> None:
        """Remove the local file and, unless ``keep``, the object and any part of it.

        Safe to call more than once.

        Raises:
            RuntimeError: ``keep`` without a successful :meth:`finish` (nothing is kept).
            Unavailable: what was sent could not be removed.
        """


def _chunks(source: Readable | Iterable[bytes], read_size: int) -> Iterator[bytes]:
    """The non-empty chunks of a readable (``read_size`` at a time) or an iterable."""
    if isinstance(source, bytes | bytearray | memoryview):
        source = [bytes(source)]  # one chunk, as HashingReader takes it
    read = getattr(source, "read", None)
    if read is None:
        assert isinstance(source, Iterable)
        yield from (chunk for chunk in source if chunk)
        return
    while chunk := read(read_size):
        yield chunk


@contextlib.contextmanager
def _local_file_errors(key: str) -> Iterator[None]:
    """A failing local file (disk full, ...) is the portal's problem, not the input's."""
    try:
        yield
    except OSError as exc:
        raise Unavailable(
            "The upload cannot be written to local disk.", log_detail=f"{key}: {exc}"
        ) from exc


class Storage(ABC):
    """Objects under keys. All methods block; call them off the event loop."""

    @abstractmethod
    def put(
        self, key: str, source: Readable | Iterable[bytes], *, max_bytes: int | None = None
    ) -> StoredObject:
        """Store everything ``source`` yields under ``key``, replacing any object there.

        Raises:
            TooLarge: the source gave more than ``max_bytes``; nothing is stored.
            Unavailable: the backend cannot be reached; nothing is stored.
        """

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object; close it after use.

        Raises:
            NotFound: no object under ``key``.
        """

    @abstractmethod
    def stage(
        self, key: str, *, max_bytes: int | None = None, spool_dir: Path | None = None
    ) -> StagedPut:
        """Begin storing an object under ``key`` from a local file (see :class:`StagedPut`).

        Its :meth:`~StagedPut.receive` refuses more than ``max_bytes``. Remote storage
        keeps the file in ``spool_dir`` (default: the temporary folder); a local folder
        keeps it beside its objects, so the bytes are written only once.

        Raises:
            InvalidInput: the key is invalid.
            Unavailable: no local file can be made.
        """

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The object as a sequence of chunks (for streaming responses)."""
        with self.open(key) as stream:
            while chunk := stream.read(chunk_size):
                yield chunk

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under ``key``; a missing object is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order."""

    @abstractmethod
    def check(self) -> None:
        """Prove the backend is reachable and writable enough to serve.

        Raises:
            Unavailable: with the reason.
        """


def read_all(storage: Storage, key: str) -> bytes:
    """The whole object in memory; only for objects known to be small."""
    with storage.open(key) as stream:
        return stream.read()


def put_bytes(storage: Storage, key: str, data: bytes) -> StoredObject:
    """Store a small object given in memory."""
    return storage.put(key, [data])
