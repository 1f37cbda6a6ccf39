"""Cases at the service layer: store compressed, read back verified, private, deletable.

Round trips and refusals run on both storages (the test's folder and a bucket on moto);
the memory tests measure with ``tracemalloc`` as test_publishing.py does: a 64 MiB case
must go in and come out with a peak far below its size, however well it compresses.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlmodel import col, select

from aimms_portal import config, storage
from aimms_portal.db import session_scope
from aimms_portal.errors import InvalidInput, NotFound, PermissionDenied, TooLarge, Unavailable
from aimms_portal.models import App, AppGrant, AuditEvent, Case, Job, Role, User, utcnow
from aimms_portal.services import cases
from aimms_portal.services.cases import CaseCorrupt
from aimms_portal.storage import get_storage
from aimms_portal.storage import local as local_storage
from tests import publishing
from tests.api.support import quick_user
from tests.servers import s3_client

pytestmark = pytest.mark.sqlite

MIB = 1024 * 1024
BIG = 64 * MIB
#: The most a 64 MiB case may add to traced memory at its peak (as in test_publishing.py).
PEAK_LIMIT = 16 * MIB

T = TypeVar("T")


# -- helpers -------------------------------------------------------------------------------


def compressible(size: int) -> bytes:
    """Text-like content that gzip shrinks a lot."""
    line = b"origin,destination,quantity,cost\nAmsterdam,Rotterdam,120,4.5\n"
    return (line * (size // len(line) + 1))[:size]


def random_chunks(size: int, chunk: int = MIB) -> Iterator[bytes]:
    for _ in range(size // chunk):
        yield os.urandom(chunk)


def zero_chunks(size: int, chunk: int = MIB) -> Iterator[bytes]:
    zeros = bytes(chunk)
    for _ in range(size // chunk):
        yield zeros


def traced_peak(fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()`` and the peak of memory Python allocated while it ran (all threads)."""
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def upload(actor: User, data: bytes | Iterator[bytes], name: str = "input.csv", **kw: Any) -> Case:
    source = [data] if isinstance(data, bytes) else data
    with session_scope() as session:
        return cases.upload_case(session, actor=actor, name=name, source=source, **kw)


def content(case: Case) -> bytes:
    return b"".join(cases.iter_case_content(case))


def case_rows() -> list[Case]:
    with session_scope() as session:
        return list(session.exec(select(Case).order_by(col(Case.id))).all())


def make_app(name: str, *readers: User, deny: tuple[User, ...] = ()) -> App:
    """An app row with read granted (or denied) to users, without publishing a bundle."""
    with session_scope() as session:
        app = App(name=name, title=name)
        session.add(app)
        session.flush()
        for user, effect in [(u, "allow") for u in readers] + [(u, "deny") for u in deny]:
            session.add(
                AppGrant(
                    app_id=app.id or 0,
                    principal_type="user",
                    principal_id=user.id or 0,
                    right="read",
                    effect=effect,
                )
            )
    return app


@dataclass
class Backend:
    name: str
    #: Keys of every object in storage, with unfinished uploads and temporary files.
    objects: Callable[[], list[str]]
    #: Read and replace a stored object's bytes (to damage it).
    read: Callable[[str], bytes]
    write: Callable[[str, bytes], None]


@pytest.fixture(params=["local", "s3"])
def backend(
    request: pytest.FixtureRequest, db: None, settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    """The portal's storage: the test's storage folder, or a fresh bucket on moto."""
    if request.param == "local":
        root = settings_env / "storage"

        def files() -> list[str]:
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

        return Backend(
            "local",
            files,
            lambda key: (root / key).read_bytes(),
            lambda key, data: (root / key).write_bytes(data),
        )
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    monkeypatch.setenv("AIMMS_PORTAL_STORAGE_URL", f"s3://{bucket}/portal")
    monkeypatch.setenv("AIMMS_PORTAL_S3_ENDPOINT_URL", endpoint)
    config.get_settings.cache_clear()
    storage.get_storage.cache_clear()
    client = s3_client(endpoint)

    def objects() -> list[str]:
        found = [
            item["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])
        ]
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return sorted(found + [f"(unfinished) {u['Key']}" for u in uploads])

    def read(key: str) -> bytes:
        return bytes(client.get_object(Bucket=bucket, Key=f"portal/{key}")["Body"].read())

    def write(key: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=f"portal/{key}", Body=data)

    return Backend("s3", objects, read, write)


@pytest.fixture
def ann(db: None) -> User:
    return quick_user("ann")


@pytest.fixture
def bob(db: None) -> User:
    return quick_user("bob")


@pytest.fixture
def root(db: None) -> User:
    return quick_user("root", Role.admin.value)


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch, settings_env: Path) -> int:
    """An upload limit of 64 KiB."""
    monkeypatch.setenv("AIMMS_PORTAL_UPLOAD_MAX_BYTES", str(64 * 1024))
    config.get_settings.cache_clear()
    return 64 * 1024


# -- round trip ------------------------------------------------------------------------------


def test_a_case_is_stored_compressed_and_read_back_whole(backend, ann):
    data = compressible(3 * MIB + 123)

    case = upload(ann, data, name="demand 2024.csv")

    assert (case.name, case.kind, case.owner_id) == ("demand 2024.csv", "input", ann.id)
    assert case.size == len(data)
    assert case.sha256 == hashlib.sha256(data).hexdigest()
    assert case.storage_key.startswith("cases/") and case.storage_key.endswith(".gz")
    stored = backend.read(case.storage_key)
    assert stored[:2] == b"\x1f\x8b", "not gzip"
    assert gzip.decompress(stored) == data
    assert case.stored_size == len(stored) < len(data) // 10
    assert content(case) == data
    with cases.open_case(case) as reader:
        assert reader.read(10) == data[:10]
        assert reader.read() == data[10:]
        assert reader.read() == b""
    assert backend.objects() == [f"{'portal/' if backend.name == 's3' else ''}{case.storage_key}"]


def test_sources_may_be_readables_iterables_or_empty(db, ann, tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"from a file" * 1000)

    with session_scope() as session, open(path, "rb") as stream:
        from_file = cases.upload_case(session, actor=ann, name="file", source=stream)
    chunked = upload(ann, iter([b"ab", b"", b"cd"]), name="chunks")
    empty = upload(ann, b"", name="empty")

    assert content(from_file) == path.read_bytes()
    assert content(chunked) == b"abcd" and chunked.size == 4
    assert content(empty) == b"" and empty.sha256 == hashlib.sha256(b"").hexdigest()


def test_incompressible_content_round_trips(db, ann):
    data = os.urandom(2 * MIB + 1)

    case = upload(ann, data)

    assert content(case) == data
    # gzip adds a few bytes per 16 KiB block at most
    assert case.stored_size < len(data) * 1.01


def test_names_are_trimmed_and_kinds_and_apps_recorded(db, ann):
    app = make_app("planner", ann)

    case = upload(ann, b"x", name="  saved state  ", app="Planner", kind="saved")

    assert (case.name, case.kind, case.app_id) == ("saved state", "saved", app.id)


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "   ", "a/b", "a\\b", "line\nbreak", "tab\there", "bell\x07", "rtl\u202eexe.txt", "..",
     "x" * 129],
    ids=["empty", "blank", "slash", "backslash", "newline", "tab", "bell", "rtl-override",
         "dots", "too-long"],
)  # fmt: skip
def test_a_bad_name_is_refused_before_anything_is_stored(backend, ann, name):
    def never() -> Iterator[bytes]:
        raise AssertionError("the source was read")
        yield b""

    with pytest.raises(InvalidInput) as caught:
        upload(ann, never(), name=name)

    assert caught.value.code == "invalid_name"
    assert "1 to 128 characters" in caught.value.message
    assert case_rows() == [] and backend.objects() == []


def test_a_name_of_128_characters_with_unicode_is_fine(db, ann):
    name = "Résumé – plan ✓ " + "x" * 112
    assert len(name) == 128
    assert upload(ann, b"x", name=name).name == name


def test_users_cannot_upload_outputs_or_unknown_kinds(db, ann):
    for kind in ("output", "secret"):
        with pytest.raises(InvalidInput) as caught:
            upload(ann, b"x", kind=kind)
        assert caught.value.code == "invalid_kind"
    assert case_rows() == []


def test_an_unknown_or_unreadable_app_is_not_found(db, ann, bob):
    make_app("hidden")
    make_app("denied", bob, deny=(ann,))
    make_app("bobs", bob)

    for app in ("nothing-here", "hidden", "denied", "bobs"):
        with pytest.raises(NotFound):
            upload(ann, b"x", app=app)
    assert case_rows() == []


def test_an_oversized_case_is_refused_and_nothing_is_kept(backend, ann, small_limit):
    with pytest.raises(TooLarge) as caught:
        upload(ann, random_chunks(4 * small_limit, chunk=16 * 1024))

    assert f"limit of {small_limit} bytes" in caught.value.message
    assert case_rows() == [] and backend.objects() == []


def test_the_limit_applies_to_the_content_not_the_compressed_size(backend, ann, small_limit):
    data = compressible(small_limit + 1)
    assert len(gzip.compress(data)) < small_limit // 10

    with pytest.raises(TooLarge):
        upload(ann, data)
    exact = upload(ann, compressible(small_limit))

    assert exact.size == small_limit
    assert [c.id for c in case_rows()] == [exact.id]


def test_a_storage_failure_midway_leaves_no_row_and_no_object(db, ann, monkeypatch, settings_env):
    real_open = open

    class FillingDisk:
        """A file that takes 1 MiB, then reports a full disk."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._file = real_open(*args, **kwargs)
            self._written = 0

        def write(self, data: bytes) -> int:
            self._written += len(data)
            if self._written > MIB:
                raise OSError(28, "No space left on device")
            return self._file.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._file, name)

        def __enter__(self) -> FillingDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self._file.close()

    monkeypatch.setattr(local_storage, "open", FillingDisk, raising=False)

    with pytest.raises(Unavailable):
        upload(ann, random_chunks(4 * MIB))

    root = settings_env / "storage"
    assert case_rows() == []
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_a_source_that_fails_midway_leaves_nothing(backend, ann):
    def dropped() -> Iterator[bytes]:
        yield os.urandom(MIB)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        upload(ann, dropped())

    assert case_rows() == [] and backend.objects() == []


def test_a_failure_to_record_the_row_removes_the_stored_object(backend, ann):
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), session_scope() as session:
        # no job 999: the foreign key refuses the row after the object was stored
        cases.store_output_case(
            session, owner=ann, job_id=999, attempt=1, app_id=None, name="out", source=[b"x"]
        )

    assert case_rows() == [] and backend.objects() == []


# -- reading damaged objects -------------------------------------------------------------------


def _damage(backend: Backend, case: Case, how: Callable[[bytes], bytes]) -> None:
    backend.write(case.storage_key, how(backend.read(case.storage_key)))


def _flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1 :]


@pytest.mark.parametrize(
    "how",
    [
        _flip_middle,
        lambda data: data[: len(data) // 2],
        lambda data: data + b"trailing",
        lambda data: gzip.compress(gzip.decompress(data)[:-1] + b"!"),
        lambda data: gzip.compress(gzip.decompress(data) + b"!"),
        lambda data: b"not gzip at all",
    ],
    ids=["flipped-byte", "truncated", "trailing-bytes", "other-content", "longer", "not-gzip"],
)
def test_a_damaged_object_is_a_clear_error_before_the_last_byte(backend, ann, how):
    data = compressible(3 * MIB)
    case = upload(ann, data)
    _damage(backend, case, how)

    received = []
    with pytest.raises(CaseCorrupt) as caught:
        for chunk in cases.iter_case_content(case):
            received.append(chunk)

    assert f"The stored data of case {case.id} is damaged" in caught.value.message
    assert caught.value.code == "case_corrupt"
    assert sum(map(len, received)) < len(data), "all the content came out unchecked"


def test_a_missing_object_is_a_clear_error(backend, ann):
    case = upload(ann, b"data")
    get_storage().delete(case.storage_key)

    with pytest.raises(CaseCorrupt, match="is missing"):
        content(case)


# -- memory ----------------------------------------------------------------------------------


def test_a_large_case_streams_in_and_out_in_bounded_memory(db, ann):
    upload(ann, random_chunks(MIB))  # warm-up: first-use caches are not the upload

    case, peak_in = traced_peak(lambda: upload(ann, random_chunks(BIG)))

    def drain() -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        for chunk in cases.iter_case_content(case):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()

    (size, sha256), peak_out = traced_peak(drain)

    assert case.size == size == BIG and sha256 == case.sha256
    assert peak_in < PEAK_LIMIT, f"upload peak {peak_in / MIB:.1f} MiB for {BIG // MIB} MiB"
    assert peak_out < PEAK_LIMIT, f"download peak {peak_out / MIB:.1f} MiB for {BIG // MIB} MiB"


def test_a_case_that_compresses_a_thousand_fold_still_reads_in_bounded_memory(db, ann):
    case = upload(ann, zero_chunks(BIG))
    assert case.stored_size < BIG // 500

    def drain() -> int:
        return sum(len(chunk) for chunk in cases.iter_case_content(case))

    size, peak = traced_peak(drain)

    assert size == BIG
    assert peak < PEAK_LIMIT, f"peak {peak / MIB:.1f} MiB inflating {BIG // MIB} MiB"


# -- privacy, listing --------------------------------------------------------------------------


def test_a_case_is_private_to_its_owner_and_admins(db, ann, bob, root):
    case = upload(ann, b"mine")

    with session_scope() as session:
        assert cases.get_case(session, actor=ann, case_id=case.id or 0).id == case.id
        assert cases.get_case(session, actor=root, case_id=case.id or 0).id == case.id
        for case_id in (case.id or 0, 999, 0, -1, 2**63):
            with pytest.raises(NotFound, match="No case"):
                cases.get_case(session, actor=bob, case_id=case_id)
        with pytest.raises(NotFound):
            cases.delete_case(session, actor=bob, case_id=case.id or 0)
    assert [c.id for c in case_rows()] == [case.id]


def test_a_publisher_does_not_see_other_users_cases(db, ann):
    case = upload(ann, b"mine")
    publisher = quick_user("pete", Role.publisher.value)

    with session_scope() as session, pytest.raises(NotFound):
        cases.get_case(session, actor=publisher, case_id=case.id or 0)


def test_lists_are_own_newest_first_paged_and_filtered(db, ann, bob, root):
    planner = make_app("planner", ann, bob)
    make_app("other", ann)
    mine = [
        upload(ann, b"%d" % i, name=f"c{i}", app="planner" if i % 2 else None) for i in range(5)
    ]
    saved = upload(ann, b"s", name="saved", kind="saved", app="other")
    theirs = upload(bob, b"b", name="bobs", app="planner")

    with session_scope() as session:
        page = cases.list_cases(session, actor=ann, limit=2, offset=1)
        everything = cases.list_cases(session, actor=ann)
        of_planner = cases.list_cases(session, actor=ann, app="PLANNER")
        of_nothing = cases.list_cases(session, actor=ann, app="no-such-app")
        inputs = cases.list_cases(session, actor=ann, kind="input")
        all_users = cases.list_cases(session, actor=root, all_users=True, app="planner")
        roots_own = cases.list_cases(session, actor=root)
        views = cases.case_views(session, all_users.items)
        with pytest.raises(PermissionDenied):
            cases.list_cases(session, actor=ann, all_users=True)
        with pytest.raises(InvalidInput):
            cases.list_cases(session, actor=ann, kind="nonsense")

    newest_first = [saved.id] + [c.id for c in reversed(mine)]
    assert [c.id for c in everything.items] == newest_first and everything.total == 6
    assert [c.id for c in page.items] == newest_first[1:3] and page.total == 6
    assert [c.name for c in of_planner.items] == ["c3", "c1"]
    assert of_nothing.items == [] and of_nothing.total == 0
    assert [c.name for c in inputs.items] == ["c4", "c3", "c2", "c1", "c0"]
    assert [c.id for c in all_users.items] == [theirs.id, mine[3].id, mine[1].id]
    assert [(v.owner_name, v.app_name) for v in views] == [("bob", "planner")] + [
        ("ann", planner.name)
    ] * 2
    assert roots_own.items == []


# -- deleting ---------------------------------------------------------------------------------


def test_the_owner_deletes_a_case_and_its_object(backend, ann):
    case = upload(ann, b"gone soon")
    kept = upload(ann, b"stays")

    with session_scope() as session:
        cases.delete_case(session, actor=ann, case_id=case.id or 0)

    assert [c.id for c in case_rows()] == [kept.id]
    assert len(backend.objects()) == 1 and backend.objects()[0].endswith(kept.storage_key)
    with session_scope() as session:
        assert (
            session.exec(select(AuditEvent).where(AuditEvent.action == "case.delete")).all() == []
        )


def test_an_admin_deleting_someone_elses_case_is_audited(db, ann, root):
    case = upload(ann, b"x", name="ann's input")

    with session_scope() as session:
        cases.delete_case(session, actor=root, case_id=case.id or 0, source_ip="198.51.100.4")

    assert case_rows() == [] and not get_storage().exists(case.storage_key)
    with session_scope() as session:
        [event] = session.exec(select(AuditEvent).where(AuditEvent.action == "case.delete")).all()
    assert (event.actor_name, event.target_type, event.target_id) == ("root", "case", str(case.id))
    assert (event.target_name, event.source_ip) == ("ann's input", "198.51.100.4")
    assert "owner=ann" in event.detail


def test_a_storage_failure_on_delete_still_deletes_the_case(db, ann, monkeypatch, caplog):
    case = upload(ann, b"x")

    def broken(self: Any, key: str) -> None:
        raise Unavailable("The storage folder cannot be written.")

    monkeypatch.setattr(local_storage.LocalStorage, "delete", broken)
    with (
        caplog.at_level(logging.WARNING, logger="aimms_portal.services.cases"),
        session_scope() as session,
    ):
        cases.delete_case(session, actor=ann, case_id=case.id or 0)

    assert case_rows() == []
    assert any(case.storage_key in r.getMessage() for r in caplog.records)


@pytest.fixture
def job(db: None, tmp_path: Path, ann: User) -> Job:
    """A running job of ann's on a published app."""
    root = quick_user("root", Role.admin.value)
    publishing.trust_test_key(root)
    pete = quick_user("pete", Role.publisher.value)
    publishing.upload_runtime(pete, tmp_path, "1.0")
    publishing.publish(pete, publishing.app_bundle(tmp_path, "1.0"))
    with session_scope() as session:
        app = session.exec(select(App).where(App.name == publishing.APP_NAME)).one()
        job = Job(
            owner_id=ann.id or 0,
            app_id=app.id or 0,
            release_id=app.latest_release_id or 0,
            procedure="solve",
            time_limit_s=60,
            state="running",
            attempt=2,
        )
        session.add(job)
    return job


def test_output_cases_belong_to_the_job_and_cases_in_use_can_be_deleted(db, ann, job):
    input_case = upload(ann, b"input")
    with session_scope() as session:
        output = cases.store_output_case(
            session,
            owner=ann.id or 0,
            job_id=job.id or 0,
            attempt=2,
            app_id=job.app_id,
            name="result.json",
            source=iter([b'{"cost": ', b"42}"]),
        )
        row = session.get(Job, job.id)
        assert row is not None
        row.input_case_id, row.output_case_id = input_case.id, output.id
        session.add(row)

    assert (output.kind, output.job_id, output.attempt, output.owner_id) == (
        "output",
        job.id,
        2,
        ann.id,
    )
    assert content(output) == b'{"cost": 42}'
    with session_scope() as session:
        listed = cases.list_cases(session, actor=ann, kind="output", app=publishing.APP_NAME)
        assert [c.id for c in listed.items] == [output.id]
        cases.delete_case(session, actor=ann, case_id=input_case.id or 0)
        cases.delete_case(session, actor=ann, case_id=output.id or 0)
    with session_scope() as session:
        row = session.get(Job, job.id)
        assert row is not None and row.state == "running"
        assert (row.input_case_id, row.output_case_id) == (None, None)


# -- purging ----------------------------------------------------------------------------------


def test_purge_removes_the_given_old_cases_and_their_objects(backend, ann, bob):
    old = [upload(ann, b"old %d" % i) for i in range(3)]
    saved = upload(bob, b"saved", kind="saved")
    with session_scope() as session:
        for case in [*old, saved]:
            row = session.get(Case, case.id)
            assert row is not None
            row.created_at = utcnow() - timedelta(days=40)
            session.add(row)
    fresh = upload(ann, b"fresh")
    cutoff = utcnow() - timedelta(days=30)

    with session_scope() as session:
        none_given = [c.id or 0 for c in old[:2]] + [fresh.id or 0, 10**12]
        removed = cases.purge_cases(session, case_ids=none_given, older_than=cutoff)
        by_age = cases.purge_cases(session, older_than=cutoff, kinds=["input", "output"])
        nothing = cases.purge_cases(session, case_ids=[])
        with pytest.raises(InvalidInput):
            cases.purge_cases(session)

    assert (removed, by_age, nothing) == (2, 1, 0)
    assert sorted(c.id for c in case_rows()) == sorted([saved.id, fresh.id])
    assert len(backend.objects()) == 2


def test_purge_works_through_more_cases_than_one_batch(db, ann, monkeypatch):
    monkeypatch.setattr(cases, "PURGE_BATCH", 3)
    made = [upload(ann, b"%d" % i) for i in range(7)]

    with session_scope() as session:
        by_ids = cases.purge_cases(session, case_ids=[c.id or 0 for c in made[:4]])
        by_age = cases.purge_cases(session, older_than=utcnow())

    assert (by_ids, by_age) == (4, 3)
    assert case_rows() == [] and list(get_storage().list()) == []


def test_purging_rows_picked_by_the_caller_removes_their_objects(backend, ann):
    stale, kept = upload(ann, b"stale output"), upload(ann, b"kept")

    with session_scope() as session:
        row = session.get(Case, stale.id)
        assert row is not None
        assert cases.purge_case_rows(session, [row]) == 1

    assert [c.id for c in case_rows()] == [kept.id]
    assert len(backend.objects()) == 1 and backend.objects()[0].endswith(kept.storage_key)
