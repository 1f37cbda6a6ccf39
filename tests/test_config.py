"""Settings: defaults for the embedded mode, refusal of insecure production settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from aimms_portal.config import DEVELOPMENT_SECRET, Settings

pytestmark = pytest.mark.sqlite


def test_defaults_give_the_embedded_mode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings(_env_file=None)
    assert settings.environment == "development"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'data' / 'portal.db'}"
    assert settings.resolved_storage_url == (tmp_path / "data" / "storage").as_uri()
    assert settings.launcher == "local"
    assert not settings.secure_cookies


def test_environment_variables_are_read_with_the_prefix(monkeypatch):
    monkeypatch.setenv("AIMMS_PORTAL_STORAGE_URL", "s3://bucket/portal")
    monkeypatch.setenv("AIMMS_PORTAL_UPLOAD_MAX_BYTES", "1024")
    settings = Settings(_env_file=None)
    assert settings.resolved_storage_url == "s3://bucket/portal"
    assert settings.upload_max_bytes == 1024


def test_production_refuses_the_development_secret():
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, environment="production", public_url="https://portal.example")
    assert "AIMMS_PORTAL_SECRET_KEY" in str(info.value)


def test_production_refuses_a_short_secret_and_plain_http():
    with pytest.raises(ValidationError) as info:
        Settings(
            _env_file=None,
            environment="production",
            secret_key="short",
            public_url="http://portal.example",
        )
    message = str(info.value)
    assert "AIMMS_PORTAL_SECRET_KEY" in message and "https://" in message


def test_production_accepts_secure_settings():
    settings = Settings(
        _env_file=None,
        environment="production",
        secret_key="x" * 40,
        public_url="https://portal.example",
    )
    assert settings.secure_cookies
    assert settings.secret_key.get_secret_value() != DEVELOPMENT_SECRET


def test_secret_is_not_shown_in_the_settings_repr():
    settings = Settings(_env_file=None, secret_key="y" * 40)
    assert "y" * 40 not in repr(settings)
