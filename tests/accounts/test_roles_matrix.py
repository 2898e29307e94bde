"""Who may call what: every role against every admin endpoint, with the expected status spelled out.

Path placeholders: {me} is the caller's user id, {other} another user's id (a plain user of the same
organization), {my_key} a spare key of the caller (not the one it authenticates with), {other_key}
the other user's key, {su} a platform superuser who is admin of the same organization and {su_key} that
superuser's key: only a superuser acts on a superuser's account; to anyone else it is not there (404).
"""

import pytest

from accounts import services
from accounts.models import ApiKey, Membership, Organization
from accounts.roles import ROLE_PERMISSIONS, Role
from tests.accounts.helpers import assert_error

# "superuser" is a platform superuser who is admin of the organization; "anonymous" sends no key.
CALLERS = ("admin", "manager", "user", "viewer", "superuser", "anonymous")

EXPECTED: dict[tuple[str, str], dict[str, int]] = {
    ("GET", "/me"):
        {"admin": 200, "manager": 200, "user": 200, "viewer": 200, "superuser": 200, "anonymous": 401},
    ("GET", "/admin/roles"):
        {"admin": 200, "manager": 200, "user": 200, "viewer": 200, "superuser": 200, "anonymous": 401},
    ("GET", "/admin/users"):
        {"admin": 200, "manager": 403, "user": 403, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("POST", "/admin/users"):
        {"admin": 201, "manager": 403, "user": 403, "viewer": 403, "superuser": 201, "anonymous": 401},
    ("GET", "/admin/users/{other}"):
        {"admin": 200, "manager": 403, "user": 403, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("PATCH", "/admin/users/{other}"):
        {"admin": 200, "manager": 403, "user": 403, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("DELETE", "/admin/users/{other}"):
        {"admin": 200, "manager": 403, "user": 403, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("GET", "/admin/users/{me}/api-keys"):
        {"admin": 200, "manager": 200, "user": 200, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("POST", "/admin/users/{me}/api-keys"):
        {"admin": 201, "manager": 201, "user": 201, "viewer": 403, "superuser": 201, "anonymous": 401},
    # Someone else's keys: not found rather than forbidden, so the user's existence is not confirmed.
    ("GET", "/admin/users/{other}/api-keys"):
        {"admin": 200, "manager": 404, "user": 404, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("POST", "/admin/users/{other}/api-keys"):
        {"admin": 201, "manager": 404, "user": 404, "viewer": 403, "superuser": 201, "anonymous": 401},
    ("GET", "/admin/api-keys"):
        {"admin": 200, "manager": 200, "user": 200, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("GET", "/admin/api-keys/{my_key}"):
        {"admin": 200, "manager": 200, "user": 200, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("DELETE", "/admin/api-keys/{my_key}"):
        {"admin": 200, "manager": 200, "user": 200, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("GET", "/admin/api-keys/{other_key}"):
        {"admin": 200, "manager": 404, "user": 404, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("DELETE", "/admin/api-keys/{other_key}"):
        {"admin": 200, "manager": 404, "user": 404, "viewer": 403, "superuser": 200, "anonymous": 401},
    # A superuser's account: visible to the organization's admins, changed by superusers only.
    ("GET", "/admin/users/{su}"):
        {"admin": 200, "manager": 403, "user": 403, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("PATCH", "/admin/users/{su}"):
        {"admin": 404, "manager": 403, "user": 403, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("DELETE", "/admin/users/{su}"):
        {"admin": 404, "manager": 403, "user": 403, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("GET", "/admin/users/{su}/api-keys"):
        {"admin": 404, "manager": 404, "user": 404, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("POST", "/admin/users/{su}/api-keys"):
        {"admin": 404, "manager": 404, "user": 404, "viewer": 403, "superuser": 201, "anonymous": 401},
    ("GET", "/admin/api-keys/{su_key}"):
        {"admin": 404, "manager": 404, "user": 404, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("DELETE", "/admin/api-keys/{su_key}"):
        {"admin": 404, "manager": 404, "user": 404, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("GET", "/admin/audit"):
        {"admin": 200, "manager": 403, "user": 403, "viewer": 403, "superuser": 200, "anonymous": 401},
    # Organizations are the platform's: only superusers, whatever their role inside an organization.
    ("GET", "/admin/organizations"):
        {"admin": 403, "manager": 403, "user": 403, "viewer": 403, "superuser": 200, "anonymous": 401},
    ("POST", "/admin/organizations"):
        {"admin": 403, "manager": 403, "user": 403, "viewer": 403, "superuser": 201, "anonymous": 401},
}

BODIES = {
    ("POST", "/admin/users"): {"username": "newcomer", "email": "new@example.com", "full_name": "New", "role": "user"},
    ("PATCH", "/admin/users/{other}"): {"full_name": "Renamed"},
    ("PATCH", "/admin/users/{su}"): {"role": "viewer", "full_name": "Renamed"},
    ("POST", "/admin/users/{me}/api-keys"): {"name": "ci"},
    ("POST", "/admin/users/{other}/api-keys"): {"name": "ci"},
    ("POST", "/admin/users/{su}/api-keys"): {"name": "ci"},
    ("POST", "/admin/organizations"): {"name": "Globex", "slug": "globex"},
}

ERROR_TYPES = {401: "authentication", 403: "permission_denied", 404: "not_found"}


def test_the_table_covers_every_caller_for_every_endpoint():
    assert all(set(row) == set(CALLERS) for row in EXPECTED.values())


@pytest.fixture
def world(organization, make_member, client_for):
    """The caller (built per test) plus another user with a key, in one organization."""

    def build(caller: str):
        other, _ = make_member(organization, Role.USER, username="other")
        other_key = ApiKey.objects.get(membership=other)
        su, _ = make_member(organization, Role.ADMIN, username="platform", is_superuser=True)
        su_key = ApiKey.objects.get(membership=su)
        if caller == "anonymous":
            me, raw_key = make_member(organization, Role.USER, username="someone")
            client = client_for(None)
        elif caller == "superuser":
            me, raw_key = make_member(organization, Role.ADMIN, username="root", is_superuser=True)
            client = client_for(raw_key)
        else:
            # Keep an admin around so the organization is never without one.
            make_member(organization, Role.ADMIN, username="keeper")
            me, raw_key = make_member(organization, caller, username=f"the-{caller}")
            client = client_for(raw_key)
        spare_key, _ = services.api_key_create(membership=me, name="spare", actor=None)
        placeholders = {
            "me": me.user_id, "other": other.user_id, "my_key": spare_key.pk, "other_key": other_key.pk,
            "su": su.user_id, "su_key": su_key.pk,
        }
        return client, placeholders

    return build


@pytest.mark.django_db
@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "path"), list(EXPECTED), ids=[f"{m} {p}" for m, p in EXPECTED])
def test_role_may_call_endpoint(world, caller, method, path):
    client, placeholders = world(caller)
    expected = EXPECTED[(method, path)][caller]
    body = BODIES.get((method, path))

    response = getattr(client, method.lower())(path.format(**placeholders), body, format="json")

    if expected >= 400:
        assert_error(response, expected, ERROR_TYPES[expected])
    else:
        assert response.status_code == expected, (response.status_code, response.content[:300])


@pytest.mark.django_db
@pytest.mark.parametrize("caller", ["manager", "user", "viewer", "anonymous"])
def test_refused_writes_change_nothing(world, caller):
    client, ids = world(caller)
    memberships = list(Membership.objects.values())
    # The caller's own key may record its use; nothing else about any key may change.
    keys = list(ApiKey.objects.values("id", "membership_id", "name", "digest", "expires_at", "revoked_at"))
    organizations = Organization.objects.count()

    client.post("/admin/users", BODIES[("POST", "/admin/users")], format="json")
    client.patch(f"/admin/users/{ids['other']}", {"role": "admin"}, format="json")
    client.delete(f"/admin/users/{ids['other']}")
    client.post(f"/admin/users/{ids['other']}/api-keys", {}, format="json")
    client.delete(f"/admin/api-keys/{ids['other_key']}")
    client.post("/admin/organizations", {"name": "Globex"}, format="json")

    assert list(Membership.objects.values()) == memberships
    assert list(ApiKey.objects.values("id", "membership_id", "name", "digest", "expires_at", "revoked_at")) == keys
    assert Organization.objects.count() == organizations


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["admin", "manager", "user", "viewer"])
def test_me_reports_the_roles_permissions(organization, make_member, client_for, role):
    _, raw_key = make_member(organization, role)
    body = client_for(raw_key).get("/me").json()
    assert body["role"] == role
    assert body["is_superuser"] is False
    assert sorted(body["permissions"]) == sorted(ROLE_PERMISSIONS[role])


@pytest.mark.django_db
def test_role_matrix_endpoint_lists_the_four_roles(admin_api):
    body = admin_api.get("/admin/roles").json()
    assert body["roles"] == ["admin", "manager", "user", "viewer"]
    assert "users.manage" in body["matrix"]["admin"]
    assert "users.manage" not in body["matrix"]["manager"]
    assert "keys.manage_own" not in body["matrix"]["viewer"]
