"""Dashboard login throttling: too many failures per username or per address → refused for a while."""

import pytest
from django.test import Client

from accounts.roles import Role

PASSWORD = "a-right-password-for-tests-123"


@pytest.fixture
def member(organization, make_member):
    membership, _ = make_member(organization, Role.USER, password=PASSWORD)
    return membership.user


@pytest.fixture
def small_limits(settings):
    settings.PORTAL_LOGIN_MAX_FAILURES = 3
    settings.PORTAL_LOGIN_MAX_FAILURES_PER_IP = 5
    settings.PORTAL_LOGIN_LOCKOUT_SECONDS = 600


def login(username, password, ip="10.0.0.1"):
    return Client(REMOTE_ADDR=ip).post("/login/", {"username": username, "password": password})


def test_after_too_many_failures_even_the_right_password_is_refused_with_a_clear_message(small_limits, member):
    for _ in range(3):
        response = login(member.username, "wrong")
        assert response.status_code == 200 and b"Wrong username or password" in response.content
    refused = login(member.username, PASSWORD)
    assert refused.status_code == 429
    assert b"Too many failed logins" in refused.content and b"10 minutes" in refused.content
    assert 590 <= int(refused["Retry-After"]) <= 600
    assert "_auth_user_id" not in refused.wsgi_request.session
    # the lock is per username: another address does not unlock it
    assert login(member.username.upper(), PASSWORD, ip="10.9.9.9").status_code == 429


def test_the_lock_ends_with_its_window(small_limits, member, settings, monkeypatch):
    from accounts import login_throttle

    for _ in range(3):
        login(member.username, "wrong")
    assert login(member.username, PASSWORD).status_code == 429
    real = login_throttle.time.time
    monkeypatch.setattr(login_throttle.time, "time", lambda: real() + 601)
    from django.core.cache import cache

    cache.clear()  # what the cache's own expiry does after the window
    assert login(member.username, PASSWORD).status_code == 302


def test_a_success_before_the_limit_clears_the_usernames_failures(small_limits, member):
    login(member.username, "wrong")
    login(member.username, "wrong")
    assert login(member.username, PASSWORD).status_code == 302
    login(member.username, "wrong")
    login(member.username, "wrong")
    assert login(member.username, PASSWORD).status_code == 302


def test_one_address_trying_many_usernames_is_locked_out(small_limits, member, organization, make_member):
    for number in range(5):
        login(f"nobody-{number}", "wrong", ip="10.6.6.6")
    assert login(member.username, PASSWORD, ip="10.6.6.6").status_code == 429
    assert login(member.username, PASSWORD, ip="10.7.7.7").status_code == 302


def test_empty_fields_are_not_counted_and_the_front_page_is_throttled_too(small_limits, member):
    for _ in range(5):
        Client().post("/login/", {"username": member.username, "password": ""})
    assert login(member.username, PASSWORD).status_code == 302
    for _ in range(3):
        Client(REMOTE_ADDR="10.0.0.2").post("/", {"username": member.username, "password": "wrong"})
    assert Client(REMOTE_ADDR="10.0.0.2").post("/", {"username": member.username, "password": PASSWORD}).status_code == 429


def test_the_cache_holds_no_username_and_no_password(small_limits, member):
    from django.core.cache import cache

    login(member.username, "wrong-password-xyz")
    stored = repr(getattr(cache, "_cache", {}))
    assert member.username not in stored and "wrong-password-xyz" not in stored
