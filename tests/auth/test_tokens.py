"""Random secrets, their stored form and the CSRF token derived from a log-on."""

from __future__ import annotations

import hashlib

import pytest

from aimms_portal.auth import tokens

pytestmark = pytest.mark.sqlite


def test_secrets_are_long_random_and_url_safe():
    made = {tokens.new_secret() for _ in range(100)}
    assert len(made) == 100
    assert all(len(s) == 43 and s.replace("-", "").replace("_", "").isalnum() for s in made)


def test_api_tokens_carry_their_prefix():
    token = tokens.new_api_token()
    assert token.startswith(tokens.API_TOKEN_PREFIX) and len(token) == 47


def test_secrets_are_stored_as_sha256():
    assert tokens.hash_secret("abc") == hashlib.sha256(b"abc").hexdigest()


def test_csrf_tokens_depend_on_the_log_on_and_the_key():
    token = tokens.csrf_token_for("session-a", "key-1")
    assert token == tokens.csrf_token_for("session-a", "key-1")
    assert token != tokens.csrf_token_for("session-b", "key-1")
    assert token != tokens.csrf_token_for("session-a", "key-2")
    assert "session-a" not in token and "key-1" not in token


def test_same_secret():
    assert tokens.same_secret("abc", "abc") is True
    assert tokens.same_secret("abc", "abd") is False
    assert tokens.same_secret("", "abc") is False
