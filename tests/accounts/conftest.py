"""Fixtures local to the accounts tests: named members of the `organization` fixture and their clients."""

import pytest

from accounts.roles import Role


@pytest.fixture
def admin_member(organization, make_member):
    """(membership, raw key) of the organization's admin."""
    return make_member(organization, Role.ADMIN, username="alice")


@pytest.fixture
def admin_api(admin_member, client_for):
    """A client acting as `admin_member`."""
    return client_for(admin_member[1])


@pytest.fixture
def user_member(organization, make_member):
    """(membership, raw key) of a plain user of the organization."""
    return make_member(organization, Role.USER, username="bob", email="bob@example.com", full_name="Bob Jones")


@pytest.fixture
def superuser_member(organization, make_member):
    """(membership, raw key) of a platform superuser who is admin of the organization."""
    return make_member(organization, Role.ADMIN, username="root", is_superuser=True)
