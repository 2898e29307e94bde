"""Plain fixtures and factories shared by the whole suite."""

import itertools
import os

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from accounts import services
from accounts.models import Membership, Organization
from accounts.roles import Role

_names = itertools.count(1)

on_postgres = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
requires_postgres = pytest.mark.skipif(
    not on_postgres, reason="needs PostgreSQL: `make test` runs it when postgresql's server binaries are installed"
)
requires_redis = pytest.mark.skipif(
    not os.environ.get("REDIS_URL"), reason="needs Redis: `make test` runs it when redis-server is installed"
)


@pytest.fixture
def make_organization(db):
    def make(slug: str | None = None) -> Organization:
        slug = slug or f"org-{next(_names)}"
        return services.organization_create(name=slug.title(), slug=slug, actor=None)

    return make


@pytest.fixture
def organization(make_organization) -> Organization:
    return make_organization("acme")


@pytest.fixture
def make_member(db):
    """make_member(organization, role) -> (membership, raw API key)."""

    def make(organization: Organization, role: str = Role.USER, **fields) -> tuple[Membership, str]:
        fields.setdefault("username", f"{role}-{next(_names)}")
        return services.user_create(organization=organization, role=role, actor=None, **fields)

    return make


@pytest.fixture
def client_for():
    """client_for(raw_key) -> an APIClient that sends `Authorization: Bearer <key>`."""

    def make(raw_key: str | None) -> APIClient:
        client = APIClient()
        if raw_key:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
        return client

    return make


@pytest.fixture
def admin_client(organization, make_member, client_for) -> APIClient:
    _, key = make_member(organization, Role.ADMIN)
    return client_for(key)
