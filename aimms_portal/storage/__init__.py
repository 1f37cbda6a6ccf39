"""Object storage for packages, bundles and cases: a local folder or S3."""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import unquote, urlparse

from aimms_portal.config import get_settings
from aimms_portal.errors import InvalidInput
from aimms_portal.storage.base import ObjectInfo, Storage, StoredObject, check_key

__all__ = ["ObjectInfo", "Storage", "StoredObject", "check_key", "get_storage", "open_storage"]


def open_storage(
    url: str, *, endpoint_url: str | None = None, region: str = "us-east-1"
) -> Storage:
    """The storage behind ``url``: ``file:///folder`` or ``s3://bucket/prefix``.

    Raises:
        InvalidInput: an unknown scheme, a URL without a folder or bucket, or a
            ``file:`` URL naming another host (``file://data/x`` is not a relative path).
    """
    parsed = urlparse(url)
    # file://data/x would mean the folder /x on host "data": refuse it, not guess
    if parsed.scheme == "file" and parsed.path and parsed.netloc in ("", "localhost"):
        from aimms_portal.storage.local import LocalStorage

        return LocalStorage(Path(unquote(parsed.path)))
    if parsed.scheme == "s3" and parsed.netloc:
        from aimms_portal.storage.s3 import S3Storage

        return S3Storage(parsed.netloc, parsed.path, endpoint_url=endpoint_url, region=region)
    raise InvalidInput(
        f"Unsupported storage URL {url!r}: use file:///folder or s3://bucket/prefix."
    )


@functools.cache
def get_storage() -> Storage:
    """The storage of this process, made from the settings on first use."""
    settings = get_settings()
    return open_storage(
        settings.resolved_storage_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
    )
