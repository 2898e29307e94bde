"""Tenancy: an organization's admin never reaches another organization's rows, by id or in a listing."""

import pytest

from accounts import services
from accounts.models import ApiKey, AuditEvent, Membership, User
from accounts.roles import Role
from tests.accounts.helpers import assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture
def org_a(organization):
    return organization


@pytest.fixture
def org_b(make_organization):
    return make_organization("globex")


@pytest.fixture
def admin_a(org_a, make_member, client_for):
    membership, raw_key = make_member(org_a, Role.ADMIN, username="alice")
    return membership, client_for(raw_key)


@pytest.fixture
def b_rows(org_b, make_member):
    """Org B's admin and a user with a key: the ids org A's admin will try."""
    b_admin, _ = make_member(org_b, Role.ADMIN, username="gina")
    b_user, _ = make_member(org_b, Role.USER, username="gus", email="gus@globex.example", full_name="Gus")
    return {"admin": b_admin, "user": b_user, "key": ApiKey.objects.get(membership=b_user)}


def snapshot(organization):
    """Everything of the organization that a leaked write could change."""
    return {
        "users": list(
            User.objects.filter(memberships__organization=organization)
            .order_by("id")
            .values("id", "username", "email", "full_name", "is_active", "is_superuser")
        ),
        "memberships": list(Membership.objects.filter(organization=organization).values()),
        "keys": list(
            ApiKey.objects.filter(membership__organization=organization)
            .order_by("id")
            .values("id", "membership_id", "name", "digest", "expires_at", "revoked_at", "last_used_at")
        ),
        "audit": list(AuditEvent.objects.filter(organization=organization).values_list("id", flat=True)),
    }


# (method, path template, body): {user} is org B's user id, {key} its key id.
DETAIL_ROUTES = [
    ("GET", "/admin/users/{user}", None),
    ("PATCH", "/admin/users/{user}", {"full_name": "Hijacked", "role": "admin", "email": "x@evil.example"}),
    ("PATCH", "/admin/users/{user}", {"is_active": False}),
    ("DELETE", "/admin/users/{user}", None),
    ("GET", "/admin/users/{user}/api-keys", None),
    ("POST", "/admin/users/{user}/api-keys", {"name": "backdoor"}),
    ("GET", "/admin/api-keys/{key}", None),
    ("DELETE", "/admin/api-keys/{key}", None),
]


@pytest.mark.parametrize(
    ("method", "path", "body"), DETAIL_ROUTES, ids=[f"{m} {p} {b or ''}" for m, p, b in DETAIL_ROUTES]
)
def test_other_organizations_ids_are_not_found_and_left_alone(admin_a, b_rows, org_b, method, path, body):
    _, client = admin_a
    before = snapshot(org_b)
    url = path.format(user=b_rows["user"].user_id, key=b_rows["key"].pk)

    response = getattr(client, method.lower())(url, body, format="json")

    assert_error(response, 404, "not_found")
    for leaked in (b"gus", b"globex", b"Gus"):
        assert leaked not in response.content
    assert snapshot(org_b) == before


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_other_organizations_admin_cannot_be_reached_either(admin_a, b_rows, org_b, method):
    _, client = admin_a
    before = snapshot(org_b)
    response = getattr(client, method.lower())(f"/admin/users/{b_rows['admin'].user_id}", {"role": "viewer"}, format="json")
    assert_error(response, 404, "not_found")
    assert snapshot(org_b) == before


def test_a_user_of_another_organization_is_not_found_for_own_key_routes(org_a, make_member, client_for, b_rows):
    _, raw_key = make_member(org_a, Role.USER, username="ursula")
    client = client_for(raw_key)
    assert_error(client.get(f"/admin/api-keys/{b_rows['key'].pk}"), 404, "not_found")
    assert_error(client.delete(f"/admin/api-keys/{b_rows['key'].pk}"), 404, "not_found")
    assert ApiKey.objects.get(pk=b_rows["key"].pk).revoked_at is None


def test_superuser_acting_in_its_organization_does_not_reach_another_by_id(org_a, make_member, client_for, b_rows):
    _, raw_key = make_member(org_a, Role.ADMIN, username="root", is_superuser=True)
    client = client_for(raw_key)
    assert_error(client.get(f"/admin/users/{b_rows['user'].user_id}"), 404, "not_found")
    assert_error(client.get(f"/admin/api-keys/{b_rows['key'].pk}"), 404, "not_found")


def results(client, path, **params) -> list[dict]:
    response = client.get(path, {"limit": 500, **params})
    assert response.status_code == 200, response.content
    return response.json()["results"]


def test_user_listing_holds_only_own_organization(admin_a, b_rows, org_a, make_member):
    membership_a, client = admin_a
    other_a, _ = make_member(org_a, Role.VIEWER, username="vera")

    listed = results(client, "/admin/users")

    assert sorted(user["id"] for user in listed) == sorted([membership_a.user_id, other_a.user_id])
    assert {user["organization"] for user in listed} == {"acme"}
    assert b_rows["user"].user_id not in {user["id"] for user in listed}


def test_api_key_listing_holds_only_own_organization(admin_a, b_rows, org_a):
    _, client = admin_a
    own_key_ids = set(ApiKey.objects.filter(membership__organization=org_a).values_list("id", flat=True))
    other_key_ids = set(ApiKey.objects.filter(membership__organization=b_rows["user"].organization).values_list("id", flat=True))
    assert other_key_ids  # org B does have keys

    listed = {key["id"] for key in results(client, "/admin/api-keys")}

    assert listed == own_key_ids
    assert not listed & other_key_ids


def test_audit_listing_holds_only_own_organization(admin_a, b_rows, org_a, org_b):
    _, client = admin_a
    other_event_ids = set(AuditEvent.objects.filter(organization=org_b).values_list("id", flat=True))
    assert other_event_ids  # org B has history

    listed = results(client, "/admin/audit")

    assert {event["id"] for event in listed} == set(
        AuditEvent.objects.filter(organization=org_a).values_list("id", flat=True)
    )
    assert not {event["id"] for event in listed} & other_event_ids
    assert all("gus" not in str(event) and "gina" not in str(event) for event in listed)


def test_audit_filters_do_not_reach_another_organization(admin_a, b_rows, org_b, client_for):
    _, client = admin_a
    gina = b_rows["admin"].user
    services.user_update(membership=b_rows["user"], full_name="Gus G.", actor=gina)
    assert AuditEvent.objects.filter(organization=org_b, actor_username="gina").exists()

    assert results(client, "/admin/audit", actor="gina") == []
    assert results(client, "/admin/audit", actor=str(gina.id)) == []
    assert results(client, "/admin/audit", action="user.updated") == []


def test_each_organizations_key_acts_in_its_own_organization(client_for, make_member, org_a, org_b):
    _, key_a = make_member(org_a, Role.ADMIN, username="alice")
    _, key_b = make_member(org_b, Role.ADMIN, username="gina")
    assert client_for(key_a).get("/me").json()["organization"]["slug"] == "acme"
    assert client_for(key_b).get("/me").json()["organization"]["slug"] == "globex"
    assert {u["username"] for u in client_for(key_b).get("/admin/users").json()["results"]} == {"gina"}
