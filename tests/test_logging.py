"""Logs: JSON on request, and never a password, token or cookie value."""

from __future__ import annotations

import json
import logging

import pytest

from aimms_portal.api.deps import SESSION_COOKIE
from aimms_portal.config import Settings
from aimms_portal.logs import configure_logging
from tests.helpers import PASSWORD, log_on

pytestmark = pytest.mark.sqlite


@pytest.fixture
def portal_logger():
    root = logging.getLogger("aimms_portal")
    saved = (list(root.handlers), root.level, root.propagate)
    yield root
    root.handlers, root.level, root.propagate = saved[0], saved[1], saved[2]


def test_json_format_writes_one_object_per_record(portal_logger, capsys):
    configure_logging(Settings(_env_file=None, log_format="json", log_level="DEBUG"))
    logging.getLogger("aimms_portal.example").info("user %s did %s", "ann", "x")
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert record["message"] == "user ann did x"
    assert record["level"] == "INFO" and record["logger"] == "aimms_portal.example"


def test_secrets_do_not_reach_the_log(client, make_user, caplog):
    make_user("ann")
    caplog.set_level(logging.DEBUG)
    csrf = log_on(client, "ann")
    client.post("/api/v1/auth/login", json={"username": "ann", "password": "Wrong-guess-123"})
    created = client.post("/api/v1/tokens", json={"name": "x"}, headers=csrf).json()
    client.get("/api/v1/me", headers={"Authorization": f"Bearer {created['token']}"})
    cookie = client.cookies[SESSION_COOKIE]
    assert caplog.records, "the actions above should have logged something"
    for secret in (PASSWORD, "Wrong-guess-123", created["token"], cookie, csrf["X-CSRF-Token"]):
        assert secret not in caplog.text
