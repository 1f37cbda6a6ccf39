"""The one bridge between the event loop and blocking code (database, boto3, files).

Services are synchronous; the web layers are asynchronous. Uploads cross in the other
direction too: a blocking service reads a request body or a browser upload that only
an async iterator can deliver. :class:`AsyncChunkReader` lets a worker thread pull the
next chunk from the loop, one at a time, so a slow consumer slows the producer down
(back-pressure) and no more than one chunk is held in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def run_blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in a worker thread and wait for it without blocking the loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


class AsyncChunkReader:
    """A blocking, file-like ``read(n)`` over an async iterator of ``bytes`` chunks.

    Create it on the loop, hand it to code running in a worker thread (e.g. through
    :func:`run_blocking`). Calling :meth:`read` on the loop's own thread would deadlock,
    so it refuses to.
    """

    def __init__(self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._chunks = chunks
        self._loop = loop
        self._pending = b""
        self._done = False

    def _next_chunk(self) -> bytes:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("AsyncChunkReader.read() called on the event loop thread")
        future = asyncio.run_coroutine_threadsafe(self._anext(), self._loop)
        return future.result()

    async def _anext(self) -> bytes:
        try:
            return bytes(await self._chunks.__anext__())
        except StopAsyncIteration:
            return b""

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (everything left if negative); ``b""`` at the end."""
        parts = [self._pending] if self._pending else []
        have = len(self._pending)
        self._pending = b""
        while not self._done and (size < 0 or have < size):
            chunk = self._next_chunk()
            if not chunk:
                self._done = True
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        if size >= 0 and len(data) > size:
            data, self._pending = data[:size], data[size:]
        return data
