"""Runtime packages: building them (offline and through pip) and validating them."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from aimms_portal.errors import InvalidInput
from aimms_portal.packages import ArchiveError, Limits, build_runtime, inspect_runtime
from aimms_portal.packages.manifests import ManifestError
from tests.corpus.crafting import RawEntry, TarMember, make_wheel, raw_zip, tar_bytes


def manifest(**changes: Any) -> bytes:
    doc: dict[str, Any] = {"format": 1, "name": "highs", "version": "1.7", "python": ">=3.11"}
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.fixture
def runtime_src(tmp_path: Path) -> Path:
    src = tmp_path / "runtime"
    src.mkdir()
    (src / "runtime.json").write_bytes(manifest(description="HiGHS"))
    return src


@pytest.fixture
def wheel_dir(tmp_path: Path) -> Path:
    """Two installable wheels, one depending on the other."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name in ("alpha", "beta"):
        file_name, data = make_wheel(name, "1.0")
        (folder / file_name).write_bytes(data)
    return folder


def names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


# --- building --------------------------------------------------------------------------


def test_build_with_a_wheel_folder(runtime_src: Path, wheel_dir: Path, tmp_path: Path):
    (wheel_dir / "notes.txt").write_text("not a wheel: left out")
    out = tmp_path / "runtime.zip"
    built = build_runtime(runtime_src, out, wheel_dir=wheel_dir)
    assert (built.name, built.version, built.description) == ("highs", "1.7", "HiGHS")
    assert names(out) == [
        "runtime.json",
        "wheels/alpha-1.0-py3-none-any.whl",
        "wheels/beta-1.0-py3-none-any.whl",
    ]
    assert inspect_runtime(out) == built


def test_build_keeps_the_manifest_bytes(runtime_src: Path, tmp_path: Path):
    out = tmp_path / "runtime.zip"
    build_runtime(runtime_src, out)
    with zipfile.ZipFile(out) as archive:
        assert archive.read("runtime.json") == (runtime_src / "runtime.json").read_bytes()


def test_build_without_requirements_has_no_wheels(runtime_src: Path, tmp_path: Path):
    out = tmp_path / "runtime.zip"
    build_runtime(runtime_src, out)
    assert names(out) == ["runtime.json"]


def test_build_is_reproducible(runtime_src: Path, wheel_dir: Path, tmp_path: Path):
    first, second = tmp_path / "1.zip", tmp_path / "2.zip"
    build_runtime(runtime_src, first, wheel_dir=wheel_dir)
    build_runtime(runtime_src, second, wheel_dir=wheel_dir)
    assert first.read_bytes() == second.read_bytes()


def test_build_fetches_requirements_and_dependencies_with_pip(runtime_src: Path, tmp_path: Path):
    # a local index (--find-links, --no-index): pip runs for real, the network is not used
    index = tmp_path / "index"
    index.mkdir()
    dependency_name, dependency = make_wheel("corpus-dep", "2.0")
    (index / dependency_name).write_bytes(dependency)
    top_name, top = make_wheel("corpus-top", "1.0", requires=["corpus-dep>=2"])
    (index / top_name).write_bytes(top)
    (runtime_src / "requirements.txt").write_text("corpus-top==1.0\n")

    out = tmp_path / "runtime.zip"
    build_runtime(runtime_src, out, pip_args=["--no-index", "--find-links", str(index)])
    assert names(out) == [
        "runtime.json",
        "wheels/corpus_dep-2.0-py3-none-any.whl",
        "wheels/corpus_top-1.0-py3-none-any.whl",
    ]


def test_bad_wheel_names_are_refused_before_anything_is_written(runtime_src: Path, tmp_path: Path):
    wheels = tmp_path / "odd"
    wheels.mkdir()
    (wheels / "not-a-wheel.whl").write_bytes(b"x")
    out = tmp_path / "out" / "runtime.zip"
    out.parent.mkdir()
    with pytest.raises(InvalidInput) as caught:
        build_runtime(runtime_src, out, wheel_dir=wheels)
    assert caught.value.code == "invalid_package"
    assert list(out.parent.iterdir()) == []


def test_pip_failure_is_reported(runtime_src: Path, tmp_path: Path):
    (runtime_src / "requirements.txt").write_text("no-such-package-anywhere==1\n")
    out = tmp_path / "runtime.zip"
    with pytest.raises(InvalidInput) as caught:
        build_runtime(runtime_src, out, pip_args=["--no-index", "--find-links", str(tmp_path)])
    assert caught.value.code == "build_failed"
    assert "no-such-package-anywhere" in caught.value.message
    assert not out.exists()


def test_build_refuses_an_invalid_manifest(runtime_src: Path, tmp_path: Path):
    (runtime_src / "runtime.json").write_bytes(manifest(version="latest"))
    with pytest.raises(ManifestError, match="'version' must be a version"):
        build_runtime(runtime_src, tmp_path / "runtime.zip")
    (runtime_src / "runtime.json").unlink()
    with pytest.raises(ManifestError, match="runtime.json: not found"):
        build_runtime(runtime_src, tmp_path / "runtime.zip")
    assert not (tmp_path / "runtime.zip").exists()


# --- inspecting ------------------------------------------------------------------------


def package(write: Any, files: dict[str, bytes], name: str = "p.zip") -> Path:
    return write(name, raw_zip(RawEntry(n, d) for n, d in files.items()))


def test_inspect_a_tar_package(write: Any):
    wheel_name, wheel = make_wheel("alpha", "1.0")
    data = tar_bytes(
        [
            TarMember("runtime.json", manifest()),
            TarMember("wheels", type=b"5", mode=0o755),
            TarMember(f"wheels/{wheel_name}", wheel),
        ],
        gz=True,
    )
    assert inspect_runtime(write("p.tar.gz", data)).name == "highs"


@pytest.mark.parametrize(
    ("files", "phrase"),
    [
        ({"install.sh": b"#!/bin/sh"}, "'install.sh' does not belong"),
        ({"wheels/readme.txt": b"x"}, "'wheels/readme.txt' does not belong"),
        ({"wheels/sub/a-1.0-py3-none-any.whl": b"x"}, "does not belong"),
        ({"lib/a-1.0-py3-none-any.whl": b"x"}, "does not belong"),
        (
            {"wheels/not-a-wheel.whl": b"x"},
            "'wheels/not-a-wheel.whl' is not a valid wheel file name",
        ),
    ],
)
def test_inspect_refuses_files_that_do_not_belong(write: Any, files: dict[str, bytes], phrase: str):
    path = package(write, {"runtime.json": manifest(), **files})
    with pytest.raises(InvalidInput) as caught:
        inspect_runtime(path)
    assert caught.value.code == "invalid_package"
    assert phrase in caught.value.message


def test_inspect_refuses_a_package_without_manifest(write: Any):
    path = package(write, {"runtime/runtime.json": manifest()})
    with pytest.raises(ManifestError, match="runtime.json: not found at the top of the package"):
        inspect_runtime(path)


def test_inspect_refuses_an_oversized_manifest(write: Any):
    path = package(write, {"runtime.json": manifest()[:-1] + b" " * 70_000 + b"}"})
    with pytest.raises(ManifestError, match="runtime.json: larger than 64 KiB"):
        inspect_runtime(path)
    small = Limits(max_manifest_bytes=50)
    with pytest.raises(ManifestError, match="larger than 50 bytes"):
        inspect_runtime(package(write, {"runtime.json": manifest()}, "q.zip"), small)


def test_inspect_refuses_an_invalid_manifest(write: Any):
    path = package(write, {"runtime.json": manifest(format="1", python="")})
    with pytest.raises(ManifestError) as caught:
        inspect_runtime(path)
    assert caught.value.problems == [
        "'format' must be a whole number",
        "'python' must be a version specifier such as '>=1.0' (not empty)",
    ]


def test_inspect_reads_every_byte(write: Any):
    wheel_name, wheel = make_wheel("alpha", "1.0")
    # a wheel whose stored checksum is wrong: only reading it to the end finds out
    entries = [
        RawEntry("runtime.json", manifest()),
        RawEntry(f"wheels/{wheel_name}", wheel, crc=1),
    ]
    with pytest.raises(ArchiveError, match="truncated or damaged"):
        inspect_runtime(write("p.zip", raw_zip(entries)))
