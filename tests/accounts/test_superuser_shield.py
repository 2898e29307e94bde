"""Superusers are above organizations: an organization's admin cannot mint, list, revoke or change anything
of a superuser who is a member there (the bootstrap `admin` in `default`, any superuser after "Work here").
Before this rule an organization admin could take over every tenant: POST /admin/users/{superuser}/api-keys
answered 201 with a key that carried the superuser's powers."""

import pytest
from django.http import Http404
from django.test import Client

from accounts import services
from accounts.models import ApiKey, Membership, User
from accounts.roles import Role
from tests.accounts.helpers import assert_error


@pytest.fixture
def platform(organization, make_member):
    """(membership, raw key) of a platform superuser who is admin of the organization."""
    return make_member(organization, Role.ADMIN, username="platform", email="root@example.com", is_superuser=True)


@pytest.fixture
def org_admin(organization, make_member, client_for):
    membership, raw_key = make_member(organization, Role.ADMIN, username="tenant-admin")
    return client_for(raw_key)


def account_state():
    return (
        list(User.objects.values("id", "username", "email", "full_name", "is_active", "is_superuser", "password")),
        list(Membership.objects.values()),
        list(ApiKey.objects.values("id", "membership_id", "name", "digest", "revoked_at")),
    )


@pytest.mark.django_db
def test_an_organization_admin_cannot_mint_a_superuser_key(platform, org_admin, make_organization):
    su = platform[0].user
    before = account_state()

    assert_error(org_admin.post(f"/admin/users/{su.pk}/api-keys", {"name": "mine now"}, format="json"), 404, "not_found")

    assert account_state() == before
    # And so the takeover the key allowed does not happen: the admin's own powers stay the tenant's.
    other = make_organization("victim")
    assert_error(org_admin.get("/admin/organizations"), 403, "permission_denied")
    response = org_admin.post(
        "/admin/users", {"username": "mole", "organization": other.slug, "role": "admin"}, format="json"
    )
    assert_error(response, 403, "permission_denied")


@pytest.mark.django_db
def test_an_organization_admin_cannot_change_revoke_or_deactivate_a_superuser(platform, org_admin):
    su, su_key = platform[0].user, ApiKey.objects.get(membership=platform[0])
    before = account_state()

    for response in (
        org_admin.patch(f"/admin/users/{su.pk}", {"role": "viewer"}, format="json"),
        org_admin.patch(f"/admin/users/{su.pk}", {"email": "attacker@example.com"}, format="json"),
        org_admin.patch(f"/admin/users/{su.pk}", {"full_name": "Pwned"}, format="json"),
        org_admin.patch(f"/admin/users/{su.pk}", {"is_active": False}, format="json"),
        org_admin.delete(f"/admin/users/{su.pk}"),
        org_admin.get(f"/admin/users/{su.pk}/api-keys"),
        org_admin.get(f"/admin/api-keys/{su_key.pk}"),
        org_admin.delete(f"/admin/api-keys/{su_key.pk}"),
    ):
        assert_error(response, 404, "not_found")

    assert account_state() == before
    listed = org_admin.get("/admin/api-keys?page_size=500").json()["results"]
    assert su_key.pk not in {key["id"] for key in listed}
    assert platform[0].user.username not in {key["user"] for key in listed}


@pytest.mark.django_db
def test_a_superuser_still_manages_another_superuser(platform, organization, make_member, client_for):
    _, root_key = make_member(organization, Role.ADMIN, username="root", is_superuser=True)
    root = client_for(root_key)
    su = platform[0].user

    created = root.post(f"/admin/users/{su.pk}/api-keys", {"name": "rotation"}, format="json")
    assert created.status_code == 201
    assert root.patch(f"/admin/users/{su.pk}", {"full_name": "Platform team"}, format="json").status_code == 200
    assert User.objects.get(pk=su.pk).full_name == "Platform team"


@pytest.mark.django_db
def test_the_services_refuse_a_superuser_target_whatever_looked_it_up(platform, organization, make_member):
    tenant_admin, _ = make_member(organization, Role.ADMIN, username="tenant-admin")
    actor = tenant_admin.user

    with pytest.raises(Http404):
        services.api_key_create(membership=platform[0], name="x", actor=actor)
    with pytest.raises(Http404):
        services.user_update(membership=platform[0], role=Role.VIEWER, actor=actor)
    with pytest.raises(Http404):
        services.user_deactivate(membership=platform[0], actor=actor)
    with pytest.raises(Http404):
        services.api_key_revoke(api_key=ApiKey.objects.get(membership=platform[0]), actor=actor)


@pytest.mark.django_db
def test_the_dashboard_holds_the_same_rule(platform, organization, make_member):
    tenant_admin, _ = make_member(organization, Role.ADMIN, username="tenant-admin")
    browser = Client()
    browser.force_login(tenant_admin.user)
    su, su_key = platform[0].user, ApiKey.objects.get(membership=platform[0])
    before = account_state()

    page = browser.get("/api-keys/")
    assert f'value="{su.pk}"' not in page.content.decode()  # not offered as an owner
    assert browser.post("/api-keys/", {"name": "mine now", "owner": su.pk}).status_code in (400, 404)
    assert browser.post(f"/api-keys/{su_key.pk}/revoke/").status_code == 404
    assert browser.post(f"/users/{su.pk}/role/", {"role": "viewer"}).status_code == 404
    assert browser.post(f"/users/{su.pk}/deactivate/").status_code == 404

    assert account_state() == before
    users_page = browser.get("/users/").content.decode()
    assert "only a superuser changes this account" in users_page
