"""Health, readiness and metrics; security headers; 413 for over-large bodies on Django's side."""

import os
import subprocess
import sys
import time

import httpx
import pytest
from django.db import OperationalError
from django.test import Client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from accounts.roles import Role
from portal import health, metrics
from tests.conftest import free_port, wait_for_port

CREDITS_402 = (
    "402 Client Error: Payment Required for url: https://router.huggingface.co/v1/chat/completions "
    "(Request ID: Root=1-abc)\n\nYou have exceeded your monthly included credits for Inference Providers. "
    "Subscribe to PRO to get 20x more monthly included credits."
)


def assert_error(response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error_type"] == error_type and body["error"], body
    return body


# --- /healthz and /readyz -------------------------------------------------------------------------


def test_healthz_answers_without_the_database(client):
    response = client.get("/healthz")  # no django_db mark: a query here would fail the test
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db(transaction=True)
def test_readyz_reports_each_check(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["status"] == "ok"
    assert ("redis" in body["checks"]) == bool(os.environ.get("REDIS_URL"))


def test_readyz_is_503_when_the_database_fails(client, monkeypatch):
    def refuse():
        raise OperationalError('connection to server at "127.0.0.1", port 1 failed: Connection refused')

    monkeypatch.setattr(health, "_database_ping", refuse)
    body = assert_error(client.get("/readyz"), 503, "service_unavailable")
    assert body["checks"]["database"]["status"] == "error"
    assert "OperationalError" in body["checks"]["database"]["error"]


def test_readyz_never_waits_longer_than_its_timeout(client, monkeypatch):
    monkeypatch.setattr(health, "CHECK_TIMEOUT", 0.3)
    monkeypatch.setattr(health, "_database_ping", lambda: time.sleep(2))  # a database gone silent
    started = time.monotonic()
    body = assert_error(client.get("/readyz"), 503, "service_unavailable")
    assert time.monotonic() - started < 1.5
    assert "no answer within 0.3 s" in body["checks"]["database"]["error"]


@pytest.fixture
def portal_with_env(tmp_path):
    """portal_with_env(**env) -> the URL of a daphne serving the portal with that environment."""
    processes = []

    def start(**env) -> str:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "portal.serve", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"],
            env={**os.environ, "PORTAL_VAR_DIR": str(tmp_path), "DATABASE_URL": "", "REDIS_URL": "", **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        wait_for_port(port)
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def test_a_worker_whose_database_is_unreachable_is_alive_but_not_ready(portal_with_env):
    url = portal_with_env(DATABASE_URL=f"postgres://portal:db-password-123@127.0.0.1:{free_port()}/portal")

    assert httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
    started = time.monotonic()
    response = httpx.get(f"{url}/readyz", timeout=10)
    assert time.monotonic() - started < health.CHECK_TIMEOUT + 1
    body = assert_error(response, 503, "service_unavailable")
    assert body["checks"]["database"]["status"] == "error"
    assert "db-password-123" not in response.text


def test_a_worker_whose_redis_is_unreachable_is_not_ready_and_answers_quickly(portal_with_env):
    url = portal_with_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    started = time.monotonic()
    response = httpx.get(f"{url}/readyz", timeout=10)
    assert time.monotonic() - started < health.CHECK_TIMEOUT + 1
    body = assert_error(response, 503, "service_unavailable")
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["redis"]["status"] == "error"
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


# --- /metrics -------------------------------------------------------------------------------------


def metric_value(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"{name} {labels} not in metrics:\n{text}")


@pytest.mark.django_db(transaction=True)
def test_metrics_count_leases_reports_and_token_statuses(organization, make_member, make_token, client_for, client):
    _, key = make_member(organization, Role.USER)
    token = make_token(organization)
    api = client_for(key)
    assert api.get("/keys/provision/hf").status_code == 200
    second = make_token(organization)
    assert api.get("/keys/provision/hf").json()["token_id"] == str(second.pk)  # left open
    report = api.post("/keys/report/hf", {"token_id": token.pk, "status": "error", "error": CREDITS_402}, format="json")
    assert report.status_code == 200, report.content

    response = client.get("/metrics")

    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    pool = {"organization": "acme", "pool": "default"}
    assert metric_value(text, "portal_leases_total", **pool) == 2
    assert metric_value(text, "portal_leases_open", **pool) == 1
    assert metric_value(text, "portal_lease_outcomes_total", **pool, outcome="error") == 1
    assert metric_value(text, "portal_lease_errors_total", **pool, error_type="credits_exceeded") == 1
    assert metric_value(text, "portal_tokens", **pool, status="quarantined") == 1
    assert metric_value(text, "portal_tokens", **pool, status="active") == 1
    assert metric_value(text, "portal_tokens", **pool, status="disabled") == 0
    count = "portal_http_request_duration_seconds_count"
    assert metric_value(text, count, method="GET", route="/keys/provision/hf", status="200") >= 1
    assert metric_value(text, count, method="POST", route="/keys/report/hf", status="200") >= 1
    assert "portal_active_streams " in text


@pytest.mark.django_db
def test_request_latency_is_labelled_by_route_template_not_by_path(client):
    client.get("/admin/tokens/123456")
    client.get("/admin/tokens/654321")
    client.get("/no/such/page/42")

    text = client.get("/metrics").content.decode()

    assert 'route="/admin/tokens/<id:token_id>"' in text
    assert "123456" not in text and "654321" not in text and "/no/such" not in text
    assert 'route="unmatched"' in text


@pytest.mark.django_db
def test_active_streams_read_the_relays_permit_count(client, monkeypatch):
    from tokens import limits

    monkeypatch.setitem(limits._local, "worker", 3)
    assert metric_value(client.get("/metrics").content.decode(), "portal_active_streams") == 3


async def test_the_bare_asgi_door_can_be_timed_from_outside():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 429, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    observed = metrics.asgi_request_metrics(app, {"/v1/chat/completions": "/v1/chat/completions"})
    labels = {"method": "POST", "route": "/v1/chat/completions", "status": "429"}
    before = REGISTRY.get_sample_value("portal_http_request_duration_seconds_count", labels) or 0
    sent = []

    async def send(message):
        sent.append(message)

    await observed({"type": "http", "path": "/v1/chat/completions", "method": "POST"}, None, send)
    await observed({"type": "http", "path": "/elsewhere", "method": "POST"}, None, send)  # Django's to time

    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"] * 2
    assert REGISTRY.get_sample_value("portal_http_request_duration_seconds_count", labels) == before + 1


def test_the_live_chat_door_shows_up_in_the_latency_metrics(live_org):
    import httpx

    bad = httpx.post(f"{live_org.url}/v1/chat/completions", json={"model": ""}, headers={"Authorization": f"Bearer {live_org.user_key}"})
    assert bad.status_code == 400

    scraped = httpx.get(f"{live_org.url}/metrics").text  # from loopback, no proxy headers: allowed
    assert 'portal_http_request_duration_seconds_count{method="POST",route="/v1/chat/completions",status="400"}' in scraped


@pytest.mark.django_db
def test_metrics_are_refused_from_outside_without_the_token(settings):
    settings.PORTAL_METRICS_TOKEN = "metrics-token-for-tests"
    outside = Client(REMOTE_ADDR="203.0.113.7")

    assert_error(outside.get("/metrics"), 403, "permission_denied")
    assert_error(outside.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong"), 403, "permission_denied")
    assert outside.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-for-tests").status_code == 200
    # A proxy on this machine (nginx) relays clients from anywhere: loopback alone is not enough then.
    relayed = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert_error(relayed.get("/metrics"), 403, "permission_denied")
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200


@pytest.mark.django_db
def test_metrics_without_a_configured_token_accept_no_bearer(settings):
    settings.PORTAL_METRICS_TOKEN = ""
    outside = Client(REMOTE_ADDR="203.0.113.7")
    assert_error(outside.get("/metrics", HTTP_AUTHORIZATION="Bearer "), 403, "permission_denied")


# --- Over-large bodies and security headers --------------------------------------------------------


@pytest.mark.django_db
def test_an_over_large_body_on_an_api_path_is_413(admin_client):
    body = b'{"secret": "' + b"a" * 3_000_000 + b'"}'
    response = admin_client.generic("POST", "/admin/tokens", body, content_type="application/json")
    assert_error(response, 413, "payload_too_large")


@pytest.mark.django_db
def test_an_over_large_form_on_a_dashboard_page_is_413(client):
    response = client.generic(
        "POST", "/login/", b"username=a&password=" + b"b" * 3_000_000, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 413


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/login/", "/healthz", "/admin/tokens", "/api/docs/"])
def test_every_django_response_carries_the_security_headers(client, path):
    response = client.get(path)
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy


@pytest.mark.django_db
def test_the_api_docs_page_has_no_inline_script(client):
    html = client.get("/api/docs/").content.decode()
    assert "<script>" not in html


def test_check_deploy_is_clean_under_production_settings(tmp_path):
    env = {
        **os.environ,
        "PORTAL_VAR_DIR": str(tmp_path),
        "PORTAL_HTTPS": "1",
        "DEBUG": "0",
        "ALLOWED_HOSTS": "portal.example.com",
        "SECRET_KEY": "s" * 10 + "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_https_mode_redirects_pages_but_not_probes(tmp_path):
    code = (
        "import django; django.setup();"
        "from django.test import Client; c = Client();"
        "print(c.get('/login/', HTTP_HOST='localhost').status_code, c.get('/healthz', HTTP_HOST='localhost').status_code)"
    )
    env = {**os.environ, "PORTAL_VAR_DIR": str(tmp_path), "PORTAL_HTTPS": "1", "DJANGO_SETTINGS_MODULE": "portal.settings"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["301", "200"], result.stdout + result.stderr
