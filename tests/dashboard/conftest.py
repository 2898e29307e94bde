"""Fixtures for the dashboard tests: logged-in browsers (Django test clients) of each role."""

import pytest
from django.test import Client

from accounts.roles import Role

ROLES = [Role.ADMIN, Role.MANAGER, Role.USER, Role.VIEWER]


@pytest.fixture
def browser_for(organization, make_member):
    """browser_for(role, organization=None, **fields) -> a test Client logged in as a new member of that role.
    The client carries the membership as `.membership` and the member's first API key as `.api_key`."""

    def make(role: str = Role.ADMIN, org=None, **fields) -> Client:
        membership, raw_key = make_member(org or organization, role, **fields)
        client = Client()
        client.force_login(membership.user)
        client.membership, client.api_key = membership, raw_key
        return client

    return make


@pytest.fixture
def admin_browser(browser_for) -> Client:
    return browser_for(Role.ADMIN)


@pytest.fixture
def token(organization, make_token):
    return make_token(organization, secret="hf_dashboard_secret_0123456789abcdef", label="team-a-1")
