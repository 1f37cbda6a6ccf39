"""Fixtures of the package library's tests: keys (made once per run) and file writers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from aimms_portal.packages import encryption, signing


@pytest.fixture(scope="session")
def portal_key() -> tuple[bytes, bytes]:
    """This test portal's RSA key pair: (private PEM, public PEM)."""
    return encryption.generate_portal_keypair()


@pytest.fixture(scope="session")
def other_portal_key() -> tuple[bytes, bytes]:
    """Another portal's RSA key pair."""
    return encryption.generate_portal_keypair()


@pytest.fixture(scope="session")
def signing_key() -> tuple[bytes, str]:
    """A publisher's Ed25519 key: (private PEM, public text)."""
    return signing.generate_signing_key()


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, bytes], Path]:
    """Write bytes to a file of the test's folder and return its path."""

    def write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    return write
