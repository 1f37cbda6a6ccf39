"""Unknown routes and wrong methods answer in the API's error shape, never with HTML."""

from __future__ import annotations

import pytest

from tests.helpers import bearer

pytestmark = pytest.mark.sqlite


def test_unknown_api_route_is_a_json_404(client):
    response = client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "not_found", "message": "No API route /api/v1/no-such-thing."}
    }


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/v1/users", "GET, POST"),
        ("PUT", "/api/v1/users/3", "GET, PATCH"),
        ("DELETE", "/api/v1/me", "GET"),
    ],
)
def test_wrong_method_is_a_405_naming_the_allowed_ones(client, method, path, allow):
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_user_search_treats_wildcards_literally(client, admin, make_user):
    make_user("ann")
    make_user("bob_smith")
    headers = bearer(admin)
    everyone = client.get("/api/v1/users", params={"q": "%"}, headers=headers).json()
    assert everyone["total"] == 0
    underscore = client.get("/api/v1/users", params={"q": "_"}, headers=headers).json()
    assert [u["username"] for u in underscore["items"]] == ["bob_smith"]
