"""The admin users API: create (the seed call in docs/api.md), change, deactivate, reactivate, and bad input."""

import json

import pytest

from accounts.models import ApiKey, AuditEvent, Membership, Organization, User
from accounts.roles import Role
from tests.accounts.helpers import assert_error

pytestmark = pytest.mark.django_db

SEED_BODY = {"username": "youruser", "email": "you@example.com", "full_name": "Your Name", "role": "user"}


def post_json(client, path, raw_body: str):
    """Send the body exactly as curl -d would, with Content-Type: application/json."""
    return client.post(path, data=raw_body, content_type="application/json")


# --- Create ------------------------------------------------------------------------------------------


def test_seed_call_creates_user_and_returns_a_working_key(admin_api, client_for):
    response = post_json(admin_api, "/admin/users", json.dumps(SEED_BODY))

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["username"] == "youruser"
    assert body["email"] == "you@example.com"
    assert body["full_name"] == "Your Name"
    assert body["role"] == "user"
    assert body["organization"] == "acme"
    assert body["is_active"] is True
    assert isinstance(body["id"], int)
    assert isinstance(body["api_key"], str) and len(body["api_key"]) >= 32

    me = client_for(body["api_key"]).get("/me")
    assert me.status_code == 200
    assert me.json()["username"] == "youruser"
    assert me.json()["role"] == "user"
    assert me.json()["id"] == body["id"]
    assert me.json()["organization"]["slug"] == "acme"


def test_created_user_is_a_member_of_the_callers_organization_without_platform_rights(admin_api, organization):
    body = admin_api.post("/admin/users", SEED_BODY, format="json").json()
    user = User.objects.get(pk=body["id"])
    assert user.is_superuser is False and user.is_staff is False
    assert not user.has_usable_password()
    assert Membership.objects.get(user=user).organization == organization


def test_role_defaults_to_user(admin_api):
    response = admin_api.post("/admin/users", {"username": "plain"}, format="json")
    assert response.status_code == 201
    assert response.json()["role"] == "user"


@pytest.mark.parametrize("role", ["admin", "manager", "user", "viewer"])
def test_each_role_can_be_given_at_creation(admin_api, client_for, role):
    response = admin_api.post("/admin/users", {"username": f"new-{role}", "role": role}, format="json")
    assert response.status_code == 201
    assert client_for(response.json()["api_key"]).get("/me").json()["role"] == role


def test_list_users_is_paginated(admin_api, organization, make_member):
    for index in range(3):
        make_member(organization, Role.USER, username=f"member{index}")
    response = admin_api.get("/admin/users", {"limit": 2})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"count", "next", "previous", "results"}
    assert body["count"] == 4
    assert len(body["results"]) == 2
    assert body["next"] is not None and body["previous"] is None
    assert all("api_key" not in user for user in body["results"])


def test_get_one_user(admin_api, user_member):
    membership, _ = user_member
    response = admin_api.get(f"/admin/users/{membership.user_id}")
    assert response.status_code == 200
    assert response.json() | {"date_joined": None} == {
        "id": membership.user_id, "username": "bob", "email": "bob@example.com", "full_name": "Bob Jones",
        "role": "user", "organization": "acme", "is_active": True, "date_joined": None,
    }


def test_unknown_user_id_is_404(admin_api):
    assert_error(admin_api.get("/admin/users/987654"), 404, "not_found")


@pytest.mark.parametrize("path", ["/admin/users/{big}", "/admin/users/{big}/api-keys"])
def test_huge_user_id_is_404_not_500(admin_api, path):
    admin_api.raise_request_exception = False
    assert_error(admin_api.get(path.format(big="9" * 25)), 404, "not_found")


# --- Change ------------------------------------------------------------------------------------------


def test_patch_changes_role_and_writes_role_changed_audit(admin_api, admin_member, user_member, client_for):
    membership, raw_key = user_member
    response = admin_api.patch(f"/admin/users/{membership.user_id}", {"role": "manager"}, format="json")

    assert response.status_code == 200
    assert response.json()["role"] == "manager"
    assert client_for(raw_key).get("/me").json()["role"] == "manager"
    event = AuditEvent.objects.get(action="user.role_changed")
    assert event.actor_username == "alice"
    assert event.target_id == str(membership.user_id)
    assert event.data == {"from": "user", "to": "manager"}


def test_patch_changes_email_and_full_name(admin_api, user_member):
    membership, _ = user_member
    response = admin_api.patch(
        f"/admin/users/{membership.user_id}", {"email": "robert@example.com", "full_name": "Robert"}, format="json"
    )
    assert response.status_code == 200
    user = User.objects.get(pk=membership.user_id)
    assert (user.email, user.full_name) == ("robert@example.com", "Robert")


def test_patch_with_the_same_role_writes_no_role_change(admin_api, user_member):
    membership, _ = user_member
    assert admin_api.patch(f"/admin/users/{membership.user_id}", {"role": "user"}, format="json").status_code == 200
    assert not AuditEvent.objects.filter(action="user.role_changed").exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"role": "god"}, "role"),
        ({"role": 5}, "role"),
        ({"email": "not-an-email"}, "email"),
        ({"full_name": "x" * 201}, "full_name"),
        ({"is_active": "maybe"}, "is_active"),
        ({"username": "renamed"}, "username"),
        ({"is_superuser": True}, "is_superuser"),
    ],
)
def test_patch_bad_input_is_400_and_changes_nothing(admin_api, user_member, body, field):
    membership, _ = user_member
    before = (Membership.objects.filter(pk=membership.pk).values().get(), User.objects.filter(pk=membership.user_id).values().get())
    response = admin_api.patch(f"/admin/users/{membership.user_id}", body, format="json")
    result = assert_error(response, 400, "validation")
    assert field in result["fields"]
    after = (Membership.objects.filter(pk=membership.pk).values().get(), User.objects.filter(pk=membership.user_id).values().get())
    assert after == before


# --- Deactivate and reactivate -------------------------------------------------------------------------


def test_delete_deactivates_keeps_the_row_and_its_keys_get_403(admin_api, user_member, client_for):
    membership, raw_key = user_member
    assert client_for(raw_key).get("/me").status_code == 200

    response = admin_api.delete(f"/admin/users/{membership.user_id}")

    assert response.status_code == 200
    assert response.json()["is_active"] is False
    assert admin_api.get(f"/admin/users/{membership.user_id}").json()["is_active"] is False
    assert User.objects.filter(pk=membership.user_id).exists()
    assert Membership.objects.filter(pk=membership.pk).exists()
    assert ApiKey.objects.filter(membership=membership).exists()
    assert AuditEvent.objects.filter(action="user.deactivated", target_id=str(membership.user_id)).exists()
    assert_error(client_for(raw_key).get("/me"), 403, "permission_denied")


def test_deactivated_user_still_listed(admin_api, user_member):
    membership, _ = user_member
    admin_api.delete(f"/admin/users/{membership.user_id}")
    listed = {user["username"]: user for user in admin_api.get("/admin/users").json()["results"]}
    assert listed["bob"]["is_active"] is False


def test_patch_is_active_true_reactivates_and_the_key_works_again(admin_api, user_member, client_for):
    membership, raw_key = user_member
    admin_api.delete(f"/admin/users/{membership.user_id}")
    assert client_for(raw_key).get("/me").status_code == 403

    response = admin_api.patch(f"/admin/users/{membership.user_id}", {"is_active": True}, format="json")

    assert response.status_code == 200
    assert response.json()["is_active"] is True
    assert client_for(raw_key).get("/me").status_code == 200
    assert AuditEvent.objects.filter(action="user.reactivated").exists()


def test_patch_is_active_false_deactivates(admin_api, user_member, client_for):
    membership, raw_key = user_member
    response = admin_api.patch(f"/admin/users/{membership.user_id}", {"is_active": False}, format="json")
    assert response.status_code == 200
    assert response.json()["is_active"] is False
    assert client_for(raw_key).get("/me").status_code == 403


# --- The last active admin ---------------------------------------------------------------------------


def test_last_admin_cannot_delete_itself(admin_api, admin_member):
    membership, _ = admin_member
    assert_error(admin_api.delete(f"/admin/users/{membership.user_id}"), 409, "conflict")
    assert Membership.objects.get(pk=membership.pk).is_active is True


@pytest.mark.parametrize("body", [{"role": "manager"}, {"role": "viewer"}, {"is_active": False}])
def test_last_admin_cannot_be_demoted_or_deactivated(admin_api, admin_member, body):
    membership, _ = admin_member
    response = admin_api.patch(f"/admin/users/{membership.user_id}", body, format="json")
    assert_error(response, 409, "conflict")
    membership.refresh_from_db()
    assert (membership.role, membership.is_active) == ("admin", True)
    assert not AuditEvent.objects.filter(action__in=["user.role_changed", "user.deactivated"]).exists()


def test_a_deactivated_second_admin_does_not_count(admin_api, admin_member, organization, make_member):
    other_admin, _ = make_member(organization, Role.ADMIN, username="second-admin")
    assert admin_api.delete(f"/admin/users/{other_admin.user_id}").status_code == 200
    membership, _ = admin_member
    assert_error(admin_api.patch(f"/admin/users/{membership.user_id}", {"role": "user"}, format="json"), 409, "conflict")


def test_an_admin_may_step_down_when_another_active_admin_remains(admin_api, admin_member, organization, make_member):
    make_member(organization, Role.ADMIN, username="second-admin")
    membership, _ = admin_member
    response = admin_api.patch(f"/admin/users/{membership.user_id}", {"role": "manager"}, format="json")
    assert response.status_code == 200
    assert Membership.objects.get(pk=membership.pk).role == "manager"


def test_failed_last_admin_patch_keeps_other_changes_out_too(admin_api, admin_member):
    membership, _ = admin_member
    response = admin_api.patch(
        f"/admin/users/{membership.user_id}", {"full_name": "Changed", "role": "user"}, format="json"
    )
    assert response.status_code == 409
    assert User.objects.get(pk=membership.user_id).full_name == ""


# --- Other organizations -----------------------------------------------------------------------------


def test_superuser_creates_the_first_admin_of_another_organization(superuser_member, client_for):
    superuser = client_for(superuser_member[1])
    created_org = superuser.post("/admin/organizations", {"name": "Globex", "slug": "globex"}, format="json")
    assert created_org.status_code == 201

    response = superuser.post(
        "/admin/users", {"username": "gina", "role": "admin", "organization": "globex"}, format="json"
    )

    assert response.status_code == 201, response.content
    assert response.json()["organization"] == "globex"
    assert response.json()["role"] == "admin"
    gina = client_for(response.json()["api_key"])
    me = gina.get("/me").json()
    assert (me["organization"]["slug"], me["role"], me["is_superuser"]) == ("globex", "admin", False)
    assert [u["username"] for u in gina.get("/admin/users").json()["results"]] == ["gina"]
    assert "gina" not in {u["username"] for u in superuser.get("/admin/users").json()["results"]}


def test_superuser_naming_an_unknown_organization_gets_400(superuser_member, client_for):
    response = client_for(superuser_member[1]).post(
        "/admin/users", {"username": "ghost", "organization": "nowhere"}, format="json"
    )
    body = assert_error(response, 400, "validation")
    assert "organization" in body["fields"]
    assert not User.objects.filter(username="ghost").exists()


def test_admin_naming_another_organization_gets_403_and_creates_nothing(admin_api, make_organization):
    make_organization("globex")
    response = admin_api.post(
        "/admin/users", {"username": "intruder", "role": "admin", "organization": "globex"}, format="json"
    )
    assert_error(response, 403, "permission_denied")
    assert not User.objects.filter(username="intruder").exists()
    assert not Membership.objects.filter(organization__slug="globex").exists()


def test_admin_naming_its_own_organization_is_fine(admin_api):
    response = admin_api.post("/admin/users", {"username": "local", "organization": "acme"}, format="json")
    assert response.status_code == 201
    assert response.json()["organization"] == "acme"


def test_superuser_lists_and_creates_organizations(superuser_member, client_for):
    client = client_for(superuser_member[1])
    assert client.post("/admin/organizations", {"name": "Globex"}, format="json").json()["slug"] == "globex"
    body = client.get("/admin/organizations").json()
    assert {org["slug"] for org in body["results"]} == {"acme", "globex"}
    assert body["count"] == 2
    assert Organization.objects.filter(slug="globex").exists()


# --- Bad input ---------------------------------------------------------------------------------------

BAD_CREATE_BODIES = [
    pytest.param({"email": "a@example.com", "role": "user"}, "username", id="missing-username"),
    pytest.param({"username": "u" * 151}, "username", id="username-151-chars"),
    pytest.param({"username": "your user"}, "username", id="username-with-space"),
    pytest.param({"username": "your/user"}, "username", id="username-with-slash"),
    pytest.param({"username": ""}, "username", id="username-empty"),
    pytest.param({"username": None}, "username", id="username-null"),
    pytest.param({"username": "ok", "full_name": "n" * 201}, "full_name", id="full-name-201-chars"),
    pytest.param({"username": "ok", "role": "god"}, "role", id="unknown-role"),
    pytest.param({"username": "ok", "role": 5}, "role", id="role-wrong-type"),
    pytest.param({"username": "ok", "role": ["admin"]}, "role", id="role-list"),
    pytest.param({"username": "ok", "email": "not-an-email"}, "email", id="bad-email"),
    pytest.param({"username": "ok", "full_name": {"first": "a"}}, "full_name", id="full-name-object"),
    pytest.param({"username": "ok", "is_superuser": True}, "is_superuser", id="unknown-field-is_superuser"),
    pytest.param({"username": "ok", "password": "short"}, "password", id="password-too-short"),
]


@pytest.mark.parametrize(("body", "field"), BAD_CREATE_BODIES)
def test_bad_create_input_is_400_validation_and_creates_nothing(admin_api, body, field):
    users_before = User.objects.count()
    response = admin_api.post("/admin/users", body, format="json")
    result = assert_error(response, 400, "validation")
    assert isinstance(result["fields"], dict)
    assert field in result["fields"], result
    assert User.objects.count() == users_before


RAW_BAD_BODIES = [
    pytest.param(
        '{"username": "youruser", "role": "user"',
        id="malformed-json",
    ),
    pytest.param('["youruser"]', id="json-list-body"),
    pytest.param('"youruser"', id="json-string-body"),
    pytest.param("null", id="json-null-body"),
]


@pytest.mark.parametrize("raw_body", RAW_BAD_BODIES)
def test_non_object_or_broken_json_is_400_validation_with_fields(admin_api, raw_body):
    users_before = User.objects.count()
    response = post_json(admin_api, "/admin/users", raw_body)
    result = assert_error(response, 400, "validation")
    assert User.objects.count() == users_before
    assert isinstance(result.get("fields"), dict), result


def test_malformed_json_is_400_validation_and_creates_nothing(admin_api):
    users_before = User.objects.count()
    response = post_json(admin_api, "/admin/users", '{"username": "youruser", ')
    assert_error(response, 400, "validation")
    assert User.objects.count() == users_before


@pytest.mark.parametrize("second", ["youruser", "YourUser", "YOURUSER"])
def test_duplicate_username_is_400_even_in_another_case(admin_api, second):
    assert admin_api.post("/admin/users", SEED_BODY, format="json").status_code == 201
    users_before = User.objects.count()

    response = admin_api.post("/admin/users", SEED_BODY | {"username": second}, format="json")

    result = assert_error(response, 400, "validation")
    assert "username" in result["fields"]
    assert User.objects.count() == users_before


def test_duplicate_username_across_organizations_is_refused_too(superuser_member, client_for, make_organization):
    make_organization("globex")
    client = client_for(superuser_member[1])
    assert client.post("/admin/users", {"username": "dana"}, format="json").status_code == 201
    response = client.post("/admin/users", {"username": "Dana", "organization": "globex"}, format="json")
    assert_error(response, 400, "validation")


def test_form_encoded_body_is_refused_with_the_error_shape(admin_api):
    response = admin_api.post("/admin/users", "username=x", content_type="application/x-www-form-urlencoded")
    assert 400 <= response.status_code < 500
    assert set(response.json()) >= {"error", "error_type"}
    assert not User.objects.filter(username="x").exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": "n" * 201}, "name"),
        ({"name": "Ok", "slug": "not a slug"}, "slug"),
        ({"name": "日本"}, "slug"),
        ({"name": "Ok", "is_active": False}, "is_active"),
    ],
)
def test_bad_organization_input_is_400_and_creates_nothing(superuser_member, client_for, body, field):
    before = Organization.objects.count()
    response = client_for(superuser_member[1]).post("/admin/organizations", body, format="json")
    result = assert_error(response, 400, "validation")
    assert field in result["fields"]
    assert Organization.objects.count() == before


def test_duplicate_organization_slug_is_a_conflict(superuser_member, client_for):
    response = client_for(superuser_member[1]).post("/admin/organizations", {"name": "Acme"}, format="json")
    assert_error(response, 409, "conflict")
    assert Organization.objects.filter(slug="acme").count() == 1


def test_an_admin_cannot_rename_a_user_who_also_belongs_to_another_organization(organization, make_organization, make_member, client_for):
    from accounts.models import Membership

    _, admin_key = make_member(organization, Role.ADMIN)
    shared, _ = make_member(organization, Role.USER, email="shared@example.com")
    other = make_organization()
    Membership.objects.create(user=shared.user, organization=other, role=Role.USER)

    response = client_for(admin_key).patch(f"/admin/users/{shared.user.id}", {"email": "mine@example.com"}, format="json")

    assert response.status_code == 409 and response.json()["error_type"] == "conflict"
    shared.user.refresh_from_db()
    assert shared.user.email == "shared@example.com"
    # The role in one's own organization is still the admin's to change.
    assert client_for(admin_key).patch(f"/admin/users/{shared.user.id}", {"role": "viewer"}, format="json").status_code == 200
