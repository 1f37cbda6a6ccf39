"""The storage contract, once, against every backend: a local folder and moto's S3 server.

Every test in the first part runs against both backends through the ``storage``
fixture; the tests after it cover what only one backend has (URL parsing, reachability
checks, the S3 prefix, the local temporary folder).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from aimms_portal import config
from aimms_portal import storage as storage_module
from aimms_portal.errors import InvalidInput, NotFound, TooLarge, Unavailable
from aimms_portal.storage import open_storage
from aimms_portal.storage.base import (
    HashingReader,
    StagedPut,
    Storage,
    check_key,
    check_prefix,
    put_bytes,
    read_all,
)
from aimms_portal.storage.local import LocalStorage
from aimms_portal.storage.s3 import PART_SIZE, STAGED_PART_SIZE, S3Storage
from tests.servers import free_port, s3_client

MiB = 1024 * 1024


# --- sources and checks -------------------------------------------------------------


def pattern_chunks(total: int, chunk_size: int = MiB) -> Iterator[bytes]:
    """``total`` bytes, made chunk by chunk; each chunk differs, so order matters."""
    index = 0
    sent = 0
    while sent < total:
        size = min(chunk_size, total - sent)
        stamp = index.to_bytes(4, "big")
        yield (stamp * (size // 4 + 1))[:size]
        sent += size
        index += 1


def pattern_sha256(total: int, chunk_size: int = MiB) -> str:
    digest = hashlib.sha256()
    for chunk in pattern_chunks(total, chunk_size):
        digest.update(chunk)
    return digest.hexdigest()


class TrickleReader:
    """A file-like source that hands out at most ``step`` bytes per read (like a socket)."""

    def __init__(self, total: int, step: int = 64 * 1024) -> None:
        self._chunks = pattern_chunks(total, step)

    def read(self, size: int = -1) -> bytes:
        return next(self._chunks, b"")


def broken_source(good_bytes: int) -> Iterator[bytes]:
    """Gives ``good_bytes``, then fails the way a dropped client connection would."""
    yield from pattern_chunks(good_bytes)
    raise ConnectionResetError("source broke off")


def stored_sha256(storage: Storage, key: str) -> tuple[int, str]:
    """Size and SHA-256 of a stored object, read back as a stream."""
    digest = hashlib.sha256()
    size = 0
    for chunk in storage.iter_chunks(key):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def assert_nothing_half_written(storage: Storage, key: str) -> None:
    """No object, no upload in progress, no temporary file is left for ``key``."""
    assert not storage.exists(key)
    assert key not in [info.key for info in storage.list()]
    with pytest.raises(NotFound):
        storage.open(key)
    if isinstance(storage, S3Storage):
        uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket)
        assert uploads.get("Uploads", []) == []
        everything = storage.client.list_objects_v2(Bucket=storage.bucket)
        assert storage.prefix + key not in [i["Key"] for i in everything.get("Contents", [])]
    else:
        assert isinstance(storage, LocalStorage)
        leftovers = [p for p in (storage.root / ".incoming").rglob("*") if p.is_file()]
        assert leftovers == []


# --- the backends -------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each contract test runs once on a local folder and once on a moto S3 bucket."""
    if request.param == "local":
        return LocalStorage(tmp_path / "storage")
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return S3Storage(bucket, "portal/objects", endpoint_url=endpoint)


# --- the contract -------------------------------------------------------------------


def test_put_from_a_file_object_round_trips(storage: Storage):
    data = b"case data \x00\xff" * 5000
    stored = storage.put("cases/one.bin", io.BytesIO(data))
    assert stored.key == "cases/one.bin"
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert storage.exists("cases/one.bin")
    with storage.open("cases/one.bin") as stream:
        assert stream.read() == data
    assert b"".join(storage.iter_chunks("cases/one.bin", chunk_size=1000)) == data


def test_put_from_a_real_file_round_trips(storage: Storage, tmp_path: Path):
    data = os.urandom(300_000)
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    with open(source, "rb") as stream:
        stored = storage.put("bundles/app.zip", stream)
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert read_all(storage, "bundles/app.zip") == data


def test_put_from_chunks_of_uneven_sizes_keeps_every_byte(storage: Storage):
    chunks = [b"", b"abc", b"d" * 100_000, b"", b"e", os.urandom(777_777), b"f" * 3]
    data = b"".join(chunks)
    stored = storage.put("a/b", iter(chunks))
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert read_all(storage, "a/b") == data


def test_put_of_an_empty_source_stores_an_empty_object(storage: Storage):
    stored = storage.put("empty", [])
    assert stored.size == 0
    assert stored.sha256 == hashlib.sha256(b"").hexdigest()
    assert storage.exists("empty")
    assert read_all(storage, "empty") == b""
    assert [(i.key, i.size) for i in storage.list()] == [("empty", 0)]


def test_put_bytes_stores_a_small_object(storage: Storage):
    stored = put_bytes(storage, "note.txt", b"hello")
    assert stored.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert read_all(storage, "note.txt") == b"hello"


def test_put_replaces_an_existing_object(storage: Storage):
    storage.put("release/manifest.json", [b"version one, the longer text"])
    stored = storage.put("release/manifest.json", [b"v2"])
    assert stored.size == 2
    assert read_all(storage, "release/manifest.json") == b"v2"
    assert [(i.key, i.size) for i in storage.list("release/")] == [("release/manifest.json", 2)]


def test_delete_removes_the_object_and_is_idempotent(storage: Storage):
    storage.put("x/y/z", [b"1"])
    storage.put("x/keep", [b"2"])
    storage.delete("x/y/z")
    assert not storage.exists("x/y/z")
    with pytest.raises(NotFound):
        storage.open("x/y/z")
    storage.delete("x/y/z")
    storage.delete("never/stored")
    assert [i.key for i in storage.list()] == ["x/keep"]
    storage.put("x/y/z", [b"again"])  # the emptied folder can be used again
    assert read_all(storage, "x/y/z") == b"again"


def test_list_by_prefix_in_key_order(storage: Storage):
    keys = ["b", "a/c/x", "a/b/d", "ab", "a-b", "a/b.txt", "a/bz", "a/b/c.txt", "a0"]
    for number, key in enumerate(keys):
        storage.put(key, [b"x" * number])
    sizes = dict(zip(keys, range(len(keys)), strict=True))

    def listed(prefix: str = "") -> list[str]:
        infos = list(storage.list(prefix))
        assert all(info.size == sizes[info.key] for info in infos)
        return [info.key for info in infos]

    assert listed() == sorted(keys)
    assert listed("a/") == ["a/b.txt", "a/b/c.txt", "a/b/d", "a/bz", "a/c/x"]
    assert listed("a/b/") == ["a/b/c.txt", "a/b/d"]
    assert listed("a/b") == ["a/b.txt", "a/b/c.txt", "a/b/d", "a/bz"]
    assert listed("a") == ["a-b", "a/b.txt", "a/b/c.txt", "a/b/d", "a/bz", "a/c/x", "a0", "ab"]
    assert listed("a/c/x") == ["a/c/x"]
    assert listed("zz") == []
    assert listed("nothing/here/") == []


def test_put_larger_than_a_part_round_trips_from_chunks(storage: Storage):
    total = 20 * MiB + 12345  # three parts on S3, the last one short
    stored = storage.put("cases/big.bin", pattern_chunks(total))
    assert (stored.size, stored.sha256) == (total, pattern_sha256(total))
    assert stored_sha256(storage, "cases/big.bin") == (total, stored.sha256)
    assert [(i.key, i.size) for i in storage.list("cases/")] == [("cases/big.bin", total)]
    if isinstance(storage, S3Storage):
        head = storage.client.head_object(Bucket=storage.bucket, Key=storage._key("cases/big.bin"))
        assert head["ETag"].strip('"').endswith(f"-{-(-total // PART_SIZE)}")  # multipart


def test_put_larger_than_a_part_round_trips_from_a_trickling_reader(storage: Storage):
    # a reader that gives 64 KiB per read must still become full-size parts
    total = 18 * MiB
    stored = storage.put("cases/trickle.bin", TrickleReader(total))
    assert stored.size == total
    assert stored.sha256 == pattern_sha256(total, 64 * 1024)
    assert stored_sha256(storage, "cases/trickle.bin") == (total, stored.sha256)


@pytest.mark.parametrize(
    ("total", "limit"),
    [(5000, 4999), (PART_SIZE - 1, 1000), (20 * MiB, 10 * MiB), (20 * MiB, 16 * MiB)],
    ids=["just-over", "single-part", "multipart-second-part", "multipart-third-part"],
)
def test_put_over_the_limit_raises_too_large_and_stores_nothing(
    storage: Storage, total: int, limit: int
):
    with pytest.raises(TooLarge, match=str(limit)):
        storage.put("uploads/too-big", pattern_chunks(total), max_bytes=limit)
    assert_nothing_half_written(storage, "uploads/too-big")


def test_put_up_to_the_limit_is_accepted(storage: Storage):
    stored = storage.put("uploads/exact", pattern_chunks(5000), max_bytes=5000)
    assert stored.size == 5000


def test_failed_put_keeps_the_previous_object(storage: Storage):
    storage.put("release/bundle", [b"the good one"])
    with pytest.raises(TooLarge):
        storage.put("release/bundle", pattern_chunks(20 * MiB), max_bytes=12 * MiB)
    with pytest.raises(ConnectionResetError):
        storage.put("release/bundle", broken_source(3 * MiB))
    assert read_all(storage, "release/bundle") == b"the good one"
    assert [i.key for i in storage.list()] == ["release/bundle"]


@pytest.mark.parametrize("good_bytes", [0, 1000, 12 * MiB], ids=["at-once", "small", "mid-part"])
def test_source_failing_mid_stream_propagates_and_stores_nothing(storage: Storage, good_bytes: int):
    with pytest.raises(ConnectionResetError, match="source broke off"):
        storage.put("uploads/broken", broken_source(good_bytes))
    assert_nothing_half_written(storage, "uploads/broken")


BAD_KEYS = [
    "",
    "../x",
    "a/../b",
    "/abs",
    "a//b",
    "a/",
    "./a",
    "a/./b",
    ".incoming/x",
    ".hidden",
    "a\\b",
    "..\\x",
    "a\x00b",
    "a\nb",
    "tab\there",
    "caf\u00e9",
    "\u2215etc",
    "with space",
    "x" * 1025,
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_invalid_keys_are_refused_by_every_operation(storage: Storage, key: str):
    with pytest.raises(InvalidInput):
        storage.put(key, [b"x"])
    with pytest.raises(InvalidInput):
        storage.open(key)
    with pytest.raises(InvalidInput):
        storage.exists(key)
    with pytest.raises(InvalidInput):
        storage.delete(key)
    assert list(storage.list()) == []


@pytest.mark.parametrize("prefix", ["../", "..", "/", "/abs", "a//", "a/../", "a\\b", "\u00e9"])
def test_invalid_list_prefixes_are_refused(storage: Storage, prefix: str):
    with pytest.raises(InvalidInput):
        list(storage.list(prefix))


def test_valid_keys_at_the_edges_are_accepted(storage: Storage):
    keys = ["a", "0", "A.b_c+d=e@f-g", "x" * 255, "/".join(["s"] * 500)]
    for key in keys:
        storage.put(key, [key.encode()])
    for key in keys:
        assert read_all(storage, key) == key.encode()


def test_missing_object_is_not_found(storage: Storage):
    assert not storage.exists("cases/missing")
    with pytest.raises(NotFound):
        storage.open("cases/missing")
    with pytest.raises(NotFound):
        list(storage.iter_chunks("cases/missing"))


def test_a_folder_of_objects_is_not_an_object(storage: Storage):
    storage.put("apps/one/bundle", [b"x"])
    assert not storage.exists("apps/one")
    with pytest.raises(NotFound):
        storage.open("apps/one")


def test_check_passes_on_a_usable_backend(storage: Storage):
    storage.check()


def test_streamed_put_does_not_hold_the_object_in_memory(storage: Storage):
    total = 128 * MiB
    tracemalloc.start()
    try:
        stored = storage.put("cases/huge.bin", pattern_chunks(total))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size == total
    # measured: ~4 MiB locally, ~52 MiB on S3 (parts in flight plus the one being read);
    # holding the object would cost 128 MiB, boto3's default read-ahead about 90 MiB
    assert peak < total // 2, f"peak {peak / MiB:.1f} MiB"
    assert stored_sha256(storage, "cases/huge.bin") == (total, pattern_sha256(total))


# --- staged puts (uploads inspected before they are accepted) -----------------------


def stage_all(storage: Storage, key: str, chunks: Iterable[bytes], **kwargs: Any) -> StagedPut:
    """A staged put of ``chunks`` under ``key``, received but not finished."""
    staged = storage.stage(key, **kwargs)
    staged.receive(chunks)
    return staged


@pytest.mark.parametrize(
    "total",
    [0, 1000, STAGED_PART_SIZE, 2 * STAGED_PART_SIZE + 12345],
    ids=["empty", "small", "one-part", "parts-and-a-short-one"],
)
def test_staged_put_round_trips(storage: Storage, tmp_path: Path, total: int):
    staged = storage.stage("bundles/staged.bin", spool_dir=tmp_path / "spool")
    stored = staged.receive(pattern_chunks(total))
    assert (stored.key, stored.size) == ("bundles/staged.bin", total)
    assert stored.sha256 == pattern_sha256(total)
    assert not storage.exists("bundles/staged.bin")  # nothing shows before finish()

    staged.finish()
    # the local file stays readable after the object is stored, until close()
    assert hashlib.sha256(staged.path.read_bytes()).hexdigest() == stored.sha256
    staged.close(keep=True)

    assert stored_sha256(storage, "bundles/staged.bin") == (total, stored.sha256)
    assert [(i.key, i.size) for i in storage.list()] == [("bundles/staged.bin", total)]
    assert not staged.path.exists()
    assert not (tmp_path / "spool").exists() or list((tmp_path / "spool").iterdir()) == []
    if isinstance(storage, S3Storage) and total >= STAGED_PART_SIZE:
        head = storage.client.head_object(Bucket=storage.bucket, Key=storage._key(stored.key))
        assert head["ETag"].strip('"').endswith(f"-{-(-total // STAGED_PART_SIZE)}")


def test_staged_put_receives_from_a_file_object_and_from_bytes(storage: Storage, tmp_path: Path):
    data = os.urandom(STAGED_PART_SIZE + 3000)
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    for key, given in [("from/file", None), ("from/bytes", data[:5000])]:
        staged = storage.stage(key)
        if given is None:
            with open(source, "rb") as stream:
                stored = staged.receive(stream, read_size=100_000)
        else:
            stored = staged.receive(given)
        staged.finish()
        staged.close(keep=True)
        expected = data if given is None else given
        assert (stored.size, stored.sha256) == (len(expected), hashlib.sha256(expected).hexdigest())
        assert read_all(storage, key) == expected


def test_staged_put_replaces_an_existing_object(storage: Storage):
    storage.put("release/bundle", [b"the old one, longer"])
    staged = stage_all(storage, "release/bundle", [b"new"])
    staged.finish()
    staged.close(keep=True)
    assert read_all(storage, "release/bundle") == b"new"


@pytest.mark.parametrize("total", [1000, 2 * STAGED_PART_SIZE + 1], ids=["small", "parts"])
def test_staged_put_closed_before_finish_leaves_nothing(storage: Storage, total: int):
    staged = stage_all(storage, "uploads/refused", pattern_chunks(total))
    staged.close(keep=False)
    staged.close(keep=False)  # a second close is harmless
    assert not staged.path.exists()
    assert_nothing_half_written(storage, "uploads/refused")


@pytest.mark.parametrize("total", [1000, 2 * STAGED_PART_SIZE + 1], ids=["small", "parts"])
def test_staged_put_not_kept_after_finish_is_removed(storage: Storage, total: int):
    staged = stage_all(storage, "uploads/refused", pattern_chunks(total))
    staged.finish()
    assert storage.exists("uploads/refused")
    staged.close(keep=False)
    assert_nothing_half_written(storage, "uploads/refused")


def test_staged_put_cannot_be_kept_unfinished_and_leaves_nothing(storage: Storage):
    staged = stage_all(storage, "uploads/early", pattern_chunks(STAGED_PART_SIZE + 1))
    with pytest.raises(RuntimeError, match="finished"):
        staged.close(keep=True)
    assert_nothing_half_written(storage, "uploads/early")


@pytest.mark.parametrize(
    ("total", "limit"),
    [(5000, 4999), (3 * STAGED_PART_SIZE, 2 * STAGED_PART_SIZE + 1)],
    ids=["small", "after-parts-were-sent"],
)
def test_staged_put_over_the_limit_raises_too_large_and_leaves_nothing(
    storage: Storage, total: int, limit: int
):
    staged = storage.stage("uploads/too-big", max_bytes=limit)
    with pytest.raises(TooLarge, match=str(limit)):
        staged.receive(pattern_chunks(total))
    staged.close(keep=False)
    assert_nothing_half_written(storage, "uploads/too-big")


@pytest.mark.parametrize("good_bytes", [0, 2 * STAGED_PART_SIZE + 7], ids=["at-once", "parts"])
def test_staged_put_whose_source_fails_leaves_nothing(storage: Storage, good_bytes: int):
    staged = storage.stage("uploads/broken")
    with pytest.raises(ConnectionResetError, match="source broke off"):
        staged.receive(broken_source(good_bytes))
    staged.close(keep=False)
    assert_nothing_half_written(storage, "uploads/broken")


def test_staged_put_refuses_invalid_keys(storage: Storage, tmp_path: Path):
    spool = tmp_path / "spool"
    for key in ["../x", ".incoming/x", "a//b"]:
        with pytest.raises(InvalidInput):
            storage.stage(key, spool_dir=spool)
    assert not spool.exists() or list(spool.iterdir()) == []
    assert list(storage.list()) == []


def test_staged_put_does_not_hold_the_object_in_memory(storage: Storage):
    total = 96 * MiB
    tracemalloc.start()
    try:
        staged = stage_all(storage, "cases/huge.bin", pattern_chunks(total))
        staged.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    staged.close(keep=True)
    # parts are read from the local file as they are sent: measured ~3 MiB locally and
    # ~6 MiB on S3 with 4 parts in flight (holding the parts would take 32 MiB)
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert stored_sha256(storage, "cases/huge.bin") == (total, pattern_sha256(total))


# --- the pieces without a backend ---------------------------------------------------


def test_hashing_reader_fills_every_read_across_chunk_boundaries():
    reader = HashingReader(iter([b"ab", b"", b"cdefg", b"h"]))
    assert reader.read(3) == b"abc"
    assert reader.read(4) == b"defg"
    assert reader.read(4) == b"h"
    assert reader.read(4) == b""
    assert (reader.size, reader.sha256) == (8, hashlib.sha256(b"abcdefgh").hexdigest())


def test_hashing_reader_reads_everything_that_is_left_without_a_size(tmp_path: Path):
    source = tmp_path / "source"
    source.write_bytes(b"x" * 3_000_000)
    with open(source, "rb") as stream:
        reader = HashingReader(stream)
        assert reader.read(10) == b"x" * 10
        assert reader.read() == b"x" * 2_999_990  # a real file, not a huge preallocation
    assert HashingReader(TrickleReader(200_000, step=7)).read() == b"".join(
        pattern_chunks(200_000, 7)
    )


def test_hashing_reader_takes_bytes_as_one_chunk():
    assert HashingReader(b"abc").read() == b"abc"


def test_hashing_reader_stops_at_the_limit_before_handing_out_the_excess():
    reader = HashingReader([b"12345", b"6"], max_bytes=5)
    assert reader.read(5) == b"12345"
    with pytest.raises(TooLarge):
        reader.read(5)


def test_check_key_returns_a_good_key_unchanged():
    assert check_key("apps/demo/1.0.0/bundle.zip") == "apps/demo/1.0.0/bundle.zip"


@pytest.mark.parametrize("prefix", ["", "a", "a/", "a/b", "apps/demo/1.0", "x" * 255])
def test_check_prefix_accepts_folders_and_partial_names(prefix: str):
    assert check_prefix(prefix) == prefix


# --- the local folder ---------------------------------------------------------------


def test_local_listing_stays_inside_the_root(tmp_path: Path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("not yours")
    local = LocalStorage(tmp_path / "root")
    local.put("inside", [b"x"])
    with pytest.raises(InvalidInput):
        list(local.list("../outside/"))
    assert [i.key for i in local.list()] == ["inside"]


def test_local_delete_prunes_emptied_folders_but_not_the_root(tmp_path: Path):
    root = tmp_path / "root"
    local = LocalStorage(root)
    local.put("a/b/c/d", [b"x"])
    local.put("a/keep", [b"y"])
    local.delete("a/b/c/d")
    assert not (root / "a" / "b").exists()
    assert (root / "a" / "keep").is_file()
    local.delete("a/keep")
    assert root.is_dir() and not (root / "a").exists()


def test_local_check_creates_a_missing_root(tmp_path: Path):
    root = tmp_path / "new" / "storage"
    LocalStorage(root).check()
    assert root.is_dir()
    assert [p for p in root.rglob("*") if p.is_file()] == []  # the probe is gone


def test_local_check_on_a_file_instead_of_a_folder_is_unavailable(tmp_path: Path):
    root = tmp_path / "storage"
    root.write_text("I am a file")
    with pytest.raises(Unavailable) as raised:
        LocalStorage(root).check()
    assert str(root) in raised.value.message
    assert "not writable" in raised.value.message


def test_local_put_into_an_unusable_root_is_unavailable(tmp_path: Path):
    root = tmp_path / "storage"
    root.write_text("I am a file")
    with pytest.raises(Unavailable):
        LocalStorage(root).put("a", [b"x"])
    assert root.read_text() == "I am a file"


def test_local_staged_put_copies_where_the_file_system_has_no_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def no_links(source: object, target: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    local = LocalStorage(tmp_path / "root")
    staged = stage_all(local, "bundles/x", [b"copied"])
    staged.finish()
    assert staged.path.read_bytes() == b"copied"
    staged.close(keep=True)
    assert read_all(local, "bundles/x") == b"copied"
    assert list((local.root / ".incoming").iterdir()) == []


def test_local_staged_put_keeps_its_bytes_out_of_the_listing_until_finished(tmp_path: Path):
    local = LocalStorage(tmp_path / "root")
    staged = stage_all(local, "bundles/x", [b"pending"])
    assert staged.path.parent == local.root / ".incoming"  # written once, beside the objects
    assert list(local.list()) == []
    staged.finish()
    staged.close(keep=True)
    assert [i.key for i in local.list()] == ["bundles/x"]


# --- S3 -----------------------------------------------------------------------------


def test_s3_objects_live_under_the_prefix_and_only_they_are_listed(s3_bucket):
    endpoint, bucket = s3_bucket
    raw = s3_client(endpoint)
    raw.put_object(Bucket=bucket, Key="elsewhere/a", Body=b"not ours")
    raw.put_object(Bucket=bucket, Key="portal/objectsX", Body=b"not ours either")
    s3 = S3Storage(bucket, "/portal/objects/", endpoint_url=endpoint)
    s3.put("a/b", [b"ours"])
    assert raw.get_object(Bucket=bucket, Key="portal/objects/a/b")["Body"].read() == b"ours"
    assert [(i.key, i.size) for i in s3.list()] == [("a/b", 4)]
    assert not s3.exists("elsewhere/a")


def test_s3_without_a_prefix_uses_the_bucket_root(s3_bucket):
    endpoint, bucket = s3_bucket
    s3 = S3Storage(bucket, endpoint_url=endpoint)
    s3.put("top", [b"1"])
    raw = s3_client(endpoint)
    assert [o["Key"] for o in raw.list_objects_v2(Bucket=bucket)["Contents"]] == ["top"]


def test_s3_check_on_a_missing_bucket_is_unavailable_with_the_reason(moto_server):
    s3 = S3Storage("no-such-bucket-here", endpoint_url=moto_server)
    with pytest.raises(Unavailable) as raised:
        s3.check()
    assert "no-such-bucket-here" in raised.value.message
    assert "does not exist" in raised.value.message


def test_s3_operations_on_a_missing_bucket_are_unavailable(moto_server):
    s3 = S3Storage("no-such-bucket-here", endpoint_url=moto_server)
    with pytest.raises(Unavailable):
        s3.put("a", [b"x"])
    with pytest.raises(Unavailable):
        list(s3.list())


def _unreachable_s3(endpoint: str) -> S3Storage:
    # one attempt per call: the portal's retries would only make the test slower
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2),
    )
    return S3Storage("bucket", endpoint_url=endpoint, client=client)


def test_s3_check_where_nothing_listens_is_unavailable_with_the_reason(fake_aws):
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Unavailable) as raised:
        S3Storage("bucket", endpoint_url=endpoint).check()
    assert "cannot be reached" in raised.value.message
    assert endpoint in raised.value.message


def test_s3_operations_where_nothing_listens_are_unavailable(fake_aws):
    s3 = _unreachable_s3(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Unavailable):
        s3.put("a", [b"x"])
    with pytest.raises(Unavailable):
        s3.open("a")
    with pytest.raises(Unavailable):
        s3.exists("a")
    with pytest.raises(Unavailable):
        s3.delete("a")
    with pytest.raises(Unavailable):
        list(s3.list())


def test_s3_staged_put_sends_parts_while_the_file_is_still_written(s3_bucket):
    endpoint, bucket = s3_bucket
    s3 = S3Storage(bucket, endpoint_url=endpoint)
    raw = s3_client(endpoint)
    seen: list[int] = []

    def source() -> Iterator[bytes]:
        yield from pattern_chunks(2 * STAGED_PART_SIZE)
        # before the last byte arrives, the first parts must be in S3 already
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            uploads = raw.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            if uploads:
                parts = raw.list_parts(
                    Bucket=bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]
                )
                seen.append(len(parts.get("Parts", [])))
                if seen[-1] == 2:
                    break
            time.sleep(0.05)
        yield b"the end"

    staged = stage_all(s3, "bundles/early.bin", source())
    staged.finish()
    staged.close(keep=True)
    assert seen and seen[-1] == 2
    assert read_all(s3, "bundles/early.bin").endswith(b"the end")


def test_s3_staged_put_stops_reading_once_a_part_fails(moto_server, tmp_path: Path):
    s3 = S3Storage("no-such-bucket-here", endpoint_url=moto_server)
    taken: list[int] = []

    def source() -> Iterator[bytes]:
        for chunk in pattern_chunks(64 * MiB):
            taken.append(len(chunk))
            yield chunk

    staged = s3.stage("bundles/x", spool_dir=tmp_path / "spool")
    with pytest.raises(Unavailable):
        staged.receive(source())
    staged.close(keep=False)
    assert sum(taken) < 64 * MiB
    assert list((tmp_path / "spool").iterdir()) == []


def test_s3_staged_put_that_cannot_be_stored_is_unavailable(moto_server, tmp_path: Path):
    s3 = S3Storage("no-such-bucket-here", endpoint_url=moto_server)
    staged = stage_all(s3, "bundles/x", [b"small"], spool_dir=tmp_path / "spool")
    with pytest.raises(Unavailable):
        staged.finish()
    staged.close(keep=False)
    assert list((tmp_path / "spool").iterdir()) == []


# --- choosing the backend from a URL ------------------------------------------------


def test_open_storage_file_url_gives_a_local_folder(tmp_path: Path):
    folder = tmp_path / "with space" / "store"
    local = open_storage(folder.as_uri())
    assert isinstance(local, LocalStorage)
    assert local.root == folder


def test_open_storage_file_url_may_name_localhost():
    local = open_storage("file://localhost/srv/portal")
    assert isinstance(local, LocalStorage) and local.root == Path("/srv/portal")


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://portal-data/objects", "portal-data", "objects/"),
        ("s3://portal-data/a/b/", "portal-data", "a/b/"),
        ("s3://portal-data/", "portal-data", ""),
        ("s3://portal-data", "portal-data", ""),
    ],
)
def test_open_storage_s3_url_gives_bucket_and_prefix(url: str, bucket: str, prefix: str):
    s3 = open_storage(url, endpoint_url="http://127.0.0.1:9", region="eu-west-1")
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix) == (bucket, prefix)
    assert s3.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert s3.client.meta.region_name == "eu-west-1"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/srv/portal",
        "relative/folder",
        "file://",
        "file:",
        "file://data/storage",
        "s3://",
        "s3:///prefix-without-bucket",
        "http://127.0.0.1/bucket",
        "https://bucket.s3.amazonaws.com/x",
        "ftp://host/folder",
        "gs://bucket/prefix",
    ],
)
def test_open_storage_refuses_other_urls(url: str):
    with pytest.raises(InvalidInput, match="storage URL"):
        open_storage(url)


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Settings and storage are read again from the environment the test sets."""
    config.get_settings.cache_clear()
    storage_module.get_storage.cache_clear()
    yield monkeypatch
    config.get_settings.cache_clear()
    storage_module.get_storage.cache_clear()


def test_get_storage_follows_the_settings_and_is_made_once(fresh_settings, tmp_path: Path):
    fresh_settings.setenv("AIMMS_PORTAL_STORAGE_URL", (tmp_path / "objects").as_uri())
    first = storage_module.get_storage()
    assert isinstance(first, LocalStorage) and first.root == tmp_path / "objects"
    assert storage_module.get_storage() is first


def test_get_storage_defaults_to_the_data_folder(fresh_settings, tmp_path: Path):
    fresh_settings.delenv("AIMMS_PORTAL_STORAGE_URL", raising=False)
    fresh_settings.setenv("AIMMS_PORTAL_DATA_DIR", str(tmp_path / "data"))
    local = storage_module.get_storage()
    assert isinstance(local, LocalStorage) and local.root == tmp_path / "data" / "storage"


def test_get_storage_gives_s3_with_endpoint_and_region(fresh_settings, s3_bucket):
    endpoint, bucket = s3_bucket
    fresh_settings.setenv("AIMMS_PORTAL_STORAGE_URL", f"s3://{bucket}/portal")
    fresh_settings.setenv("AIMMS_PORTAL_S3_ENDPOINT_URL", endpoint)
    fresh_settings.setenv("AIMMS_PORTAL_S3_REGION", "us-east-1")
    s3 = storage_module.get_storage()
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == (bucket, "portal/")
    s3.check()
    s3.put("k", [b"v"])
    assert read_all(s3, "k") == b"v"
