"""Liveness, readiness and metrics: what load balancers and monitoring see."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aimms_portal import config, storage
from aimms_portal.db import reset_engine
from tests.helpers import bearer
from tests.servers import free_port, remove_bucket, s3_client

pytestmark = pytest.mark.sqlite


@pytest.fixture
def switch_settings(monkeypatch: pytest.MonkeyPatch, client) -> Iterator[pytest.MonkeyPatch]:
    """Change settings after ``client`` started: set variables, then ``apply_settings()``.

    Afterwards the next test reads its settings afresh.
    """
    yield monkeypatch
    config.get_settings.cache_clear()
    storage.get_storage.cache_clear()
    reset_engine()


def apply_settings() -> None:
    # what a restart would do; the recovery checks below deliberately do not call it
    config.get_settings.cache_clear()
    storage.get_storage.cache_clear()
    reset_engine()


def test_healthz_answers_without_log_on(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ok_when_database_and_storage_are(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}


def test_readyz_names_a_missing_bucket_and_recovers_once_it_exists(
    client, switch_settings, moto_server
):
    bucket = f"later-{uuid.uuid4().hex[:12]}"
    switch_settings.setenv("AIMMS_PORTAL_STORAGE_URL", f"s3://{bucket}/portal")
    switch_settings.setenv("AIMMS_PORTAL_S3_ENDPOINT_URL", moto_server)
    apply_settings()

    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert list(body["problems"]) == ["storage"]
    assert bucket in body["problems"]["storage"]
    assert "does not exist" in body["problems"]["storage"]
    assert body["error"]["code"] == "unavailable"
    assert body["error"]["message"].startswith("storage: ")

    raw = s3_client(moto_server)
    raw.create_bucket(Bucket=bucket)
    try:
        response = client.get("/readyz")
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ok"}
    finally:
        remove_bucket(raw, bucket)


def test_readyz_names_an_unusable_storage_folder_and_recovers(
    client, switch_settings, tmp_path: Path
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the storage folder should be")
    switch_settings.setenv("AIMMS_PORTAL_STORAGE_URL", blocker.as_uri())
    apply_settings()

    response = client.get("/readyz")
    assert response.status_code == 503
    problem = response.json()["problems"]["storage"]
    assert str(blocker) in problem and "not writable" in problem

    blocker.unlink()
    assert client.get("/readyz").status_code == 200
    assert blocker.is_dir()


def test_readyz_reports_database_and_storage_each(client, switch_settings, tmp_path: Path):
    nothing_listens = f"postgresql+psycopg2://portal@127.0.0.1:{free_port()}/portal"
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    switch_settings.setenv("AIMMS_PORTAL_DATABASE_URL", nothing_listens)
    switch_settings.setenv("AIMMS_PORTAL_STORAGE_URL", blocker.as_uri())
    apply_settings()

    response = client.get("/readyz")
    assert response.status_code == 503
    problems = response.json()["problems"]
    assert set(problems) == {"database", "storage"}
    assert "database" in problems["database"]
    assert "portal@" not in response.text  # no connection details leak


def _requests_total(text: str) -> dict[tuple[str, str, str], float]:
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "aimms_portal_http_requests_total":
                labels = sample.labels
                counts[(labels["method"], labels["route"], labels["status"])] = sample.value
    return counts


def test_metrics_count_requests_by_route_template(client, admin, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    headers = bearer(admin)
    before = _requests_total(client.get("/metrics").text)

    assert client.get("/api/v1/me", headers=headers).status_code == 200
    assert client.get("/api/v1/me").status_code == 401
    assert client.get(f"/api/v1/users/{admin.id}", headers=headers).status_code == 200

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "aimms_portal_http_requests_total" in response.text
    assert "aimms_portal_http_request_duration_seconds_bucket" in response.text
    after = _requests_total(response.text)

    def grew(key: tuple[str, str, str]) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert grew(("GET", "/api/v1/me", "200")) == 1
    assert grew(("GET", "/api/v1/me", "401")) == 1
    assert grew(("GET", "/api/v1/users/{user_id}", "200")) == 1
    assert not [route for _, route, _ in after if f"/users/{admin.id}" in route]


def test_openapi_document_and_interactive_docs(client):
    document = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/me" in document["paths"] and "/api/v1/audit" in document["paths"]
    page = client.get("/api/v1/docs")
    assert page.status_code == 200 and "/api/v1/openapi.json" in page.text
    # scripts/setup installs Swagger UI locally, so the page works without a CDN
    assert "/api/v1/docs/assets/swagger-ui-bundle.js" in page.text
    script = client.get("/api/v1/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000


def test_metrics_may_ask_for_a_token_of_their_own(client, switch_settings):
    switch_settings.setenv("AIMMS_PORTAL_METRICS_TOKEN", "scrape-me-please")
    config.get_settings.cache_clear()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-me-please"}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401, headers
        assert refused.json()["error"]["code"] == "metrics_token"
    allowed = client.get("/metrics", headers={"Authorization": "Bearer scrape-me-please"})
    assert allowed.status_code == 200 and "aimms_portal_http_requests_total" in allowed.text
    # the probes of load balancers need none
    assert client.get("/healthz").status_code == 200
