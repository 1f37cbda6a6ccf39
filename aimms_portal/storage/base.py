"""The storage contract: packages, bundles and cases as immutable objects under keys.

Implementations stream in both directions (objects can be far larger than memory),
compute the SHA-256 of what they store while it streams in, and never leave a partial
object behind: a failed :meth:`Storage.put` stores nothing.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from aimms_portal.errors import InvalidInput, TooLarge

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


class HashingReader:
    """Wraps a stream of bytes: hashes and counts what passes, enforces a size limit.

    ``source`` is a readable file object or an iterable of ``bytes`` chunks.
    """

    def __init__(self, source: Readable | Iterable[bytes], max_bytes: int | None = None) -> None:
        self._read = getattr(source, "read", None)
        self._chunks: Iterator[bytes] | None = (
            None if self._read else iter(source)  # type: ignore[arg-type]
        )
        self._pending = b""
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = 1 << 62
        data = self._read(size) if self._read else self._from_chunks(size)
        self.size += len(data)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise TooLarge(f"The upload exceeds the limit of {self.max_bytes} bytes.")
        self._hash.update(data)
        return data

    def _from_chunks(self, size: int) -> bytes:
        assert self._chunks is not None
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return b""
        data, self._pending = self._pending[:size], self._pending[size:]
        return data


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
