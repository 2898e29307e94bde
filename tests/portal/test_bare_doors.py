"""The bare ASGI doors (chat, lease, report) skip Django's request handling; they must still refuse and
label what its middleware would: an unknown Host, plain HTTP under PORTAL_HTTPS, and the security headers.
These requests are refused before any database work (the tests allow none)."""

import asyncio
import json

import httpx
import pytest

from portal.asgi import application
from portal.bare_asgi import AsgiExchange

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


async def test_a_chat_body_nested_deeper_than_the_portal_allows_is_refused_before_any_work(settings):
    settings.ALLOWED_HOSTS = ["localhost"]
    tools = json.loads("[" * 200 + "]" * 200)  # well-formed, and shallow enough for Python's own parser
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools}
    response = await call("POST", "/v1/chat/completions", json=body, headers={"Authorization": "Bearer pk_x_123456789"})
    assert response.status_code == 400, response.text  # refused before the key is looked up (no database here)
    assert response.json()["error"] == "The body is nested deeper than 128 levels."


async def _run_failing_answer(answer) -> list[dict]:
    """What a bare door sends when its answer raises (a bug of ours), with a client that stays connected."""
    sent, hang_up = [], asyncio.Event()

    async def receive():
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    exchange = AsgiExchange({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}, receive, send)
    await asyncio.wait_for(exchange.until_disconnected(answer(exchange)), timeout=5)
    hang_up.set()
    return sent


async def test_a_bug_before_anything_was_sent_is_a_json_500():
    async def answer(exchange):
        raise RuntimeError("a bug")

    start, body = await _run_failing_answer(answer)
    assert start["status"] == 500
    assert json.loads(body["body"]) == {"error": "Internal server error.", "error_type": "server_error"}
    assert "a bug" not in str(body)


async def test_a_bug_mid_stream_ends_the_stream_with_an_error_event_instead_of_leaving_the_client_waiting():
    async def answer(exchange):
        await exchange.start(200, "text/event-stream")
        await exchange.body(b'data: {"choices": []}\n\n')
        raise RuntimeError("a bug with a secret hf_abcdefghijklmnop")

    start, first, last = await _run_failing_answer(answer)
    assert (start["status"], first["more_body"]) == (200, True)
    assert last["more_body"] is False
    assert last["body"] == b'data: {"error": "Internal server error.", "error_type": "server_error"}\n\n'


async def test_a_bug_after_the_stream_ended_sends_nothing_more():
    async def answer(exchange):
        await exchange.start(200, "text/event-stream")
        await exchange.body(b"data: [DONE]\n\n", more=False)
        raise RuntimeError("a bug in the clean-up")

    start, last = await _run_failing_answer(answer)
    assert (start["status"], last["body"], last["more_body"]) == (200, b"data: [DONE]\n\n", False)
