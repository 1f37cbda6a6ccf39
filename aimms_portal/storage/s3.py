"""Storage in an S3 bucket (AWS or any S3-compatible endpoint) through boto3.

:meth:`S3Storage.put` goes through boto3's managed transfer: large objects are sent in
parts of ``PART_SIZE`` with a few parts in flight, so memory stays bounded whatever the
object size, and a failed multipart upload is aborted (nothing is left behind).

:meth:`S3Storage.stage` (uploads that are inspected before they are accepted) sends
parts of the local file while it is still being written, ``STAGED_CONCURRENCY`` at a
time, each read from the file as it goes out: the parts in flight cost no memory, and
the transfer to S3 keeps pace with the arriving body instead of starting after it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.utils import ReadFileChunk

from aimms_portal.errors import NotFound, PortalError, Unavailable
from aimms_portal.storage.base import (
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

#: The smallest part S3 takes. An upload's buffers stay near (CONCURRENCY + 2) * PART_SIZE
#: (~30 MiB: the parts in flight, the one being read, and the chunks it is joined from)
#: whatever the object size; measured with 8 MiB parts, a 500 MB upload made the
#: portal's RSS grow by 60-80 MB, over issue 3's bound of 64 MB.
PART_SIZE = 5 * 1024 * 1024
#: S3 allows at most this many parts: a put whose ``max_bytes`` needs larger parts gets them.
MAX_PARTS = 10_000
#: Parts in flight at once.
CONCURRENCY = 4
#: Part size of staged puts (boto3's default for uploading a file). Their parts are read
#: from the local file as they are sent, not held in memory.
STAGED_PART_SIZE = 8 * 1024 * 1024
#: Parts of a staged put in flight at once. Each sending thread keeps a malloc arena of
#: its own: with 10 (boto3's default) the portal's RSS grew by ~40 MB on its first
#: 500 MB publish, with 4 by ~20 MB; moto's S3 took the parts no faster with 10.
STAGED_CONCURRENCY = 4

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
                # a staged put's parts in flight each need a connection of their own
                max_pool_connections=2 * STAGED_CONCURRENCY,
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

    def stage(
        self, key: str, *, max_bytes: int | None = None, spool_dir: Path | None = None
    ) -> StagedPut:
        full_key = self._key(key)
        try:
            if spool_dir is not None:
                spool_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="upload-", dir=spool_dir)
        except OSError as exc:
            raise Unavailable(
                "The upload cannot be written to local disk.", log_detail=f"{key}: {exc}"
            ) from exc
        os.close(fd)
        return _S3Staged(self, key, full_key, Path(name), max_bytes)

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


class _S3Staged(StagedPut):
    """A staged object sent as a multipart upload while its local file grows.

    Every time :meth:`written` sees another part's worth of bytes complete, it
    hands that range of the file to a pool of ``STAGED_CONCURRENCY`` threads (starting
    the multipart upload with the first). :meth:`finish` sends what is left, waits for
    every part and completes the upload; an object smaller than one part is sent with
    one plain PUT instead. Each part is read from the file while it is sent (and again
    if botocore retries it), so memory stays flat however far S3 falls behind. The price
    is CPU: botocore reads a part up to three times (its checksum, the SigV4 payload hash
    on plain-http endpoints, the send), from the page cache; parts held in memory were
    read once but cost memory per part in flight (docs/benchmarks.md).
    """

    def __init__(
        self, storage: S3Storage, key: str, full_key: str, path: Path, max_bytes: int | None
    ) -> None:
        super().__init__(key, path, max_bytes)
        self._storage = storage
        # S3 takes at most MAX_PARTS parts: a larger limit needs larger parts
        self._part_size = max(STAGED_PART_SIZE, -(-(max_bytes or 0) // MAX_PARTS))
        self._full_key = full_key
        self._size = 0
        self._sent = 0
        self._upload_id: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._parts: list[Future[dict[str, Any]]] = []
        self._failure: Exception | None = None
        # like boto3's transfers: a CRC32 of every part, unless the client is set to
        # send checksums only where S3 requires them
        config = storage.client.meta.config
        self._checksum = (
            {"ChecksumAlgorithm": "CRC32"}
            if getattr(config, "request_checksum_calculation", None) == "when_supported"
            else {}
        )

    def written(self, size: int) -> None:
        self._size = size
        if self._failure is not None:
            failure = self._failure
            raise _unavailable(failure, f"upload part of {self._full_key}") from failure
        while self._size - self._sent >= self._part_size:
            self._send(self._sent, self._part_size)

    def _send(self, offset: int, length: int) -> None:
        client = self._storage.client
        if self._upload_id is None:
            try:
                response = client.create_multipart_upload(
                    Bucket=self._storage.bucket, Key=self._full_key, **self._checksum
                )
            except (BotoCoreError, ClientError) as exc:
                raise _unavailable(exc, f"start upload of {self._full_key}") from exc
            self._upload_id = response["UploadId"]
            self._pool = ThreadPoolExecutor(STAGED_CONCURRENCY, thread_name_prefix="s3-part")
        assert self._pool is not None
        number = len(self._parts) + 1
        part = self._pool.submit(self._send_part, number, offset, length)
        part.add_done_callback(self._note_failure)
        self._parts.append(part)
        self._sent += length

    def _send_part(self, number: int, offset: int, length: int) -> dict[str, Any]:
        body = ReadFileChunk.from_filename(str(self.path), offset, length, enable_callbacks=False)
        with body:
            response = self._storage.client.upload_part(
                Bucket=self._storage.bucket,
                Key=self._full_key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
                ContentLength=length,
                **self._checksum,
            )
        part = {"PartNumber": number, "ETag": response["ETag"]}
        if "ChecksumCRC32" in response and self._checksum:
            part["ChecksumCRC32"] = response["ChecksumCRC32"]
        return part

    def _note_failure(self, part: Future[dict[str, Any]]) -> None:
        if part.cancelled() or self._failure is not None:
            return
        failure = part.exception()
        if isinstance(failure, Exception):
            self._failure = failure

    def finish(self) -> None:
        client = self._storage.client
        bucket, full_key = self._storage.bucket, self._full_key
        try:
            if self._upload_id is None:
                with open(self.path, "rb") as body:
                    client.put_object(
                        Bucket=bucket, Key=full_key, Body=body, ContentLength=self._size
                    )
            else:
                if self._size > self._sent:
                    self._send(self._sent, self._size - self._sent)
                parts = [part.result() for part in self._parts]
                client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=full_key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                )
                self._upload_id = None
        except (BotoCoreError, ClientError, OSError) as exc:
            raise _unavailable(exc, f"put {full_key}") from exc
        self.finished = True
        logger.debug("stored s3://%s/%s (%d bytes, staged)", bucket, full_key, self._size)

    def close(self, *, keep: bool) -> None:
        unfinished = keep and not self.finished
        keep = keep and not unfinished
        try:
            if self._pool is not None:
                # parts not started yet are dropped; those on the wire end on their own
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
            if self._upload_id is not None:
                try:
                    self._storage.client.abort_multipart_upload(
                        Bucket=self._storage.bucket, Key=self._full_key, UploadId=self._upload_id
                    )
                except (BotoCoreError, ClientError) as exc:
                    raise _unavailable(exc, f"abort upload of {self._full_key}") from exc
                self._upload_id = None
            if not keep and self.finished:
                self._storage.delete(self.key)
                self.finished = False
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
        if unfinished:
            raise RuntimeError(f"{self.key}: only a finished object can be kept")


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
