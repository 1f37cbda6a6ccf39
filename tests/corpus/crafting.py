"""Byte-level builders for archives that honest tools refuse to write.

zipfile and tarfile protect their users: they will not write a name that is not UTF-8,
a size that lies, or a symbolic link mode on a ZIP entry. These builders write exactly
what they are told, deterministically (fixed times, owners and modes), so that the
corpus and the tests can hand the library every kind of hostile archive.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

_DOS_TIME, _DOS_DATE = 0, (0 << 9) | (1 << 5) | 1  # 1980-01-01 00:00:00


@dataclass
class RawEntry:
    """One ZIP entry, written as given.

    ``name`` is written as its UTF-8 bytes (or as the bytes given). ``flags`` defaults
    to the UTF-8 flag when the name is not ASCII. ``mode`` goes into the high 16 bits of
    the external attributes (a Unix mode with its file type). ``claimed_size`` and
    ``stored`` override the uncompressed size and the compressed bytes the entry claims
    and holds; ``crc`` overrides the checksum.
    """

    name: str | bytes
    data: bytes = b""
    method: int = zipfile.ZIP_DEFLATED
    flags: int | None = None
    mode: int = 0o100644
    claimed_size: int | None = None
    stored: bytes | None = None
    crc: int | None = None
    comment: bytes = b""
    header_offset: int | None = None  # point the directory record elsewhere


def compress(data: bytes, method: int) -> bytes:
    """``data`` as a ZIP member of compression ``method`` stores it."""
    if method == zipfile.ZIP_STORED:
        return data
    if method == zipfile.ZIP_DEFLATED:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        return compressor.compress(data) + compressor.flush()
    if method == zipfile.ZIP_BZIP2:
        import bz2

        return bz2.compress(data, 9)
    raise ValueError(f"no compressor for method {method}")


def raw_zip(entries: Iterable[RawEntry], *, comment: bytes = b"") -> bytes:
    """A ZIP file of ``entries``: local headers and data, then the central directory."""
    out = io.BytesIO()
    records = []
    for entry in entries:
        name = entry.name if isinstance(entry.name, bytes) else entry.name.encode("utf-8")
        flags = entry.flags
        if flags is None:
            flags = 0 if name.isascii() else 0x800
        stored = entry.stored if entry.stored is not None else compress(entry.data, entry.method)
        size = entry.claimed_size if entry.claimed_size is not None else len(entry.data)
        crc = entry.crc if entry.crc is not None else zlib.crc32(entry.data)
        offset = out.tell()
        out.write(
            struct.pack(
                "<4s5H3L2H",
                b"PK\x03\x04",
                20,
                flags,
                entry.method,
                _DOS_TIME,
                _DOS_DATE,
                crc,
                len(stored),
                size,
                len(name),
                0,
            )
        )
        out.write(name)
        out.write(stored)
        header_offset = entry.header_offset if entry.header_offset is not None else offset
        records.append((name, flags, entry, crc, len(stored), size, header_offset))

    directory_start = out.tell()
    for name, flags, entry, crc, stored_size, size, header_offset in records:
        out.write(
            struct.pack(
                "<4s4B4H3L5H2L",
                b"PK\x01\x02",
                20,
                3,  # made by: Unix, so the mode is read as a Unix mode
                20,
                0,
                flags,
                entry.method,
                _DOS_TIME,
                _DOS_DATE,
                crc,
                stored_size,
                size,
                len(name),
                0,
                len(entry.comment),
                0,
                0,
                entry.mode << 16,
                header_offset,
            )
        )
        out.write(name)
        out.write(entry.comment)
    directory_size = out.tell() - directory_start
    count = len(records)
    out.write(
        struct.pack(
            "<4s4H2LH",
            b"PK\x05\x06",
            0,
            0,
            count,
            count,
            directory_size,
            directory_start,
            len(comment),
        )
    )
    out.write(comment)
    return out.getvalue()


@dataclass
class TarMember:
    """One tar member: a file (``data``), a folder, or a link/device/FIFO via ``type``."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    mode: int = 0o644
    pax: dict[str, str] | None = None


def tar_bytes(
    members: Iterable[TarMember], *, gz: bool = False, tar_format: int = tarfile.GNU_FORMAT
) -> bytes:
    """A tar file (gzip-compressed if ``gz``) with fixed times and owners.

    Names are written as their UTF-8 bytes; lone surrogates (``"\\udce9"``) become the
    raw byte they stand for, which is how a name that is not UTF-8 is made.
    """
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer,
        mode="w",
        format=tar_format,
        encoding="utf-8",
        errors="surrogateescape",
    ) as archive:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.type
            info.linkname = member.linkname
            info.mode = member.mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if member.pax:
                info.pax_headers = dict(member.pax)
            if member.type == tarfile.REGTYPE:
                info.size = len(member.data)
                archive.addfile(info, io.BytesIO(member.data))
            else:
                archive.addfile(info)
    data = buffer.getvalue()
    return gzip_bytes(data) if gz else data


def gzip_bytes(data: bytes) -> bytes:
    """``data`` gzip-compressed with no time stamp or file name (reproducible)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buffer.getvalue()


def make_wheel(
    name: str, version: str, module_source: str = "", requires: Iterable[str] = ()
) -> tuple[str, bytes]:
    """A tiny, installable, pure-Python wheel: (file name, bytes).

    ``requires`` are its dependencies as ``Requires-Dist`` lines (e.g. ``"other>=2"``).
    """
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": module_source.encode() or f'VERSION = "{version}"\n'.encode(),
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            "Summary: A test wheel of the aimms_portal corpus\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ).encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: aimms_portal-tests\n"
            b"Root-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record_lines = [
        f"{path},sha256={_record_digest(data)},{len(data)}" for path, data in files.items()
    ]
    record_lines.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record_lines) + "\n").encode()
    entries = [RawEntry(path, data) for path, data in files.items()]
    return f"{dist}-{version}-py3-none-any.whl", raw_zip(entries)


def _record_digest(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def png_bytes(
    width: int = 16, height: int = 16, rgb: tuple[int, int, int] = (31, 119, 180)
) -> bytes:
    """A valid PNG of one colour, written by hand (the same bytes on every machine)."""
    row = b"\x00" + bytes(rgb) * width
    raw = row * height

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
