"""Personal API tokens through the REST API: shown once, stored hashed, scoped, revocable."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import pytest
from sqlmodel import select

from aimms_portal.db import session_scope
from aimms_portal.models import ApiToken, Role, utcnow
from tests.api.support import API, audit_events, error, quick_user
from tests.helpers import bearer, log_on

pytestmark = pytest.mark.sqlite


@pytest.fixture
def ann(db: None) -> dict[str, str]:
    """Headers of a plain user's token (read and write)."""
    return bearer(quick_user("ann"))


def _create(client, headers, **body) -> dict:
    response = client.post(f"{API}/tokens", json={"name": "laptop", **body}, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _stored(token_id: int) -> ApiToken:
    with session_scope() as session:
        row = session.get(ApiToken, token_id)
        assert row is not None
        return row


def test_a_token_is_shown_once_and_stored_only_as_a_hash(client, ann):
    created = _create(client, ann, scopes=["read"])
    secret = created["token"]
    assert secret.startswith("apt_") and secret.startswith(created["prefix"])
    assert created["scopes"] == "read" and created["last_used_at"] is None

    listed = client.get(f"{API}/tokens", headers=ann)
    assert listed.status_code == 200
    assert secret not in listed.text
    assert all("token" not in item for item in listed.json()["items"])
    assert created["id"] in [item["id"] for item in listed.json()["items"]]

    row = _stored(created["id"])
    assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in " ".join(str(v) for v in row.model_dump().values())


def test_a_new_token_works_with_exactly_its_scopes(client, ann):
    headers = {"Authorization": f"Bearer {_create(client, ann, scopes=['read'])['token']}"}
    me = client.get(f"{API}/me", headers=headers).json()
    assert (me["username"], me["auth"], me["scopes"]) == ("ann", "token", ["read"])
    refused = client.post(f"{API}/tokens", json={"name": "more"}, headers=headers)
    error(refused, 403, "insufficient_scope")


def test_a_cookie_user_creates_tokens_too(client, db):
    quick_user("ann")
    csrf = log_on(client, "ann")
    created = _create(client, csrf)
    assert created["scopes"] == "read write"  # the default
    lifetime = datetime.fromisoformat(created["expires_at"]) - utcnow()
    assert timedelta(days=89) < lifetime <= timedelta(days=90)


def test_the_longest_lifetime_is_a_year(client, ann):
    created = _create(client, ann, expires_in_days=365)
    expires = _stored(created["id"]).expires_at
    assert timedelta(days=364, hours=23) < expires - utcnow() <= timedelta(days=365)
    for days in (366, 0, -1):
        response = client.post(
            f"{API}/tokens", json={"name": "long", "expires_in_days": days}, headers=ann
        )
        assert "expires_in_days" in error(response, 422, "invalid_request")


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [
        ({"scopes": ["read", "sudo"]}, "invalid_scope", "sudo"),
        ({"scopes": []}, "invalid_scope", "read, write, admin"),
        ({"scopes": ["admin"]}, "invalid_scope", "admin"),
        ({"name": "n" * 65}, "invalid_request", "name"),
        ({"name": "   "}, "invalid_name", "name"),
        ({"owner": 1}, "invalid_request", "owner"),
    ],
)
def test_bad_token_requests_are_a_422_saying_why(client, ann, body, code, named):
    response = client.post(f"{API}/tokens", json={"name": "laptop", **body}, headers=ann)
    assert named in error(response, 422, code)
    with session_scope() as session:  # only the token the fixture made
        assert len(session.exec(select(ApiToken)).all()) == 1
    assert len(audit_events(action="token.create")) == 1


def test_admins_may_create_admin_tokens(client, db):
    root = bearer(quick_user("root", Role.admin.value))
    created = _create(client, root, scopes=["read", "admin"])
    assert created["scopes"] == "read admin"
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert client.get(f"{API}/users", headers=headers).status_code == 200


def test_a_revoked_token_stops_at_once(client, ann):
    created = _create(client, ann)
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert client.get(f"{API}/me", headers=headers).status_code == 200

    assert client.delete(f"{API}/tokens/{created['id']}", headers=ann).status_code == 204
    error(client.get(f"{API}/me", headers=headers), 401, "token_revoked")
    # revoking twice is harmless, and audited once
    assert client.delete(f"{API}/tokens/{created['id']}", headers=ann).status_code == 204
    [event] = audit_events(action="token.revoke")
    assert (event.actor_name, event.target_id, event.source_ip) == (
        "ann",
        str(created["id"]),
        "203.0.113.7",
    )

    active = client.get(f"{API}/tokens", headers=ann).json()["items"]
    assert created["id"] not in [t["id"] for t in active]
    everything = client.get(f"{API}/tokens?include_revoked=true", headers=ann).json()["items"]
    [revoked] = [t for t in everything if t["id"] == created["id"]]
    assert revoked["revoked_at"] is not None


def test_a_token_can_revoke_itself(client, ann):
    created = _create(client, ann)
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert client.delete(f"{API}/tokens/{created['id']}", headers=headers).status_code == 204
    error(client.get(f"{API}/me", headers=headers), 401, "token_revoked")


def test_revoking_an_unknown_token_is_a_404(client, ann):
    assert "999" in error(client.delete(f"{API}/tokens/999", headers=ann), 404, "not_found")


def test_an_expired_token_is_refused(client, ann):
    created = _create(client, ann)
    with session_scope() as session:
        row = session.get(ApiToken, created["id"])
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)
    headers = {"Authorization": f"Bearer {created['token']}"}
    error(client.get(f"{API}/me", headers=headers), 401, "token_expired")


def test_the_last_use_is_recorded(client, ann):
    created = _create(client, ann)
    assert _stored(created["id"]).last_used_at is None
    before = utcnow()
    client.get(f"{API}/me", headers={"Authorization": f"Bearer {created['token']}"})
    used = _stored(created["id"]).last_used_at
    assert used is not None and used >= before
    [listed] = [
        t
        for t in client.get(f"{API}/tokens", headers=ann).json()["items"]
        if t["id"] == created["id"]
    ]
    assert listed["last_used_at"] is not None


def test_tokens_are_listed_newest_first_a_page_at_a_time(client, ann):
    ids = [_create(client, ann, scopes=["read"])["id"] for _ in range(3)]
    page = client.get(f"{API}/tokens?limit=2", headers=ann).json()
    assert (page["total"], page["limit"], page["offset"]) == (4, 2, 0)  # and the fixture's
    assert [t["id"] for t in page["items"]] == ids[::-1][:2]


def test_creating_a_token_is_audited_without_the_secret(client, ann):
    created = _create(client, ann, scopes=["read"], expires_in_days=7)
    [_, event] = audit_events(action="token.create")
    assert (event.actor_name, event.target_name, event.target_id) == (
        "ann",
        "laptop",
        str(created["id"]),
    )
    assert event.detail.startswith("scopes=read expires=")
    assert created["token"] not in event.detail and created["token"][4:] not in event.detail


def test_someone_elses_token_looks_exactly_like_an_unknown_one(client, ann):
    bob = bearer(quick_user("bob"))
    bobs = _create(client, bob)
    theirs = client.delete(f"{API}/tokens/{bobs['id']}", headers=ann)
    unknown = client.delete(f"{API}/tokens/{bobs['id'] + 1000}", headers=ann)
    error(theirs, 404, "not_found")
    assert theirs.json()["error"]["message"] == unknown.json()["error"]["message"].replace(
        str(bobs["id"] + 1000), str(bobs["id"])
    )
    headers = {"Authorization": f"Bearer {bobs['token']}"}
    assert client.get(f"{API}/me", headers=headers).status_code == 200
    assert audit_events(action="token.revoke") == []


@pytest.mark.parametrize("token_id", [0, -1, 2**31, 2**63, 2**70])
def test_impossible_token_ids_are_a_404(client, ann, token_id):
    error(client.delete(f"{API}/tokens/{token_id}", headers=ann), 404, "not_found")


def test_a_token_without_the_admin_scope_cannot_mint_one_with_it(client, db):
    root = bearer(quick_user("root", Role.admin.value), "read", "write")
    response = client.post(f"{API}/tokens", json={"name": "x", "scopes": ["admin"]}, headers=root)
    error(response, 422, "invalid_scope")
