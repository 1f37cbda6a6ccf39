"""Log-on, log-off, cookies, CSRF and API tokens through the REST API."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlmodel import col, select

from aimms_portal import config
from aimms_portal.api.app import create_api
from aimms_portal.api.deps import CSRF_HEADER, SESSION_COOKIE
from aimms_portal.db import session_scope
from aimms_portal.models import AuditEvent, BrowserSession, utcnow
from tests.api.support import CLIENT_IP, error
from tests.helpers import PASSWORD, bearer, log_on

pytestmark = pytest.mark.sqlite


def test_login_sets_an_httponly_lax_cookie_and_me_answers(client, make_user):
    make_user("ann")
    response = client.post("/api/v1/auth/login", json={"username": "ann", "password": PASSWORD})
    assert response.status_code == 200
    cookie_header = ";".join(response.headers.get_list("set-cookie"))
    assert f"{SESSION_COOKIE}=" in cookie_header
    assert "HttpOnly" in cookie_header and "SameSite=lax" in cookie_header
    assert "Secure" not in cookie_header  # plain http in development
    me = client.get("/api/v1/me").json()
    assert me["username"] == "ann" and me["auth"] == "cookie" and "everyone" in me["groups"]


def test_session_secret_is_stored_hashed(client, make_user):
    make_user("ann")
    log_on(client, "ann")
    secret = client.cookies[SESSION_COOKIE]
    with session_scope() as session:
        stored = session.exec(BrowserSession.__table__.select()).all()  # type: ignore[attr-defined]
    assert len(stored) == 1 and secret not in str(stored[0])


def test_wrong_password_and_unknown_user_get_the_same_answer(client, make_user):
    make_user("ann")
    wrong = client.post("/api/v1/auth/login", json={"username": "ann", "password": "nope"})
    unknown = client.post("/api/v1/auth/login", json={"username": "bob", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["message"] == "Wrong user name or password."
    with session_scope() as session:
        failures = session.exec(
            AuditEvent.__table__.select().where(AuditEvent.outcome == "failure")  # type: ignore[attr-defined]
        ).all()
    assert len(failures) == 2
    assert {f.source_ip for f in failures} == {"203.0.113.7"}


def test_wrong_password_takes_as_long_as_unknown_user(client, make_user):
    make_user("ann")

    def timed(username: str) -> float:
        started = time.perf_counter()
        client.post("/api/v1/auth/login", json={"username": username, "password": "nope"})
        return time.perf_counter() - started

    known = min(timed("ann") for _ in range(3))
    unknown = min(timed("nobody") for _ in range(3))
    # both verify one Argon2 hash; without the dummy hash "unknown" would be ~100x faster
    assert unknown > known * 0.5


def _throttle(monkeypatch: pytest.MonkeyPatch, per_name: int, per_address: int) -> None:
    monkeypatch.setenv("AIMMS_PORTAL_LOGIN_FAILURES_PER_NAME", str(per_name))
    monkeypatch.setenv("AIMMS_PORTAL_LOGIN_FAILURES_PER_ADDRESS", str(per_address))
    config.get_settings.cache_clear()  # the db fixture clears it again afterwards


GUESS = "a-guess"


def _log_on_from(address: str, username: str, password: str = GUESS) -> Response:
    with TestClient(create_api(), client=(address, 40000)) as other:
        return other.post("/api/v1/auth/login", json={"username": username, "password": password})


def test_guessing_a_password_is_refused_for_a_while(client, make_user, monkeypatch):
    _throttle(monkeypatch, per_name=3, per_address=100)
    make_user("ann")
    for _ in range(3):
        assert error(_log_on_from(CLIENT_IP, "ann"), 401, "wrong_credentials")

    # the next try from that address is refused, even with the right password, and the
    # same way for a name nobody has once it failed as often
    refused = _log_on_from(CLIENT_IP, "ann", PASSWORD)
    message = error(refused, 429, "too_many_failures")
    assert message == (
        "Too many failed log-ons for this user name from this address; try again in 15 minutes."
    )
    assert 14 * 60 < int(refused.headers["retry-after"]) <= 15 * 60
    for _ in range(3):
        _log_on_from(CLIENT_IP, "nobody")
    assert error(_log_on_from(CLIENT_IP, "nobody"), 429, "too_many_failures") == message
    # ann herself still logs on from elsewhere: one address locks nobody out
    assert _log_on_from("198.51.100.9", "ann", PASSWORD).status_code == 200
    with session_scope() as session:
        outcomes = [e.outcome for e in session.exec(select(AuditEvent)).all()]
    assert outcomes.count("refused") == 2 and outcomes.count("failure") == 6

    # once the oldest failure counted leaves the window, ann may try again
    with session_scope() as session:
        oldest = session.exec(
            select(AuditEvent)
            .where(AuditEvent.outcome == "failure", AuditEvent.actor_name == "ann")
            .order_by(col(AuditEvent.id))
        ).first()
        assert oldest is not None
        oldest.created_at = utcnow() - timedelta(minutes=16)
        session.add(oldest)
    assert _log_on_from(CLIENT_IP, "ann", PASSWORD).status_code == 200


def test_trying_many_names_from_one_address_is_refused(client, make_user, monkeypatch):
    _throttle(monkeypatch, per_name=10, per_address=4)
    make_user("ann")
    for name in ("bob", "cid", "dan", "eve"):
        assert error(_log_on_from(CLIENT_IP, name), 401, "wrong_credentials")
    assert error(_log_on_from(CLIENT_IP, "ann", PASSWORD), 429, "too_many_failures") == (
        "Too many failed log-ons from this address; try again in 15 minutes."
    )
    assert _log_on_from("198.51.100.9", "ann", PASSWORD).status_code == 200


@pytest.mark.parametrize(
    ("trusted", "forwarded", "seen"),
    [
        ("", "192.0.2.50", CLIENT_IP),  # no proxy is trusted: the header proves nothing
        ("203.0.113.0/24", "192.0.2.50", "192.0.2.50"),
        # entries before the last untrusted one are the client's own writing
        ("203.0.113.7, 10.0.0.0/8", "6.6.6.6, 192.0.2.50, 10.1.1.1", "192.0.2.50"),
        ("203.0.113.7", "not-an-address", CLIENT_IP),
        ("203.0.113.7", "", CLIENT_IP),
    ],
)
def test_the_address_behind_a_trusted_proxy(
    client, make_user, monkeypatch, trusted, forwarded, seen
):
    monkeypatch.setenv("AIMMS_PORTAL_TRUSTED_PROXIES", trusted)
    config.get_settings.cache_clear()
    make_user("ann")
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    client.post("/api/v1/auth/login", json={"username": "ann", "password": GUESS}, headers=headers)
    with session_scope() as session:
        event = session.exec(select(AuditEvent).where(AuditEvent.outcome == "failure")).one()
    assert event.source_ip == seen


def test_a_trusted_proxy_setting_that_is_no_address_is_refused(monkeypatch):
    monkeypatch.setenv("AIMMS_PORTAL_TRUSTED_PROXIES", "10.0.0.0/8, proxy.example")
    with pytest.raises(ValueError, match="AIMMS_PORTAL_TRUSTED_PROXIES"):
        config.Settings()


def test_disabled_user_cannot_log_on(client, make_user):
    make_user("ann", active=False)
    response = client.post("/api/v1/auth/login", json={"username": "ann", "password": PASSWORD})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "account_disabled"


def test_login_refuses_a_form_post(client, make_user):
    make_user("ann")
    response = client.post("/api/v1/auth/login", data={"username": "ann", "password": PASSWORD})
    assert response.status_code in (415, 422)
    assert SESSION_COOKIE not in client.cookies


def test_malformed_json_is_a_clear_400(client):
    response = client.post(
        "/api/v1/auth/login", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


def test_logout_revokes_the_log_on(client, make_user):
    make_user("ann")
    csrf = log_on(client, "ann")
    secret = client.cookies[SESSION_COOKIE]
    assert client.post("/api/v1/auth/logout", headers=csrf).status_code == 204
    client.cookies.set(SESSION_COOKIE, secret)  # a copied cookie must not work any more
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "session_ended"


def test_cookie_changes_need_the_csrf_header(client, make_user):
    make_user("ann")
    csrf = log_on(client, "ann")
    body = {"name": "laptop", "scopes": ["read"]}
    refused = client.post("/api/v1/tokens", json=body)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    forged = client.post("/api/v1/tokens", json=body, headers={CSRF_HEADER: "0" * 64})
    assert forged.status_code == 403
    assert client.post("/api/v1/tokens", json=body, headers=csrf).status_code == 201


def test_logout_without_csrf_is_refused(client, make_user):
    make_user("ann")
    log_on(client, "ann")
    assert client.post("/api/v1/auth/logout").status_code == 403
    assert client.get("/api/v1/me").status_code == 200


def test_bearer_token_works_without_cookie_or_csrf(client, make_user):
    ann = make_user("ann")
    headers = bearer(ann)
    me = client.get("/api/v1/me", headers=headers).json()
    assert me["auth"] == "token" and me["scopes"] == ["read", "write"]
    created = client.post("/api/v1/tokens", json={"name": "ci"}, headers=headers)
    assert created.status_code == 201


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("Bearer apt_forgedforgedforgedforgedforgedforgedforg", "invalid_token"),
        ("Basic YWRtaW46YWRtaW4=", "invalid_token"),
        ("Bearer ", "invalid_token"),
    ],
)
def test_forged_tokens_are_refused(client, header, code):
    response = client.get("/api/v1/me", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == code
    assert response.headers["www-authenticate"] == "Bearer"
