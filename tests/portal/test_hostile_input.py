"""Input that once slipped past the checks: each must be a clear 4xx, never a 500 and never a lease."""

import pytest
from django.test import Client

from accounts.roles import Role
from tokens.models import Lease


@pytest.fixture
def member(organization, make_member):
    return make_member(organization, Role.ADMIN)


def test_a_session_cookie_cannot_lease(organization, member, make_token):
    membership, _ = member
    make_token(organization)
    browser = Client()
    browser.force_login(membership.user)

    response = browser.get("/keys/provision/hf")

    assert response.status_code == 401
    assert not Lease.objects.exists()


@pytest.mark.parametrize("until", ["9999-12-31T23:30:00Z", "0001-01-02T00:00:00Z"])
def test_usage_windows_at_the_ends_of_time_are_refused(member, client_for, until):
    _, key = member

    response = client_for(key).get("/admin/usage", {"until": until})

    assert response.status_code == 400 and response.json()["error_type"] == "validation"


def test_a_token_that_no_http_header_can_carry_is_refused(member, client_for):
    _, key = member

    response = client_for(key).post("/admin/tokens", {"token": "hf_ünïcödé_token_value"}, format="json")

    assert response.status_code == 400 and response.json()["error_type"] == "validation"


@pytest.mark.parametrize("field", ["token_id", "lease_id"])
def test_a_report_with_an_id_no_row_can_have_is_refused_not_a_crash(member, client_for, make_token, organization, field):
    _, key = member
    token = make_token(organization)
    report = {"token_id": token.pk, "status": "error", "error": "402", field: 2**70}

    response = client_for(key).post("/keys/report/hf", report, format="json")

    assert response.status_code == 400 and response.json()["error_type"] == "validation"
    assert field in response.json()["fields"]


def test_a_database_that_fails_mid_request_is_a_quick_503_not_a_500(member, client_for, make_token, organization, monkeypatch):
    from django.db import OperationalError

    from tokens import services

    _, key = member
    make_token(organization)

    def database_gone(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(services, "lease_token", database_gone)
    response = client_for(key).get("/keys/provision/hf")

    assert response.status_code == 503
    assert response.json()["error_type"] == "database_unavailable"
    assert response["Retry-After"] == "1"


class _DeadlockDetected(Exception):
    sqlstate = "40P01"  # as psycopg's errors carry it


@pytest.mark.parametrize("database", ["postgresql-deadlock", "sqlite-locked"])
def test_a_database_busy_with_other_transactions_is_a_503_that_says_busy_not_down(member, client_for, make_token, organization, monkeypatch, database):
    from django.db import OperationalError

    from tokens import services

    _, key = member
    make_token(organization)

    def contended(**kwargs):
        if database == "sqlite-locked":
            raise OperationalError("database is locked")
        raise OperationalError("deadlock detected") from _DeadlockDetected("deadlock detected")

    monkeypatch.setattr(services, "lease_token", contended)
    response = client_for(key).get("/keys/provision/hf")

    assert response.status_code == 503
    assert response.json()["error_type"] == "database_busy"
    assert response["Retry-After"] == "1"


async def test_the_bare_chat_door_answers_503_when_the_database_is_down(monkeypatch):
    import httpx
    from django.db import InterfaceError

    from portal import sse
    from portal.asgi import application

    async def database_gone(raw_key, pool_name):
        raise InterfaceError("connection already closed")

    monkeypatch.setattr(sse, "chat_context", database_gone)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://localhost") as client:
        response = await client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer pk_whatever_key"})

    assert response.status_code == 503
    assert response.json()["error_type"] == "database_unavailable" and response.headers["retry-after"] == "1"


def _operations_with_a_body() -> list[tuple[str, str]]:
    """Every DRF operation that reads a JSON body, from the OpenAPI schema (so a new one is covered too)."""
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    return sorted(
        (method.upper(), path) for path, operations in schema["paths"].items()
        for method, operation in operations.items() if "requestBody" in operation
    )


NESTED_TOO_DEEP = [
    pytest.param(b"[" * 5000, id="5000-open-brackets"),
    pytest.param(b'{"a": ' * 5000 + b"1" + b"}" * 5000, id="5000-objects"),
    # Well-formed and shallow enough for Python's parser: refused by the portal's own limit.
    pytest.param(b'{"name": "x", "extra": ' + b"[" * 200 + b"]" * 200 + b"}", id="200-arrays-in-an-object"),
]


@pytest.mark.parametrize("body", NESTED_TOO_DEEP)
def test_json_nested_too_deep_is_a_400_on_every_drf_operation(organization, make_member, make_token, client_for, body):
    from tokens.models import TokenPool

    _, key = make_member(organization, Role.ADMIN, is_superuser=True)  # no operation refuses it before the body
    ids = {
        "user_id": make_member(organization, Role.USER)[0].user_id,
        "pool_id": TokenPool.objects.get(organization=organization, name="default").pk,
        "token_id": make_token(organization).pk,
    }
    client = client_for(key)
    client.raise_request_exception = False  # answer as a server does: a crash is a 500, not a raised error
    operations = _operations_with_a_body()
    assert ("POST", "/admin/users") in operations and ("POST", "/keys/report/hf") in operations

    answers = {}
    for method, path in operations:
        response = client.generic(method, path.format(**ids), body, content_type="application/json")
        error = response.json()
        answers[f"{method} {path}"] = (response.status_code, response["Content-Type"], error["error_type"], error["error"])

    refusal = (400, "application/json", "validation", "The body is nested deeper than 128 levels.")
    assert set(answers.values()) == {refusal}, answers


# --- forms Django cannot read, and CSRF refusals on API paths ------------------------------------------------


async def _browser_with_csrf():
    """An ASGI client (real request path through the middleware) holding a CSRF cookie and its form token."""
    import re

    import httpx

    from portal.asgi import application

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://localhost")
    page = await client.get("/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return client, token


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("path", "status"), [("/login/", 400), ("/django-admin/login/", 400), ("/nowhere/", 404)])
@pytest.mark.parametrize("charset", ["utf-16", "utf-32", "cp037"])
async def test_a_form_in_another_charset_is_a_4xx_page_never_a_bare_500(organization, path, status, charset):
    """Django refuses a form body that is not UTF-8; its error pages then read the body again for their CSRF
    token and raised once more, which ended in daphne's bare 500."""
    client, token = await _browser_with_csrf()
    try:
        response = await client.post(
            path,
            content=f"username=a&password=b&csrfmiddlewaretoken={token}".encode(charset),
            headers={"content-type": f"application/x-www-form-urlencoded; charset={charset}",
                     "referer": "http://localhost/login/"},
        )
    finally:
        await client.aclose()
    assert response.status_code == status, response.text[:300]
    assert response.headers["x-content-type-options"] == "nosniff"  # answered through the middleware


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/v1/models", "/healthz", "/metrics"])
async def test_a_csrf_refusal_on_an_api_path_is_the_json_error_shape(organization, path):
    client, _ = await _browser_with_csrf()  # a session-less browser that holds a CSRF cookie
    try:
        response = await client.post(path, json={})
    finally:
        await client.aclose()
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error_type"] == "permission_denied"
