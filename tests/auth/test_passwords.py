"""The password policy and Argon2id hashing."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from aimms_portal.auth import passwords
from aimms_portal.errors import InvalidInput

GOOD = "Correct-horse-9-battery"


@pytest.mark.parametrize(
    "password",
    [
        GOOD,
        "abcdefghij1!",  # exactly 12
        "Ünïcödé-pässwört-7",  # letters beyond ASCII count
        "twelve chars 1 €",  # a currency sign is a symbol
        "x1!" + "a" * 253,  # exactly 256
    ],
)
def test_passwords_that_meet_the_policy_pass(password):
    passwords.check_policy(password)


@pytest.mark.parametrize(
    ("password", "missing"),
    [
        ("Short-pw-1", ["at least 12 characters"]),
        ("no-digits-in-this-one", ["a digit"]),
        ("NoSymbolsInThis1234", ["a symbol"]),
        ("spaces are no 123 symbol", ["a symbol"]),
        ("1234-5678-90123", ["a letter"]),
        ("", ["at least 12 characters", "a letter", "a digit", "a symbol"]),
        ("abc", ["at least 12 characters", "a digit", "a symbol"]),
    ],
)
def test_weak_passwords_are_refused_naming_what_is_missing(password, missing):
    with pytest.raises(InvalidInput) as caught:
        passwords.check_policy(password)
    assert caught.value.code == "weak_password"
    rules = ["at least 12 characters", "a letter", "a digit", "a symbol"]
    named = [rule for rule in rules if rule in caught.value.message]
    assert named == missing


def test_over_long_passwords_are_refused():
    with pytest.raises(InvalidInput) as caught:
        passwords.check_policy("x1!" + "a" * 254)
    assert caught.value.code == "weak_password" and "at most 256" in caught.value.message


def test_hashes_are_argon2id_and_salted():
    first, second = passwords.hash_password(GOOD), passwords.hash_password(GOOD)
    assert first.startswith("$argon2id$") and second.startswith("$argon2id$")
    assert first != second
    assert GOOD not in first


def test_verify_accepts_only_the_right_password():
    hashed = passwords.hash_password(GOOD)
    assert passwords.verify_password(hashed, GOOD) is True
    assert passwords.verify_password(hashed, GOOD.upper()) is False
    assert passwords.verify_password(hashed, "") is False


@pytest.mark.parametrize("missing_hash", [None, ""])
def test_no_hash_verifies_the_dummy_hash_and_says_no(monkeypatch, missing_hash):
    verified = []
    real_verify = PasswordHasher.verify

    def spy(self, hash, password):
        verified.append(hash)
        return real_verify(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", spy)
    dummy_password = "not a real password: only burns the same time"
    # even the dummy hash's own password must not open an account without a hash
    assert passwords.verify_password(missing_hash, dummy_password) is False
    assert passwords.verify_password(missing_hash, GOOD) is False
    assert len(verified) == 2 and all(h.startswith("$argon2id$") for h in verified)


def test_a_corrupt_hash_verifies_as_false():
    assert passwords.verify_password("$argon2id$garbage", GOOD) is False
    assert passwords.verify_password("plain-text-password", "plain-text-password") is False


def test_weaker_hashes_need_rehashing():
    assert passwords.needs_rehash(passwords.hash_password(GOOD)) is False
    weak = PasswordHasher(time_cost=1, memory_cost=8192).hash(GOOD)
    assert passwords.needs_rehash(weak) is True
    assert passwords.verify_password(weak, GOOD) is True  # still accepted meanwhile
