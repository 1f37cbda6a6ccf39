"""The one bridge between the event loop and blocking code (database, boto3, files).

Services are synchronous; the web layers are asynchronous. Uploads cross in the other
direction too: a blocking service reads a request body or a browser upload that only
an async iterator can deliver. :class:`AsyncChunkReader` lets a worker thread pull the
body from the loop read by read, so a slow consumer slows the producer down
(back-pressure) and no more than about two reads' worth is held in between.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


async def run_blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in a worker thread and wait for it without blocking the loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


#: How much an :class:`AsyncChunkReader` gathers ahead of the next ``read`` at most.
PREFETCH_BYTES = 1024 * 1024


class AsyncChunkReader:
    """A blocking, file-like ``read(n)`` over an async iterator of ``bytes`` chunks.

    Create it on the loop, hand it to code running in a worker thread (e.g. through
    :func:`run_blocking`). Calling :meth:`read` on the loop's own thread would deadlock,
    so it refuses to.

    Each ``read`` crosses to the loop once, which gathers chunks until it has ``n``
    bytes (not once per chunk: a server hands out chunks of a few KiB to a few hundred
    KiB, and every crossing wakes two threads). When a ``read`` returns, the loop
    already gathers the next one's bytes (up to ``prefetch`` of them) while the caller
    hashes and stores what it got, so receiving and storing overlap. Nothing more is
    pulled from the iterator until then: at most ``n + prefetch`` bytes plus one chunk
    are held in between, and a slow consumer still slows the producer down.

    Call :meth:`close` from the loop when the consumer is done or gave up, so that no
    read-ahead is left waiting on the iterator.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        loop: asyncio.AbstractEventLoop,
        *,
        prefetch: int = PREFETCH_BYTES,
    ) -> None:
        self._chunks = chunks
        self._loop = loop
        self._prefetch = prefetch
        self._pending = b""
        self._done = False
        self._ahead: concurrent.futures.Future[tuple[list[bytes], bool]] | None = None

    def _gather_soon(self, size: int) -> concurrent.futures.Future[tuple[list[bytes], bool]]:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("AsyncChunkReader.read() called on the event loop thread")
        return asyncio.run_coroutine_threadsafe(self._gather(size), self._loop)

    async def _gather(self, size: int) -> tuple[list[bytes], bool]:
        """Chunks holding at least ``size`` bytes (fewer only at the end), and whether
        the end came."""
        parts: list[bytes] = []
        have = 0
        while have < size:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                return parts, True
            if chunk:
                parts.append(bytes(chunk))
                have += len(chunk)
        return parts, False

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (everything left if negative); ``b""`` at the end.

        Raises:
            Exception: whatever the iterator raised (e.g. the client went away).
        """
        parts = [self._pending] if self._pending else []
        have = len(self._pending)
        self._pending = b""
        while not self._done and (size < 0 or have < size):
            wanted = PREFETCH_BYTES if size < 0 else size - have
            future, self._ahead = self._ahead or self._gather_soon(wanted), None
            got, self._done = future.result()
            parts.extend(got)
            have += sum(len(part) for part in got)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if size >= 0 and len(data) > size:
            data, self._pending = data[:size], data[size:]
        # one gather at a time: two would take turns on the iterator and mix up the order
        if not self._done and self._ahead is None and self._prefetch > 0:
            self._ahead = self._gather_soon(
                min(size, self._prefetch) if size > 0 else self._prefetch
            )
        return data

    def iter_chunks(self) -> Iterator[bytes]:
        """The rest of the stream chunk by chunk, as the iterator gave them (blocking).

        Like :meth:`read`, but chunks are not joined into reads of a given size: a
        consumer that takes any chunk size (hashing and writing a file, say) is spared
        a copy of every byte. The loop gathers the next ``prefetch`` bytes (at least
        one chunk) while the caller handles the last ones; the same bound holds.

        Raises:
            Exception: whatever the iterator raised (e.g. the client went away).
        """
        if self._pending:
            data, self._pending = self._pending, b""
            yield data
        batch = self._prefetch or PREFETCH_BYTES
        while not self._done:
            future, self._ahead = self._ahead or self._gather_soon(batch), None
            got, self._done = future.result()
            if not self._done and self._prefetch > 0:
                self._ahead = self._gather_soon(batch)
            yield from got

    def close(self) -> None:
        """Stop a read-ahead still waiting on the iterator (safe to call more than once)."""
        if self._ahead is not None:
            self._ahead.cancel()
            self._ahead = None
