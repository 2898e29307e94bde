"""The bare ASGI doors (chat, lease, report) skip Django's request handling; they must still refuse and
label what its middleware would: an unknown Host, plain HTTP under PORTAL_HTTPS, and the security headers.
These requests are refused before any database work (the tests allow none)."""

import httpx
import pytest

from portal.asgi import application

BARE_PATHS = [("GET", "/keys/provision/hf"), ("POST", "/keys/report/hf"), ("GET", "/keys/provision"), ("POST", "/v1/chat/completions")]


async def call(method: str, path: str, host: str = "localhost", **kwargs) -> httpx.Response:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
        return await client.request(method, path, **kwargs)


@pytest.mark.parametrize(("method", "path"), BARE_PATHS)
async def test_a_host_outside_allowed_hosts_is_refused(settings, method, path):
    settings.ALLOWED_HOSTS = ["portal.example.com"]
    response = await call(method, path, host="evil.example", headers={"Authorization": "Bearer pk_whatever_123456"})
    assert response.status_code == 400
    assert response.json()["error_type"] == "bad_request"


@pytest.mark.parametrize(("method", "path"), BARE_PATHS)
async def test_plain_http_is_redirected_to_https_before_anything_is_leased(settings, method, path):
    settings.ALLOWED_HOSTS = ["portal.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    response = await call(method, f"{path}?pool=default", host="portal.example.com", headers={"Authorization": "Bearer pk_x_123456789"})
    assert response.status_code == 301
    assert response.headers["location"] == f"https://portal.example.com{path}?pool=default"


async def test_answers_carry_the_security_headers_and_hsts_when_secure(settings):
    settings.ALLOWED_HOSTS = ["portal.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 3600
    response = await call("GET", "/keys/provision/hf", host="portal.example.com", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 401  # no key: refused before any database work
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["strict-transport-security"].startswith("max-age=3600")
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "default-src" in response.headers["content-security-policy"]


async def test_a_body_nested_deeper_than_python_can_parse_is_a_json_400(settings):
    settings.ALLOWED_HOSTS = ["localhost"]
    nested = b"[" * 100_000 + b"]" * 100_000
    response = await call("POST", "/v1/chat/completions", content=nested, headers={"Authorization": "Bearer pk_x_123456789"})
    assert response.status_code == 400, response.text
    assert response.json()["error_type"] == "validation"
