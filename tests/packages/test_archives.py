"""Archives: every rule of docs/formats.md "Archives", in ZIP and in tar, and the writer."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from aimms_portal.packages import archives
from aimms_portal.packages.archives import (
    ArchiveError,
    Entry,
    Limits,
    check_archive,
    check_entry_name,
    detect_kind,
    extract_all,
    list_entries,
    read_member,
    scan_archive,
    write_zip,
)
from tests.corpus.crafting import RawEntry, TarMember, gzip_bytes, raw_zip, tar_bytes

MiB = 1024 * 1024
Write = Callable[[str, bytes], Path]


def zip_of(write: Write, *entries: RawEntry, name: str = "a.zip") -> Path:
    return write(name, raw_zip(entries))


def tar_of(write: Write, *members: TarMember, gz: bool = False, name: str = "a.tar") -> Path:
    return write(name, tar_bytes(members, gz=gz))


def refused(path: Path, phrase: str, limits: Limits = archives.DEFAULT_LIMITS) -> ArchiveError:
    with pytest.raises(ArchiveError) as caught:
        check_archive(path, limits)
    assert phrase in caught.value.message
    assert caught.value.code == "invalid_archive"
    return caught.value


# --- detection -------------------------------------------------------------------------


def test_detect_kind_by_magic_bytes_not_by_name(write: Write):
    assert detect_kind(zip_of(write, RawEntry("a", b"x"), name="x.tar")) == "zip"
    assert detect_kind(tar_of(write, TarMember("a", b"x"), name="x.zip")) == "tar"
    assert detect_kind(tar_of(write, TarMember("a", b"x"), gz=True, name="x.bin")) == "tar"
    assert detect_kind(write("empty.zip", raw_zip([]))) == "zip"


@pytest.mark.parametrize("data", [b"", b"hello world", b"%PDF-1.7\n" + bytes(600), b"AIMMSENC"])
def test_detect_kind_refuses_anything_else(write: Write, data: bytes):
    with pytest.raises(ArchiveError, match="not a ZIP or tar archive"):
        detect_kind(write("junk", data))


# --- valid archives --------------------------------------------------------------------


def test_zip_entries_are_listed_with_folders(write: Write):
    path = zip_of(
        write,
        RawEntry("app/", mode=0o40755),
        RawEntry("app/main.py", b"print(1)\n"),
        RawEntry("README", b"hello"),
        RawEntry("caf\u00e9.txt", b"utf-8 name"),
    )
    assert list_entries(path) == [
        Entry("app", 0, True),
        Entry("app/main.py", 9, False),
        Entry("README", 5, False),
        Entry("caf\u00e9.txt", 10, False),
    ]
    assert check_archive(path) == list_entries(path)


@pytest.mark.parametrize("gz", [False, True])
def test_tar_entries_are_listed_with_folders(write: Write, gz: bool):
    path = tar_of(
        write,
        TarMember("app", type=tarfile.DIRTYPE, mode=0o755),
        TarMember("app/main.py", b"print(1)\n"),
        TarMember("caf\u00e9.txt", b"utf-8 name"),
        gz=gz,
    )
    assert check_archive(path) == [
        Entry("app", 0, True),
        Entry("app/main.py", 9, False),
        Entry("caf\u00e9.txt", 10, False),
    ]


def test_tar_of_the_stdlib_with_pax_headers_and_long_names_is_accepted(tmp_path: Path):
    long_name = "d/" + "x" * 200 + ".txt"
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo(long_name)
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    assert [e.name for e in check_archive(path)] == [long_name]
    assert read_member(path, long_name, 10) == b"abc"


# --- names -----------------------------------------------------------------------------

BAD_NAMES = [
    ("../evil.py", "'..' segment"),
    ("app/../../evil.py", "'..' segment"),
    ("..", "'..' segment"),
    ("/etc/passwd", "absolute path"),
    ("..\\evil.py", "backslash"),
    ("app\\main.py", "backslash"),
    ("a\x01b", "control character"),
    ("a\x7fb", "control character"),
    ("line\nbreak", "control character"),
    ("C:/Windows/evil.exe", "drive letter"),
    ("c:evil", "drive letter"),
    ("a//b", "empty path segment"),
    ("./app.json", "'.' segment"),
    ("a/./b", "'.' segment"),
    ("x" * 256, "longer than 255 bytes"),
    ("\u00e9" * 128, "longer than 255 bytes"),  # 256 bytes in UTF-8
    ("a/" * 512 + "b", "longer than 1,024 bytes"),
]


@pytest.mark.parametrize(("name", "phrase"), BAD_NAMES)
def test_check_entry_name_refuses(name: str, phrase: str):
    with pytest.raises(ArchiveError) as caught:
        check_entry_name(name)
    assert phrase in caught.value.message


@pytest.mark.parametrize(
    "name", ["a", "a/b/c.py", "x" * 255, "caf\u00e9/\u6f22\u5b57.txt", "..a", "a.."]
)
def test_check_entry_name_accepts(name: str):
    assert check_entry_name(name) == name


@pytest.mark.parametrize(("name", "phrase"), BAD_NAMES)
def test_bad_names_are_refused_in_zip(write: Write, name: str, phrase: str):
    refused(zip_of(write, RawEntry("ok.txt", b"x"), RawEntry(name, b"x")), phrase)


@pytest.mark.parametrize(
    ("name", "phrase"),
    [(n, p) for n, p in BAD_NAMES if "\n" not in n and not n.startswith("a/a/")],
)
def test_bad_names_are_refused_in_tar(write: Write, name: str, phrase: str):
    refused(tar_of(write, TarMember("ok.txt", b"x"), TarMember(name, b"x"), gz=True), phrase)


def test_a_nul_byte_in_a_zip_name_is_refused_although_zipfile_cuts_it_off(write: Write):
    refused(zip_of(write, RawEntry("evil.py\x00.txt", b"x")), "control character")


def test_zip_name_with_utf8_flag_but_invalid_bytes_is_refused(write: Write):
    refused(zip_of(write, RawEntry(b"caf\xe9.py", b"x", flags=0x800)), "not UTF-8")


def test_zip_name_without_utf8_flag_must_be_ascii(write: Write):
    # code page 437 would turn these bytes into other letters than the publisher meant
    refused(zip_of(write, RawEntry(b"caf\x82.py", b"x", flags=0)), "not UTF-8")
    assert list_entries(zip_of(write, RawEntry(b"plain.py", b"x", flags=0), name="b.zip"))


def test_tar_name_that_is_not_utf8_is_refused(write: Write):
    refused(tar_of(write, TarMember("caf\udce9.py", b"x")), "not UTF-8")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("app.py", "app.py"),
        ("app.py", "APP.PY"),
        ("caf\u00e9.py", "cafe\u0301.py"),  # composed and decomposed: the same after NFC
        ("Stra\u00dfe.txt", "STRASSE.txt"),  # case folding, not just lower()
    ],
)
def test_duplicate_names_are_refused(write: Write, first: str, second: str):
    refused(zip_of(write, RawEntry(first, b"1"), RawEntry(second, b"2")), "appears twice")
    refused(tar_of(write, TarMember(first, b"1"), TarMember(second, b"2")), "appears twice")


def test_a_folder_and_a_file_of_the_same_name_are_duplicates(write: Write):
    refused(zip_of(write, RawEntry("app/"), RawEntry("app", b"x")), "appears twice")


def test_a_file_used_as_a_folder_is_refused(write: Write):
    path = zip_of(write, RawEntry("app", b"x"), RawEntry("app/main.py", b"y"))
    refused(path, "which is a file")
    path = tar_of(write, TarMember("app", b"x"), TarMember("App/main.py", b"y"))
    refused(path, "which is a file")


# --- entry types -----------------------------------------------------------------------


def test_zip_symlink_mode_is_refused(write: Write):
    path = zip_of(write, RawEntry("passwd", b"/etc/passwd", method=0, mode=0o120777))
    refused(path, "symbolic link")


@pytest.mark.parametrize("mode", [stat.S_IFIFO | 0o644, stat.S_IFCHR | 0o644, stat.S_IFSOCK])
def test_zip_device_fifo_and_socket_modes_are_refused(write: Write, mode: int):
    refused(zip_of(write, RawEntry("dev", b"", mode=mode)), "device, FIFO or socket")


def test_zip_folder_mode_on_a_file_name_is_refused(write: Write):
    refused(zip_of(write, RawEntry("folder", b"", mode=0o40755)), "marked as a folder")


def test_zip_folder_entry_with_content_is_refused(write: Write):
    refused(zip_of(write, RawEntry("folder/", b"data")), "has content")


def test_zip_entries_without_unix_mode_are_regular_files(write: Write):
    assert list_entries(zip_of(write, RawEntry("a.txt", b"x", mode=0)))


@pytest.mark.parametrize(
    ("member", "phrase"),
    [
        (TarMember("link", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "symbolic link"),
        (TarMember("link", type=tarfile.SYMTYPE, linkname="ok.txt"), "symbolic link"),
        (TarMember("link", type=tarfile.LNKTYPE, linkname="ok.txt"), "hard link"),
        (TarMember("fifo", type=tarfile.FIFOTYPE), "device or FIFO"),
        (TarMember("tty", type=tarfile.CHRTYPE), "device or FIFO"),
        (TarMember("disk", type=tarfile.BLKTYPE), "device or FIFO"),
        (TarMember("contig", type=tarfile.CONTTYPE, data=b""), "unsupported type"),
        (TarMember("odd", type=b"Z"), "unsupported type"),
    ],
)
def test_tar_links_devices_and_other_types_are_refused(
    write: Write, member: TarMember, phrase: str
):
    refused(tar_of(write, TarMember("ok.txt", b"x"), member), phrase)


def test_zip_with_a_password_is_refused(write: Write):
    refused(zip_of(write, RawEntry("secret.txt", b"x", flags=0x1)), "password")


def test_zip_with_an_unknown_compression_method_is_refused(write: Write):
    path = zip_of(write, RawEntry("a.txt", b"x", method=99, stored=b"x"))
    refused(path, "unsupported compression method")


# --- limits ----------------------------------------------------------------------------


def test_entry_count_limit(write: Write):
    limits = Limits(max_entries=3)
    entries = [RawEntry(f"f{i}", b"") for i in range(4)]
    assert len(list_entries(zip_of(write, *entries[:3]), limits)) == 3
    refused(zip_of(write, *entries, name="b.zip"), "more than 3 entries", limits)
    members = [TarMember(f"f{i}") for i in range(4)]
    assert len(list_entries(tar_of(write, *members[:3]), limits)) == 3
    refused(tar_of(write, *members, name="b.tar"), "more than 3 entries", limits)


def test_zip_directory_larger_than_the_entry_limit_allows_is_refused_before_parsing(
    write: Write,
):
    # one record with a 9 KiB comment: more table of contents than 2 entries could need
    path = zip_of(write, RawEntry("a", b"", comment=b"c" * 9000))
    refused(path, "table of contents is too large", Limits(max_entries=2))


def test_claimed_entry_size_limit(write: Write):
    limits = Limits(max_entry_bytes=100)
    assert check_archive(zip_of(write, RawEntry("a", bytes(100))), limits)
    refused(zip_of(write, RawEntry("a", bytes(101)), name="b.zip"), "larger than the limit", limits)
    refused(tar_of(write, TarMember("a", bytes(101))), "larger than the limit", limits)


def test_claimed_total_size_limit(write: Write):
    limits = Limits(max_total_bytes=1000)
    two = [RawEntry("a", bytes(500)), RawEntry("b", bytes(500))]
    assert check_archive(zip_of(write, *two), limits)
    three = [*two, RawEntry("c", b"x")]
    refused(zip_of(write, *three, name="b.zip"), "more than 1,000 bytes in all", limits)
    members = [TarMember(name, bytes(size)) for name, size in (("a", 500), ("b", 500), ("c", 1))]
    refused(tar_of(write, *members), "more than 1,000 bytes in all", limits)


def test_compression_ratio_limit_applies_above_the_floor_only(write: Write):
    # 1 MiB of zeros deflates to about 1 KiB (ratio ~1000): allowed at the floor...
    assert check_archive(zip_of(write, RawEntry("zeros", bytes(MiB))))
    # ...refused one byte above it
    path = zip_of(write, RawEntry("zeros", bytes(MiB + 1)), name="b.zip")
    refused(path, "expands more than 200 times")


def test_compression_ratio_is_about_stored_bytes(write: Write):
    # random bytes do not compress: 3 MiB of them are fine
    assert check_archive(zip_of(write, RawEntry("random", os.urandom(3 * MiB))))


def test_limits_are_enforced_on_the_bytes_actually_produced():
    # the archive's claims were checked already; the stream must hold to the limits too
    entry = Entry("big", 10, False)

    def drain(limits: Limits, data: bytes, compressed: int | None = None) -> None:
        opener = lambda: io.BytesIO(data)  # noqa: E731
        for _ in archives._stream(entry, opener, limits, [0], compressed):
            pass

    with pytest.raises(ArchiveError, match="larger than the limit"):
        drain(Limits(max_entry_bytes=1000), bytes(1001))
    with pytest.raises(ArchiveError, match="in all"):
        drain(Limits(max_total_bytes=1000), bytes(1001))
    with pytest.raises(ArchiveError, match="200 times"):
        drain(Limits(ratio_floor=1000), bytes(2 * MiB), compressed=100)
    drain(Limits(max_entry_bytes=1000, max_total_bytes=1000), bytes(1000))


def test_total_limit_counts_every_member_of_one_pass():
    limits = Limits(max_total_bytes=1500)
    budget = [0]
    first, second = Entry("a", 1000, False), Entry("b", 1000, False)
    for _ in archives._stream(first, lambda: io.BytesIO(bytes(1000)), limits, budget, None):
        pass
    with pytest.raises(ArchiveError, match="in all"):
        for _ in archives._stream(second, lambda: io.BytesIO(bytes(1000)), limits, budget, None):
            pass


def test_overlapping_zip_entries_are_refused(write: Write):
    # two directory records pointing at one local header: the densest zip bombs' trick
    path = zip_of(write, RawEntry("a", b"x" * 100), RawEntry("b", b"x" * 100, header_offset=0))
    refused(path, "overlap")


def test_oversized_tar_extended_header_is_refused_before_it_is_read(write: Write):
    member = TarMember("a.txt", b"x", pax={"comment": "c" * (70 * 1024)})
    path = write("pax.tar.gz", tar_bytes([member], gz=True, tar_format=tarfile.PAX_FORMAT))
    refused(path, "oversized extended header")


# --- damage ----------------------------------------------------------------------------


def valid_zip(write: Write) -> Path:
    return zip_of(write, RawEntry("a.txt", os.urandom(5000)), RawEntry("b.txt", b"hello" * 100))


@pytest.mark.parametrize("cut", [1, 22, 100, 2000, 5000])
def test_truncated_zip_is_refused(write: Write, cut: int):
    data = valid_zip(write).read_bytes()
    refused(write("cut.zip", data[:-cut]), "truncated or damaged")


def test_zip_with_a_changed_data_byte_fails_its_crc(write: Write):
    data = bytearray(valid_zip(write).read_bytes())
    data[100] ^= 0xFF  # inside a.txt's stored data
    path = write("flipped.zip", bytes(data))
    assert list_entries(path)  # the directory is intact...
    refused(path, "truncated or damaged")  # ...but reading the data is not


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_tar_is_refused_also_at_a_member_boundary(write: Write, gz: bool):
    members = [TarMember("a.txt", b"a" * 512), TarMember("b.txt", b"b" * 512)]
    data = tar_bytes(members)
    # cut right after the first member: tarfile alone would take it for a shorter tar
    for cut in (1024, 1536, 1700, 2048):
        piece = gzip_bytes(data[:cut]) if gz else data[:cut]
        refused(write(f"cut{cut}.tar", piece), "truncated or damaged")


def test_truncated_gzip_stream_is_refused(write: Write):
    data = tar_bytes([TarMember("a.txt", os.urandom(4000))], gz=True)
    refused(write("cut.tar.gz", data[: len(data) - 10]), "truncated or damaged")


def test_gzip_crc_of_the_whole_stream_is_checked(write: Write):
    data = bytearray(tar_bytes([TarMember("a.txt", b"hello")], gz=True))
    data[-6] ^= 0xFF  # the gzip trailer's CRC
    refused(write("crc.tar.gz", bytes(data)), "truncated or damaged")


def test_data_after_the_end_of_a_tar_is_refused(write: Write):
    data = tar_bytes([TarMember("a.txt", b"hello")])
    refused(write("tail.tar", data + b"surprise" + bytes(504)), "after its end")
    refused(write("tail.tar.gz", gzip_bytes(data + bytes(2 * MiB))), "after its end")
    # zero padding to a larger record size is what tar writers do: accepted
    assert check_archive(write("pad.tar", data + bytes(20 * 512)))


def test_garbled_tar_header_after_the_first_member_is_refused(write: Write):
    data = bytearray(tar_bytes([TarMember("a.txt", b"hello"), TarMember("b.txt", b"bye")]))
    data[1024 + 148 : 1024 + 156] = b"garbage!"  # the second header's checksum
    refused(write("garbled.tar", bytes(data)), "truncated or damaged")


# --- reading ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_read_member(write: Write, kind: str):
    files = {"app.json": b'{"a": 1}', "dir/data.bin": os.urandom(3000)}
    if kind == "zip":
        path = zip_of(write, *(RawEntry(n, d) for n, d in files.items()))
    else:
        members = [TarMember(n, d) for n, d in files.items()]
        path = tar_of(write, *members, gz=kind == "tar.gz")
    assert read_member(path, "dir/data.bin", 3000) == files["dir/data.bin"]
    assert read_member(path, "app.json", 100) == files["app.json"]
    with pytest.raises(ArchiveError, match="larger than 2,999 bytes"):
        read_member(path, "dir/data.bin", 2999)
    with pytest.raises(ArchiveError, match="has no file 'missing'"):
        read_member(path, "missing", 100)
    with pytest.raises(ArchiveError, match="has no file 'DIR/DATA.BIN'"):
        read_member(path, "DIR/DATA.BIN", 5000)


def test_read_member_validates_the_whole_archive_first(write: Write):
    path = zip_of(write, RawEntry("app.json", b"{}"), RawEntry("../evil", b"x"))
    with pytest.raises(ArchiveError, match="'..' segment"):
        read_member(path, "app.json", 100)


def test_scan_archive_keeps_wanted_files_and_marks_oversized_ones(write: Write):
    path = zip_of(write, RawEntry("small", b"abc"), RawEntry("big", bytes(5000)))
    entries, kept = scan_archive(path, {"small": 10, "big": 100, "absent": 10})
    assert [e.name for e in entries] == ["small", "big"]
    assert kept == {"small": b"abc", "big": bytes(101)}


# --- extracting ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_extract_all(write: Write, tmp_path: Path, kind: str):
    files = {"app.json": b"{}", "src/model.py": b"x = 1\n", "run.sh": b"#!/bin/sh\n"}
    if kind == "zip":
        entries = [RawEntry("src/", mode=0o40755)]
        entries += [
            RawEntry(n, d, mode=0o100755 if n == "run.sh" else 0o100600) for n, d in files.items()
        ]
        path = zip_of(write, *entries)
    else:
        members = [TarMember("src", type=tarfile.DIRTYPE, mode=0o700)]
        members += [
            TarMember(n, d, mode=0o755 if n == "run.sh" else 0o600) for n, d in files.items()
        ]
        path = tar_of(write, *members, gz=True)
    dest = tmp_path / "out" / "app"
    assert extract_all(path, dest) == list(files)
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    # modes come from this library, not from the archive (except the execute bit)
    assert stat.S_IMODE((dest / "app.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755


def test_extract_all_into_an_empty_existing_folder(write: Write, tmp_path: Path):
    dest = tmp_path / "dest"
    dest.mkdir()
    assert extract_all(zip_of(write, RawEntry("a", b"1")), dest) == ["a"]
    assert (dest / "a").read_bytes() == b"1"


def test_extract_all_refuses_a_folder_with_content(write: Write, tmp_path: Path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        extract_all(zip_of(write, RawEntry("a", b"1")), dest)
    assert (dest / "keep").read_bytes() == b"mine"


@pytest.mark.parametrize("bad", ["crc", "ratio"])
def test_extract_all_leaves_nothing_behind_on_failure(write: Write, tmp_path: Path, bad: str):
    good = [RawEntry(f"ok{i}.bin", os.urandom(1000)) for i in range(3)]
    if bad == "crc":
        # found only while the last file is written, after the others were
        last = RawEntry("last.bin", b"payload", crc=12345)
        limits = archives.DEFAULT_LIMITS
    else:
        # found while listing, before any file is written
        last = RawEntry("last.bin", bytes(3000))
        limits = Limits(ratio_floor=100, max_ratio=2)
    path = zip_of(write, *good, last)
    parent = tmp_path / "extracted"
    parent.mkdir()
    with pytest.raises(ArchiveError):
        extract_all(path, parent / "app", limits)
    assert list(parent.iterdir()) == []


def test_extract_all_never_writes_outside_the_folder(write: Write, tmp_path: Path):
    path = zip_of(write, RawEntry("a", b"1"), RawEntry("../escaped", b"2"))
    with pytest.raises(ArchiveError):
        extract_all(path, tmp_path / "dest")
    assert not (tmp_path / "escaped").exists()
    assert not (tmp_path / "dest").exists()


# --- writing ---------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    (root / "src").mkdir(parents=True)
    (root / "src" / "model.py").write_text("x = 1\n")
    (root / "app.json").write_text("{}\n")
    (root / "z.txt").write_text("last\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    (root / "src" / "model.pyc").write_bytes(b"\0")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref\n")


def test_write_zip_is_sorted_and_leaves_out_caches(tmp_path: Path):
    make_tree(tmp_path / "src")
    out = tmp_path / "out.zip"
    names = write_zip(tmp_path / "src", out)
    assert names == ["app.json", "src/model.py", "z.txt"]
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == names
        for info in archive.infolist():
            assert info.date_time == archives.FIXED_DATE_TIME
            assert info.external_attr >> 16 == stat.S_IFREG | 0o644
            assert info.compress_type == zipfile.ZIP_DEFLATED
        assert archive.read("src/model.py") == b"x = 1\n"
    assert check_archive(out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_write_zip_is_deterministic(tmp_path: Path):
    make_tree(tmp_path / "src")
    first = tmp_path / "first.zip"
    write_zip(tmp_path / "src", first)
    # other times and modes, same names and bytes: the same archive
    os.utime(tmp_path / "src" / "app.json", (1_000_000, 1_000_000))
    (tmp_path / "src" / "z.txt").chmod(0o600)
    second = tmp_path / "second.zip"
    write_zip(tmp_path / "src", second)
    assert first.read_bytes() == second.read_bytes()


def test_write_zip_exclude_patterns_and_functions(tmp_path: Path):
    make_tree(tmp_path / "src")
    assert write_zip(tmp_path / "src", tmp_path / "a.zip", exclude=["*.txt", "src"]) == [
        ".git/HEAD",
        "__pycache__/model.cpython-311.pyc",
        "app.json",
    ]
    kept = write_zip(tmp_path / "src", tmp_path / "b.zip", exclude=lambda rel: rel != "z.txt")
    assert kept == ["z.txt"]


def test_write_zip_refuses_symlinks(tmp_path: Path):
    src = tmp_path / "src"
    make_tree(src)
    (src / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(ArchiveError, match="'passwd' is a symbolic link"):
        write_zip(src, tmp_path / "out.zip")
    (src / "passwd").unlink()
    (src / "linked").symlink_to(src / "src", target_is_directory=True)
    with pytest.raises(ArchiveError, match="'linked' is a symbolic link"):
        write_zip(src, tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temporary file left


def test_write_zip_ignores_links_inside_excluded_folders(tmp_path: Path):
    src = tmp_path / "src"
    make_tree(src)
    (src / ".venv").mkdir()
    (src / ".venv" / "python").symlink_to("/usr/bin/python3")
    assert ".venv/python" not in write_zip(src, tmp_path / "out.zip")


def test_write_zip_refuses_names_the_portal_would_refuse(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a\\b.txt").write_text("x")
    with pytest.raises(ArchiveError, match="backslash"):
        write_zip(src, tmp_path / "out.zip")
    (src / "a\\b.txt").unlink()
    (src / "Readme").write_text("1")
    (src / "README").write_text("2")
    with pytest.raises(ArchiveError, match="appears twice"):
        write_zip(src, tmp_path / "out.zip")


def test_write_zip_does_not_pack_its_own_output(tmp_path: Path):
    src = tmp_path / "src"
    make_tree(src)
    out = src / "bundle.zip"
    write_zip(src, out)
    assert "bundle.zip" not in write_zip(src, out)
