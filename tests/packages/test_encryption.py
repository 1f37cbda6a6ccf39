"""Encrypted bundles: the format of docs/formats.md, and every way to break one."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import struct
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aimms_portal.errors import InvalidInput
from aimms_portal.packages import encryption
from aimms_portal.packages.encryption import (
    CHUNK_SIZE,
    MAGIC,
    decrypt_file,
    encrypt_file,
    is_encrypted,
    public_fingerprint,
    public_pem_of,
    read_header,
)

Keys = tuple[bytes, bytes]
SEALED = CHUNK_SIZE + 16


def encrypted(tmp_path: Path, public_pem: bytes, plain: bytes) -> Path:
    src = tmp_path / "plain.zip"
    src.write_bytes(plain)
    dst = tmp_path / "bundle.aimmsenc"
    encrypt_file(src, dst, public_pem)
    return dst


def refused(src: Path, private_pem: bytes, code: str = "tampered") -> InvalidInput:
    dst = src.parent / "decrypted.zip"
    with pytest.raises(InvalidInput) as caught:
        decrypt_file(src, dst, private_pem)
    assert caught.value.code == code
    # nothing half-written is left: neither the file nor a temporary one
    assert not dst.exists()
    assert not [p for p in src.parent.iterdir() if p.name.startswith(".decrypted")]
    return caught.value


# --- keys ------------------------------------------------------------------------------


def test_portal_key_pair(portal_key: Keys):
    private_pem, public_pem = portal_key
    key = serialization.load_pem_private_key(private_pem, None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072
    assert public_pem_of(private_pem) == public_pem
    der = serialization.load_pem_public_key(public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_fingerprint(public_pem) == hashlib.sha256(der).hexdigest()


def test_weak_and_foreign_public_keys_are_refused(tmp_path: Path):
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    ed = Ed25519PrivateKey.generate().public_key()
    for key in (small, ed):
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with pytest.raises(InvalidInput) as caught:
            public_fingerprint(pem)
        assert caught.value.code == "invalid_key"
    with pytest.raises(InvalidInput, match="not a PEM public key"):
        encrypted(tmp_path, b"junk", b"data")
    assert not (tmp_path / "bundle.aimmsenc").exists()


def test_decrypt_with_a_private_key_that_is_no_rsa_key(tmp_path: Path, portal_key: Keys):
    path = encrypted(tmp_path, portal_key[1], b"data")
    ed_pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    refused(path, ed_pem, code="invalid_key")
    refused(path, b"junk", code="invalid_key")


# --- the format ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE, 200_000]
)
def test_round_trip_and_layout(tmp_path: Path, portal_key: Keys, size: int):
    plain = os.urandom(size)
    path = encrypted(tmp_path, portal_key[1], plain)
    header = read_header(path)

    # the final chunk is the first one shorter than chunk_size, so it may be empty
    full, final = divmod(size, CHUNK_SIZE)
    assert path.stat().st_size == header.data_offset + full * SEALED + final + 16

    out = tmp_path / "out.zip"
    assert decrypt_file(path, out, portal_key[0]) == header
    assert out.read_bytes() == plain


def test_header_fields(tmp_path: Path, portal_key: Keys):
    path = encrypted(tmp_path, portal_key[1], b"x")
    data = path.read_bytes()
    assert data[:8] == MAGIC and data[8] == 1
    (length,) = struct.unpack(">I", data[9:13])
    document = json.loads(data[13 : 13 + length])
    assert set(document) == {"key", "wrapped_key", "nonce", "chunk_size"}
    assert document["key"] == public_fingerprint(portal_key[1])
    assert document["chunk_size"] == 65536
    assert len(base64.b64decode(document["nonce"])) == 7
    assert len(base64.b64decode(document["wrapped_key"])) == 384  # RSA 3072

    header = read_header(path)
    assert header.key == document["key"]
    assert header.aad == data[: 13 + length]
    with open(path, "rb") as stream:
        assert read_header(stream) == header
        assert stream.tell() == header.data_offset


def test_chunks_follow_the_documented_construction(tmp_path: Path, portal_key: Keys):
    # an independent decryption from the description in docs/formats.md
    plain = os.urandom(CHUNK_SIZE + 10)
    path = encrypted(tmp_path, portal_key[1], plain)
    header = read_header(path)
    private = serialization.load_pem_private_key(portal_key[0], None)
    assert isinstance(private, rsa.RSAPrivateKey)
    data_key = private.decrypt(header.wrapped_key, encryption._oaep())
    body = path.read_bytes()[header.data_offset :]
    aes = AESGCM(data_key)
    first = aes.decrypt(header.nonce + (0).to_bytes(4, "big") + b"\0", body[:SEALED], header.aad)
    last = aes.decrypt(header.nonce + (1).to_bytes(4, "big") + b"\1", body[SEALED:], header.aad)
    assert first + last == plain


def test_every_encryption_uses_a_fresh_key_and_nonce(tmp_path: Path, portal_key: Keys):
    a = encrypted(tmp_path, portal_key[1], b"same").read_bytes()
    b = encrypted(tmp_path, portal_key[1], b"same").read_bytes()
    assert a != b
    assert read_header(io.BytesIO(a)).nonce != read_header(io.BytesIO(b)).nonce


def test_is_encrypted(tmp_path: Path, portal_key: Keys):
    assert is_encrypted(encrypted(tmp_path, portal_key[1], b"x"))
    plain = tmp_path / "plain.zip"
    assert not is_encrypted(plain)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert not is_encrypted(empty)


# --- wrong portal, tampering -----------------------------------------------------------


def test_bundle_for_another_portal(tmp_path: Path, portal_key: Keys, other_portal_key: Keys):
    path = encrypted(tmp_path, other_portal_key[1], b"secret model")
    error = refused(path, portal_key[0], code="wrong_portal")
    fp = public_fingerprint(other_portal_key[1])
    assert error.message == f"the bundle is encrypted for another portal (key {fp[:16]})"


def tamper(path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    data = bytearray(path.read_bytes())
    changed = change(data, read_header(path))
    path.write_bytes(bytes(changed if changed is not None else data))
    return path


def flip(data: bytearray, at: int) -> None:
    data[at] ^= 0x01


@pytest.mark.parametrize(
    "how",
    [
        "flip in first chunk",
        "flip in last chunk",
        "flip in a tag",
        "drop the last chunk",
        "drop the first chunk",
        "cut inside a chunk",
        "cut inside the final tag",
        "swap two chunks",
        "append a byte",
        "append a chunk",
        "change the nonce",
        "change the chunk size",
        "change the wrapped key",
        "change the version",
        "cut inside the header",
    ],
)
def test_tampering_is_detected(tmp_path: Path, portal_key: Keys, how: str):
    plain = os.urandom(3 * CHUNK_SIZE + 100)
    path = encrypted(tmp_path, portal_key[1], plain)
    header = read_header(path)
    start = header.data_offset

    def change(data: bytearray, _header: object) -> bytearray | None:
        if how == "flip in first chunk":
            flip(data, start + 10)
        elif how == "flip in last chunk":
            flip(data, len(data) - 30)
        elif how == "flip in a tag":
            flip(data, start + SEALED - 1)
        elif how == "drop the last chunk":
            return data[: start + 3 * SEALED]
        elif how == "drop the first chunk":
            return data[:start] + data[start + SEALED :]
        elif how == "cut inside a chunk":
            return data[: start + SEALED + 1000]
        elif how == "cut inside the final tag":
            return data[:-5]
        elif how == "swap two chunks":
            first, second = data[start : start + SEALED], data[start + SEALED : start + 2 * SEALED]
            return data[:start] + second + first + data[start + 2 * SEALED :]
        elif how == "append a byte":
            return data + b"\0"
        elif how == "append a chunk":
            return data + data[start : start + SEALED]
        elif how == "cut inside the header":
            return data[: start - 10]
        else:
            document = json.loads(data[13:start])
            if how == "change the nonce":
                document["nonce"] = base64.b64encode(bytes(7)).decode()
            elif how == "change the chunk size":
                document["chunk_size"] = 32768
            elif how == "change the wrapped key":
                wrapped = bytearray(base64.b64decode(document["wrapped_key"]))
                wrapped[5] ^= 1
                document["wrapped_key"] = base64.b64encode(bytes(wrapped)).decode()
            elif how == "change the version":
                data[8] = 2
                return None
            raw = json.dumps(document, sort_keys=True).encode()
            return data[:9] + struct.pack(">I", len(raw)) + raw + data[start:]
        return None

    tamper(path, change)
    error = refused(path, portal_key[0])
    assert error.message == "the encrypted bundle is damaged or was tampered with"


def test_moving_chunks_between_bundles_is_detected(tmp_path: Path, portal_key: Keys):
    # same portal, same sizes, both valid: a chunk of one is no chunk of the other
    a = encrypted(tmp_path, portal_key[1], os.urandom(2 * CHUNK_SIZE))
    b_src = tmp_path / "b"
    b_src.write_bytes(os.urandom(2 * CHUNK_SIZE))
    b = tmp_path / "b.aimmsenc"
    encrypt_file(b_src, b, portal_key[1])
    ha, hb = read_header(a), read_header(b)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    mixed = data_a[: ha.data_offset] + data_b[hb.data_offset :]
    a.write_bytes(mixed)
    refused(a, portal_key[0])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"AIMMSEN",
        b"PK\x03\x04junk",
        MAGIC,
        MAGIC + b"\x01\x00\x00",
        MAGIC + b"\x01" + struct.pack(">I", 100_000) + b"{}",
        MAGIC + b"\x01" + struct.pack(">I", 50) + b"{}",
        MAGIC + b"\x01" + struct.pack(">I", 2) + b"[]",
        MAGIC + b"\x01" + struct.pack(">I", 3) + b"\xff{}",
        MAGIC + b"\x01" + struct.pack(">I", 2) + b"{}",
    ],
)
def test_junk_headers_are_refused(tmp_path: Path, data: bytes):
    path = tmp_path / "junk"
    path.write_bytes(data)
    with pytest.raises(InvalidInput) as caught:
        read_header(path)
    assert caught.value.code == "tampered"


def test_header_field_rules(tmp_path: Path, portal_key: Keys):
    path = encrypted(tmp_path, portal_key[1], b"x")
    good = json.loads(path.read_bytes()[13 : read_header(path).data_offset])
    for changes in (
        {"nonce": base64.b64encode(bytes(12)).decode()},
        {"chunk_size": 10},
        {"chunk_size": "65536"},
        {"key": "short"},
        {"extra": 1},
        {"wrapped_key": "not base64!"},
    ):
        raw = json.dumps(good | changes).encode()
        path.write_bytes(MAGIC + b"\x01" + struct.pack(">I", len(raw)) + raw)
        with pytest.raises(InvalidInput) as caught:
            read_header(path)
        assert caught.value.code == "tampered", changes


def test_decrypt_replaces_its_target_only_when_whole(tmp_path: Path, portal_key: Keys):
    path = encrypted(tmp_path, portal_key[1], os.urandom(2 * CHUNK_SIZE))
    target = tmp_path / "decrypted.zip"
    target.write_bytes(b"previous")
    tamper(path, lambda data, _h: data[:-1])
    with pytest.raises(InvalidInput):
        decrypt_file(path, target, portal_key[0])
    assert target.read_bytes() == b"previous"


# --- memory ----------------------------------------------------------------------------


def test_encryption_and_decryption_stream(tmp_path: Path, portal_key: Keys):
    src = tmp_path / "big"
    with open(src, "wb") as out:
        for _ in range(16):
            out.write(os.urandom(1024 * 1024))
    enc, dec = tmp_path / "big.enc", tmp_path / "big.dec"
    tracemalloc.start()
    try:
        encrypt_file(src, enc, portal_key[1])
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        decrypt_file(enc, dec, portal_key[0])
        _, decrypt_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a few chunks in flight, not the 16 MiB file
    assert encrypt_peak < 2 * 1024 * 1024
    assert decrypt_peak < 2 * 1024 * 1024
    assert hashlib.sha256(dec.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
