"""`manage.py bootstrap`: the first admin once, its secrets printed once, nothing on later runs."""

import re
from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.core.management import CommandError, call_command

from accounts.models import ApiKey, AuditEvent, Membership, Organization, User

pytestmark = pytest.mark.django_db

ENV_KEY = "pk_from-env-0123456789abcdefghijklmnopqrstuvwxyz"
ENV_PASSWORD = "correct-horse-battery-staple-42"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, settings):
    monkeypatch.delenv("PORTAL_ADMIN_API_KEY", raising=False)
    monkeypatch.delenv("PORTAL_ADMIN_PASSWORD", raising=False)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only


def bootstrap() -> str:
    out = StringIO()
    call_command("bootstrap", stdout=out, stderr=StringIO())
    return out.getvalue()


def printed(output: str, label: str) -> str:
    match = re.search(rf"^\s*{label}:\s*(\S+)\s*$", output, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{output}"
    return match.group(1)


def counts() -> dict:
    return {
        model.__name__: model.objects.count() for model in (Organization, User, Membership, ApiKey, AuditEvent)
    }


def test_first_run_creates_the_superuser_admin_of_the_default_organization(client_for):
    output = bootstrap()

    [admin] = User.objects.filter(is_superuser=True)
    assert admin.username == "admin"
    assert User.objects.count() == 1
    membership = Membership.objects.get(user=admin)
    assert membership.organization.slug == "default"
    assert membership.role == "admin"
    assert membership.is_active

    password, api_key = printed(output, "password"), printed(output, "API key")
    assert authenticate(username="admin", password=password) == admin
    me = client_for(api_key).get("/me")
    assert me.status_code == 200
    assert (me.json()["username"], me.json()["role"], me.json()["is_superuser"]) == ("admin", "admin", True)
    assert me.json()["organization"]["slug"] == "default"


def test_first_run_secrets_are_random_each_time():
    first = bootstrap()
    User.objects.all().delete()
    Organization.objects.all().delete()
    again = bootstrap()

    passwords = {printed(first, "password"), printed(again, "password")}
    keys = {printed(first, "API key"), printed(again, "API key")}
    assert len(passwords) == 2 and len(keys) == 2
    assert all(len(password) >= 16 for password in passwords)
    assert all(len(key) >= 32 for key in keys)


def test_second_run_creates_nothing_and_prints_no_secret():
    first = bootstrap()
    password, api_key = printed(first, "password"), printed(first, "API key")
    before = counts()

    second = bootstrap()

    assert counts() == before
    assert password not in second
    assert api_key not in second
    assert "password:" not in second and "API key:" not in second
    assert "already exists" in second


def test_existing_default_organization_is_reused():
    Organization.objects.create(name="Default", slug="default")
    bootstrap()
    assert Organization.objects.filter(slug="default").count() == 1
    assert Membership.objects.get(user__username="admin").organization.slug == "default"


def test_secrets_from_the_environment_are_used_and_not_echoed(monkeypatch, client_for):
    monkeypatch.setenv("PORTAL_ADMIN_API_KEY", ENV_KEY)
    monkeypatch.setenv("PORTAL_ADMIN_PASSWORD", ENV_PASSWORD)

    output = bootstrap()

    assert ENV_KEY not in output
    assert ENV_PASSWORD not in output
    assert ENV_KEY[8:] not in output
    admin = User.objects.get(username="admin")
    assert authenticate(username="admin", password=ENV_PASSWORD) == admin
    me = client_for(ENV_KEY).get("/me")
    assert me.status_code == 200
    assert me.json()["username"] == "admin"
    assert ApiKey.objects.filter(membership__user=admin).count() == 1


def test_password_from_the_environment_with_a_random_key(monkeypatch, client_for):
    monkeypatch.setenv("PORTAL_ADMIN_PASSWORD", ENV_PASSWORD)
    output = bootstrap()
    assert ENV_PASSWORD not in output
    api_key = printed(output, "API key")
    assert client_for(api_key).get("/me").status_code == 200
    assert authenticate(username="admin", password=ENV_PASSWORD) is not None


def test_a_key_from_the_environment_set_after_the_first_run_is_registered_silently(monkeypatch, client_for):
    bootstrap()
    monkeypatch.setenv("PORTAL_ADMIN_API_KEY", ENV_KEY)

    output = bootstrap()

    assert ENV_KEY not in output
    assert client_for(ENV_KEY).get("/me").json()["username"] == "admin"
    assert User.objects.count() == 1


@pytest.mark.parametrize("short_key", ["short", "x" * 31])
def test_environment_key_shorter_than_32_characters_is_refused_and_creates_nothing(monkeypatch, short_key):
    monkeypatch.setenv("PORTAL_ADMIN_API_KEY", short_key)
    before = counts()

    with pytest.raises(CommandError) as excinfo:
        bootstrap()

    assert short_key not in str(excinfo.value)
    assert counts() == before
    assert not User.objects.exists()
    assert not Organization.objects.filter(slug="default").exists()


def test_environment_key_of_exactly_32_characters_is_accepted(monkeypatch, client_for):
    key = "k" * 32
    monkeypatch.setenv("PORTAL_ADMIN_API_KEY", key)
    bootstrap()
    assert client_for(key).get("/me").status_code == 200
