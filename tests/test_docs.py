"""The documentation keeps up with the code."""

from __future__ import annotations

import pytest

from aimms_portal.config import Settings
from aimms_portal.db import REPO_ROOT

pytestmark = pytest.mark.sqlite


def test_every_setting_is_documented():
    text = (REPO_ROOT / "docs" / "configuration.md").read_text()
    missing = [
        f"AIMMS_PORTAL_{name.upper()}"
        for name in Settings.model_fields
        if f"`AIMMS_PORTAL_{name.upper()}`" not in text
    ]
    assert missing == []


def test_every_setting_has_a_description():
    assert [n for n, f in Settings.model_fields.items() if not f.description] == []
