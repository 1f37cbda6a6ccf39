"""The hostile corpus (tests/corpus): every file gets the library's expected answer.

Signatures are checked as the portal does, before the archive: with the corpus's trusted
test key. Duplicates need a portal that already holds the first file: the service and
REST tests cover them; here it is only checked that they are valid and really collide.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from aimms_portal.errors import InvalidInput
from aimms_portal.packages import inspect_bundle, inspect_runtime, signing
from tests.corpus import CASES, CORPUS_DIR, TEST_SIGNING_KEY_FILE, Case, trusted_key
from tests.corpus.make_corpus import ENCRYPTED_FILE, build_corpus

LIBRARY_CASES = [case for case in CASES.values() if not case.service_only]
SERVICE_CASES = [case for case in CASES.values() if case.service_only]


def check(case: Case, portal_private_pem: bytes) -> None:
    """What the portal does with an upload, short of its database."""
    if case.kind == "runtime":
        signature = case.signature_path.read_bytes() if case.signature_path else None
        digest = hashlib.sha256(case.path.read_bytes()).hexdigest()
        signing.verify_trusted(digest, signature, [trusted_key()])
        inspect_runtime(case.path)
    else:
        inspect_bundle(case.path, private_pem=portal_private_pem)


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=lambda case: case.file)
def test_corpus_case(case: Case, portal_key: tuple[bytes, bytes]):
    if case.code is None:
        check(case, portal_key[0])
        return
    with pytest.raises(InvalidInput) as caught:
        check(case, portal_key[0])
    assert caught.value.code == case.code
    assert case.phrase.lower() in caught.value.message.lower()


@pytest.mark.parametrize("case", SERVICE_CASES, ids=lambda case: case.file)
def test_duplicates_are_valid_and_collide_with_their_first(
    case: Case, portal_key: tuple[bytes, bytes]
):
    assert case.first is not None
    first = CASES[case.first]
    assert first.code is None
    check(case, portal_key[0])
    assert case.path.read_bytes() != first.path.read_bytes()

    def name_and_version(path: Path) -> tuple[str, str]:
        if case.kind == "runtime":
            runtime = inspect_runtime(path)
            return runtime.name, runtime.version
        app = inspect_bundle(path).manifest
        return app.name, app.version

    assert name_and_version(case.path) == name_and_version(first.path)


def test_valid_bundle_requires_the_valid_runtime():
    runtime = inspect_runtime(CASES["runtime_valid.zip"].path)
    bundle = inspect_bundle(CASES["bundle_valid.zip"].path).manifest
    assert bundle.runtime.allows(runtime.name, runtime.version)


def test_html_in_text_is_kept_verbatim():
    manifest = inspect_bundle(CASES["bundle_html_in_text.zip"].path).manifest
    assert manifest.title == "<script>alert(1)</script>"
    assert "<img src=x onerror=alert(2)>" in manifest.description


def test_the_test_key_is_the_trusted_one():
    private_pem = TEST_SIGNING_KEY_FILE.read_bytes()
    assert b"TEST ONLY" in private_pem
    assert signing.public_text_of(private_pem) == trusted_key()


def test_every_file_of_the_folder_is_indexed():
    support = {"__init__.py", "crafting.py", "make_corpus.py", "README.md", "trusted_key.pub"}
    signatures = {case.signature for case in CASES.values() if case.signature}
    expected = set(CASES) | signatures | support | {"keys/TEST_ONLY_signing_key.pem"}
    present = {
        path.relative_to(CORPUS_DIR).as_posix()
        for path in CORPUS_DIR.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert present == expected


def test_the_corpus_stays_small():
    total = sum(path.stat().st_size for path in CORPUS_DIR.rglob("*") if path.is_file())
    assert total < 2 * 1024 * 1024


def test_the_script_reproduces_the_corpus(tmp_path: Path):
    files = build_corpus(tmp_path)
    for name, data in files.items():
        if name == ENCRYPTED_FILE:
            continue  # randomised by design; the script keeps the committed one
        committed = CORPUS_DIR / name
        assert committed.read_bytes() == data, f"{name} differs: run make_corpus"
    readme = (CORPUS_DIR / "README.md").read_text()
    for case in CASES.values():
        assert f"`{case.file}`" in readme
