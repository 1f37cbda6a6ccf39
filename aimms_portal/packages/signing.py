"""Ed25519 signatures of runtime packages (docs/formats.md, "Signature of a runtime package").

A publisher signs the SHA-256 of a package file with a private key; the portal accepts
the package only if the detached signature verifies with a key an admin trusts, over
the digest the portal computed itself while the upload streamed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from aimms_portal.errors import InvalidInput

#: What is signed: this prefix, then the 32 raw bytes of the package's SHA-256.
RUNTIME_MESSAGE_PREFIX = b"aimms_portal runtime package v1\n"
SIGNATURE_FORMAT = 1
MAX_SIGNATURE_BYTES = 4 * 1024
PUBLIC_KEY_PREFIX = "ed25519:"

_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024


def generate_signing_key() -> tuple[bytes, str]:
    """A new key pair: (private key as unencrypted PKCS#8 PEM, public key text).

    Keep the private PEM in a file of mode 600; the public text ``ed25519:<base64>`` is
    what an admin pastes into the portal to trust the key.
    """
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, _public_text(private.public_key())


def _public_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def _load_private(private_pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        # TypeError: the PEM is encrypted; ValueError: anything else that is no key
        raise InvalidInput(
            "not an unencrypted PEM private key", code="invalid_key", log_detail=str(exc)
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput("the private key is not an Ed25519 key", code="invalid_key")
    return key


def public_text_of(private_pem: bytes) -> str:
    """The ``ed25519:...`` public key text of a private key PEM.

    Raises:
        InvalidInput: not an unencrypted Ed25519 private key PEM (code ``invalid_key``).
    """
    return _public_text(_load_private(private_pem).public_key())


def _raw_public(text: str) -> bytes:
    text = text.strip()
    if not text.startswith(PUBLIC_KEY_PREFIX):
        raise InvalidInput(
            "a public signing key looks like 'ed25519:' followed by base64", code="invalid_key"
        )
    try:
        raw = base64.b64decode(text[len(PUBLIC_KEY_PREFIX) :], validate=True)
    except binascii.Error:
        raise InvalidInput(
            "the public signing key is not valid base64", code="invalid_key"
        ) from None
    if len(raw) != 32:
        raise InvalidInput("an Ed25519 public key has 32 bytes", code="invalid_key")
    return raw


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The key of an ``ed25519:<base64 of 32 bytes>`` text (surrounding blanks ignored).

    Raises:
        InvalidInput: anything else (code ``invalid_key``).
    """
    return Ed25519PublicKey.from_public_bytes(_raw_public(text))


def fingerprint(public_text: str) -> str:
    """The hex SHA-256 of the key's 32 raw bytes: how signatures name their key.

    Raises:
        InvalidInput: ``public_text`` is no public key text (code ``invalid_key``).
    """
    return hashlib.sha256(_raw_public(public_text)).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(digest_hex: str) -> bytes:
    if not isinstance(digest_hex, str) or not _HEX_DIGEST.match(digest_hex):
        raise InvalidInput("a SHA-256 digest is 64 lowercase hex digits", code="invalid_digest")
    return bytes.fromhex(digest_hex)


@dataclass(frozen=True)
class Signature:
    """A detached signature: the signer's key fingerprint, the signed SHA-256 (hex) and
    the Ed25519 signature (base64). Its file form is :meth:`to_json`."""

    key: str
    sha256: str
    signature: str

    def to_json(self) -> bytes:
        """The ``.sig`` file's bytes."""
        document = {
            "format": SIGNATURE_FORMAT,
            "key": self.key,
            "sha256": self.sha256,
            "signature": self.signature,
        }
        return json.dumps(document, sort_keys=True).encode("ascii") + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Signature:
        """Read a ``.sig`` file.

        Raises:
            InvalidInput: code ``unsigned`` for empty data (no signature came), else
                ``invalid_signature`` for anything that is not a signature file.
        """
        if not data.strip():
            raise InvalidInput(
                "the package is not signed: send its .sig file with it", code="unsigned"
            )

        def bad(why: str) -> InvalidInput:
            return InvalidInput(f"the signature file is not valid: {why}", code="invalid_signature")

        if len(data) > MAX_SIGNATURE_BYTES:
            raise bad("it is larger than 4 KiB")
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise bad("it is not JSON") from None
        if not isinstance(document, dict):
            raise bad("it is not a JSON object")
        if set(document) != {"format", "key", "sha256", "signature"}:
            raise bad("it must have exactly the fields format, key, sha256 and signature")
        version = document["format"]
        if type(version) is not int or version != SIGNATURE_FORMAT:
            raise bad(f"'format' must be {SIGNATURE_FORMAT}")
        for field in ("key", "sha256"):
            value = document[field]
            if not isinstance(value, str) or not _HEX_DIGEST.match(value):
                raise bad(f"'{field}' must be 64 lowercase hex digits")
        value = document["signature"]
        try:
            raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
        except binascii.Error:
            raw = b""
        if len(raw) != 64:
            raise bad("'signature' must be the base64 of a 64-byte Ed25519 signature")
        return cls(key=document["key"], sha256=document["sha256"], signature=value)


def sign_digest(private_pem: bytes, digest_hex: str) -> Signature:
    """Sign a package's SHA-256 (64 hex digits).

    Raises:
        InvalidInput: a bad key (``invalid_key``) or digest (``invalid_digest``).
    """
    digest = _check_digest(digest_hex)
    key = _load_private(private_pem)
    signature = key.sign(RUNTIME_MESSAGE_PREFIX + digest)
    return Signature(
        key=fingerprint(_public_text(key.public_key())),
        sha256=digest_hex,
        signature=base64.b64encode(signature).decode("ascii"),
    )


def sign_file(private_pem: bytes, path: str | os.PathLike[str]) -> Signature:
    """Sign the package file at ``path`` (its SHA-256, see :func:`sign_digest`)."""
    return sign_digest(private_pem, sha256_file(path))


def verify(public_text: str, digest_hex: str, signature: Signature) -> bool:
    """Whether ``signature`` is a signature by this key over this SHA-256.

    False also when the signature names another key or another digest than
    ``digest_hex`` (the digest the caller computed itself).

    Raises:
        InvalidInput: ``public_text`` is no public key text (code ``invalid_key``).
    """
    key = parse_public_key(public_text)
    if signature.key != fingerprint(public_text):
        return False
    if signature.sha256 != digest_hex or not _HEX_DIGEST.match(digest_hex):
        return False
    try:
        raw = base64.b64decode(signature.signature, validate=True)
        key.verify(raw, RUNTIME_MESSAGE_PREFIX + bytes.fromhex(digest_hex))
    except (binascii.Error, InvalidSignature):
        return False
    return True


def verify_trusted(
    digest_hex: str, signature_json: bytes | None, trusted_keys: Iterable[str]
) -> tuple[Signature, str]:
    """Check a package's signature file against the keys the portal trusts.

    ``digest_hex`` is the SHA-256 the caller computed over the package; ``trusted_keys``
    are public key texts. Returns the signature and the trusted key text that verified it.

    Raises:
        InvalidInput: ``unsigned`` (no signature), ``invalid_signature`` (not a signature
            file), ``untrusted_key`` (signed by a key not trusted), ``bad_signature``
            (the package changed after signing, or the signature is forged).
    """
    signature = Signature.from_json(signature_json or b"")
    by_fingerprint = {fingerprint(text): text for text in trusted_keys}
    key_text = by_fingerprint.get(signature.key)
    if key_text is None:
        raise InvalidInput(
            f"the package is signed by a key this portal does not trust (key {signature.key[:16]})",
            code="untrusted_key",
        )
    if not verify(key_text, digest_hex, signature):
        raise InvalidInput(
            "the signature does not match the package: it was changed after signing",
            code="bad_signature",
        )
    return signature, key_text
