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

#: The smallest part S3 takes. An upload's buffers stay near (CONCURRENCY + 2) * PART_SIZE
#: (~30 MiB: the parts in flight, the one being read, and the chunks it is joined from)
#: whatever the object size; measured with 8 MiB parts, a 500 MB upload made the
#: portal's RSS grow by 60-80 MB, over issue 3's bound of 64 MB.
PART_SIZE = 5 * 1024 * 1024
#: S3 allows at most this many parts: a put whose ``max_bytes`` needs larger parts gets them.
MAX_PARTS = 10_000
#: Parts in flight at once.
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

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(
        self, key: str, source: Readable | Iterable[bytes], *, max_bytes: int | None = None
    ) -> StoredObject:
        full_key = self._key(key)
        reader = HashingReader(source, max_bytes)
        # a stream's size is unknown, so boto3 cannot pick the part size: the limit does
        part_size = max(PART_SIZE, -(-(max_bytes or 0) // MAX_PARTS))
        try:
            self.client.upload_fileobj(
                reader, self.bucket, full_key, Config=_transfer_config(part_size)
            )
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


def _transfer_config(part_size: int) -> TransferConfig:
    config = TransferConfig(
        multipart_threshold=part_size,
        multipart_chunksize=part_size,
        max_concurrency=CONCURRENCY,
        max_io_queue=CONCURRENCY,
    )
    # parts read from a stream wait in memory for a free upload thread; boto3 lets 10 of
    # them queue by default, which would more than double the bound
    config.max_in_memory_upload_chunks = CONCURRENCY
    return config


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _unavailable(exc: Exception, what: str) -> Unavailable:
    code = _error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    return Unavailable(
        "The object store cannot be reached right now.", log_detail=f"{what}: {code}"
    )
