"""Runtime packages and app bundles: reading, writing, signing, encrypting, validating.

A pure library (no database, no HTTP, no settings): the CLI, the portal's services and
the first-start demo publisher all use it. The formats are in docs/formats.md.
"""

from __future__ import annotations

from aimms_portal.packages import archives, encryption, icons, manifests, signing
from aimms_portal.packages.archives import (
    ArchiveError,
    Entry,
    Limits,
    check_archive,
    detect_kind,
    extract_all,
    list_entries,
    read_member,
    write_zip,
)
from aimms_portal.packages.bundle import InspectedBundle, inspect_bundle, pack_app
from aimms_portal.packages.encryption import (
    EncryptionHeader,
    decrypt_file,
    encrypt_file,
    generate_portal_keypair,
    is_encrypted,
    public_fingerprint,
    read_header,
)
from aimms_portal.packages.icons import check_icon
from aimms_portal.packages.manifests import (
    AppManifest,
    Command,
    ManifestError,
    Procedure,
    Resources,
    RuntimeManifest,
    RuntimeRequirement,
    parse_app_manifest,
    parse_runtime_manifest,
    parse_specifier,
    parse_version,
)
from aimms_portal.packages.runtime import build_runtime, inspect_runtime
from aimms_portal.packages.signing import (
    Signature,
    fingerprint,
    generate_signing_key,
    parse_public_key,
    public_text_of,
    sign_digest,
    sign_file,
    verify,
    verify_trusted,
)

__all__ = [
    "AppManifest",
    "ArchiveError",
    "Command",
    "EncryptionHeader",
    "Entry",
    "InspectedBundle",
    "Limits",
    "ManifestError",
    "Procedure",
    "Resources",
    "RuntimeManifest",
    "RuntimeRequirement",
    "Signature",
    "archives",
    "build_runtime",
    "check_archive",
    "check_icon",
    "decrypt_file",
    "detect_kind",
    "encrypt_file",
    "encryption",
    "extract_all",
    "fingerprint",
    "generate_portal_keypair",
    "generate_signing_key",
    "icons",
    "inspect_bundle",
    "inspect_runtime",
    "is_encrypted",
    "list_entries",
    "manifests",
    "pack_app",
    "parse_app_manifest",
    "parse_public_key",
    "parse_runtime_manifest",
    "parse_specifier",
    "parse_version",
    "public_fingerprint",
    "public_text_of",
    "read_header",
    "read_member",
    "sign_digest",
    "sign_file",
    "signing",
    "verify",
    "verify_trusted",
    "write_zip",
]
