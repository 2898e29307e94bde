"""One login throttle for every way to log in (accounts.login_throttle): the dashboard's form, Django's admin
form and any other authenticate() call count against the same username and address, and a username is
counted as Django logs it in (NFKC, case folded), so look-alikes share one lock."""

import pytest
from django.contrib.auth import authenticate
from django.test import Client, RequestFactory

from accounts.roles import Role

PASSWORD = "a-right-password-for-tests-123"
ADMIN_LOGIN = "/django-admin/login/?next=/django-admin/"


@pytest.fixture
def small_limits(settings):
    settings.PORTAL_LOGIN_MAX_FAILURES = 3
    settings.PORTAL_LOGIN_MAX_FAILURES_PER_IP = 5
    settings.PORTAL_LOGIN_LOCKOUT_SECONDS = 600


@pytest.fixture
def staff(organization, make_member):
    """A superuser (so staff): one who may use Django's admin site."""
    membership, _ = make_member(organization, Role.ADMIN, username="t5_lock", password=PASSWORD, is_superuser=True)
    return membership.user


def admin_login(username, password, ip="10.0.0.1"):
    client = Client(REMOTE_ADDR=ip)
    response = client.post(ADMIN_LOGIN, {"username": username, "password": password})
    response.logged_in = "_auth_user_id" in client.session
    return response


def dashboard_login(username, password, ip="10.0.0.1"):
    client = Client(REMOTE_ADDR=ip)
    response = client.post("/login/", {"username": username, "password": password})
    response.logged_in = "_auth_user_id" in client.session
    return response


def test_the_admin_login_logs_in_with_the_right_password(small_limits, staff):
    # What the tests below refuse is a login that works when nothing is locked.
    response = admin_login("t5_lock", PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/django-admin/" and response.logged_in


def test_guesses_at_the_admin_login_count_and_lock_the_name_everywhere(small_limits, staff):
    for _ in range(3):
        guess = admin_login("t5_lock", "wrong")
        assert guess.status_code == 200 and not guess.logged_in
    refused = admin_login("t5_lock", PASSWORD, ip="10.9.9.9")
    assert not refused.logged_in and refused.status_code == 200  # Django's admin form: its usual error
    on_the_dashboard = dashboard_login("t5_lock", PASSWORD, ip="10.8.8.8")
    assert on_the_dashboard.status_code == 429 and not on_the_dashboard.logged_in


def test_an_address_locked_out_on_the_dashboard_cannot_log_in_at_the_admin(small_limits, staff):
    for number in range(5):
        dashboard_login(f"nobody-{number}", "wrong", ip="10.6.6.6")
    assert dashboard_login("t5_lock", PASSWORD, ip="10.6.6.6").status_code == 429
    assert not admin_login("t5_lock", PASSWORD, ip="10.6.6.6").logged_in
    assert admin_login("t5_lock", PASSWORD, ip="10.7.7.7").logged_in  # the lock was the address's


def test_guesses_at_the_admin_lock_out_their_address(small_limits, staff):
    for number in range(5):
        admin_login(f"nobody-{number}", "wrong", ip="10.6.6.6")
    assert not admin_login("t5_lock", PASSWORD, ip="10.6.6.6").logged_in
    assert dashboard_login("t5_lock", PASSWORD, ip="10.6.6.6").status_code == 429


LOOK_ALIKES = ["ｔ5_lock", "𝐭5_lock", "T5_LOCK", " t5_lock"]  # fullwidth t, mathematical bold t, upper case


def test_a_look_alike_of_the_name_logs_in_as_that_user(small_limits, staff):
    # Django's login forms normalize the name (NFKC) before looking it up: these are the same account.
    for look_alike in ["ｔ5_lock", "𝐭5_lock"]:
        response = dashboard_login(look_alike, PASSWORD)
        assert response.status_code == 302 and response.logged_in


@pytest.mark.parametrize("first, second, third", [LOOK_ALIKES[:3], LOOK_ALIKES[1:]])
def test_look_alikes_of_a_name_share_its_lock(small_limits, staff, first, second, third):
    dashboard_login(first, "wrong", ip="10.0.0.1")
    admin_login(second, "wrong", ip="10.0.0.2")
    dashboard_login(third, "wrong", ip="10.0.0.3")
    refused = dashboard_login("t5_lock", PASSWORD, ip="10.0.0.4")
    assert refused.status_code == 429 and not refused.logged_in
    for look_alike in LOOK_ALIKES:
        assert dashboard_login(look_alike, PASSWORD, ip="10.0.0.5").status_code == 429
        assert not admin_login(look_alike, PASSWORD, ip="10.0.0.5").logged_in


def test_any_authenticate_call_counts_and_is_refused_while_locked(small_limits, staff):
    request = RequestFactory().post("/anywhere", REMOTE_ADDR="10.0.0.9")
    assert authenticate(request, username="t5_lock", password=PASSWORD) == staff
    for _ in range(3):
        assert authenticate(request, username="ｔ5_lock", password="wrong") is None
    assert authenticate(request, username="t5_lock", password=PASSWORD) is None
    assert authenticate(None, username="t5_lock", password=PASSWORD) is None  # no request, same name
    assert dashboard_login("t5_lock", PASSWORD, ip="10.0.0.10").status_code == 429


def test_the_throttle_must_come_before_every_backend_that_checks_a_password(settings):
    from accounts.login_throttle import BACKEND, check_backend_first

    assert check_backend_first() == []
    settings.AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend", BACKEND]
    assert [error.id for error in check_backend_first()] == ["accounts.E001"]


@pytest.mark.django_db(transaction=True)
async def test_the_async_authenticate_is_throttled_too(small_limits, staff):
    from asgiref.sync import sync_to_async
    from django.contrib.auth import aauthenticate

    request = RequestFactory().post("/anywhere", REMOTE_ADDR="10.0.0.9")
    for _ in range(3):
        assert await aauthenticate(request, username="𝐭5_lock", password="wrong") is None
    assert await aauthenticate(request, username="t5_lock", password=PASSWORD) is None
    assert (await sync_to_async(dashboard_login)("t5_lock", PASSWORD, ip="10.0.0.10")).status_code == 429
