"""Security: the per-API-key and per-member request rate limits (429 with Retry-After, across workers
through Redis) and keys refused in URLs."""

import asyncio
import logging

import pytest

from accounts.roles import Role
from portal import rate_limit, url_keys
from tests.conftest import requires_redis


@pytest.fixture
def limit(settings):
    settings.PORTAL_KEY_RATE_LIMIT_PER_MINUTE = 3
    return 3


def test_a_key_over_its_rate_gets_429_rate_limited_with_retry_after(limit, organization, make_member, client_for):
    _, key = make_member(organization, Role.USER)
    client = client_for(key)
    for _ in range(limit):
        assert client.get("/me").status_code == 200
    response = client.get("/me")
    assert response.status_code == 429
    assert response.json()["error_type"] == "rate_limited"
    assert "3 a minute" in response.json()["error"]
    assert 1 <= int(response["Retry-After"]) <= 60


def test_the_limit_is_per_key_and_a_session_is_not_counted(limit, organization, make_member, client_for):
    _, first = make_member(organization, Role.ADMIN)
    membership, second = make_member(organization, Role.ADMIN)
    for _ in range(limit):
        client_for(first).get("/me")
    assert client_for(first).get("/me").status_code == 429
    assert client_for(second).get("/me").status_code == 200
    from rest_framework.test import APIClient

    session = APIClient()
    session.force_login(membership.user)
    for _ in range(limit + 2):
        assert session.get("/me").status_code == 200


def test_a_member_gets_the_rate_once_however_many_keys_it_mints(limit, organization, make_member, client_for):
    from accounts import services

    membership, first = make_member(organization, Role.USER)
    keys = [first] + [services.api_key_create(membership=membership, name=f"k{n}", actor=None)[1] for n in (2, 3)]
    for key in keys:
        assert client_for(key).get("/me").status_code == 200
    refused = client_for(keys[0]).get("/me")
    assert refused.status_code == 429
    assert refused.json()["error"].startswith("Too many requests for this member: at most 3 a minute")
    assert 1 <= int(refused["Retry-After"]) <= 60


def test_the_stricter_of_the_key_and_member_limits_wins(settings, organization, make_member, client_for):
    settings.PORTAL_KEY_RATE_LIMIT_PER_MINUTE = 5
    settings.PORTAL_MEMBER_RATE_LIMIT_PER_MINUTE = 2
    _, key = make_member(organization, Role.USER)
    client = client_for(key)
    assert [client.get("/me").status_code for _ in range(3)] == [200, 200, 429]
    settings.PORTAL_MEMBER_RATE_LIMIT_PER_MINUTE = 0  # members uncounted: the key's own five apply
    assert [client.get("/me").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_every_drf_endpoint_counts_lease_and_report_included(limit, organization, make_member, make_token, client_for):
    make_token(organization)
    _, key = make_member(organization, Role.USER)
    client = client_for(key)
    lease = client.get("/keys/provision/hf")
    assert lease.status_code == 200
    report = client.post("/keys/report/hf", {"token_id": int(lease.json()["token_id"]), "status": "success"}, format="json")
    assert report.status_code == 200
    assert client.get("/admin/pools").status_code == 200
    assert client.get("/keys/provision/hf").status_code == 429


def test_zero_turns_the_limit_off(settings, organization, make_member, client_for):
    settings.PORTAL_KEY_RATE_LIMIT_PER_MINUTE = 0
    _, key = make_member(organization, Role.USER)
    client = client_for(key)
    assert all(client.get("/me").status_code == 200 for _ in range(20))


def test_the_window_slides_a_slot_frees_when_the_oldest_request_is_a_minute_old(limit, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(rate_limit.time, "monotonic", lambda: now[0])
    windows = rate_limit._LocalWindows()
    key = [("key", "k")]
    assert windows.admit(key, [limit]) == (0, -1)
    now[0] += 20
    assert windows.admit(key, [limit]) == (0, -1)
    assert windows.admit(key, [limit]) == (0, -1)
    assert windows.admit(key, [limit]) == (pytest.approx(40), 0)  # the first request leaves the window at 1060
    now[0] += 40
    assert windows.admit(key, [limit]) == (0, -1)


def test_a_request_refused_by_one_window_is_counted_in_none():
    windows = rate_limit._LocalWindows()
    key, member = ("key", 1), ("member", 1)
    assert windows.admit([member], [1]) == (0, -1)
    assert windows.admit([key, member], [5, 1])[1] == 1  # the member's window is full
    for _ in range(5):  # so the key's five are all still there
        assert windows.admit([key], [5]) == (0, -1)


def test_the_async_check_raises_the_same_error(limit):
    async def run():
        for _ in range(limit):
            await rate_limit.acheck_caller_rate(api_key_id=987654, membership_id=None)
        with pytest.raises(rate_limit.RateLimited) as refused:
            await rate_limit.acheck_caller_rate(api_key_id=987654, membership_id=None)
        return refused.value

    refused = asyncio.run(run())
    assert refused.status_code == 429 and refused.error_type == "rate_limited" and 1 <= refused.wait <= 60
    rate_limit.check_caller_rate(api_key_id=None, membership_id=None)  # nobody to count: nothing refused


def test_an_unreachable_redis_counts_in_the_worker_with_a_warning_and_without_hanging(limit, monkeypatch, caplog):
    shared = rate_limit._SharedWindows("redis://127.0.0.1:1/0")  # nothing listens on port 1
    monkeypatch.setattr(rate_limit, "_shared", shared)
    caplog.set_level(logging.WARNING, logger="portal.rate_limit")
    import time

    started = time.monotonic()
    for _ in range(limit):
        rate_limit.check_caller_rate(api_key_id=424242, membership_id=None)
    with pytest.raises(rate_limit.RateLimited):
        rate_limit.check_caller_rate(api_key_id=424242, membership_id=None)
    assert time.monotonic() - started < 3
    assert "Redis unreachable" in caplog.text
    assert caplog.text.count("Redis unreachable") == 1  # warned once, not per request

    async def run():
        shared._skip_until = 0  # try Redis again: the async path falls back the same way
        with pytest.raises(rate_limit.RateLimited):
            await rate_limit.acheck_caller_rate(api_key_id=424242, membership_id=None)

    asyncio.run(run())


@requires_redis
def test_with_redis_the_count_is_shared_by_workers(limit, settings):
    """Two workers are two processes with their own counters: here, two shared-window clients and no local
    fallback: the second sees the first one's requests."""
    worker_a = rate_limit._SharedWindows(settings.REDIS_URL)
    worker_b = rate_limit._SharedWindows(settings.REDIS_URL)
    windows = [("key", "shared-test"), ("member", "shared-test")]
    assert worker_a.admit(windows, [limit, limit + 1]) == (0, -1)
    assert worker_b.admit(windows, [limit, limit + 1]) == (0, -1)

    async def third():
        return await worker_a.aadmit(windows, [limit, limit + 1])

    assert asyncio.run(third()) == (0, -1)
    wait, which = worker_b.admit(windows, [limit, limit + 1])
    assert 59 < wait <= 60 and which == 0  # the key's window is the full one
    wait, which = worker_b.admit(windows[1:], [limit])  # the member's holds the same three requests
    assert 59 < wait <= 60 and which == 0


@requires_redis
def test_with_redis_the_drf_limit_holds_across_a_reset_of_the_worker_counts(limit, organization, make_member, client_for):
    _, key = make_member(organization, Role.USER)
    client = client_for(key)
    for _ in range(limit):
        assert client.get("/me").status_code == 200
    rate_limit._local.clear()  # what a worker remembers is not what decides
    response = client.get("/me")
    assert response.status_code == 429 and response.json()["error_type"] == "rate_limited"


# --- keys in URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "api_key={key}",
        "key={key}",
        "token={key}",
        "access_token=whatever",
        "pool=default&anything={key}",
        "x=prefix%20{key}",
        "token=hf_abcdefghijklmnopqrstuvwxyz",
    ],
)
def test_a_key_in_the_query_string_is_refused_and_not_logged(query, organization, make_member, client_for, caplog):
    caplog.set_level(logging.DEBUG)
    _, key = make_member(organization, Role.ADMIN)
    url = f"/keys/provision/hf?{query.format(key=key)}"
    for client in (client_for(None), client_for(key)):
        response = client.get(url)
        assert response.status_code == 400
        assert response.json() == {"error": url_keys.MESSAGE, "error_type": "credentials_in_url"}
        assert key not in response.content.decode()
    assert key not in caplog.text
    assert all(key not in record.getMessage() for record in caplog.records)


def test_a_key_in_the_path_is_refused_and_the_path_not_logged(organization, make_member, client_for, caplog):
    caplog.set_level(logging.DEBUG)
    _, key = make_member(organization, Role.ADMIN)
    response = client_for(None).get(f"/admin/users/{key}")
    assert response.status_code == 400 and response.json()["error_type"] == "credentials_in_url"
    assert "credentials in its URL" in caplog.text
    assert key not in caplog.text


def test_ordinary_query_strings_pass(organization, make_member, client_for):
    _, key = make_member(organization, Role.ADMIN)
    assert client_for(key).get("/admin/tokens?pool=default&status=active").status_code == 200
    assert client_for(key).get("/admin/audit?action=user&actor=someone").status_code == 200
    assert not url_keys.has_credentials("token=&key=")  # empty values carry nothing


def test_the_asgi_wrapper_refuses_http_and_websocket():
    async def app(scope, receive, send):
        raise AssertionError("the wrapped app must not run")

    guarded = url_keys.refuse_keys_in_url(app)
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "websocket.connect"}

    key = "pk_" + "a" * 43
    asyncio.run(guarded({"type": "http", "query_string": f"api_key={key}".encode(), "headers": []}, receive, send))
    assert sent[0]["status"] == 400 and b"credentials_in_url" in sent[1]["body"] and key.encode() not in sent[1]["body"]
    sent.clear()
    asyncio.run(guarded({"type": "websocket", "query_string": f"k={key}".encode(), "headers": []}, receive, send))
    assert sent == [{"type": "websocket.close", "code": url_keys.CLOSE_CREDENTIALS_IN_URL}]

    passed = []

    async def ok(scope, receive, send):
        passed.append(scope["type"])

    asyncio.run(url_keys.refuse_keys_in_url(ok)({"type": "http", "query_string": b"pool=a", "headers": []}, receive, send))
    asyncio.run(url_keys.refuse_keys_in_url(ok)({"type": "lifespan"}, receive, send))
    assert passed == ["http", "lifespan"]


@pytest.mark.parametrize(
    "uri, logged",
    [
        ("/keys/provision/hf?api_key=pk_" + "a" * 43, "/keys/provision/hf?api_key=***"),
        ("/admin/users/pk_" + "b" * 43, "/admin/users/pk_***"),
        ("/admin/users/pk%5F" + "b" * 43, "/admin/users/pk_***"),
        ("/x?a=hf_abcdefghijklmnop&token=short", "/x?a=hf_***&token=***"),
        ("/admin/tokens?pool=default&status=active", "/admin/tokens?pool=default&status=active"),
    ],
)
def test_the_access_log_of_portal_serve_scrubs_credentials_from_uris(uri, logged):
    from portal.serve import scrub_uri

    assert scrub_uri(uri) == logged


def test_the_access_log_entry_is_written_scrubbed():
    import datetime
    import io

    from portal.serve import ScrubbedAccessLog

    stream = io.StringIO()
    key = "pk_" + "c" * 43
    ScrubbedAccessLog(stream)("http", "complete", {"client": "1.2.3.4:5", "method": "GET", "path": f"/me?key={key}", "status": 400, "size": 10})
    assert key not in stream.getvalue() and '"GET /me?key=***" 400 10' in stream.getvalue()
    assert datetime.date.today().strftime("%Y") in stream.getvalue()


@pytest.mark.parametrize(
    "text, shown",
    [
        ("failed with token_hf_abcdefghijklmnop", "failed with token_hf_***"),
        ("GET /x?t=Bearer%20hf_abcdefghijklmnop 401", "GET /x?t=Bearer *** 401"),
        ("GET /x?t=Bearer%2520hf_abcdefghijklmnop 401", "GET /x?t=Bearer *** 401"),
        ("Authorization: Bearer opaque-credential-123", "Authorization: Bearer ***"),
        ("key:pk_abcdefghijklmnopqrstuvwxyz", "key:pk_***"),
        ("key%3Dpk_abcdefghijklmnopqrstuvwxyz", "key=pk_***"),
        # Letters or digits before `hf_` make another word, not a token.
        ("the shf_abcdefghijk field", "the shf_abcdefghijk field"),
        # Without a secret, the text stays as it was written, encoding and all.
        ("Client error '401 Unauthorized' for url 'https://router.example/v1/a%20b'",
         "Client error '401 Unauthorized' for url 'https://router.example/v1/a%20b'"),
    ],
)
def test_redaction_finds_secrets_after_any_non_alphanumeric_and_once_url_decoded(text, shown):
    from portal.redact import redact_secrets

    assert redact_secrets(text) == shown


def test_redaction_masks_the_known_secret_written_or_url_encoded():
    from portal.redact import redact_secrets

    secret = "opaque%secret/1"  # a token need not be shaped like one
    assert redact_secrets(f"a {secret} b {secret.replace('%', '%25').replace('/', '%2F')}", secret) == "a *** b ***"
