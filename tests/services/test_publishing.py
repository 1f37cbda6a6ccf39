"""Publishing at the service layer: uploads stream, and a refused one leaves nothing.

The memory tests measure with ``tracemalloc`` (every Python allocation, in all threads)
while a 64 MiB upload goes through, and require the peak to stay far below the upload's
size: the body is never held whole. They cannot use the ``client`` fixture: Starlette's
``TestClient`` reads the whole request body into one ``bytes`` before the app sees it
(``request.read()`` in its transport), so it would measure the test client, not the
portal. The REST test sends through httpx's ``ASGITransport`` instead, which hands an
async generator's chunks to the app one ``http.request`` message at a time, as a server
does; the service tests feed the services a generator directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import tracemalloc
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlmodel import select

from aimms_portal.aio import AsyncChunkReader
from aimms_portal.api.app import create_api
from aimms_portal.db import session_scope
from aimms_portal.errors import InvalidInput, TooLarge
from aimms_portal.models import Release, Role, RuntimeVersion, User
from aimms_portal.packages import pack_app, signing, write_zip
from aimms_portal.services import apps, runtimes
from aimms_portal.services.uploads import Spool
from aimms_portal.storage import Storage, get_storage
from aimms_portal.storage.local import LocalStorage
from aimms_portal.storage.s3 import S3Storage
from tests import publishing
from tests.api.support import API, quick_user
from tests.corpus import CORPUS_DIR, TEST_SIGNING_KEY_FILE
from tests.helpers import bearer, run_async

pytestmark = pytest.mark.sqlite

MIB = 1024 * 1024
BIG = 64 * MIB
#: The most a 64 MiB upload may add to the test process's traced memory at its peak:
#: a few 1 MiB chunks in flight, archive reading buffers and the database round trips.
PEAK_LIMIT = 16 * MIB

T = TypeVar("T")


def _random_file(path: Path, size: int) -> None:
    # random bytes: deflate cannot shrink them, so the archive is as large as the data
    with open(path, "wb") as out:
        for _ in range(size // MIB):
            out.write(os.urandom(MIB))


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """corpus-app 2.0 with one incompressible 64 MiB file (under every archive limit)."""
    folder = tmp_path_factory.mktemp("big-bundle")
    source = folder / "app"
    with zipfile.ZipFile(CORPUS_DIR / "bundle_valid.zip") as zipped:
        zipped.extractall(source)  # noqa: S202  (the corpus's own valid file)
    manifest = (source / "app.json").read_text().replace('"version": "1.0"', '"version": "2.0"')
    (source / "app.json").write_text(manifest)
    _random_file(source / "data.bin", BIG)
    bundle = folder / "big.bundle"
    pack_app(source, bundle)
    assert bundle.stat().st_size > BIG
    return bundle


@pytest.fixture(scope="module")
def big_runtime(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """corpus-runtime 3.0 with one incompressible 64 MiB wheel, and its signature."""
    folder = tmp_path_factory.mktemp("big-runtime")
    source = folder / "runtime"
    with zipfile.ZipFile(CORPUS_DIR / "runtime_valid.zip") as zipped:
        zipped.extractall(source)  # noqa: S202  (the corpus's own valid file)
    manifest = (source / "runtime.json").read_text().replace('"1.0"', '"3.0"')
    (source / "runtime.json").write_text(manifest)
    _random_file(source / "wheels" / "big-1.0-py3-none-any.whl", BIG)
    package = folder / "big.zip"
    write_zip(source, package)
    signature = signing.sign_file(TEST_SIGNING_KEY_FILE.read_bytes(), package)
    return package, signature.to_json()


def chunks_of(path: Path, size: int = MIB) -> Iterator[bytes]:
    with open(path, "rb") as stream:
        while chunk := stream.read(size):
            yield chunk


async def achunks_of(path: Path, size: int = MIB) -> AsyncIterator[bytes]:
    for chunk in chunks_of(path, size):
        yield chunk


def traced_peak(fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()`` and the peak of memory Python allocated while it ran (all threads)."""
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.fixture
def pete(db: None) -> User:
    """A publisher; the corpus's key is trusted and corpus-runtime 1.0 is there."""
    root = quick_user("root", Role.admin.value)
    publishing.trust_test_key(root)
    user = quick_user("pete", Role.publisher.value)
    return user


@pytest.fixture
def with_runtime(pete: User, tmp_path: Path) -> User:
    publishing.upload_runtime(pete, tmp_path, "1.0")
    return pete


# -- memory ------------------------------------------------------------------------------


def test_publishing_over_rest_streams_the_body(with_runtime, big_bundle, tmp_path):
    headers = bearer(with_runtime)
    # warm up on a small bundle: first-use caches (statements, imports) are not the upload
    small = publishing.app_bundle(tmp_path, "1.0")

    async def post(bundle: Path) -> httpx.Response:
        transport = httpx.ASGITransport(app=create_api(), client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://portal") as client:
            return await client.post(
                f"{API}/apps", content=achunks_of(bundle), headers=headers, timeout=None
            )

    assert run_async(post(small)).status_code == 201

    response, peak = traced_peak(lambda: run_async(post(big_bundle)))

    assert response.status_code == 201, response.text
    assert response.json()["bundle_size"] == big_bundle.stat().st_size
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert peak < PEAK_LIMIT, f"peak {peak / MIB:.1f} MiB for a {BIG // MIB} MiB bundle"
    _assert_stored_intact("corpus-app", "2.0", big_bundle)


def _assert_stored_intact(app: str, version: str, original: Path) -> None:
    with session_scope() as session:
        release = session.exec(select(Release).where(Release.version == version)).one()
    digest = hashlib.sha256()
    with get_storage().open(release.bundle_key) as stream:
        while chunk := stream.read(MIB):
            digest.update(chunk)
    assert digest.hexdigest() == release.bundle_sha256
    assert release.bundle_sha256 == hashlib.sha256(original.read_bytes()).hexdigest()


def test_publish_bundle_streams_a_generator(with_runtime, big_bundle, tmp_path):
    publishing.publish(with_runtime, publishing.app_bundle(tmp_path, "1.0"))  # warm-up

    release, peak = traced_peak(
        lambda: apps.publish_bundle(actor=with_runtime, source=chunks_of(big_bundle))
    )

    assert release.bundle_size == big_bundle.stat().st_size
    assert peak < PEAK_LIMIT, f"peak {peak / MIB:.1f} MiB for a {BIG // MIB} MiB bundle"
    _assert_stored_intact("corpus-app", "2.0", big_bundle)


def test_upload_runtime_streams_and_verifies_on_the_way(pete, big_runtime, tmp_path):
    package, signature = big_runtime
    publishing.upload_runtime(pete, tmp_path, "1.0")  # warm-up

    runtime, peak = traced_peak(
        lambda: runtimes.upload_runtime(actor=pete, source=chunks_of(package), signature=signature)
    )

    assert (runtime.version, runtime.size) == ("3.0", package.stat().st_size)
    assert peak < PEAK_LIMIT, f"peak {peak / MIB:.1f} MiB for a {BIG // MIB} MiB package"


def test_a_changed_byte_far_into_a_large_package_is_caught(pete, big_runtime, tmp_path):
    package, signature = big_runtime

    def flipped() -> Iterator[bytes]:
        for i, chunk in enumerate(chunks_of(package)):
            yield chunk if i != 40 else bytes([chunk[0] ^ 1]) + chunk[1:]

    with pytest.raises(InvalidInput) as caught:
        runtimes.upload_runtime(actor=pete, source=flipped(), signature=signature)

    assert caught.value.code == "bad_signature"
    assert list(get_storage().list()) == []
    with session_scope() as session:
        assert session.exec(select(RuntimeVersion)).all() == []


# -- AsyncChunkReader ------------------------------------------------------------------------


def _read_in_thread(loop_work: Callable[[AsyncChunkReader], Any], chunks: AsyncIterator[bytes]):
    """Run ``loop_work(reader)`` in a worker thread while the loop serves ``chunks``."""

    async def main() -> Any:
        reader = AsyncChunkReader(chunks, asyncio.get_running_loop())
        return await asyncio.to_thread(loop_work, reader)

    return run_async(main())


def test_the_chunk_reader_holds_at_most_one_chunk_ahead():
    produced: list[int] = []
    consumed: list[int] = []
    ahead: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(20):
            # when the producer is asked for chunk i, the consumer has taken all before it
            ahead.append(len(produced) - len(consumed))
            produced.append(i)
            yield bytes([i]) * 1000

    def consume(reader: AsyncChunkReader) -> bytes:
        parts = []
        while data := reader.read(1000):
            consumed.append(len(data))
            parts.append(data)
        return b"".join(parts)

    data = _read_in_thread(consume, chunks())

    assert data == b"".join(bytes([i]) * 1000 for i in range(20))
    assert max(ahead) <= 1


def test_the_chunk_reader_returns_exact_sizes_across_chunks():
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"abc", b"defgh", b"i"):
            yield part

    def consume(reader: AsyncChunkReader) -> list[bytes]:
        return [reader.read(2), reader.read(4), reader.read(-1), reader.read(5)]

    assert _read_in_thread(consume, chunks()) == [b"ab", b"cdef", b"ghi", b""]


def test_the_chunk_reader_hands_out_chunks_as_they_came_after_a_read():
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"abc", b"", b"defgh", b"i" * 5000, b"j"):
            yield part

    def consume(reader: AsyncChunkReader) -> list[bytes]:
        return [reader.read(2), *reader.iter_chunks()]

    # no chunk is joined to the next or cut (only the read before took its two bytes)
    assert _read_in_thread(consume, chunks()) == [b"ab", b"c", b"defgh", b"i" * 5000, b"j"]


def test_the_chunk_reader_iterates_with_a_bounded_read_ahead():
    produced: list[int] = []
    consumed: list[int] = []
    ahead: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(30):
            ahead.append(len(produced) - len(consumed))
            produced.append(i)
            yield bytes([i]) * 1000

    def consume(reader: AsyncChunkReader) -> bytes:
        parts = []
        for chunk in reader.iter_chunks():
            consumed.append(len(chunk))
            parts.append(chunk)
        return b"".join(parts)

    async def main() -> bytes:
        reader = AsyncChunkReader(chunks(), asyncio.get_running_loop(), prefetch=2000)
        return await asyncio.to_thread(consume, reader)

    assert run_async(main()) == b"".join(bytes([i]) * 1000 for i in range(30))
    # the batch in the consumer's hands and the next one: two of 2,000 bytes each
    assert max(ahead) <= 4


def test_the_chunk_reader_iteration_raises_what_the_stream_raised():
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x" * 10
        raise ConnectionResetError("client went away")

    def consume(reader: AsyncChunkReader) -> list[bytes]:
        return list(reader.iter_chunks())

    with pytest.raises(ConnectionResetError, match="went away"):
        _read_in_thread(consume, chunks())


def test_the_chunk_reader_refuses_to_block_the_event_loop():
    async def main() -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"x"

        reader = AsyncChunkReader(chunks(), asyncio.get_running_loop())
        with pytest.raises(RuntimeError, match="event loop thread"):
            reader.read(1)

    run_async(main())


# -- Spool -----------------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """A local folder, or a bucket on moto's S3 server (whose spool goes to a folder)."""
    if request.param == "local":
        return LocalStorage(tmp_path / "storage")
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return S3Storage(bucket, "spooled", endpoint_url=endpoint)


def _assert_left_nothing(store: Storage, spool_dir: Path) -> None:
    """No object, no unfinished multipart upload, no staged or spooled file."""
    assert list(store.list()) == []
    if isinstance(store, S3Storage):
        assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    else:
        assert isinstance(store, LocalStorage)
        assert [p for p in store.root.rglob("*") if p.is_file()] == []
    assert not spool_dir.exists() or list(spool_dir.iterdir()) == []


def test_a_spool_not_kept_leaves_nothing(store, tmp_path):
    spool_dir = tmp_path / "spool"
    with (
        pytest.raises(InvalidInput),
        Spool(store, "bundles/x", max_bytes=MIB, spool_dir=spool_dir) as spool,
    ):
        stored = spool.receive([b"hello ", b"world"])
        assert spool.path.read_bytes() == b"hello world"
        assert stored.sha256 == hashlib.sha256(b"hello world").hexdigest()
        spool.finish()
        assert store.exists("bundles/x")
        raise InvalidInput("refused after looking", code="invalid_archive")

    _assert_left_nothing(store, spool_dir)


def test_a_spool_refused_while_storage_finishes_leaves_nothing(store, tmp_path):
    # refused before finish(): the object being finished in the background is removed
    spool_dir = tmp_path / "spool"
    with (
        pytest.raises(InvalidInput),
        Spool(store, "bundles/x", max_bytes=BIG, spool_dir=spool_dir) as spool,
    ):
        spool.receive(chunks_of_size(20 * MIB + 5))
        raise InvalidInput("refused after looking", code="invalid_archive")

    _assert_left_nothing(store, spool_dir)


def test_a_spool_over_its_limit_keeps_nothing(store, tmp_path):
    spool_dir = tmp_path / "spool"
    with (
        pytest.raises(TooLarge),
        Spool(store, "bundles/x", max_bytes=20 * MIB, spool_dir=spool_dir) as spool,
    ):
        spool.receive(chunks_of_size(20 * MIB + 1))

    _assert_left_nothing(store, spool_dir)


def test_a_kept_spool_keeps_the_object_but_not_the_local_copy(store, tmp_path):
    spool_dir = tmp_path / "spool"
    total = 20 * MIB + 5  # several parts on S3, the last one short
    with Spool(store, "bundles/x", max_bytes=BIG, spool_dir=spool_dir) as spool:
        stored = spool.receive(chunks_of_size(total))
        spool.finish()
        # still readable once stored: inspecting may go on while storage finishes
        assert _sha256_of(spool.path) == stored.sha256
        spool.keep()

    assert [(o.key, o.size) for o in store.list()] == [("bundles/x", total)]
    digest = hashlib.sha256()
    for chunk in store.iter_chunks("bundles/x"):
        digest.update(chunk)
    assert digest.hexdigest() == stored.sha256
    assert not spool_dir.exists() or list(spool_dir.iterdir()) == []
    if isinstance(store, LocalStorage):
        assert [p for p in (store.root / ".incoming").iterdir()] == []


def test_a_spool_cannot_be_kept_before_it_is_finished(store, tmp_path):
    spool_dir = tmp_path / "spool"
    with (
        pytest.raises(RuntimeError, match="finish"),
        Spool(store, "bundles/x", max_bytes=MIB, spool_dir=spool_dir) as spool,
    ):
        spool.receive([b"not yet"])
        spool.keep()

    _assert_left_nothing(store, spool_dir)


def test_a_source_that_fails_midway_leaves_nothing(store, tmp_path):
    def dropped() -> Iterator[bytes]:
        yield from chunks_of_size(20 * MIB)  # on S3, parts are on their way by now
        raise ConnectionResetError("client went away")

    spool_dir = tmp_path / "spool"
    with (
        pytest.raises(ConnectionResetError),
        Spool(store, "bundles/x", max_bytes=BIG, spool_dir=spool_dir) as spool,
    ):
        spool.receive(dropped())

    _assert_left_nothing(store, spool_dir)


def chunks_of_size(total: int, size: int = MIB) -> Iterator[bytes]:
    """``total`` bytes in chunks of ``size``, each chunk different."""
    for number, offset in enumerate(range(0, total, size)):
        yield bytes([number % 251]) * min(size, total - offset)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in chunks_of(path):
        digest.update(chunk)
    return digest.hexdigest()


def test_concurrent_publishes_of_one_version_record_one_release(with_runtime, tmp_path):
    # the app exists: the race is for the version (a first publish races for the app name)
    publishing.publish(with_runtime, publishing.app_bundle(tmp_path, "0.9"))
    bundles = [publishing.app_bundle(tmp_path / str(i), "1.0", title=f"T{i}") for i in range(2)]
    outcomes: list[object] = []
    barrier = threading.Barrier(2)

    def publish(bundle: Path) -> None:
        def source() -> Iterator[bytes]:
            barrier.wait(timeout=30)  # both uploads under way before either records
            yield bundle.read_bytes()

        try:
            outcomes.append(apps.publish_bundle(actor=with_runtime, source=source()))
        except Exception as exc:  # noqa: BLE001  (the outcome is what is tested)
            outcomes.append(exc)

    threads = [threading.Thread(target=publish, args=(b,)) for b in bundles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    releases = [o for o in outcomes if isinstance(o, Release)]
    refused = [o for o in outcomes if not isinstance(o, Release)]
    assert len(releases) == 1 and len(refused) == 1, outcomes
    assert getattr(refused[0], "code", None) in {"duplicate_version", "concurrent_publish"}
    # the loser's bundle and icon are gone again
    with session_scope() as session:
        keys = set(session.exec(select(Release.bundle_key)).all())
        icons = set(session.exec(select(Release.icon_key)).all())
    assert releases[0].bundle_key in keys and len(keys) == 2
    assert {o.key for o in get_storage().list(prefix="bundles/")} == keys
    assert {o.key for o in get_storage().list(prefix="icons/")} == icons
