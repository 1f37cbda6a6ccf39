"""Reading and writing the archives that runtime packages and app bundles travel in.

Archives come from publishers and are hostile input. Everything here follows the
"Archives" section of docs/formats.md: an archive is a ZIP file or a (gzip-compressed)
tar file whose entries are regular files and folders with safe, unique, UTF-8 names,
within the :class:`Limits`. Sizes are checked twice: against what the archive claims
before any data is read, and against the bytes actually produced while reading.

The stdlib's ``zipfile`` and ``tarfile`` parse the containers, but nothing here ever
calls their ``extractall``: every member is streamed by this module, to paths it built
itself from names it validated.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import gzip
import logging
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from aimms_portal.errors import InvalidInput

logger = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

CHUNK_SIZE = 1 * MiB

DAMAGED = "the archive is truncated or damaged"

#: What :func:`write_zip` leaves out by default: matched against every path segment.
DEFAULT_EXCLUDE = (
    "__pycache__",
    "*.pyc",
    "*.pyo",
    ".git",
    ".hg",
    ".svn",
    ".venv",
    ".DS_Store",
    ".ipynb_checkpoints",
)

#: Every member of a ZIP written by :func:`write_zip` carries this time stamp.
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)

_MAX_NAME_BYTES = 1024
_MAX_SEGMENT_BYTES = 255
_DRIVE = re.compile(r"^[A-Za-z]:")
# ZIP compression methods zipfile reads: stored, deflate, bzip2, lzma
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_ZIP_UTF8_FLAG = 0x800
_ZIP_ENCRYPTED_FLAG = 0x1
_ZIP_LOCAL_HEADER = 30
_ZIP_CENTRAL_HEADER = 46
# zipfile reads the whole central directory into memory: refuse absurd ones before it
# does. Honest archives need far less than this per entry (name, a few extra fields).
_ZIP_DIRECTORY_BYTES_PER_ENTRY = 4 * KiB
# tar's long-name and pax headers are read into memory whole; real ones are tiny
_MAX_TAR_META_BYTES = 64 * KiB
# tar writers pad the end of an archive with zeros to a full record (10 KiB by default,
# larger with a big blocking factor); more than this after the end is not padding
_MAX_TAR_TRAILER_BYTES = 1 * MiB


@dataclass(frozen=True)
class Limits:
    """How much an archive may hold (docs/formats.md, "Archives").

    Attributes:
        max_entries: Files and folders together.
        max_total_bytes: Uncompressed size of all files together.
        max_entry_bytes: Uncompressed size of one file.
        max_ratio: How many times its compressed size a ZIP entry may expand to...
        ratio_floor: ...once it is larger than this many bytes.
        max_manifest_bytes: Size of ``runtime.json`` or ``app.json``.
    """

    max_entries: int = 10_000
    max_total_bytes: int = 4 * GiB
    max_entry_bytes: int = 1 * GiB
    max_ratio: int = 200
    ratio_floor: int = 1 * MiB
    max_manifest_bytes: int = 64 * KiB


DEFAULT_LIMITS = Limits()


class ArchiveError(InvalidInput):
    """The archive is damaged, unsafe or beyond the limits; the message says which."""

    code = "invalid_archive"


@dataclass(frozen=True)
class Entry:
    """One file or folder of an archive.

    ``name`` is the validated ``/``-separated relative path (a folder's without its
    trailing ``/``); ``size`` is the uncompressed size the archive claims (0 for folders).
    """

    name: str
    size: int
    is_dir: bool


def human_size(size: int) -> str:
    """``4 GiB``, ``64 KiB``, ``1,500 bytes``: for messages."""
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor:,} {unit}"
    return f"{size:,} bytes"


def _show(name: str) -> str:
    # repr escapes control characters and lone surrogates: safe in any message
    return repr(name if len(name) <= 120 else name[:120] + "...")


# --- names -----------------------------------------------------------------------------


def check_entry_name(name: str) -> str:
    """Refuse an entry name that is not a safe relative path; return it unchanged.

    ``name`` is the name without the trailing ``/`` of a folder. The rules are those of
    docs/formats.md: UTF-8, ``/``-separated, relative, 1-255 bytes per segment and at
    most 1,024 in all, no ``.``/``..`` segments, backslashes, control characters or
    drive letters.

    Raises:
        ArchiveError: with the rule the name breaks.
    """
    if any("\ud800" <= ch <= "\udfff" for ch in name):
        # tarfile hands out undecodable bytes as lone surrogates (surrogateescape)
        raise ArchiveError("an entry name is not UTF-8")
    shown = _show(name)
    if not name:
        raise ArchiveError("an entry has an empty name")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise ArchiveError(f"entry {shown} contains a control character")
    if "\\" in name:
        raise ArchiveError(f"entry {shown} contains a backslash")
    if name.startswith("/"):
        raise ArchiveError(f"entry {shown} is an absolute path")
    if _DRIVE.match(name):
        raise ArchiveError(f"entry {shown} starts with a drive letter")
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        raise ArchiveError(f"entry {shown} has a name longer than 1,024 bytes")
    for segment in name.split("/"):
        if segment == "..":
            raise ArchiveError(f"entry {shown} has a '..' segment (path traversal)")
        if segment == ".":
            raise ArchiveError(f"entry {shown} has a '.' segment")
        if not segment:
            raise ArchiveError(f"entry {shown} has an empty path segment ('//')")
        if len(segment.encode("utf-8")) > _MAX_SEGMENT_BYTES:
            raise ArchiveError(f"entry {shown} has a path segment longer than 255 bytes")
    return name


def _name_key(name: str) -> str:
    # names that one file system could store as the same file count as duplicates
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


class _Checker:
    """Applies every listing rule to the entries of one archive, one entry at a time.

    Counts, names and claimed sizes are checked as each entry arrives, so a hostile
    archive is refused at the first entry past a limit, before the rest is parsed.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.entries: list[Entry] = []
        self.total = 0
        self._keys: dict[str, Entry] = {}

    def add(self, name: str, size: int, is_dir: bool, compressed: int | None = None) -> Entry:
        limits = self.limits
        if len(self.entries) >= limits.max_entries:
            raise ArchiveError(f"the archive has more than {limits.max_entries:,} entries")
        check_entry_name(name)
        key = _name_key(name)
        if key in self._keys:
            other = self._keys[key].name
            same = "" if other == name else f" (as {_show(other)})"
            raise ArchiveError(
                f"entry {_show(name)} appears twice{same}; names must differ also when "
                "compared without regard to case"
            )
        if size > limits.max_entry_bytes:
            raise ArchiveError(
                f"entry {_show(name)} is larger than the limit of "
                f"{human_size(limits.max_entry_bytes)}"
            )
        self.total += size
        if self.total > limits.max_total_bytes:
            raise ArchiveError(
                f"the archive expands to more than {human_size(limits.max_total_bytes)} in all"
            )
        if compressed is not None and _ratio_exceeded(size, compressed, limits):
            raise ArchiveError(_ratio_message(name, limits))
        entry = Entry(name=name, size=size, is_dir=is_dir)
        self._keys[key] = entry
        self.entries.append(entry)
        return entry

    def finish(self) -> list[Entry]:
        """The entries, once no file is also used as a folder ("a" and "a/b")."""
        for entry in self.entries:
            parts = entry.name.split("/")
            for depth in range(1, len(parts)):
                parent = self._keys.get(_name_key("/".join(parts[:depth])))
                if parent is not None and not parent.is_dir:
                    raise ArchiveError(
                        f"entry {_show(entry.name)} is inside {_show(parent.name)}, which is a file"
                    )
        return self.entries


def _ratio_exceeded(size: int, compressed: int, limits: Limits) -> bool:
    return size > limits.ratio_floor and size > limits.max_ratio * compressed


def _ratio_message(name: str, limits: Limits) -> str:
    return (
        f"entry {_show(name)} expands more than {limits.max_ratio} times its compressed "
        "size (a zip bomb?)"
    )


# --- reading ---------------------------------------------------------------------------


def detect_kind(path: str | os.PathLike[str]) -> Literal["zip", "tar"]:
    """``"zip"`` or ``"tar"``, by the file's first bytes (never by its name).

    A tar file is recognised by gzip's magic number or by ``ustar`` at offset 257.

    Raises:
        ArchiveError: neither ("not a ZIP or tar archive").
    """
    with open(path, "rb") as file:
        head = file.read(262)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b") or head[257:262] == b"ustar":
        return "tar"
    raise ArchiveError("not a ZIP or tar archive")


@contextlib.contextmanager
def _damaged() -> Iterator[None]:
    """Turn the many ways a parser reports a broken archive into one plain error."""
    try:
        yield
    except ArchiveError:
        raise
    except (
        zipfile.BadZipFile,
        tarfile.TarError,
        zlib.error,
        lzma.LZMAError,
        EOFError,
        NotImplementedError,
        UnicodeDecodeError,
        struct.error,
        # bz2 and gzip report bad data as OSError, zipfile some inconsistencies as
        # ValueError or RuntimeError (e.g. an encrypted member it cannot read)
        OSError,
        ValueError,
        RuntimeError,
    ) as exc:
        raise ArchiveError(DAMAGED, log_detail=f"{type(exc).__name__}: {exc}") from exc


class _Reader:
    """An open archive: its validated entries and a way to stream each file's bytes."""

    entries: list[Entry]
    #: names of the files whose Unix mode has the owner's execute bit
    executable: set[str]

    def members(self) -> Iterator[tuple[Entry, Iterator[bytes]]]:
        """Every entry in archive order with an iterator over its data (empty for folders).

        Consume (or drop) each iterator before asking for the next member.
        """
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


@contextlib.contextmanager
def _open(path: str | os.PathLike[str], limits: Limits) -> Iterator[_Reader]:
    kind = detect_kind(path)
    reader: _Reader = _ZipReader(path, limits) if kind == "zip" else _TarReader(path, limits)
    try:
        yield reader
    finally:
        reader.close()


def _stream(
    entry: Entry,
    opener: Callable[[], IO[bytes]],
    limits: Limits,
    budget: list[int],
    compressed: int | None,
) -> Iterator[bytes]:
    """The member's bytes, refused as soon as they break a limit.

    The member is opened (with ``opener``) only when the first chunk is asked for, so
    skipping a member costs nothing. ``budget`` is a one-item list with the bytes all
    members produced so far, shared by the members of one pass over the archive.
    ``compressed`` is the stored size of a ZIP entry (for the ratio rule), None for tar.
    """
    with _damaged():
        source = opener()
    with source:
        produced = 0
        while True:
            with _damaged():
                chunk = source.read(CHUNK_SIZE)
            if not chunk:
                break
            produced += len(chunk)
            budget[0] += len(chunk)
            if produced > limits.max_entry_bytes:
                raise ArchiveError(
                    f"entry {_show(entry.name)} is larger than the limit of "
                    f"{human_size(limits.max_entry_bytes)}"
                )
            if budget[0] > limits.max_total_bytes:
                raise ArchiveError(
                    f"the archive expands to more than {human_size(limits.max_total_bytes)} in all"
                )
            if compressed is not None and _ratio_exceeded(produced, compressed, limits):
                raise ArchiveError(_ratio_message(entry.name, limits))
            yield chunk


class _ZipReader(_Reader):
    def __init__(self, path: str | os.PathLike[str], limits: Limits) -> None:
        self.limits = limits
        self._file = open(path, "rb")  # noqa: SIM115 (closed by close())
        try:
            _precheck_zip_directory(self._file, limits)
            with _damaged():
                self._zip = zipfile.ZipFile(self._file)
            self._infos: list[zipfile.ZipInfo] = []
            self.executable = set()
            self.entries = self._list()
        except BaseException:
            self._file.close()
            raise

    def _list(self) -> list[Entry]:
        checker = _Checker(self.limits)
        for info in self._zip.infolist():
            # orig_filename keeps what zipfile's filename cuts off at a NUL byte
            raw = info.orig_filename
            is_dir = raw.endswith("/")
            name = raw[:-1] if is_dir else raw
            _check_zip_type(info, name, is_dir)
            if info.flag_bits & _ZIP_ENCRYPTED_FLAG:
                raise ArchiveError(
                    f"entry {_show(name)} is protected by a ZIP password; "
                    "archives must not be password-protected"
                )
            if info.compress_type not in _ZIP_METHODS:
                raise ArchiveError(
                    f"entry {_show(name)} uses an unsupported compression method "
                    f"({info.compress_type}); use deflate"
                )
            if is_dir and info.file_size:
                raise ArchiveError(f"folder entry {_show(name)} has content")
            checker.add(name, info.file_size, is_dir, info.compress_size)
            self._infos.append(info)
            if not is_dir and (info.external_attr >> 16) & stat.S_IXUSR:
                self.executable.add(name)
        _check_zip_overlap(self._infos, self._zip.start_dir)
        return checker.finish()

    def members(self) -> Iterator[tuple[Entry, Iterator[bytes]]]:
        budget = [0]
        for entry, info in zip(self.entries, self._infos, strict=True):
            if entry.is_dir:
                yield entry, iter(())
            else:
                opener = functools.partial(self._zip.open, info)
                yield entry, _stream(entry, opener, self.limits, budget, info.compress_size)

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            self._zip.close()
        self._file.close()


def _precheck_zip_directory(file: IO[bytes], limits: Limits) -> None:
    """Count the central directory's records, and check their names' encoding, before
    zipfile parses it: zipfile reads it whole and makes an object per record.
    """
    # zipfile's own (private, long-stable) reader of the end record: so this check and
    # zipfile agree on where the directory is, prepended data and ZIP64 included
    private: Any = zipfile
    with _damaged():
        end = private._EndRecData(file)
    if not end:
        raise ArchiveError(DAMAGED, log_detail="no end of central directory record")
    size: int = end[private._ECD_SIZE]
    location: int = end[private._ECD_LOCATION]
    if end[private._ECD_SIGNATURE] == private.stringEndArchive64:
        location -= private.sizeEndCentDir64 + private.sizeEndCentDir64Locator
    if size > limits.max_entries * _ZIP_DIRECTORY_BYTES_PER_ENTRY:
        raise ArchiveError(
            f"the archive's table of contents is too large (more than {limits.max_entries:,} "
            "entries?)"
        )
    start = location - size
    if start < 0:
        raise ArchiveError(DAMAGED, log_detail="central directory starts before the file")
    file.seek(start)
    directory = file.read(size)
    if len(directory) != size:
        raise ArchiveError(DAMAGED, log_detail="short central directory")

    count, offset = 0, 0
    while offset < size:
        header = directory[offset : offset + _ZIP_CENTRAL_HEADER]
        if len(header) != _ZIP_CENTRAL_HEADER or header[:4] != b"PK\x01\x02":
            raise ArchiveError(DAMAGED, log_detail=f"bad central record at {offset}")
        count += 1
        if count > limits.max_entries:
            raise ArchiveError(f"the archive has more than {limits.max_entries:,} entries")
        (flags,) = struct.unpack_from("<H", header, 8)
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", header, 28)
        raw = directory[offset + _ZIP_CENTRAL_HEADER : offset + _ZIP_CENTRAL_HEADER + name_len]
        if flags & _ZIP_UTF8_FLAG:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ArchiveError("an entry name is not UTF-8") from None
        elif not raw.isascii():
            # without flag bit 11 ZIP names are in code page 437: we take UTF-8 only
            raise ArchiveError(
                "an entry name is not UTF-8 (a non-ASCII name without the ZIP UTF-8 flag)"
            )
        offset += _ZIP_CENTRAL_HEADER + name_len + extra_len + comment_len


def _check_zip_type(info: zipfile.ZipInfo, name: str, is_dir: bool) -> None:
    """Refuse entries whose Unix mode says anything but a regular file or a folder."""
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise ArchiveError(f"entry {_show(name)} is a symbolic link; links are not allowed")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise ArchiveError(
            f"entry {_show(name)} is a device, FIFO or socket; only files and folders are allowed"
        )
    if kind == stat.S_IFDIR and not is_dir:
        raise ArchiveError(f"entry {_show(name)} is marked as a folder but named as a file")


def _check_zip_overlap(infos: list[zipfile.ZipInfo], directory_start: int) -> None:
    """Refuse entries whose data overlaps, the trick of the densest zip bombs.

    Each entry's local header and data must end before the next entry (in file order)
    begins, and the last one before the central directory. The local header's extra
    field is not counted, so this never refuses an honest archive.
    """
    ordered = sorted(infos, key=lambda i: i.header_offset)
    ends = [i.header_offset for i in ordered[1:]] + [directory_start]
    for info, next_start in zip(ordered, ends, strict=True):
        encoding = "utf-8" if info.flag_bits & _ZIP_UTF8_FLAG else "cp437"
        name_len = len(info.orig_filename.encode(encoding, "surrogateescape"))
        if info.header_offset + _ZIP_LOCAL_HEADER + name_len + info.compress_size > next_start:
            raise ArchiveError("the archive's entries overlap (a zip bomb?)")


class _CheckedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized long-name and pax headers before tarfile reads
    them into memory whole (a gzip-compressed gigabyte of header is a few kilobytes)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        meta = (
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
            tarfile.XHDTYPE,
            tarfile.XGLTYPE,
            tarfile.SOLARIS_XHDTYPE,
        )
        if self.type in meta and self.size > _MAX_TAR_META_BYTES:
            raise ArchiveError("the archive has an oversized extended header")
        return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]


class _RecordingFile:
    """A read-only file that remembers the bytes of its most recent read.

    tarfile ends its listing quietly at a zero block, a missing block or a garbled
    header alike; the last block it read tells which.
    """

    def __init__(self, file: IO[bytes] | gzip.GzipFile) -> None:
        self._file = file
        self.last = b""

    def read(self, size: int = -1) -> bytes:
        self.last = self._file.read(size)
        return self.last

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


class _TarReader(_Reader):
    def __init__(self, path: str | os.PathLike[str], limits: Limits) -> None:
        self.limits = limits
        self._raw = open(path, "rb")  # noqa: SIM115 (closed by close())
        try:
            compressed = self._raw.read(2) == b"\x1f\x8b"
            self._raw.seek(0)
            stream = gzip.GzipFile(fileobj=self._raw, mode="rb") if compressed else self._raw
            self._file = _RecordingFile(stream)
            with _damaged():
                # (tarfile's stubs want a real file; the wrapper has all it calls)
                self._tar = tarfile.open(  # type: ignore[call-overload]  # noqa: SIM115
                    fileobj=self._file,
                    mode="r:",
                    tarinfo=_CheckedTarInfo,
                    encoding="utf-8",
                    errors="surrogateescape",
                )
            self._members: list[tarfile.TarInfo] = []
            self.executable = set()
            self.entries = self._list()
        except BaseException:
            self.close()
            raise

    def _list(self) -> list[Entry]:
        checker = _Checker(self.limits)
        while True:
            # one member at a time (never getmembers()): a tar of a million empty files
            # compresses to almost nothing, and the count limit must stop it early
            with _damaged():
                member = self._tar.next()
            if member is None:
                break
            if len(self._members) >= self.limits.max_entries:
                raise ArchiveError(f"the archive has more than {self.limits.max_entries:,} entries")
            _check_tar_type(member)
            checker.add(member.name, 0 if member.isdir() else member.size, member.isdir())
            self._members.append(member)
            if member.isfile() and member.mode & stat.S_IXUSR:
                self.executable.add(member.name)
        self._check_end()
        return checker.finish()

    def _check_end(self) -> None:
        """Insist on the end-of-archive marker, and nothing but padding after it.

        tarfile takes a missing or garbled header after the first member for the end of
        the archive: without this check a tar cut at a member boundary would pass as a
        shorter, valid one. Reading to the end also makes gzip check its CRC.
        """
        if self._file.last != bytes(tarfile.BLOCKSIZE):
            raise ArchiveError(DAMAGED, log_detail="no end-of-archive marker")
        trailer = 0
        with _damaged():
            while chunk := self._file.read(64 * KiB):
                trailer += len(chunk)
                if trailer > _MAX_TAR_TRAILER_BYTES or chunk.count(0) != len(chunk):
                    raise ArchiveError("the archive has unexpected data after its end")

    def members(self) -> Iterator[tuple[Entry, Iterator[bytes]]]:
        budget = [0]
        for entry, member in zip(self.entries, self._members, strict=True):
            if entry.is_dir:
                yield entry, iter(())
            else:
                opener = functools.partial(self._open_member, member)
                yield entry, _stream(entry, opener, self.limits, budget, None)

    def _open_member(self, member: tarfile.TarInfo) -> IO[bytes]:
        source = self._tar.extractfile(member)
        assert source is not None  # a regular file: _check_tar_type made sure
        return source

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            self._tar.close()
        with contextlib.suppress(AttributeError):
            self._file.close()
        self._raw.close()


def _check_tar_type(member: tarfile.TarInfo) -> None:
    shown = _show(member.name)
    if member.issym():
        raise ArchiveError(f"entry {shown} is a symbolic link; links are not allowed")
    if member.islnk():
        raise ArchiveError(f"entry {shown} is a hard link; links are not allowed")
    if member.isdev():
        raise ArchiveError(f"entry {shown} is a device or FIFO; only files and folders are allowed")
    if member.issparse():
        raise ArchiveError(f"entry {shown} is a sparse file; only plain files are allowed")
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        raise ArchiveError(
            f"entry {shown} has an unsupported type; only files and folders are allowed"
        )


def list_entries(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> list[Entry]:
    """The entries of the archive at ``path``, in archive order, after every listing rule.

    Checks names, types, duplicates, the entry count and the claimed sizes. Reads no
    file data of a ZIP; for a compressed tar it has to decompress the whole stream.

    Raises:
        ArchiveError: the archive breaks a rule or is damaged.
    """
    with _open(path, limits) as reader:
        return reader.entries


def check_archive(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> list[Entry]:
    """Like :func:`list_entries`, then read every file's bytes to the end (and drop them).

    This proves the archive is whole (ZIP CRCs, gzip's CRC) and that the bytes it
    actually produces keep within the limits, not only the sizes it claims.

    Raises:
        ArchiveError: the archive breaks a rule or is damaged.
    """
    entries, _ = scan_archive(path, {}, limits)
    return entries


def scan_archive(
    path: str | os.PathLike[str], collect: Mapping[str, int], limits: Limits = DEFAULT_LIMITS
) -> tuple[list[Entry], dict[str, bytes]]:
    """:func:`check_archive` that also keeps the bytes of a few small files on the way.

    ``collect`` maps file names to the most bytes wanted of each; a file that is larger
    comes back with one byte more than that (so the caller can tell it apart) while the
    rest of it is still read and checked. Names not in the archive are left out.

    Raises:
        ArchiveError: the archive breaks a rule or is damaged.
    """
    kept: dict[str, bytes] = {}
    with _open(path, limits) as reader:
        for entry, chunks in reader.members():
            wanted = None if entry.is_dir else collect.get(entry.name)
            data = bytearray()
            for chunk in chunks:
                if wanted is not None and len(data) <= wanted:
                    data += chunk[: wanted + 1 - len(data)]
            if wanted is not None:
                kept[entry.name] = bytes(data)
        return reader.entries, kept


def read_member(
    path: str | os.PathLike[str], name: str, max_bytes: int, limits: Limits = DEFAULT_LIMITS
) -> bytes:
    """The bytes of the file ``name`` of a (validated) archive.

    Raises:
        ArchiveError: the archive breaks a rule, has no file ``name``, or the file is
            larger than ``max_bytes``.
    """
    with _open(path, limits) as reader:
        for entry, chunks in reader.members():
            if entry.name != name or entry.is_dir:
                continue
            too_large = ArchiveError(f"{_show(name)} is larger than {human_size(max_bytes)}")
            if entry.size > max_bytes:
                raise too_large
            data = bytearray()
            for chunk in chunks:
                data += chunk
                if len(data) > max_bytes:
                    raise too_large
            return bytes(data)
    raise ArchiveError(f"the archive has no file {_show(name)}")


def extract_all(
    path: str | os.PathLike[str], dest_dir: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS
) -> list[str]:
    """Extract the archive into ``dest_dir``; return the names of the files, in order.

    ``dest_dir`` must not exist or be an empty folder. Everything is written into a
    temporary sibling folder first, which replaces ``dest_dir`` only once every member
    came out within the limits: on any failure ``dest_dir`` is left as it was. Files
    are created 0644 (0755 when the archive marks them executable), folders 0755.

    Raises:
        ArchiveError: the archive breaks a rule or is damaged.
        FileExistsError: ``dest_dir`` exists and is not an empty folder.
    """
    dest = Path(dest_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    root = os.path.realpath(work)
    written: list[str] = []
    try:
        with _open(path, limits) as reader:
            for entry, chunks in reader.members():
                target = work / entry.name
                # the name rules already keep every path inside; this is the last word
                if os.path.commonpath([root, os.path.realpath(target)]) != root:
                    raise ArchiveError(f"entry {_show(entry.name)} leaves the folder")
                if entry.is_dir:
                    target.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                mode = 0o755 if entry.name in reader.executable else 0o644
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                with os.fdopen(os.open(target, flags, mode), "wb") as out:
                    for chunk in chunks:
                        out.write(chunk)
                written.append(entry.name)
        work.chmod(0o755)
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.debug("extracted %d files into %s", len(written), dest)
    return written


# --- writing ---------------------------------------------------------------------------


def write_zip(
    src_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    exclude: Iterable[str] | Callable[[str], bool] = DEFAULT_EXCLUDE,
    limits: Limits = DEFAULT_LIMITS,
) -> list[str]:
    """Write the files under ``src_dir`` into a ZIP at ``out_path``; return their names.

    The result depends only on the files' names and bytes: members are sorted by name,
    carry a fixed time stamp and mode 0644, and are deflated. Folders get no entries of
    their own (an empty folder is left out). ``exclude`` is a sequence of glob patterns
    matched against every segment of a relative path (default :data:`DEFAULT_EXCLUDE`),
    or a function of the relative path that returns True to leave it out.

    The ZIP is written to a temporary file beside ``out_path`` and renamed at the end;
    ``out_path`` itself (and the temporary file) is never packed, even inside ``src_dir``.

    Raises:
        ArchiveError: a symbolic link or other non-regular file in ``src_dir``, or a name
            or size that the portal would refuse (see :func:`check_entry_name`).
    """
    src = Path(src_dir)
    out = Path(out_path)
    skip = exclusion_filter(exclude)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    own = {os.path.realpath(out), os.path.realpath(tmp)}
    try:
        files = _collect(src, skip, own)
        checker = _Checker(limits)
        for rel, full in files:
            checker.add(rel, full.stat().st_size, False)
        checker.finish()
        with zipfile.ZipFile(tmp, "w") as archive:
            for rel, full in files:
                _write_member(archive, rel, full)
        tmp.chmod(0o644)  # mkstemp made it 0600
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.debug("wrote %s with %d files", out, len(files))
    return [rel for rel, _ in files]


def exclusion_filter(exclude: Iterable[str] | Callable[[str], bool]) -> Callable[[str], bool]:
    """A function of a relative path that says whether :func:`write_zip` leaves it out.

    ``exclude`` is such a function already, or glob patterns matched against every
    segment of the path.
    """
    if callable(exclude):
        return exclude
    patterns = tuple(exclude)
    return lambda rel: any(
        fnmatch.fnmatchcase(part, pattern) for part in rel.split("/") for pattern in patterns
    )


def _collect(src: Path, skip: Callable[[str], bool], own: set[str]) -> list[tuple[str, Path]]:
    """The files to pack as sorted (relative name, path) pairs; refuses links."""
    found: list[tuple[str, Path]] = []
    for folder, dirnames, filenames in os.walk(src, followlinks=False):
        base = Path(folder)
        kept = []
        for dirname in dirnames:
            full = base / dirname
            rel = full.relative_to(src).as_posix()
            if skip(rel):
                continue
            if full.is_symlink():
                raise ArchiveError(f"{_show(rel)} is a symbolic link; links cannot be packed")
            kept.append(dirname)
        dirnames[:] = kept
        for filename in filenames:
            full = base / filename
            rel = full.relative_to(src).as_posix()
            if skip(rel) or os.path.realpath(full) in own:
                continue
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"{_show(rel)} is a symbolic link; links cannot be packed")
            if not stat.S_ISREG(mode):
                raise ArchiveError(f"{_show(rel)} is not a regular file")
            found.append((rel, full))
    found.sort(key=lambda item: item[0])
    return found


def _write_member(archive: zipfile.ZipFile, rel: str, full: Path) -> None:
    info = zipfile.ZipInfo(rel, date_time=FIXED_DATE_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix, so that the mode below is read as one
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    with open(full, "rb") as source:
        # the size tells zipfile in advance whether the member needs ZIP64 fields
        info.file_size = os.fstat(source.fileno()).st_size
        with archive.open(info, "w") as target:
            shutil.copyfileobj(source, target, CHUNK_SIZE)
