"""Cases: immutable data snapshots (job input, job output, saved data) kept in storage.

A case is stored gzip-compressed under ``cases/<uuid>.gz``; its row keeps the size and
SHA-256 of the content as uploaded (uncompressed), so every read can prove it got back
what was stored. Content streams in both directions through bounded buffers: neither an
upload nor a download holds a case whole in memory, however well it compresses.

A case is private to its owner; admins see every case. Someone else's case is reported
as not found, so case ids cannot be probed.
"""

from __future__ import annotations

import hashlib
import logging
import unicodedata
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import BinaryIO, NoReturn

from sqlmodel import Session, col, select

from aimms_portal.config import get_settings
from aimms_portal.errors import InvalidInput, NotFound, PermissionDenied, Unavailable
from aimms_portal.models import App, AppRight, Case, CaseKind, User
from aimms_portal.services import audit
from aimms_portal.services.accounts import valid_id
from aimms_portal.services.apps import app_with_right
from aimms_portal.services.pagination import DEFAULT_LIMIT, Page, paginate
from aimms_portal.storage import get_storage
from aimms_portal.storage.base import CHUNK_SIZE, HashingReader, Readable

logger = logging.getLogger(__name__)

#: zlib's ``wbits`` for the gzip container (header and CRC-32 trailer) with a 32 KiB window.
GZIP_WBITS = 16 + zlib.MAX_WBITS
COMPRESS_LEVEL = 6
MAX_NAME_LENGTH = 128
#: Kinds a user may upload; ``output`` cases are written by jobs only.
UPLOAD_KINDS = frozenset({CaseKind.input.value, CaseKind.saved.value})
#: Cases whose ids :func:`purge_cases` deletes in one statement.
PURGE_BATCH = 500


class CaseCorrupt(Unavailable):
    """Storage gave back something other than the case that was stored."""

    code = "case_corrupt"


@dataclass(frozen=True)
class CaseView:
    """A case with the names of its owner and app, for lists and answers."""

    case: Case
    owner_name: str
    app_name: str | None


# -- names -------------------------------------------------------------------------------


def check_case_name(name: str) -> str:
    """``name`` without surrounding white space, if it is a fit name for a case.

    A name has 1 to 128 characters, no control or formatting characters (no line
    breaks, no invisible direction overrides), no ``/`` or ``\\``, and is not made of dots
    only: it doubles as the file name of a download.

    Raises:
        InvalidInput: the name does not fit (code ``invalid_name``).
    """
    cleaned = name.strip()
    problem = ""
    if not cleaned:
        problem = "it is empty"
    elif len(cleaned) > MAX_NAME_LENGTH:
        problem = f"it has {len(cleaned)} characters"
    elif "/" in cleaned or "\\" in cleaned:
        problem = "it contains a slash"
    elif any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in cleaned):
        problem = "it contains a control character"
    elif not cleaned.strip("."):
        problem = "it is made of dots only"
    if problem:
        raise InvalidInput(
            f"A case name has 1 to {MAX_NAME_LENGTH} characters without slashes or control "
            f"characters; this one does not fit ({problem}).",
            code="invalid_name",
        )
    return cleaned


def _check_kind(kind: str, allowed: Iterable[str]) -> str:
    allowed = sorted(allowed)
    if kind not in allowed:
        raise InvalidInput(
            f"Unknown case kind {kind[:16]!r}; choose one of {', '.join(allowed)}.",
            code="invalid_kind",
        )
    return kind


# -- storing -------------------------------------------------------------------------------


def upload_case(
    session: Session,
    *,
    actor: User,
    name: str,
    source: Readable | Iterable[bytes],
    app: str | None = None,
    kind: str = CaseKind.input.value,
) -> Case:
    """Store the content of ``source`` as a new case of ``actor``'s.

    ``source`` is a readable or an iterable of ``bytes`` chunks; it is compressed while
    it streams into storage, and its size and SHA-256 are taken on the way. ``app``
    names the app the case is for (the actor needs the read right on it). The name, the
    kind and the app are checked before a byte of ``source`` is read. The row is written
    only once the object is stored; if anything fails, the stored object is removed.

    ``session`` is committed before the transfer (no transaction stays open while a
    large case streams in) and again with the new row.

    Raises:
        PermissionDenied: the actor's account is disabled.
        InvalidInput: a bad name, or a kind other than ``input`` or ``saved``.
        NotFound: no such app, or the actor may not read it.
        TooLarge: the content exceeds the upload limit (nothing is stored).
        Unavailable: storage or database failed (nothing is kept).
    """
    if not actor.is_active:
        raise PermissionDenied("A disabled account cannot upload cases.", code="forbidden")
    name = check_case_name(name)
    kind = _check_kind(kind, UPLOAD_KINDS)
    app_id = None
    if app is not None:
        found, _ = app_with_right(session, actor, app, AppRight.read)
        app_id = found.id
    owner_id = actor.id or 0
    session.commit()
    return _store(session, owner_id=owner_id, app_id=app_id, kind=kind, name=name, source=source)


def store_output_case(
    session: Session,
    *,
    owner: User | int,
    job_id: int,
    attempt: int,
    app_id: int | None,
    name: str,
    source: Readable | Iterable[bytes],
) -> Case:
    """Store the output of attempt ``attempt`` of job ``job_id`` as a case of ``owner``.

    For the scheduler and the runner routes, which have checked the session token and
    the fencing number already: no rights are checked here. ``owner`` is the job's
    owner (a user or a user id). Storing and clean-up work as in :func:`upload_case`,
    and so do the commits of ``session``.

    Raises:
        InvalidInput: a bad name.
        TooLarge: the content exceeds the upload limit (nothing is stored).
        Unavailable: storage or database failed (nothing is kept).
    """
    name = check_case_name(name)
    owner_id = owner if isinstance(owner, int) else owner.id or 0
    session.commit()
    return _store(
        session,
        owner_id=owner_id,
        app_id=app_id,
        job_id=job_id,
        attempt=attempt,
        kind=CaseKind.output.value,
        name=name,
        source=source,
    )


def _store(
    session: Session,
    *,
    owner_id: int,
    app_id: int | None,
    kind: str,
    name: str,
    source: Readable | Iterable[bytes],
    job_id: int | None = None,
    attempt: int | None = None,
) -> Case:
    storage = get_storage()
    limit = get_settings().upload_max_bytes
    key = f"cases/{uuid.uuid4().hex}.gz"
    content = HashingReader(source, max_bytes=limit)
    # a failed put stores nothing (the storage contract): only what follows it needs undoing
    stored = storage.put(key, _Compressor(content), max_bytes=_compressed_bound(limit))
    try:
        case = Case(
            owner_id=owner_id,
            app_id=app_id,
            job_id=job_id,
            attempt=attempt,
            kind=kind,
            name=name,
            storage_key=key,
            stored_size=stored.size,
            size=content.size,
            sha256=content.sha256,
        )
        session.add(case)
        session.commit()
    except BaseException:
        session.rollback()
        try:
            storage.delete(key)
        except Exception:  # the original error matters more; the orphan is logged
            logger.exception("could not remove the object %s of a case not recorded", key)
        raise
    logger.info(
        "case %s stored (%s, %d bytes, %d in storage, sha256 %s)",
        case.id,
        kind,
        case.size,
        case.stored_size,
        case.sha256[:12],
    )
    return case


def _compressed_bound(size: int) -> int:
    """The most ``size`` bytes can grow to in the gzip container (zlib's compressBound
    plus the gzip header and trailer, with room to spare)."""
    return size + (size >> 12) + (size >> 14) + (size >> 25) + 13 + 18 + 64


class _Compressor:
    """A readable of the gzip-compressed bytes of ``source``, compressed as it is read.

    Holds at most one input chunk's compressed output beyond what was asked for.
    """

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._deflate = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, GZIP_WBITS)
        self._pending = bytearray()
        self._done = False

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._pending) < size):
            data = self._source.read(CHUNK_SIZE)
            if data:
                self._pending += self._deflate.compress(data)
            else:
                self._pending += self._deflate.flush()
                self._done = True
        if size < 0 or size >= len(self._pending):
            data, self._pending = bytes(self._pending), bytearray()
        else:
            data = bytes(self._pending[:size])
            del self._pending[:size]
        return data


# -- reading -------------------------------------------------------------------------------


class CaseReader:
    """The uncompressed content of a stored case as a readable stream.

    Decompresses on the fly with bounded buffers (a chunk of input, a chunk of output)
    whatever the compression ratio. The size and SHA-256 are checked once the stored
    object ends, and at least one byte is held back until then: a reader never sees the
    whole content of a case whose check fails. Use as a context manager.

    Raises (from :meth:`read`):
        CaseCorrupt: the stored object is missing, not valid gzip, longer or shorter
            than the case, or its content has another SHA-256.
    """

    def __init__(self, case: Case, stream: BinaryIO) -> None:
        self.case = case
        self._stream = stream
        self._inflate = zlib.decompressobj(GZIP_WBITS)
        self._hash = hashlib.sha256()
        self._size = 0
        self._out = bytearray()
        self._tail = b""
        self._input_done = False
        self._verified = False

    def __enter__(self) -> CaseReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stream.close()

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of content (all that is left if negative); ``b""`` at the end."""
        # more than asked for, so that something stays held back until the check passed
        while not self._verified and (size < 0 or len(self._out) <= size):
            self._step()
        if size < 0 or size >= len(self._out):
            data, self._out = bytes(self._out), bytearray()
        else:
            data = bytes(self._out[:size])
            del self._out[:size]
        return data

    def _step(self) -> None:
        """Decompress one bounded piece into the output buffer, or finish and verify."""
        data = self._tail
        if not data and not self._input_done:
            data = self._stream.read(CHUNK_SIZE)
            self._input_done = not data
        if data and self._inflate.eof:
            self._corrupt("data follows the end of the compressed stream")
        try:
            out = self._inflate.decompress(data, CHUNK_SIZE)
        except zlib.error as exc:
            self._corrupt(f"not valid gzip data ({exc})")
        self._tail = self._inflate.unconsumed_tail
        if self._inflate.unused_data:
            self._corrupt("data follows the end of the compressed stream")
        if out:
            self._size += len(out)
            if self._size > self.case.size:
                self._corrupt("more content than was stored")
            self._hash.update(out)
            self._out += out
        elif not data and self._input_done:
            self._verify()

    def _verify(self) -> None:
        if not self._inflate.eof:
            self._corrupt("the compressed stream is cut short")
        if self._size != self.case.size:
            self._corrupt(f"{self._size} bytes of content instead of {self.case.size}")
        if self._hash.hexdigest() != self.case.sha256:
            self._corrupt("the content's SHA-256 differs from the one recorded")
        self._verified = True

    def _corrupt(self, why: str) -> NoReturn:
        logger.error(
            "case %s: stored object %s is damaged: %s", self.case.id, self.case.storage_key, why
        )
        raise CaseCorrupt(
            f"The stored data of case {self.case.id} is damaged ({why}); "
            "ask an administrator to restore it from a backup.",
            log_detail=f"{self.case.storage_key}: {why}",
        )


def open_case(case: Case) -> CaseReader:
    """The uncompressed content of ``case`` as a readable (close it, or use ``with``).

    For a case the caller got through :func:`get_case` or is otherwise entitled to.

    Raises:
        CaseCorrupt: the stored object is missing (and, while reading, see
            :class:`CaseReader`).
        Unavailable: storage cannot be reached.
    """
    try:
        stream = get_storage().open(case.storage_key)
    except NotFound as exc:
        logger.error("case %s: stored object %s is missing", case.id, case.storage_key)
        raise CaseCorrupt(
            f"The stored data of case {case.id} is missing; ask an administrator to "
            "restore it from a backup.",
            log_detail=f"{case.storage_key}: missing",
        ) from exc
    return CaseReader(case, stream)


def iter_case_content(case: Case, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The uncompressed content of ``case`` in chunks of up to ``chunk_size`` bytes.

    The last chunk comes only after the size and SHA-256 were checked (see
    :class:`CaseReader`), so a streamed download of a damaged case never completes.
    """
    with open_case(case) as reader:
        while chunk := reader.read(chunk_size):
            yield chunk


# -- finding and listing ---------------------------------------------------------------------


def _may_see(actor: User, case: Case) -> bool:
    return actor.is_active and (actor.is_admin or case.owner_id == actor.id)


def get_case(session: Session, *, actor: User, case_id: int) -> Case:
    """One case of the actor's (any case for an admin).

    Raises:
        NotFound: no such case, or it is someone else's.
    """
    case = session.get(Case, case_id) if valid_id(case_id) else None
    if case is None or not _may_see(actor, case):
        raise NotFound(f"No case {case_id}.")
    return case


def list_cases(
    session: Session,
    *,
    actor: User,
    app: str | None = None,
    kind: str | None = None,
    all_users: bool = False,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
) -> Page[Case]:
    """The actor's cases, newest first; ``all_users`` lists everyone's (admins only).

    ``app`` keeps the cases of the app of that name and ``kind`` those of one kind. An
    unknown app gives an empty page, not an error: the list only ever shows cases the
    caller may see anyway, so it reveals nothing about other apps.

    Raises:
        PermissionDenied: ``all_users`` for someone who is not an admin.
        InvalidInput: an unknown kind, or a page outside the limits.
    """
    statement = select(Case)
    if all_users:
        if not actor.is_admin:
            raise PermissionDenied("Only admins may list everyone's cases.", code="forbidden")
    else:
        statement = statement.where(Case.owner_id == actor.id)
    if kind is not None:
        statement = statement.where(Case.kind == _check_kind(kind, {k.value for k in CaseKind}))
    if app is not None:
        statement = statement.join(App, col(App.id) == col(Case.app_id)).where(
            App.name == app.strip().lower()
        )
    statement = statement.order_by(col(Case.created_at).desc(), col(Case.id).desc())
    return paginate(session, statement, limit=limit, offset=offset)


def case_views(session: Session, cases: Iterable[Case]) -> list[CaseView]:
    """``cases`` with the names of their owners and apps (two queries in all).

    For cases the caller got through :func:`get_case` or :func:`list_cases`.
    """
    cases = list(cases)
    owner_ids = {c.owner_id for c in cases}
    app_ids = {c.app_id for c in cases if c.app_id is not None}
    owners: dict[int, str] = {}
    apps: dict[int, str] = {}
    if owner_ids:
        rows = session.exec(select(User.id, User.username).where(col(User.id).in_(owner_ids)))
        owners = {uid or 0: username for uid, username in rows.all()}
    if app_ids:
        app_rows = session.exec(select(App.id, App.name).where(col(App.id).in_(app_ids)))
        apps = {aid or 0: name for aid, name in app_rows.all()}
    return [
        CaseView(c, owners.get(c.owner_id, "?"), apps.get(c.app_id) if c.app_id else None)
        for c in cases
    ]


# -- deleting --------------------------------------------------------------------------------


def delete_case(session: Session, *, actor: User, case_id: int, source_ip: str = "") -> None:
    """Delete a case of the actor's (an admin: anyone's) with its stored object.

    A case that is a job's input or output may go too: the job keeps what it fetched
    already, and its reference becomes empty (``ON DELETE SET NULL``). An admin deleting
    someone else's case is audited.

    Raises:
        NotFound: no such case, or it is someone else's.
    """
    case = get_case(session, actor=actor, case_id=case_id)
    if case.owner_id != actor.id:
        owner = session.get(User, case.owner_id)
        audit.record(
            session,
            action="case.delete",
            actor=actor,
            target_type="case",
            target_id=case.id or "",
            target_name=case.name,
            source_ip=source_ip,
            detail=f"owner={owner.username if owner else case.owner_id} kind={case.kind}",
        )
    session.delete(case)
    session.commit()
    _remove_objects([case.storage_key])
    logger.info("case %s deleted by %s", case_id, actor.username)


def purge_cases(
    session: Session,
    *,
    case_ids: Iterable[int] | None = None,
    older_than: datetime | None = None,
    kinds: Iterable[str] | None = None,
) -> int:
    """Delete cases and their stored objects for retention; returns how many went.

    Deletes the cases that meet every criterion given: their id is in ``case_ids``,
    they were created before the moment ``older_than``, their kind is one of ``kinds``.
    At least ``case_ids`` or ``older_than`` must be given, so that a call can never
    mean "everything". The scheduler passes the ids of the cases of jobs that finished
    before the retention period, e.g. ``purge_cases(session, case_ids=ids,
    older_than=utcnow() - timedelta(days=settings.retention_days))``. No rights are
    checked (a system task) and nothing is audited, as with the audit log's own purge.

    Rows go in batches of :data:`PURGE_BATCH` through :func:`purge_case_rows`.

    Raises:
        InvalidInput: neither ``case_ids`` nor ``older_than`` given, or an unknown kind.
    """
    if case_ids is None and older_than is None:
        raise InvalidInput("Say which cases to purge: give case ids or a cut-off time.")
    kind_list = None
    if kinds is not None:
        kind_list = [_check_kind(k, {c.value for c in CaseKind}) for k in kinds]
    id_batches: Iterable[list[int] | None]
    if case_ids is None:
        id_batches = [None]
    else:
        wanted = sorted({i for i in case_ids if valid_id(i)})
        id_batches = [wanted[i : i + PURGE_BATCH] for i in range(0, len(wanted), PURGE_BATCH)]

    removed = 0
    for ids in id_batches:
        while True:
            statement = select(Case).order_by(col(Case.id)).limit(PURGE_BATCH)
            if ids is not None:
                statement = statement.where(col(Case.id).in_(ids))
            if older_than is not None:
                statement = statement.where(col(Case.created_at) < older_than)
            if kind_list is not None:
                statement = statement.where(col(Case.kind).in_(kind_list))
            batch = list(session.exec(statement).all())
            if not batch:
                break
            removed += purge_case_rows(session, batch)
            if ids is not None:
                break  # one id batch is one statement's worth
    if removed:
        logger.info("cases: purged %d", removed)
    return removed


def purge_case_rows(session: Session, rows: Iterable[Case]) -> int:
    """Delete these cases (rows of ``session``) and their stored objects; how many went.

    For system work that picked the cases itself, e.g. an output case of an attempt
    that went stale: no rights are checked, nothing is audited. ``session`` is committed
    before the objects are removed (see :func:`_remove_objects`).
    """
    rows = list(rows)
    for case in rows:
        session.delete(case)
    session.commit()
    _remove_objects([c.storage_key for c in rows])
    return len(rows)


def _remove_objects(keys: list[str]) -> None:
    """Remove the stored objects of case rows that are gone, best effort.

    The row goes first, in a committed transaction, and the object after it: a failure
    in between leaves an orphaned object (wasted space, found by listing ``cases/``
    against the table), never a case that lists fine but whose content is gone. Removing
    the object first would turn a failed commit into exactly that. So a failure here is
    logged with the key for an operator, and the deletion still counts as done.
    """
    storage = get_storage()
    for key in keys:
        try:
            storage.delete(key)
        except Exception:
            logger.warning(
                "could not remove the stored object %s of a deleted case; remove it by hand",
                key,
                exc_info=True,
            )
