"""Signatures of runtime packages: keys, the .sig file, signing and verifying."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aimms_portal.errors import InvalidInput
from aimms_portal.packages import encryption, signing
from aimms_portal.packages.signing import (
    RUNTIME_MESSAGE_PREFIX,
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

DIGEST = hashlib.sha256(b"a package").hexdigest()
OTHER_DIGEST = hashlib.sha256(b"another package").hexdigest()


def test_generated_key_pair(signing_key: tuple[bytes, str]):
    private_pem, public_text = signing_key
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert public_text.startswith("ed25519:")
    assert len(base64.b64decode(public_text.removeprefix("ed25519:"))) == 32
    assert public_text_of(private_pem) == public_text
    assert generate_signing_key()[1] != public_text


def test_fingerprint_is_the_sha256_of_the_raw_key():
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    text = "ed25519:" + base64.b64encode(raw).decode()
    assert fingerprint(text) == hashlib.sha256(raw).hexdigest()
    assert fingerprint(f"  {text}\n") == fingerprint(text)  # pasted with blanks


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA",
        "ed25519:",
        "ed25519:not base64!",
        "ed25519:" + base64.b64encode(bytes(31)).decode(),
        "ed25519:" + base64.b64encode(bytes(33)).decode(),
        "rsa:" + base64.b64encode(bytes(32)).decode(),
    ],
)
def test_junk_public_keys_are_refused(text: str):
    with pytest.raises(InvalidInput) as caught:
        parse_public_key(text)
    assert caught.value.code == "invalid_key"
    with pytest.raises(InvalidInput):
        fingerprint(text)


@pytest.mark.parametrize(
    "pem", [b"", b"junk", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
)
def test_junk_private_keys_are_refused(pem: bytes):
    with pytest.raises(InvalidInput) as caught:
        public_text_of(pem)
    assert caught.value.code == "invalid_key"


def test_other_private_keys_are_refused(portal_key: tuple[bytes, bytes]):
    with pytest.raises(InvalidInput, match="not an Ed25519 key"):
        sign_digest(portal_key[0], DIGEST)
    protected = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(InvalidInput, match="unencrypted"):
        public_text_of(protected)


def test_sign_and_verify(signing_key: tuple[bytes, str]):
    private_pem, public_text = signing_key
    signature = sign_digest(private_pem, DIGEST)
    assert signature.key == fingerprint(public_text)
    assert signature.sha256 == DIGEST
    assert verify(public_text, DIGEST, signature)


def test_the_signed_message_is_prefix_and_raw_digest(signing_key: tuple[bytes, str]):
    private_pem, public_text = signing_key
    signature = sign_digest(private_pem, DIGEST)
    raw = base64.b64decode(signature.signature)
    message = RUNTIME_MESSAGE_PREFIX + bytes.fromhex(DIGEST)
    parse_public_key(public_text).verify(raw, message)  # raises if it were anything else


def test_sign_file(signing_key: tuple[bytes, str], tmp_path: Path):
    path = tmp_path / "package.zip"
    path.write_bytes(b"x" * 3_000_000)
    signature = sign_file(signing_key[0], path)
    assert signature.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert signing.sha256_file(path) == signature.sha256
    assert verify(signing_key[1], signature.sha256, signature)


@pytest.mark.parametrize("digest", ["", "abc", DIGEST.upper(), DIGEST + "0", "g" * 64])
def test_sign_digest_refuses_what_is_no_digest(signing_key: tuple[bytes, str], digest: str):
    with pytest.raises(InvalidInput) as caught:
        sign_digest(signing_key[0], digest)
    assert caught.value.code == "invalid_digest"


def test_verify_fails_for_another_digest_key_or_signature(signing_key: tuple[bytes, str]):
    private_pem, public_text = signing_key
    signature = sign_digest(private_pem, DIGEST)
    other_private, other_public = generate_signing_key()

    # the package the portal received has another digest than the one signed
    assert not verify(public_text, OTHER_DIGEST, signature)
    # the signature claims the received digest, but was made over another
    assert not verify(
        public_text, OTHER_DIGEST, Signature(signature.key, OTHER_DIGEST, signature.signature)
    )
    # another key
    assert not verify(other_public, DIGEST, signature)
    forged = Signature(fingerprint(other_public), DIGEST, signature.signature)
    assert not verify(other_public, DIGEST, forged)
    # a changed signature
    raw = bytearray(base64.b64decode(signature.signature))
    raw[0] ^= 1
    changed = Signature(signature.key, DIGEST, base64.b64encode(bytes(raw)).decode())
    assert not verify(public_text, DIGEST, changed)
    # a signature over the digest without the prefix (made for another purpose)
    loaded = serialization.load_pem_private_key(private_pem, None)
    assert isinstance(loaded, Ed25519PrivateKey)
    bare = loaded.sign(bytes.fromhex(DIGEST))
    unprefixed = Signature(signature.key, DIGEST, base64.b64encode(bare).decode())
    assert not verify(public_text, DIGEST, unprefixed)
    assert verify(other_public, DIGEST, sign_digest(other_private, DIGEST))


# --- the .sig file ---------------------------------------------------------------------


def test_signature_file_round_trip(signing_key: tuple[bytes, str]):
    signature = sign_digest(signing_key[0], DIGEST)
    data = signature.to_json()
    assert json.loads(data) == {
        "format": 1,
        "key": signature.key,
        "sha256": DIGEST,
        "signature": signature.signature,
    }
    assert Signature.from_json(data) == signature


def sig_doc(**changes: object) -> bytes:
    doc: dict[str, object] = {
        "format": 1,
        "key": "a" * 64,
        "sha256": DIGEST,
        "signature": base64.b64encode(bytes(64)).decode(),
    }
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        (b"x" * 5000, "larger than 4 KiB"),
        (b"\xff", "not JSON"),
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (sig_doc(format=...), "exactly the fields"),
        (sig_doc(extra=1), "exactly the fields"),
        (sig_doc(format=2), "'format' must be 1"),
        (sig_doc(format=True), "'format' must be 1"),
        (sig_doc(format="1"), "'format' must be 1"),
        (sig_doc(key="A" * 64), "'key' must be 64 lowercase hex digits"),
        (sig_doc(key=5), "'key' must be 64 lowercase hex digits"),
        (sig_doc(sha256="0" * 63), "'sha256' must be 64 lowercase hex digits"),
        (sig_doc(signature="not base64!"), "'signature' must be the base64"),
        (sig_doc(signature=base64.b64encode(bytes(63)).decode()), "'signature' must be the base64"),
        (sig_doc(signature=None), "'signature' must be the base64"),
    ],
)
def test_junk_signature_files_are_refused(data: bytes, phrase: str):
    with pytest.raises(InvalidInput) as caught:
        Signature.from_json(data)
    assert caught.value.code == "invalid_signature"
    assert phrase in caught.value.message


@pytest.mark.parametrize("data", [b"", b"  \n"])
def test_no_signature_file_means_unsigned(data: bytes):
    with pytest.raises(InvalidInput) as caught:
        Signature.from_json(data)
    assert caught.value.code == "unsigned"


# --- verify_trusted ----------------------------------------------------------------------


def test_verify_trusted(signing_key: tuple[bytes, str]):
    private_pem, public_text = signing_key
    other_public = generate_signing_key()[1]
    data = sign_digest(private_pem, DIGEST).to_json()
    signature, key = verify_trusted(DIGEST, data, [other_public, public_text])
    assert key == public_text
    assert signature.sha256 == DIGEST


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("none", "unsigned"),
        ("junk", "invalid_signature"),
        ("untrusted", "untrusted_key"),
        ("changed", "bad_signature"),
    ],
)
def test_verify_trusted_refuses(signing_key: tuple[bytes, str], case: str, code: str):
    private_pem, public_text = signing_key
    untrusted_pem, _ = generate_signing_key()
    data: bytes | None = {
        "none": None,
        "junk": b"{}",
        "untrusted": sign_digest(untrusted_pem, DIGEST).to_json(),
        "changed": sign_digest(private_pem, DIGEST).to_json(),
    }[case]
    with pytest.raises(InvalidInput) as caught:
        # the portal computed OTHER_DIGEST for "changed": the package is not what was signed
        verify_trusted(OTHER_DIGEST if case == "changed" else DIGEST, data, [public_text])
    assert caught.value.code == code


def test_a_portal_key_is_no_signing_key(portal_key: tuple[bytes, bytes]):
    with pytest.raises(InvalidInput):
        parse_public_key(portal_key[1].decode())
    assert encryption.public_fingerprint(portal_key[1])
