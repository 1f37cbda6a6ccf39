"""Storage in an S3 bucket (AWS or any S3-compatible endpoint) through boto3.

Uploads go through boto3's managed transfer: large objects are sent in parts of
``PART_SIZE`` with a few parts in flight, so memory stays bounded whatever the object
size, and a failed multipart upload is aborted (nothing is left behind).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from aimms_portal.errors import NotFound, PortalError, Unavailable
from aimms_portal.storage.base import (
    HashingReader,
    ObjectInfo,
    Readable,
    Storage,
    StoredObject,
    check_key,
    check_prefix,
)

logger = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024
#: Parts in flight at once. An upload's buffers stay near (CONCURRENCY + 2) * PART_SIZE
#: (~48 MB: the parts in flight plus the one being read) whatever the object size.
CONCURRENCY = 4

_MISSING = {"404", "NoSuchKey", "NotFound"}
_BUCKET_PROBLEMS = {
    "404": "does not exist",
    "NoSuchBucket": "does not exist",
    "403": "may not be used with these credentials",
    "AccessDenied": "may not be used with these credentials",
}


class S3Storage(Storage):
    """Objects under ``prefix`` in ``bucket``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=PART_SIZE,
            multipart_chunksize=PART_SIZE,
            max_concurrency=CONCURRENCY,
            max_io_queue=CONCURRENCY,
        )
        # parts read from a stream wait in memory for a free upload thread; boto3 lets
        # 10 of them queue by default, which would make the bound ~100 MB, not ~48 MB
        self._transfer.max_in_memory_upload_chunks = CONCURRENCY

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(
        self, key: str, source: Readable | Iterable[bytes], *, max_bytes: int | None = None
    ) -> StoredObject:
        full_key = self._key(key)
        reader = HashingReader(source, max_bytes)
        try:
            self.client.upload_fileobj(reader, self.bucket, full_key, Config=self._transfer)
        except PortalError:
            raise
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc, f"put {full_key}") from exc
        logger.debug("stored s3://%s/%s (%d bytes)", self.bucket, full_key, reader.size)
        return StoredObject(key=key, size=reader.size, sha256=reader.sha256)

    def open(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                raise NotFound(f"No stored object {key!r}.") from exc
            raise _unavailable(exc, f"get {key}") from exc
        except BotoCoreError as exc:
            raise _unavailable(exc, f"get {key}") from exc
        return response["Body"]  # type: ignore[no-any-return]

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return False
            raise _unavailable(exc, f"head {key}") from exc
        except BotoCoreError as exc:
            raise _unavailable(exc, f"head {key}") from exc
        return True

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc, f"delete {key}") from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(key=item["Key"][len(self.prefix) :], size=item["Size"])
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc, f"list {prefix}") from exc

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = _error_code(exc)
            # HEAD answers carry no body: the status is all S3 says about the reason
            reason = _BUCKET_PROBLEMS.get(code, "cannot be used")
            raise Unavailable(f"The bucket {self.bucket!r} {reason} ({code}).") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"The S3 endpoint cannot be reached: {exc}.") from exc


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _unavailable(exc: Exception, what: str) -> Unavailable:
    code = _error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    return Unavailable(
        "The object store cannot be reached right now.", log_detail=f"{what}: {code}"
    )
