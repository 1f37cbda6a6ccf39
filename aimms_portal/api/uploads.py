"""Streaming a request body into a blocking service, with the upload limit applied early."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request

from aimms_portal.aio import AsyncChunkReader, run_blocking
from aimms_portal.config import get_settings
from aimms_portal.errors import TooLarge

T = TypeVar("T")


async def with_request_body(request: Request, fn: Callable[..., T], **kwargs: Any) -> T:
    """Call ``fn(source=<the body's chunks>, **kwargs)`` in a worker thread.

    The body is never held whole: the service pulls it chunk by chunk, as the server
    hands them out, while it writes to storage. A declared ``Content-Length`` above the
    limit is refused before a byte is read; a body that grows past it is stopped by the
    service's own limit.
    """
    limit = get_settings().upload_max_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"The upload ({declared} bytes) exceeds the limit of {limit} bytes.")
    reader = AsyncChunkReader(request.stream(), asyncio.get_running_loop())
    try:
        return await run_blocking(fn, source=reader.iter_chunks(), **kwargs)
    finally:
        # a service that refused the body early leaves a read-ahead waiting for more
        reader.close()
