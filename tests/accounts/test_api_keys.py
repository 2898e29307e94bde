"""Portal API keys: digest-only storage, shown once, and every way a Bearer key is refused or accepted."""

import hashlib
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts import services
from accounts.models import ApiKey, Membership, Organization, User
from tests.accounts.helpers import assert_error

pytestmark = pytest.mark.django_db


def all_database_values():
    """Every value of every row of every table, as text: where a leaked secret would show up."""
    values = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                for value in row:
                    if isinstance(value, (bytes, memoryview)):
                        value = bytes(value).decode("utf-8", "replace")
                    values.append(str(value))
    return values


def key_row(raw_key: str) -> ApiKey:
    return ApiKey.objects.get(digest=hashlib.sha256(raw_key.encode()).hexdigest())


# --- Storage and display ---------------------------------------------------------------------------


def test_key_is_stored_only_as_its_sha256_digest(admin_api, user_member):
    membership, first_key = user_member
    named = admin_api.post(f"/admin/users/{membership.user_id}/api-keys", {"name": "ci"}, format="json")
    unnamed = admin_api.post(f"/admin/users/{membership.user_id}/api-keys", {}, format="json")
    seeded = admin_api.post("/admin/users", {"username": "carol"}, format="json")
    assert (named.status_code, unnamed.status_code, seeded.status_code) == (201, 201, 201)
    raw_keys = [first_key, named.json()["api_key"], unnamed.json()["api_key"], seeded.json()["api_key"]]

    database = all_database_values()
    for raw_key in raw_keys:
        secret_part = raw_key[8:]  # what the displayed prefix does not already show
        row = key_row(raw_key)
        assert row.digest == hashlib.sha256(raw_key.encode()).hexdigest()
        for field in ApiKey._meta.concrete_fields:
            value = str(field.value_from_object(row))
            assert secret_part not in value, field.name
        assert [value for value in database if secret_part in value] == []


def test_each_new_key_is_fresh_random_material(admin_api, user_member):
    membership, first_key = user_member
    keys = {first_key}
    for _ in range(3):
        response = admin_api.post(f"/admin/users/{membership.user_id}/api-keys", {}, format="json")
        assert response.status_code == 201
        keys.add(response.json()["api_key"])
    assert len(keys) == 4
    assert all(len(key) >= 40 for key in keys)


def test_key_is_shown_at_creation_and_never_again(admin_api, user_member):
    membership, _ = user_member
    created = admin_api.post(f"/admin/users/{membership.user_id}/api-keys", {"name": "laptop"}, format="json")
    assert created.status_code == 201
    raw_key, key_id = created.json()["api_key"], created.json()["id"]
    assert created.json()["prefix"] == raw_key[:8]

    for path in (
        f"/admin/users/{membership.user_id}/api-keys",
        "/admin/api-keys",
        f"/admin/api-keys/{key_id}",
        "/admin/users",
        f"/admin/users/{membership.user_id}",
        "/admin/audit",
    ):
        response = admin_api.get(path)
        assert response.status_code == 200, path
        assert raw_key.encode() not in response.content, path
        assert raw_key[8:].encode() not in response.content, path
        body = response.json()
        for item in body.get("results", [body]):
            assert "api_key" not in item, path


def test_listing_a_users_keys_shows_name_prefix_and_state(admin_api, user_member):
    membership, raw_key = user_member
    response = admin_api.get(f"/admin/users/{membership.user_id}/api-keys")
    assert response.status_code == 200
    [key] = response.json()["results"]
    assert key["name"] == "default"
    assert key["prefix"] == raw_key[:8]
    assert key["user"] == "bob"
    assert key["is_active"] is True
    assert key["revoked_at"] is None and key["expires_at"] is None


# --- Accepted keys -----------------------------------------------------------------------------------


def test_valid_bearer_key_authenticates_as_its_owner(client_for, user_member):
    _, raw_key = user_member
    response = client_for(raw_key).get("/me")
    assert response.status_code == 200
    assert response.json()["username"] == "bob"
    assert response.json()["organization"]["slug"] == "acme"


# --- Refused keys: 401 -------------------------------------------------------------------------------


def test_missing_credentials_answer_401(client_for, user_member):
    body = assert_error(client_for(None).get("/me"), 401, "authentication")
    assert "not provided" in body["error"]


def test_unknown_key_answers_401_authentication(client_for, user_member):
    response = client_for("pk_" + "x" * 43).get("/me")
    assert_error(response, 401, "authentication")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_revoked_key_answers_401(admin_api, client_for, user_member):
    membership, raw_key = user_member
    key_id = key_row(raw_key).pk
    assert client_for(raw_key).get("/me").status_code == 200

    revoked = admin_api.delete(f"/admin/api-keys/{key_id}")
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert revoked.json()["is_active"] is False

    body = assert_error(client_for(raw_key).get("/me"), 401, "authentication")
    assert "revoked" in body["error"]


def test_revoking_one_key_leaves_the_users_other_keys_working(admin_api, client_for, user_member):
    membership, first_key = user_member
    second_key = admin_api.post(f"/admin/users/{membership.user_id}/api-keys", {}, format="json").json()["api_key"]
    assert admin_api.delete(f"/admin/api-keys/{key_row(first_key).pk}").status_code == 200

    assert client_for(first_key).get("/me").status_code == 401
    assert client_for(second_key).get("/me").status_code == 200


def test_expired_key_answers_401(admin_api, client_for, user_member):
    membership, _ = user_member
    expires_at = timezone.now() + timedelta(days=1)
    created = admin_api.post(
        f"/admin/users/{membership.user_id}/api-keys", {"name": "temp", "expires_at": expires_at.isoformat()},
        format="json",
    )
    assert created.status_code == 201
    raw_key = created.json()["api_key"]
    assert created.json()["expires_at"] is not None
    assert client_for(raw_key).get("/me").status_code == 200

    ApiKey.objects.filter(pk=created.json()["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))

    body = assert_error(client_for(raw_key).get("/me"), 401, "authentication")
    assert "expired" in body["error"]


def test_creating_a_key_that_expires_in_the_past_is_refused(admin_api, user_member):
    membership, _ = user_member
    before = ApiKey.objects.count()
    response = admin_api.post(
        f"/admin/users/{membership.user_id}/api-keys",
        {"expires_at": (timezone.now() - timedelta(hours=1)).isoformat()},
        format="json",
    )
    body = assert_error(response, 400, "validation")
    assert "expires_at" in body["fields"]
    assert ApiKey.objects.count() == before


@pytest.mark.parametrize("header", ["Bearer", "Bearer a b", "Bearer  ", "bearer one two three"])
def test_malformed_bearer_header_answers_401(client_for, user_member, header):
    client = client_for(None)
    client.credentials(HTTP_AUTHORIZATION=header)
    assert_error(client.get("/me"), 401, "authentication")


@pytest.mark.parametrize("header", ["Basic Ym9iOnNlY3JldA==", "Token abcdef", "Digest username=bob"])
def test_other_schemes_answer_401_credentials_not_provided(client_for, user_member, header):
    client = client_for(None)
    client.credentials(HTTP_AUTHORIZATION=header)
    body = assert_error(client.get("/me"), 401, "authentication")
    assert "not provided" in body["error"]


def test_a_valid_key_sent_with_another_scheme_does_not_authenticate(client_for, user_member):
    _, raw_key = user_member
    client = client_for(None)
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw_key}")
    assert_error(client.get("/me"), 401, "authentication")


# --- Refused keys: 403 -------------------------------------------------------------------------------


def test_key_of_deactivated_membership_answers_403(client_for, user_member):
    membership, raw_key = user_member
    services.user_deactivate(membership=membership, actor=None)
    assert Membership.objects.get(pk=membership.pk).is_active is False
    assert_error(client_for(raw_key).get("/me"), 403, "permission_denied")


def test_key_of_inactive_django_user_answers_403(client_for, user_member):
    membership, raw_key = user_member
    User.objects.filter(pk=membership.user_id).update(is_active=False)
    assert_error(client_for(raw_key).get("/me"), 403, "permission_denied")


def test_key_in_inactive_organization_answers_403(client_for, organization, user_member):
    _, raw_key = user_member
    Organization.objects.filter(pk=organization.pk).update(is_active=False)
    body = assert_error(client_for(raw_key).get("/me"), 403, "permission_denied")
    assert "organization" in body["error"]


# --- last_used_at ------------------------------------------------------------------------------------


@pytest.fixture
def touch_interval(settings):
    settings.PORTAL_KEY_TOUCH_INTERVAL = 60
    return 60


def apikey_updates(queries) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("UPDATE") and "accounts_apikey" in q["sql"]]


def test_first_use_records_last_used_at(client_for, user_member, touch_interval):
    _, raw_key = user_member
    assert key_row(raw_key).last_used_at is None
    before = timezone.now()
    assert client_for(raw_key).get("/me").status_code == 200
    last_used = key_row(raw_key).last_used_at
    assert last_used is not None
    assert before <= last_used <= timezone.now()


def test_second_use_within_the_interval_writes_nothing(client_for, user_member, touch_interval):
    _, raw_key = user_member
    client = client_for(raw_key)
    assert client.get("/me").status_code == 200
    first_use = key_row(raw_key).last_used_at

    with CaptureQueriesContext(connection) as queries:
        assert client.get("/me").status_code == 200

    assert apikey_updates(queries.captured_queries) == []
    assert key_row(raw_key).last_used_at == first_use


def test_use_after_the_interval_rewrites_last_used_at(client_for, user_member, touch_interval):
    _, raw_key = user_member
    client = client_for(raw_key)
    assert client.get("/me").status_code == 200
    two_minutes_ago = timezone.now() - timedelta(minutes=2)
    ApiKey.objects.filter(pk=key_row(raw_key).pk).update(last_used_at=two_minutes_ago)

    with CaptureQueriesContext(connection) as queries:
        assert client.get("/me").status_code == 200

    assert len(apikey_updates(queries.captured_queries)) == 1
    assert key_row(raw_key).last_used_at > two_minutes_ago + timedelta(minutes=1)


def test_refused_keys_do_not_record_use(client_for, user_member, touch_interval):
    membership, raw_key = user_member
    services.api_key_revoke(api_key=key_row(raw_key), actor=None)
    assert client_for(raw_key).get("/me").status_code == 401
    assert key_row(raw_key).last_used_at is None


# --- Who sees which keys -----------------------------------------------------------------------------


def test_admin_lists_every_key_of_the_organization(admin_api, admin_member, user_member, organization):
    listed = {key["id"] for key in admin_api.get("/admin/api-keys").json()["results"]}
    assert listed == set(ApiKey.objects.filter(membership__organization=organization).values_list("id", flat=True))
    assert len(listed) == 2


@pytest.mark.parametrize("role", ["manager", "user"])
def test_non_admin_lists_only_own_keys(organization, make_member, client_for, admin_member, role):
    membership, raw_key = make_member(organization, role, username="keyholder")
    client = client_for(raw_key)
    client.post(f"/admin/users/{membership.user_id}/api-keys", {"name": "second"}, format="json")

    body = client.get("/admin/api-keys").json()

    assert body["count"] == 2
    assert {key["user"] for key in body["results"]} == {"keyholder"}
    assert {key["name"] for key in body["results"]} == {"default", "second"}


def test_user_creates_and_revokes_own_key(client_for, user_member):
    membership, raw_key = user_member
    client = client_for(raw_key)
    created = client.post(f"/admin/users/{membership.user_id}/api-keys", {"name": "phone"}, format="json")
    assert created.status_code == 201
    new_key = created.json()["api_key"]
    assert client_for(new_key).get("/me").json()["username"] == "bob"

    assert client.delete(f"/admin/api-keys/{created.json()['id']}").status_code == 200
    assert client_for(new_key).get("/me").status_code == 401
    assert client.get("/me").status_code == 200


@pytest.mark.django_db
def test_every_response_with_a_new_key_is_kept_by_no_cache(admin_api, admin_member):
    user = admin_api.post("/admin/users", {"username": "fresh", "role": "user"}, format="json")
    key = admin_api.post(f"/admin/users/{admin_member[0].user_id}/api-keys", {"name": "ci"}, format="json")

    for response in (user, key):
        assert response.status_code == 201 and response.json()["api_key"]
        assert response["Cache-Control"] == "no-store"
