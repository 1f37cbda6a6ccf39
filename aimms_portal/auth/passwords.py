"""Password hashing (Argon2id via argon2-cffi) and the password policy."""

from __future__ import annotations

import functools
import string

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from aimms_portal.errors import InvalidInput

MIN_LENGTH = 12
MAX_LENGTH = 256


@functools.cache
def _hasher() -> PasswordHasher:
    # argon2-cffi's defaults follow RFC 9106's second recommendation (64 MiB, t=3)
    return PasswordHasher()


def check_policy(password: str) -> None:
    """Refuse passwords that do not meet the policy.

    The policy: 12 to 256 characters, with at least one letter, one digit and one symbol.

    Raises:
        InvalidInput: with code ``weak_password`` and a message naming what is missing.
    """
    missing = []
    if len(password) < MIN_LENGTH:
        missing.append(f"at least {MIN_LENGTH} characters")
    if not any(c.isalpha() for c in password):
        missing.append("a letter")
    if not any(c.isdigit() for c in password):
        missing.append("a digit")
    if not any(c in string.punctuation or not (c.isalnum() or c.isspace()) for c in password):
        missing.append("a symbol")
    if missing:
        raise InvalidInput("The password needs " + ", ".join(missing) + ".", code="weak_password")
    if len(password) > MAX_LENGTH:
        raise InvalidInput(
            f"The password may have at most {MAX_LENGTH} characters.", code="weak_password"
        )


def hash_password(password: str) -> str:
    """Argon2id hash of ``password`` in PHC string form."""
    return _hasher().hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``.

    With no hash (unknown user, SSO-only account) a dummy hash is verified anyway, so
    the answer takes the same time whether or not the account exists.
    """
    try:
        return _hasher().verify(password_hash or _dummy_hash(), password) and bool(password_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with weaker parameters than today's."""
    return _hasher().check_needs_rehash(password_hash)


@functools.cache
def _dummy_hash() -> str:
    return _hasher().hash("not a real password: only burns the same time")
