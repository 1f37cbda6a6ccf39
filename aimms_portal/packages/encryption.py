"""Bundles encrypted for one portal (docs/formats.md, "Encrypted bundle").

Envelope encryption: a random AES-256-GCM data key per bundle seals the bundle in
fixed-size chunks; the data key travels wrapped with the portal's RSA public key
(RSA-OAEP with SHA-256). Every chunk is authenticated together with its position,
whether it is the last one, and the whole header, so no chunk can be dropped,
reordered, cut off or moved to another file without decryption failing. Both
directions stream: memory use does not grow with the bundle.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import secrets
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aimms_portal.errors import InvalidInput

logger = logging.getLogger(__name__)

MAGIC = b"AIMMSENC"
FORMAT_VERSION = 1
CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
RSA_BITS = 3072
MAX_HEADER_BYTES = 4096
# a reader accepts other chunk sizes within these bounds (memory stays small)
_MIN_CHUNK, _MAX_CHUNK = 1024, 16 * 1024 * 1024
_NONCE_PREFIX = 7
_MAX_CHUNKS = 2**32


def _oaep() -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
    )


def generate_portal_keypair() -> tuple[bytes, bytes]:
    """A new portal key pair: (RSA 3072 private key PEM, PKCS#8 unencrypted; public PEM)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private_pem, _public_pem(private.public_key())


def _public_pem(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _fingerprint(key: rsa.RSAPublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _load_public(public_pem: bytes) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(public_pem)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            "not a PEM public key", code="invalid_key", log_detail=str(exc)
        ) from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < RSA_BITS:
        raise InvalidInput(
            f"a portal key is an RSA key of at least {RSA_BITS} bits", code="invalid_key"
        )
    return key


def _load_private(private_pem: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            "not an unencrypted PEM private key", code="invalid_key", log_detail=str(exc)
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidInput("the portal's private key is not an RSA key", code="invalid_key")
    return key


def public_fingerprint(public_pem: bytes) -> str:
    """The hex SHA-256 of the key's DER SubjectPublicKeyInfo.

    Raises:
        InvalidInput: not an RSA public key PEM of 3072 bits or more (``invalid_key``).
    """
    return _fingerprint(_load_public(public_pem))


def public_pem_of(private_pem: bytes) -> bytes:
    """The public key PEM that belongs to a portal private key PEM.

    Raises:
        InvalidInput: not an unencrypted RSA private key PEM (``invalid_key``).
    """
    return _public_pem(_load_private(private_pem).public_key())


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts like an encrypted bundle."""
    with open(path, "rb") as file:
        return file.read(len(MAGIC)) == MAGIC


@dataclass(frozen=True)
class EncryptionHeader:
    """The clear part of an encrypted bundle.

    Attributes:
        key: Fingerprint of the portal key the bundle is encrypted for.
        wrapped_key: The data key, encrypted with that portal key.
        nonce: The 7-byte nonce prefix of every chunk.
        chunk_size: Plaintext bytes per chunk.
        aad: Everything before the chunks; authenticated with every chunk.
    """

    key: str
    wrapped_key: bytes
    nonce: bytes
    chunk_size: int
    aad: bytes

    @property
    def data_offset(self) -> int:
        """Where the first sealed chunk starts."""
        return len(self.aad)


def _tampered(why: str) -> InvalidInput:
    return InvalidInput(
        "the encrypted bundle is damaged or was tampered with", code="tampered", log_detail=why
    )


def read_header(source: str | os.PathLike[str] | BinaryIO) -> EncryptionHeader:
    """Read the header of an encrypted bundle (a path, or a stream at its start).

    A stream is left positioned at the first chunk.

    Raises:
        InvalidInput: code ``tampered``: not an encrypted bundle, or a damaged header.
    """
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as file:
            return read_header(file)
    head = source.read(len(MAGIC) + 5)
    if len(head) < len(MAGIC) or head[: len(MAGIC)] != MAGIC:
        raise InvalidInput("the file is not an encrypted bundle", code="tampered")
    if len(head) != len(MAGIC) + 5 or head[len(MAGIC)] != FORMAT_VERSION:
        raise _tampered("short prefix or unknown version")
    (length,) = struct.unpack(">I", head[len(MAGIC) + 1 :])
    if not 2 <= length <= MAX_HEADER_BYTES:
        raise _tampered(f"header length {length}")
    raw = source.read(length)
    if len(raw) != length:
        raise _tampered("short header")
    try:
        document = json.loads(raw.decode("utf-8"))
        key = document["key"]
        wrapped = base64.b64decode(document["wrapped_key"], validate=True)
        nonce = base64.b64decode(document["nonce"], validate=True)
        chunk_size = document["chunk_size"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise _tampered(f"header: {exc!r}") from None
    if (
        set(document) != {"key", "wrapped_key", "nonce", "chunk_size"}
        or not isinstance(key, str)
        or len(key) != 64
        or len(nonce) != _NONCE_PREFIX
        or type(chunk_size) is not int
        or not _MIN_CHUNK <= chunk_size <= _MAX_CHUNK
    ):
        raise _tampered("header fields")
    return EncryptionHeader(
        key=key, wrapped_key=wrapped, nonce=nonce, chunk_size=chunk_size, aad=head + raw
    )


def _chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


@contextlib.contextmanager
def _output(dst_path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A temporary file beside ``dst_path`` that becomes it only if the block succeeds."""
    dst = Path(dst_path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def encrypt_file(
    src_path: str | os.PathLike[str], dst_path: str | os.PathLike[str], public_pem: bytes
) -> EncryptionHeader:
    """Encrypt the file at ``src_path`` for the portal with ``public_pem`` into ``dst_path``.

    Raises:
        InvalidInput: ``public_pem`` is no RSA public key of 3072 bits or more.
    """
    key = _load_public(public_pem)
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = secrets.token_bytes(_NONCE_PREFIX)
    header = json.dumps(
        {
            "key": _fingerprint(key),
            "wrapped_key": base64.b64encode(key.encrypt(data_key, _oaep())).decode("ascii"),
            "nonce": base64.b64encode(nonce).decode("ascii"),
            "chunk_size": CHUNK_SIZE,
        },
        sort_keys=True,
    ).encode("utf-8")
    aad = MAGIC + bytes([FORMAT_VERSION]) + struct.pack(">I", len(header)) + header
    cipher = AESGCM(data_key)
    with open(src_path, "rb") as source, _output(dst_path) as out:
        out.write(aad)
        index = 0
        while True:
            # the final chunk is the first one shorter than chunk_size (maybe empty)
            chunk = source.read(CHUNK_SIZE)
            last = len(chunk) < CHUNK_SIZE
            if index >= _MAX_CHUNKS:
                raise InvalidInput("the bundle is too large to encrypt", code="too_large")
            out.write(cipher.encrypt(_chunk_nonce(nonce, index, last), chunk, aad))
            if last:
                break
            index += 1
    return read_header(dst_path)


def unwrap_data_key(header: EncryptionHeader, private_pem: bytes) -> bytes:
    """The data key of an encrypted bundle, unwrapped with the portal's private key.

    Raises:
        InvalidInput: ``wrong_portal``, ``tampered`` or ``invalid_key`` (see
            :func:`decrypt_file`).
    """
    private = _load_private(private_pem)
    own = _fingerprint(private.public_key())
    if header.key != own:
        raise InvalidInput(
            f"the bundle is encrypted for another portal (key {header.key[:16]})",
            code="wrong_portal",
        )
    try:
        data_key = private.decrypt(header.wrapped_key, _oaep())
    except ValueError:
        raise _tampered("the data key does not unwrap") from None
    if len(data_key) != 32:
        raise _tampered("data key length")
    return data_key


def decrypt_file(
    src_path: str | os.PathLike[str], dst_path: str | os.PathLike[str], private_pem: bytes
) -> EncryptionHeader:
    """Decrypt an encrypted bundle into ``dst_path`` with the portal's private key.

    Nothing is left at ``dst_path`` unless the whole file decrypted and authenticated.

    Raises:
        InvalidInput: ``wrong_portal`` (encrypted for another key), ``tampered`` (any
            authentication failure: changed, cut, reordered or appended data, a damaged
            header), ``invalid_key`` (``private_pem`` is no RSA private key).
    """
    header = read_header(src_path)
    return decrypt_with_key(src_path, dst_path, unwrap_data_key(header, private_pem))


def decrypt_with_key(
    src_path: str | os.PathLike[str], dst_path: str | os.PathLike[str], data_key: bytes
) -> EncryptionHeader:
    """Decrypt an encrypted bundle with its (already unwrapped) data key.

    This is how a session decrypts the bundle it was handed: the portal unwraps the key
    for it, the private key never leaves the portal. Nothing is left at ``dst_path``
    unless the whole file decrypted and authenticated.

    Raises:
        InvalidInput: ``tampered``: any authentication failure, or a wrong data key.
    """
    if len(data_key) != 32:
        raise _tampered("data key length")
    cipher = AESGCM(data_key)
    with open(src_path, "rb") as source:
        header = read_header(source)
        sealed_size = header.chunk_size + TAG_SIZE
        with _output(dst_path) as out:
            index = 0
            while True:
                sealed = source.read(sealed_size)
                # a full-size chunk is never the last: the final one is always shorter
                last = len(sealed) < sealed_size
                if index >= _MAX_CHUNKS:
                    raise _tampered("too many chunks")
                nonce = _chunk_nonce(header.nonce, index, last)
                try:
                    plain = cipher.decrypt(nonce, sealed, header.aad)
                except (InvalidTag, ValueError):
                    raise _tampered(f"chunk {index} does not authenticate") from None
                out.write(plain)
                if last:
                    break
                index += 1
    logger.debug("decrypted a bundle for key %s", header.key[:16])
    return header
