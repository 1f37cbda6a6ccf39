"""Runtime packages and app bundles: reading, writing, signing, encrypting, validating.

A pure library (no database, no HTTP, no settings): the CLI, the portal's services and
the first-start demo publisher all use it. The formats are in docs/formats.md.

Importing this package is cheap: each name is loaded from its module on first use (a
session's runner needs archives and signing, not the manifests' pydantic models).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        decrypt_with_key,
        encrypt_file,
        generate_portal_keypair,
        is_encrypted,
        public_fingerprint,
        read_header,
        unwrap_data_key,
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

_SUBMODULES = {"archives", "encryption", "icons", "manifests", "signing"}
_HOMES = {
    "AppManifest": "manifests",
    "ArchiveError": "archives",
    "Command": "manifests",
    "EncryptionHeader": "encryption",
    "Entry": "archives",
    "InspectedBundle": "bundle",
    "Limits": "archives",
    "ManifestError": "manifests",
    "Procedure": "manifests",
    "Resources": "manifests",
    "RuntimeManifest": "manifests",
    "RuntimeRequirement": "manifests",
    "Signature": "signing",
    "build_runtime": "runtime",
    "check_archive": "archives",
    "check_icon": "icons",
    "decrypt_file": "encryption",
    "decrypt_with_key": "encryption",
    "detect_kind": "archives",
    "encrypt_file": "encryption",
    "extract_all": "archives",
    "fingerprint": "signing",
    "generate_portal_keypair": "encryption",
    "generate_signing_key": "signing",
    "inspect_bundle": "bundle",
    "inspect_runtime": "runtime",
    "is_encrypted": "encryption",
    "list_entries": "archives",
    "pack_app": "bundle",
    "parse_app_manifest": "manifests",
    "parse_public_key": "signing",
    "parse_runtime_manifest": "manifests",
    "parse_specifier": "manifests",
    "parse_version": "manifests",
    "public_fingerprint": "encryption",
    "public_text_of": "signing",
    "read_header": "encryption",
    "read_member": "archives",
    "sign_digest": "signing",
    "sign_file": "signing",
    "unwrap_data_key": "encryption",
    "verify": "signing",
    "verify_trusted": "signing",
    "write_zip": "archives",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


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
    "decrypt_with_key",
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
    "unwrap_data_key",
    "read_member",
    "sign_digest",
    "sign_file",
    "signing",
    "verify",
    "verify_trusted",
    "write_zip",
]
