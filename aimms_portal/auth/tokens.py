"""Random secrets for cookies and API tokens, and how they are stored (hashed).

The secrets carry 256 bits of randomness, so a plain SHA-256 is the right hash: a
slow password hash would add nothing but latency on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

#: API tokens start with this, so leaked ones are easy to spot (secret scanners).
API_TOKEN_PREFIX = "apt_"  # noqa: S105
#: How many characters of a token are kept in clear to tell tokens apart.
VISIBLE_PREFIX_LENGTH = 10


def new_secret() -> str:
    """A new random secret, URL-safe, 43 characters."""
    return secrets.token_urlsafe(32)


def new_api_token() -> str:
    """A new personal API token."""
    return API_TOKEN_PREFIX + new_secret()


def hash_secret(secret: str) -> str:
    """The stored form of a cookie value or token."""
    return hashlib.sha256(secret.encode()).hexdigest()


def csrf_token_for(session_secret: str, key: str) -> str:
    """The CSRF token that belongs to a browser session.

    Derived from the session's cookie value with the portal's secret key, so it needs
    no storage and cannot be computed by anyone who lacks either.
    """
    return hmac.new(key.encode(), b"csrf:" + session_secret.encode(), "sha256").hexdigest()


def same_secret(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(a.encode(), b.encode())
