"""The hostile corpus: one file per way a package or bundle can be bad, and its verdict.

``CASES`` maps each file of this folder to what the portal must answer when it is
uploaded: the error ``code`` and a ``phrase`` of the message (compare case-insensitively),
or ``code=None`` for the files it must accept. Runtime cases name the ``.sig`` file to
send along (None: send no signature); every signature is by the corpus's trusted test
key (``trusted_key.pub``) unless the case says otherwise. Cases with ``first`` set are
only refused after that other file was accepted (duplicates): they need the portal's
database, so only the service and REST tests can check them.

The files are made by ``python -m tests.corpus.make_corpus`` (see README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CORPUS_DIR = Path(__file__).resolve().parent
KEYS_DIR = CORPUS_DIR / "keys"
#: The public key text (``ed25519:...``) that the tests trust.
TRUSTED_KEY_FILE = CORPUS_DIR / "trusted_key.pub"
#: Its private key: for tests only, committed on purpose, never to be trusted elsewhere.
TEST_SIGNING_KEY_FILE = KEYS_DIR / "TEST_ONLY_signing_key.pem"


@dataclass(frozen=True)
class Case:
    """One corpus file and the portal's expected answer to it."""

    file: str
    kind: Literal["runtime", "bundle"]
    code: str | None
    phrase: str
    about: str
    signature: str | None = None
    first: str | None = None

    @property
    def path(self) -> Path:
        return CORPUS_DIR / self.file

    @property
    def signature_path(self) -> Path | None:
        return None if self.signature is None else CORPUS_DIR / self.signature

    @property
    def service_only(self) -> bool:
        """Whether only a portal with a database can refuse it (it needs ``first``)."""
        return self.first is not None


def _sig(file: str) -> str:
    return f"{file}.sig"


_ALL = [
    # --- reference files -----------------------------------------------------------------
    Case(
        "runtime_valid.zip",
        "runtime",
        None,
        "",
        "A valid runtime package (corpus-runtime 1.0, one small wheel), signed by the "
        "trusted test key.",
        signature=_sig("runtime_valid.zip"),
    ),
    Case(
        "bundle_valid.zip",
        "bundle",
        None,
        "",
        "A valid app bundle (corpus-app 1.0) with a PNG icon, a WebUI command and a "
        "procedure; it requires corpus-runtime >=1.0.",
    ),
    Case(
        "bundle_html_in_text.zip",
        "bundle",
        None,
        "",
        "Valid: <script>alert(1)</script> in title and description is accepted; the UI "
        "must show it escaped.",
    ),
    # --- signatures --------------------------------------------------------------------------
    Case(
        "runtime_unsigned.zip",
        "runtime",
        "unsigned",
        "not signed",
        "A valid package (corpus-runtime 1.1) uploaded without a signature.",
    ),
    Case(
        "runtime_untrusted_key.zip",
        "runtime",
        "untrusted_key",
        "does not trust",
        "A valid package (corpus-runtime 1.2) signed by a key nobody trusts.",
        signature=_sig("runtime_untrusted_key.zip"),
    ),
    Case(
        "runtime_flipped_byte.zip",
        "runtime",
        "bad_signature",
        "does not match",
        "A signed package (corpus-runtime 1.3) with one byte flipped after signing.",
        signature=_sig("runtime_flipped_byte.zip"),
    ),
    # --- duplicates (need the portal's database) ---------------------------------------------
    Case(
        "runtime_duplicate.zip",
        "runtime",
        "duplicate_version",
        "exists already",
        "A second, different package named corpus-runtime 1.0, like runtime_valid.zip.",
        signature=_sig("runtime_duplicate.zip"),
        first="runtime_valid.zip",
    ),
    Case(
        "bundle_duplicate.zip",
        "bundle",
        "duplicate_version",
        "published already",
        "A second, different bundle named corpus-app 1.0, like bundle_valid.zip.",
        first="bundle_valid.zip",
    ),
    # --- damaged archives ----------------------------------------------------------------
    Case(
        "runtime_truncated.zip",
        "runtime",
        "invalid_archive",
        "truncated or damaged",
        "The first half of a package (signed as it is, so only the archive check fails).",
        signature=_sig("runtime_truncated.zip"),
    ),
    Case(
        "bundle_truncated.tar.gz",
        "bundle",
        "invalid_archive",
        "truncated or damaged",
        "A gzip-compressed tar bundle cut off in the middle.",
    ),
    Case(
        "bundle_not_an_archive.bin",
        "bundle",
        "invalid_archive",
        "not a ZIP or tar archive",
        "Random-looking bytes that are no archive at all.",
    ),
    # --- manifests -------------------------------------------------------------------------
    Case(
        "runtime_manifest_wrong_types.zip",
        "runtime",
        "invalid_manifest",
        "'format' must be a whole number",
        'runtime.json with "1" for format, a number for name, version and python, a '
        "list for description.",
        signature=_sig("runtime_manifest_wrong_types.zip"),
    ),
    Case(
        "runtime_manifest_missing_fields.zip",
        "runtime",
        "invalid_manifest",
        "'version' is missing",
        "runtime.json with format and name only.",
        signature=_sig("runtime_manifest_missing_fields.zip"),
    ),
    Case(
        "runtime_stray_file.zip",
        "runtime",
        "invalid_package",
        "does not belong in a runtime package",
        "A package with an install.sh next to runtime.json and the wheels.",
        signature=_sig("runtime_stray_file.zip"),
    ),
    Case(
        "bundle_manifest_wrong_types.zip",
        "bundle",
        "invalid_manifest",
        "'procedures.solve.command' must be a list of strings",
        "app.json with a command as one string, memory as text and a number as title.",
    ),
    Case(
        "bundle_manifest_missing_fields.zip",
        "bundle",
        "invalid_manifest",
        "'runtime' is missing",
        "app.json without version, description and runtime.",
    ),
    Case(
        "bundle_manifest_oversized.zip",
        "bundle",
        "invalid_manifest",
        "larger than 64 KiB",
        "An app.json of 80 KiB (padded with spaces; it compresses to almost nothing).",
    ),
    Case(
        "bundle_no_manifest.zip",
        "bundle",
        "invalid_manifest",
        "not found at the top of the bundle",
        "A bundle whose app.json is inside a folder instead of at the top.",
    ),
    Case(
        "bundle_html_in_name.zip",
        "bundle",
        "invalid_manifest",
        "'name' must be 2-64 characters",
        "<script>alert(1)</script> as the app's name.",
    ),
    # --- names and entry types -------------------------------------------------------------
    Case(
        "bundle_dotdot.zip",
        "bundle",
        "invalid_archive",
        "'..' segment",
        "A ZIP entry named ../../evil.py.",
    ),
    Case(
        "bundle_dotdot.tar.gz",
        "bundle",
        "invalid_archive",
        "'..' segment",
        "A tar entry named app/../../evil.py.",
    ),
    Case(
        "bundle_absolute.zip",
        "bundle",
        "invalid_archive",
        "absolute path",
        "A ZIP entry named /etc/cron.d/evil.",
    ),
    Case(
        "bundle_absolute.tar",
        "bundle",
        "invalid_archive",
        "absolute path",
        "A tar entry named /etc/cron.d/evil.",
    ),
    Case(
        "bundle_backslash.zip",
        "bundle",
        "invalid_archive",
        "backslash",
        "A ZIP entry named ..\\..\\evil.py (a Windows-style traversal).",
    ),
    Case(
        "bundle_case_duplicate.zip",
        "bundle",
        "invalid_archive",
        "appears twice",
        "Entries app.py and APP.py: one file on case-insensitive file systems.",
    ),
    Case(
        "bundle_symlink.zip",
        "bundle",
        "invalid_archive",
        "symbolic link",
        "A ZIP entry whose Unix mode makes it a symbolic link to /etc/passwd.",
    ),
    Case(
        "bundle_symlink.tar.gz",
        "bundle",
        "invalid_archive",
        "symbolic link",
        "A tar symbolic link to /etc/passwd.",
    ),
    Case(
        "bundle_hardlink.tar",
        "bundle",
        "invalid_archive",
        "hard link",
        "A tar hard link to /etc/passwd.",
    ),
    Case(
        "bundle_non_utf8_name.zip",
        "bundle",
        "invalid_archive",
        "not UTF-8",
        "A ZIP entry name with the UTF-8 flag set but Latin-1 bytes (caf\\xe9.py).",
    ),
    Case(
        "bundle_non_utf8_name.tar",
        "bundle",
        "invalid_archive",
        "not UTF-8",
        "A tar entry name in Latin-1 bytes (caf\\xe9.py).",
    ),
    # --- bombs -------------------------------------------------------------------------------
    Case(
        "bundle_zip_bomb_ratio.zip",
        "bundle",
        "invalid_archive",
        "expands more than 200 times",
        "16 MiB of zeros deflated to 16 KiB (ratio about 1,000).",
    ),
    Case(
        "bundle_zip_bomb_total.zip",
        "bundle",
        "invalid_archive",
        "more than 4 GiB in all",
        "4,097 entries of 1 MiB zeros each (bzip2, under the ratio floor): 4 GiB + 1 MiB.",
    ),
    Case(
        "bundle_bomb_file_count.tar.gz",
        "bundle",
        "invalid_archive",
        "more than 10,000 entries",
        "10,001 empty files in 62 KB.",
    ),
    # --- icons -------------------------------------------------------------------------------
    Case(
        "bundle_icon_not_image.zip",
        "bundle",
        "invalid_icon",
        "is not a PNG, JPEG, GIF, WebP or SVG image",
        "icon.png holds HTML, not an image.",
    ),
    Case(
        "bundle_icon_svg_script.zip",
        "bundle",
        "invalid_icon",
        "contains a script",
        "icon.svg with a <script> element.",
    ),
    # --- encryption --------------------------------------------------------------------------
    Case(
        "bundle_other_portal.aimmsenc",
        "bundle",
        "wrong_portal",
        "encrypted for another portal",
        "A valid bundle encrypted for a throwaway portal key (its private key was discarded).",
    ),
]

CASES: dict[str, Case] = {case.file: case for case in _ALL}


def trusted_key() -> str:
    """The ``ed25519:...`` text of the key the corpus's signatures are made with."""
    return TRUSTED_KEY_FILE.read_text().strip()
