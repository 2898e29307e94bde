"""The admin REST API for pools and HF tokens: what managers can do, what others cannot, and no secret ever shown."""

import json
import logging
import secrets
import string
from dataclasses import dataclass

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import ApiKey, AuditEvent
from accounts.roles import Role
from tokens.models import HFToken, Lease, TokenEvent, TokenPool
from tokens.policy import Status

pytestmark = pytest.mark.django_db

WRITERS = [Role.ADMIN, Role.MANAGER]
NON_WRITERS = [Role.USER, Role.VIEWER]
ALL_ROLES = [*WRITERS, *NON_WRITERS]
CREDITS_402 = (
    "402 Client Error: Payment Required for url: https://router.huggingface.co/v1/chat/completions "
    "You have exceeded your monthly included credits for Inference Providers."
)


def new_secret(marker: str = "") -> str:
    """A fresh token shaped like a real one: hf_ and 34 letters and digits."""
    alphabet = string.ascii_letters + string.digits
    return f"hf_{marker}" + "".join(secrets.choice(alphabet) for _ in range(34 - len(marker)))


def assert_error(response, status: int, error_type: str) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:500])
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert body["error_type"] == error_type, body
    return body


def assert_validation_error(response, *field_names: str) -> dict:
    body = assert_error(response, 400, "validation")
    assert isinstance(body.get("fields"), dict), body
    for name in field_names:
        assert name in body["fields"], body
    return body


@pytest.fixture
def api(admin_client):
    return admin_client


@pytest.fixture
def client_as(organization, make_member, client_for):
    """client_as(role) -> a client for a fresh member of `organization` with that role."""

    def make(role: str):
        _, raw_key = make_member(organization, role)
        return client_for(raw_key)

    return make


@pytest.fixture
def gpu_pool(organization):
    return TokenPool.objects.create(organization=organization, name="gpu", description="big models")


def add_token(api, secret: str | None = None, **fields):
    response = api.post("/admin/tokens", {"token": secret or new_secret(), **fields}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def report(api, token_id, *, status="error", error=""):
    """Lease the token (only the holder of a lease may report on it), then report."""
    leased = api.get("/keys/provision/hf")
    assert leased.status_code == 200 and leased.json()["token_id"] == str(token_id), leased.content
    response = api.post("/keys/report/hf", {"token_id": token_id, "status": status, "error": error}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def token_in_db(token_id) -> HFToken:
    return HFToken.objects.get(pk=token_id)


# --- Pools ----------------------------------------------------------------------------------------


def test_a_new_organization_lists_its_default_pool(api):
    response = api.get("/admin/pools")

    assert response.status_code == 200
    assert [pool["name"] for pool in response.json()["results"]] == ["default"]


def test_creating_a_pool_returns_it_with_default_policy_and_lists_it(api):
    response = api.post("/admin/pools", {"name": "gpu", "description": "big models"}, format="json")

    assert response.status_code == 201, response.content
    pool = response.json()
    assert pool["name"] == "gpu"
    assert pool["description"] == "big models"
    assert pool["strategy"] == "least_recently_leased"
    assert pool["credits_stages_seconds"] == [3600, 6 * 3600, 24 * 3600]
    assert pool["breaker_threshold"] == 3
    assert pool["token_count"] == 0
    assert api.get(f"/admin/pools/{pool['id']}").json()["name"] == "gpu"
    assert {p["name"] for p in api.get("/admin/pools").json()["results"]} == {"default", "gpu"}


def test_a_pool_shows_how_many_tokens_it_holds(api, gpu_pool):
    add_token(api, pool="gpu")
    add_token(api, pool="gpu")

    assert api.get(f"/admin/pools/{gpu_pool.pk}").json()["token_count"] == 2


def test_a_pool_can_be_created_with_its_own_strategy_and_policy(api):
    body = {
        "name": "fast",
        "strategy": "weighted_random",
        "lease_ttl_seconds": 120,
        "credits_stages_seconds": [60, 600],
        "rate_limit_base_seconds": 5,
        "rate_limit_max_seconds": 50,
        "breaker_threshold": 5,
        "breaker_cooldown_seconds": 30,
    }

    response = api.post("/admin/pools", body, format="json")

    assert response.status_code == 201, response.content
    pool = TokenPool.objects.get(pk=response.json()["id"])
    assert pool.quarantine_policy().credits_stages_seconds == (60, 600)
    assert (pool.strategy, pool.lease_ttl_seconds, pool.breaker_threshold) == ("weighted_random", 120, 5)


def test_patching_a_pool_changes_only_the_fields_sent(api, gpu_pool):
    response = api.patch(f"/admin/pools/{gpu_pool.pk}", {"strategy": "fewest_recent_errors"}, format="json")

    assert response.status_code == 200, response.content
    gpu_pool.refresh_from_db()
    assert gpu_pool.strategy == "fewest_recent_errors"
    assert gpu_pool.description == "big models"


def test_a_pool_can_be_renamed(api, gpu_pool):
    response = api.patch(f"/admin/pools/{gpu_pool.pk}", {"name": "gpu-large"}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["name"] == "gpu-large"
    gpu_pool.refresh_from_db()
    assert gpu_pool.name == "gpu-large"


def test_a_duplicate_pool_name_is_a_conflict(api, gpu_pool):
    assert_error(api.post("/admin/pools", {"name": "gpu"}, format="json"), 409, "conflict")
    assert_error(api.post("/admin/pools", {"name": "default"}, format="json"), 409, "conflict")
    assert TokenPool.objects.filter(organization=gpu_pool.organization).count() == 2


def test_renaming_a_pool_to_a_taken_name_is_a_conflict(api, gpu_pool):
    other = api.post("/admin/pools", {"name": "cpu"}, format="json").json()

    assert_error(api.patch(f"/admin/pools/{other['id']}", {"name": "gpu"}, format="json"), 409, "conflict")
    assert TokenPool.objects.get(pk=other["id"]).name == "cpu"


def test_the_default_pool_cannot_be_renamed_but_can_be_described(organization, api):
    default = TokenPool.objects.get(organization=organization, name="default")

    assert_error(api.patch(f"/admin/pools/{default.pk}", {"name": "main"}, format="json"), 409, "conflict")
    response = api.patch(f"/admin/pools/{default.pk}", {"description": "everyone's"}, format="json")

    assert response.status_code == 200, response.content
    default.refresh_from_db()
    assert (default.name, default.description) == ("default", "everyone's")


def test_the_default_pool_cannot_be_deleted(organization, api):
    default = TokenPool.objects.get(organization=organization, name="default")

    assert_error(api.delete(f"/admin/pools/{default.pk}"), 409, "conflict")
    assert TokenPool.objects.filter(pk=default.pk).exists()


def test_a_pool_holding_tokens_cannot_be_deleted(api, gpu_pool):
    token = add_token(api, pool="gpu")

    assert_error(api.delete(f"/admin/pools/{gpu_pool.pk}"), 409, "conflict")
    assert TokenPool.objects.filter(pk=gpu_pool.pk).exists()
    assert token_in_db(token["id"]).pool_id == gpu_pool.pk


def test_an_empty_pool_is_deleted(api, gpu_pool):
    response = api.delete(f"/admin/pools/{gpu_pool.pk}")

    assert response.status_code == 204
    assert_error(api.get(f"/admin/pools/{gpu_pool.pk}"), 404, "not_found")
    assert not TokenPool.objects.filter(pk=gpu_pool.pk).exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "p", "strategy": "round_robin"}, "strategy"),
        ({"name": "p", "lease_ttl_seconds": -1}, "lease_ttl_seconds"),
        ({"name": "p", "lease_ttl_seconds": 0}, "lease_ttl_seconds"),
        ({"name": "p", "credits_stages_seconds": [3600, -5]}, "credits_stages_seconds"),
        ({"name": "p", "rate_limit_base_seconds": -60}, "rate_limit_base_seconds"),
        ({"name": "p", "rate_limit_max_seconds": -1}, "rate_limit_max_seconds"),
        ({"name": "p", "breaker_threshold": -3}, "breaker_threshold"),
        ({"name": "p", "breaker_cooldown_seconds": -300}, "breaker_cooldown_seconds"),
        ({"name": "not a slug"}, "name"),
        ({}, "name"),
        ({"name": "p", "colour": "blue"}, "colour"),
    ],
)
def test_invalid_pool_input_is_a_400_naming_the_field(organization, api, body, field):
    assert_validation_error(api.post("/admin/pools", body, format="json"), field)
    assert list(TokenPool.objects.filter(organization=organization).values_list("name", flat=True)) == ["default"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"strategy": "round_robin"}, "strategy"),
        ({"breaker_threshold": -1}, "breaker_threshold"),
        ({"lease_ttl_seconds": -10}, "lease_ttl_seconds"),
    ],
)
def test_invalid_pool_patch_is_a_400_and_changes_nothing(api, gpu_pool, body, field):
    assert_validation_error(api.patch(f"/admin/pools/{gpu_pool.pk}", body, format="json"), field)
    gpu_pool.refresh_from_db()
    assert (gpu_pool.strategy, gpu_pool.breaker_threshold, gpu_pool.lease_ttl_seconds) == (
        "least_recently_leased", 3, 600,
    )


# --- Adding tokens --------------------------------------------------------------------------------


def test_adding_a_token_answers_with_its_last4_but_never_the_secret(api):
    secret = new_secret()

    response = api.post("/admin/tokens", {"token": secret, "label": "alice's"}, format="json")

    assert response.status_code == 201, response.content
    token = response.json()
    assert token["label"] == "alice's"
    assert token["last4"] == secret[-4:]
    assert token["status"] == "active"
    assert token["pool"] == "default"
    assert isinstance(token["id"], int)
    assert secret.encode() not in response.content
    assert secret[4:-4].encode() not in response.content


def test_a_token_can_go_into_a_named_pool_with_a_weight(api, gpu_pool):
    token = add_token(api, label="heavy", pool="gpu", weight=5)

    assert (token["pool"], token["weight"]) == ("gpu", 5)
    assert token_in_db(token["id"]).pool_id == gpu_pool.pk


def test_a_token_into_an_unknown_pool_is_a_400(organization, api):
    assert_validation_error(api.post("/admin/tokens", {"token": new_secret(), "pool": "nope"}, format="json"), "pool")
    assert not HFToken.objects.filter(organization=organization).exists()


def test_a_token_cannot_go_into_another_organizations_pool(organization, make_organization, api):
    other = make_organization("globex")
    TokenPool.objects.create(organization=other, name="theirs")

    assert_validation_error(api.post("/admin/tokens", {"token": new_secret(), "pool": "theirs"}, format="json"), "pool")
    assert not HFToken.objects.exists()


def test_the_same_secret_twice_in_one_organization_is_a_conflict(organization, api):
    secret = new_secret()
    add_token(api, secret)

    body = assert_error(api.post("/admin/tokens", {"token": secret}, format="json"), 409, "conflict")

    assert secret not in json.dumps(body)
    assert HFToken.objects.filter(organization=organization).count() == 1


def test_the_same_secret_in_another_organization_is_fine(make_organization, make_member, client_for, api):
    secret = new_secret()
    add_token(api, secret)
    other = make_organization("globex")
    _, other_key = make_member(other, Role.ADMIN)

    response = client_for(other_key).post("/admin/tokens", {"token": secret}, format="json")

    assert response.status_code == 201, response.content
    assert HFToken.objects.filter(organization=other).count() == 1


def test_adding_with_validate_asks_hugging_face_who_the_token_is(api, standin):
    secret = new_secret()

    response = api.post("/admin/tokens?validate=1", {"token": secret}, format="json")

    assert response.status_code == 201, response.content
    token = response.json()
    assert token["status"] == "active"
    assert token["hf_username"] == f"standin-{secret[-4:]}"
    assert token["hf_token_role"] == "read"
    assert token["validated_at"] is not None


def test_adding_a_refused_token_with_validate_stores_it_as_invalid(api, standin):
    response = api.post("/admin/tokens?validate=1", {"token": new_secret("invalid")}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["status"] == "invalid"
    assert token_in_db(response.json()["id"]).status == Status.INVALID


def test_adding_with_validate_when_hugging_face_cannot_be_asked_is_a_502_that_stores_nothing(api, settings):
    settings.HF_API_BASE = "http://127.0.0.1:9"  # nothing listens

    response = api.post("/admin/tokens?validate=1", {"token": new_secret()}, format="json")

    assert response.status_code == 502, response.content
    assert set(response.json()) >= {"error", "error_type"}
    assert api.get("/admin/tokens").json()["results"] == []  # the same request can simply be sent again


def test_adding_without_validate_does_not_ask_hugging_face(api, settings):
    settings.HF_API_BASE = "http://127.0.0.1:9"  # nothing listens: a call would fail the request

    token = add_token(api, new_secret("invalid"))

    assert token["status"] == "active"
    assert token["validated_at"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"token": "hf_abc def ghijklmnop"}, "token"),
        ({"token": "hf_abc"}, "token"),
        ({"token": ""}, "token"),
        ({"label": "no token"}, "token"),
        ({"token": new_secret(), "weight": 0}, "weight"),
        ({"token": new_secret(), "weight": -1}, "weight"),
        ({"token": new_secret(), "weight": "abc"}, "weight"),
        ({"token": new_secret(), "secret": "typo"}, "secret"),
        ({"token": new_secret(), "pool": "not a slug"}, "pool"),
    ],
    ids=[
        "spaces", "too-short", "empty", "missing", "weight-0", "weight-negative", "weight-abc", "unknown-field",
        "bad-pool-name",
    ],
)
def test_bad_token_input_is_a_400_naming_the_field(organization, api, body, field):
    assert_validation_error(api.post("/admin/tokens", body, format="json"), field)
    assert not HFToken.objects.filter(organization=organization).exists()


def test_a_list_body_is_a_400(organization, api):
    assert_error(api.post("/admin/tokens", [{"token": new_secret()}], format="json"), 400, "validation")
    assert not HFToken.objects.filter(organization=organization).exists()


def test_malformed_json_is_a_400(organization, api):
    response = api.post("/admin/tokens", data='{"token": "hf_abcdefgh', content_type="application/json")

    assert_error(response, 400, "validation")
    assert not HFToken.objects.filter(organization=organization).exists()


# --- Importing ------------------------------------------------------------------------------------


def test_importing_a_list_adds_new_tokens_and_reports_duplicates(organization, api):
    existing = new_secret()
    add_token(api, existing)
    first, second = new_secret(), new_secret()

    response = api.post("/admin/tokens/import", {"tokens": [first, second, first, existing]}, format="json")

    assert response.status_code == 200, response.content
    result = response.json()
    assert sorted(t["last4"] for t in result["added"]) == sorted([first[-4:], second[-4:]])
    assert all(t["status"] == "active" and t["id"] for t in result["added"])
    assert sorted(result["duplicates"]) == sorted([first[-4:], existing[-4:]])
    assert HFToken.objects.filter(organization=organization).count() == 3
    for secret in (first, second, existing):
        assert secret.encode() not in response.content


def test_importing_text_takes_one_token_a_line(organization, api, gpu_pool):
    a, b, c = new_secret(), new_secret(), new_secret()
    text = f"{a}\n\n  {b}  \r\n{c}\n{b}\n"

    response = api.post("/admin/tokens/import", {"text": text, "pool": "gpu"}, format="json")

    assert response.status_code == 200, response.content
    result = response.json()
    assert len(result["added"]) == 3
    assert result["duplicates"] == [b[-4:]]
    assert set(HFToken.objects.filter(organization=organization).values_list("last4", flat=True)) == {
        a[-4:], b[-4:], c[-4:],
    }
    assert set(HFToken.objects.filter(organization=organization).values_list("pool__name", flat=True)) == {"gpu"}


def test_importing_the_same_list_twice_adds_nothing_the_second_time(organization, api):
    batch = [new_secret(), new_secret()]
    api.post("/admin/tokens/import", {"tokens": batch}, format="json")

    result = api.post("/admin/tokens/import", {"tokens": batch}, format="json").json()

    assert result["added"] == []
    assert sorted(result["duplicates"]) == sorted(s[-4:] for s in batch)
    assert HFToken.objects.filter(organization=organization).count() == 2


@pytest.mark.parametrize(
    "body",
    [{}, {"tokens": [new_secret(), "short"]}, {"text": f"{new_secret()}\nhas a space"}, {"tokens": "x", "oops": 1}],
    ids=["nothing", "short-entry", "entry-with-space", "unknown-field"],
)
def test_bad_import_is_a_400_and_adds_nothing(organization, api, body):
    assert_error(api.post("/admin/tokens/import", body, format="json"), 400, "validation")
    assert not HFToken.objects.filter(organization=organization).exists()


# --- Listing and details --------------------------------------------------------------------------


def test_tokens_can_be_filtered_by_pool_and_status(api, gpu_pool):
    plain = add_token(api, label="plain")
    big = add_token(api, label="big", pool="gpu")
    off = add_token(api, label="off", pool="gpu")
    assert api.post(f"/admin/tokens/{off['id']}/disable").status_code == 200

    def labels(query):
        response = api.get(f"/admin/tokens{query}")
        assert response.status_code == 200, response.content
        return sorted(t["label"] for t in response.json()["results"])

    assert labels("") == ["big", "off", "plain"]
    assert labels("?pool=gpu") == ["big", "off"]
    assert labels("?pool=default") == ["plain"]
    assert labels("?status=disabled") == ["off"]
    assert labels("?status=active") == ["big", "plain"]
    assert labels("?pool=gpu&status=active") == ["big"]
    assert labels("?pool=default&status=disabled") == []
    assert {plain["id"], big["id"]} <= {t["id"] for t in api.get("/admin/tokens").json()["results"]}


def test_an_unknown_status_filter_is_a_400(api):
    assert_validation_error(api.get("/admin/tokens?status=sleeping"), "status")


def test_a_tokens_details_include_its_status_history(api):
    token = add_token(api)
    api.post(f"/admin/tokens/{token['id']}/disable")

    response = api.get(f"/admin/tokens/{token['id']}")

    assert response.status_code == 200
    detail = response.json()
    assert detail["status"] == "disabled"
    assert [(e["from_status"], e["to_status"]) for e in detail["events"]] == [("active", "disabled"), ("", "active")]
    assert detail["events"][0]["reason"]
    assert detail["events"][0]["actor_username"]


def test_a_token_can_be_relabelled_and_reweighted(api):
    token = add_token(api, label="old")

    response = api.patch(f"/admin/tokens/{token['id']}", {"label": "new", "weight": 7}, format="json")

    assert response.status_code == 200, response.content
    assert (response.json()["label"], response.json()["weight"]) == ("new", 7)
    assert (token_in_db(token["id"]).label, token_in_db(token["id"]).weight) == ("new", 7)


# --- Actions --------------------------------------------------------------------------------------


def test_a_disabled_token_is_not_leased_until_enabled_again(api):
    token = add_token(api)

    assert api.post(f"/admin/tokens/{token['id']}/disable").json()["status"] == "disabled"
    assert_error(api.get("/keys/provision/hf"), 503, "no_token_available")

    assert api.post(f"/admin/tokens/{token['id']}/enable").json()["status"] == "active"
    assert api.get("/keys/provision/hf").json()["token_id"] == str(token["id"])


def test_releasing_an_active_token_is_a_conflict(api):
    token = add_token(api)

    assert_error(api.post(f"/admin/tokens/{token['id']}/release"), 409, "conflict")
    assert token_in_db(token["id"]).status == Status.ACTIVE


def test_releasing_a_quarantined_token_puts_it_back_in_rotation(api):
    token = add_token(api)
    lease = api.get("/keys/provision/hf").json()
    assert report(api, lease["token_id"], error=CREDITS_402)["token_status"] == "quarantined"
    assert_error(api.get("/keys/provision/hf"), 503, "no_token_available")

    response = api.post(f"/admin/tokens/{token['id']}/release")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "active"
    assert response.json()["available_at"] is None
    assert api.get("/keys/provision/hf").status_code == 200


def test_enabling_an_invalid_token_is_a_conflict(api):
    token = add_token(api)
    report(api, token["id"], error="401 Client Error: Unauthorized for url: https://router.huggingface.co/v1")
    assert token_in_db(token["id"]).status == Status.INVALID

    assert_error(api.post(f"/admin/tokens/{token['id']}/enable"), 409, "conflict")
    assert token_in_db(token["id"]).status == Status.INVALID


def test_validating_brings_back_a_token_hugging_face_accepts(api, standin):
    token = add_token(api)  # the stand-in accepts it: no "invalid" in the secret
    assert report(api, token["id"], error="401 Client Error: Unauthorized")["token_status"] == "invalid"

    response = api.post(f"/admin/tokens/{token['id']}/validate")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "active"
    assert response.json()["hf_username"] == f"standin-{token['last4']}"
    assert api.get("/keys/provision/hf").json()["token_id"] == str(token["id"])


def test_validating_a_token_hugging_face_refuses_keeps_it_out(api, standin):
    token = add_token(api, new_secret("invalid"))

    response = api.post(f"/admin/tokens/{token['id']}/validate")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "invalid"
    assert_error(api.get("/keys/provision/hf"), 503, "no_token_available")


def test_deleting_a_token_keeps_its_leases(organization, api):
    token = add_token(api)
    lease = api.get("/keys/provision/hf").json()

    response = api.delete(f"/admin/tokens/{token['id']}")

    assert response.status_code == 204
    assert_error(api.get(f"/admin/tokens/{token['id']}"), 404, "not_found")
    kept = Lease.objects.get(pk=lease["lease_id"])
    assert kept.token_id is None
    assert kept.organization_id == organization.pk


# --- Roles ----------------------------------------------------------------------------------------


@pytest.fixture
def world(organization, gpu_pool, make_token, standin):
    """Rows for every write route: an empty pool, and tokens in the states each action acts on."""
    active = make_token(organization, label="active")
    cooling = make_token(organization, label="cooling")
    HFToken.objects.filter(pk=cooling.pk).update(status=Status.COOLING, available_at="2999-01-01T00:00:00Z")
    disabled = make_token(organization, label="disabled")
    HFToken.objects.filter(pk=disabled.pk).update(status=Status.DISABLED)
    return {"pool": gpu_pool.pk, "active": active.pk, "cooling": cooling.pk, "disabled": disabled.pk}


def snapshot(organization) -> dict:
    return {
        "pools": list(TokenPool.objects.filter(organization=organization).order_by("id").values()),
        "tokens": list(HFToken.objects.filter(organization=organization).order_by("id").values()),
        "events": TokenEvent.objects.filter(organization=organization).count(),
    }


# (method, path, body, status when allowed)
WRITE_ROUTES = [
    ("POST", "/admin/pools", {"name": "new-pool"}, 201),
    ("PATCH", "/admin/pools/{pool}", {"description": "changed"}, 200),
    ("DELETE", "/admin/pools/{pool}", None, 204),
    ("POST", "/admin/tokens", {"token": "hf_NewTokenForRoleChecks0123456789ab"}, 201),
    ("POST", "/admin/tokens/import", {"tokens": ["hf_ImportedForRoleChecks0123456789a"]}, 200),
    ("PATCH", "/admin/tokens/{active}", {"label": "changed"}, 200),
    ("DELETE", "/admin/tokens/{active}", None, 204),
    ("POST", "/admin/tokens/{active}/disable", None, 200),
    ("POST", "/admin/tokens/{disabled}/enable", None, 200),
    ("POST", "/admin/tokens/{cooling}/release", None, 200),
    ("POST", "/admin/tokens/{active}/validate", None, 200),
]
WRITE_IDS = [f"{m} {p}" for m, p, _, _ in WRITE_ROUTES]


@pytest.mark.parametrize("role", WRITERS)
@pytest.mark.parametrize(("method", "path", "body", "expected"), WRITE_ROUTES, ids=WRITE_IDS)
def test_managers_and_admins_may_write_pools_and_tokens(organization, world, client_as, role, method, path, body, expected):
    before = snapshot(organization)

    response = getattr(client_as(role), method.lower())(path.format(**world), body, format="json")

    assert response.status_code == expected, response.content
    assert snapshot(organization) != before


@pytest.mark.parametrize("role", NON_WRITERS)
@pytest.mark.parametrize(("method", "path", "body", "expected"), WRITE_ROUTES, ids=WRITE_IDS)
def test_users_and_viewers_may_not_write_pools_or_tokens(organization, world, client_as, role, method, path, body, expected):
    before = snapshot(organization)

    response = getattr(client_as(role), method.lower())(path.format(**world), body, format="json")

    assert_error(response, 403, "permission_denied")
    assert snapshot(organization) == before


READ_ROUTES = ["/admin/pools", "/admin/pools/{pool}", "/admin/tokens", "/admin/tokens/{active}"]


@pytest.mark.parametrize("role", ALL_ROLES)
@pytest.mark.parametrize("path", READ_ROUTES)
def test_every_role_may_read_pools_and_tokens(world, client_as, role, path):
    response = client_as(role).get(path.format(**world))

    assert response.status_code == 200, response.content


def test_viewers_see_the_token_list_without_secrets(organization, make_token, client_as):
    secret = new_secret()
    make_token(organization, secret=secret, label="shared")

    response = client_as(Role.VIEWER).get("/admin/tokens")

    assert [t["label"] for t in response.json()["results"]] == ["shared"]
    assert secret.encode() not in response.content


# --- Tenant isolation -----------------------------------------------------------------------------


@pytest.fixture
def foreign(make_organization, make_token, standin):
    """Another organization's pool and tokens, each in the state an action would change if it reached them."""
    other = make_organization("globex")
    pool = TokenPool.objects.create(organization=other, name="theirs")
    active = make_token(other, label="their-active")
    disabled = make_token(other, label="their-disabled")
    HFToken.objects.filter(pk=disabled.pk).update(status=Status.DISABLED)
    cooling = make_token(other, label="their-cooling")
    HFToken.objects.filter(pk=cooling.pk).update(status=Status.COOLING, available_at="2999-01-01T00:00:00Z")
    invalid = make_token(other, label="their-invalid")  # the stand-in would accept it
    HFToken.objects.filter(pk=invalid.pk).update(status=Status.INVALID)
    return {
        "organization": other,
        "ids": {
            "pool": pool.pk, "active": active.pk, "disabled": disabled.pk, "cooling": cooling.pk, "invalid": invalid.pk,
        },
    }


FOREIGN_ROUTES = [
    ("GET", "/admin/pools/{pool}", None),
    ("PATCH", "/admin/pools/{pool}", {"description": "hijacked", "strategy": "weighted_random"}),
    ("DELETE", "/admin/pools/{pool}", None),
    ("GET", "/admin/tokens/{active}", None),
    ("PATCH", "/admin/tokens/{active}", {"label": "hijacked", "weight": 1000}),
    ("DELETE", "/admin/tokens/{active}", None),
    ("POST", "/admin/tokens/{active}/disable", None),
    ("POST", "/admin/tokens/{disabled}/enable", None),
    ("POST", "/admin/tokens/{cooling}/release", None),
    ("POST", "/admin/tokens/{invalid}/validate", None),
]


@pytest.mark.parametrize(("method", "path", "body"), FOREIGN_ROUTES, ids=[f"{m} {p}" for m, p, _ in FOREIGN_ROUTES])
def test_another_organizations_ids_are_not_found_and_left_alone(api, foreign, method, path, body):
    before = snapshot(foreign["organization"])

    response = getattr(api, method.lower())(path.format(**foreign["ids"]), body, format="json")

    assert_error(response, 404, "not_found")
    assert b"their-" not in response.content and b"theirs" not in response.content
    assert snapshot(foreign["organization"]) == before


def test_listings_show_only_the_organizations_own_pools_and_tokens(api, foreign):
    add_token(api, label="ours")

    assert [p["name"] for p in api.get("/admin/pools").json()["results"]] == ["default"]
    assert [t["label"] for t in api.get("/admin/tokens").json()["results"]] == ["ours"]
    assert api.get("/admin/tokens?pool=theirs").json()["results"] == []


# --- Pools pinned to API keys ---------------------------------------------------------------------


def test_a_key_pinned_to_a_pool_leases_only_from_that_pool(organization, make_member, make_token, client_for, gpu_pool):
    make_token(organization, label="default-1")
    make_token(organization, label="default-2")
    gpu = make_token(organization, pool="gpu", label="gpu-1")
    membership, raw_key = make_member(organization, Role.USER)
    ApiKey.objects.filter(membership=membership).update(pool=gpu_pool)
    client = client_for(raw_key)

    for _ in range(3):
        response = client.get("/keys/provision/hf")
        assert response.status_code == 200, response.content
        assert (response.json()["pool"], response.json()["token_id"]) == ("gpu", str(gpu.pk))
        report(client, gpu.pk, status="success")
    assert client.get("/keys/provision/hf?pool=gpu").json()["token_id"] == str(gpu.pk)


def test_a_key_pinned_to_a_pool_may_not_ask_for_another(organization, make_member, make_token, client_for, gpu_pool):
    make_token(organization, label="default-1")
    make_token(organization, pool="gpu")
    membership, raw_key = make_member(organization, Role.USER)
    ApiKey.objects.filter(membership=membership).update(pool=gpu_pool)

    assert_error(client_for(raw_key).get("/keys/provision/hf?pool=default"), 403, "permission_denied")
    assert not Lease.objects.filter(organization=organization).exists()


def test_an_unpinned_key_may_choose_a_pool(organization, make_member, make_token, client_for, gpu_pool):
    make_token(organization, label="default-1")
    gpu = make_token(organization, pool="gpu")
    _, raw_key = make_member(organization, Role.USER)

    response = client_for(raw_key).get("/keys/provision/hf?pool=gpu")

    assert response.status_code == 200, response.content
    assert response.json()["token_id"] == str(gpu.pk)


def test_asking_for_an_unknown_pool_is_a_404(organization, make_member, make_token, client_for):
    make_token(organization)
    _, raw_key = make_member(organization, Role.USER)

    assert_error(client_for(raw_key).get("/keys/provision/hf?pool=nowhere"), 404, "not_found")
    assert not Lease.objects.filter(organization=organization).exists()


# --- Secrets --------------------------------------------------------------------------------------


def database_text() -> dict[str, list[str]]:
    """Every non-null value of every column of every table, as text, by table."""
    found = {}
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            found[table] = [as_text(value) for row in cursor.fetchall() for value in row if value is not None]
    return found


def as_text(value) -> str:
    if isinstance(value, memoryview):
        value = value.tobytes()
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def tables_containing(needle: str) -> list[str]:
    return sorted(table for table, values in database_text().items() if any(needle in value for value in values))


def test_the_database_scan_finds_what_it_is_looking_for(api):
    """The scan below must be able to see a planted value, or its silence would prove nothing."""
    add_token(api, label="planted-label-xyz")

    assert HFToken._meta.db_table in tables_containing("planted-label-xyz")
    assert AuditEvent._meta.db_table in tables_containing("planted-label-xyz")


@dataclass
class AdminSession:
    secrets: list[str]
    responses: list[tuple[str, str, object]]
    leased: dict
    logs: str


@pytest.fixture
def admin_session(organization, api, gpu_pool, standin, caplog) -> AdminSession:
    """A manager's day through the API: add, validate, import, list, act, lease, report; with DEBUG logs on."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django")  # Django's own defaults cap its loggers at INFO
    single, validated, refused = new_secret(), new_secret(), new_secret("invalid")
    listed, texted = [new_secret(), new_secret()], [new_secret(), new_secret()]
    responses = []

    def call(method, path, body=None):
        response = getattr(api, method)(path, body, format="json")
        assert response.status_code < 500, response.content
        responses.append((method.upper(), path, response))
        return response

    # Every SQL statement is logged with its parameters too, as when an operator chases a problem.
    with CaptureQueriesContext(connection):
        single_id = call("post", "/admin/tokens", {"token": single, "label": "one"}).json()["id"]
        call("post", "/admin/tokens?validate=1", {"token": validated, "pool": "gpu"})
        refused_id = call("post", "/admin/tokens?validate=1", {"token": refused}).json()["id"]
        call("post", "/admin/tokens", {"token": single})  # duplicate: 409
        call("post", "/admin/tokens/import", {"tokens": [*listed, listed[0], single]})
        call("post", "/admin/tokens/import", {"text": "\n".join(texted), "pool": "gpu"})
        call("post", "/admin/tokens", {"token": single + " x"})  # 400
        call("get", "/admin/tokens")
        call("get", f"/admin/tokens/{single_id}")
        call("patch", f"/admin/tokens/{single_id}", {"label": "renamed"})
        call("post", f"/admin/tokens/{single_id}/validate")
        call("post", f"/admin/tokens/{refused_id}/validate")
        call("post", f"/admin/tokens/{single_id}/disable")
        call("post", f"/admin/tokens/{single_id}/enable")
        call("get", "/admin/pools")
        leased = call("get", "/keys/provision/hf?pool=gpu").json()
        # A client's error text quoting the token it used must not carry it any further.
        call("post", "/keys/report/hf", {
            "token_id": leased["token_id"], "status": "error",
            "error": f"500 Server Error for url: https://router.huggingface.co/v1 (token {leased['token']})",
        })
        call("get", f"/admin/tokens/{leased['token_id']}")
        call("get", "/admin/audit")
    assert HFToken.objects.filter(organization=organization).count() == 7
    return AdminSession(
        secrets=[single, validated, refused, *listed, *texted], responses=responses, leased=leased, logs=caplog.text
    )


def test_no_secret_is_stored_in_clear_in_any_table(admin_session):
    for secret in admin_session.secrets:
        assert tables_containing(secret) == [], f"secret …{secret[-4:]} stored in clear"
        assert tables_containing(secret[3:-4]) == [], f"most of secret …{secret[-4:]} stored in clear"


def test_no_api_response_but_the_lease_shows_a_secret(admin_session):
    leases = [r for _, path, r in admin_session.responses if path.startswith("/keys/provision/hf")]
    assert admin_session.leased["token"] in admin_session.secrets
    assert admin_session.leased["token"].encode() in leases[0].content  # the one place a secret is handed out

    for method, path, response in admin_session.responses:
        if path.startswith("/keys/provision/hf"):
            continue
        for secret in admin_session.secrets:
            assert secret.encode() not in response.content, f"{method} {path} shows …{secret[-4:]}"


def test_no_secret_is_in_audit_or_token_events(organization, admin_session):
    audit = list(AuditEvent.objects.filter(organization=organization).values())
    events = list(TokenEvent.objects.filter(organization=organization).values())
    text = json.dumps([audit, events], default=str)
    assert {"token.created", "token.validated", "token.disabled"} <= {row["action"] for row in audit}
    assert {"added", "disabled by a person"} <= {row["reason"] for row in events}

    for secret in admin_session.secrets:
        assert secret not in text and secret[3:-4] not in text


def test_no_secret_is_in_the_logs_even_at_debug_level(admin_session):
    assert "INSERT INTO" in admin_session.logs  # the logs were captured

    for secret in admin_session.secrets:
        assert secret not in admin_session.logs and secret[3:-4] not in admin_session.logs


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(new_secret(), id="hf-letters-and-digits"),
        pytest.param(
            "hf_test_0001_abcdefghijklmnop",
            id="hf-with-underscores",
        ),
    ],
)
def test_a_token_quoted_in_a_reported_error_is_neither_stored_nor_listed(organization, api, client_as, secret):
    token = add_token(api, secret)
    assert api.get("/keys/provision/hf").json()["token"] == secret

    report(api, token["id"], error=f"500 Server Error: upstream refused the token {secret} (request 42)")

    listing = client_as(Role.VIEWER).get("/admin/tokens")
    assert "upstream refused the token" in listing.json()["results"][0]["last_error"]
    assert secret not in listing.content.decode()
    assert tables_containing(secret) == []


OTHER_SECRET = "hf_" + "Zq3" * 12  # not the leased token's: found by its shape alone
OTHER_KEY = "pk_" + "Kb7" * 14


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(f"upstream refused: token_hf_{OTHER_SECRET[3:]}", id="prefixed-with-a-word-and-underscore"),
        pytest.param(f"upstream refused: url?h=Authorization:Bearer%20{OTHER_SECRET}", id="bearer-url-encoded"),
        pytest.param(f"upstream refused: url?h=Bearer%2520{OTHER_SECRET}", id="bearer-url-encoded-twice"),
        pytest.param(f"upstream refused: headers=Bearer+{OTHER_SECRET}", id="bearer-form-encoded"),
        pytest.param(f"upstream refused: url?api_key%3D{OTHER_KEY}", id="portal-key-after-encoded-equals"),
    ],
)
def test_a_secret_of_any_shape_in_a_reported_error_is_neither_stored_nor_listed(api, client_as, error):
    token = add_token(api)

    report(api, token["id"], error=error)

    listing = client_as(Role.VIEWER).get("/admin/tokens")
    assert listing.json()["results"][0]["last_error"].startswith("upstream refused: ")
    for secret in (OTHER_SECRET, OTHER_KEY):
        assert secret[3:] not in listing.content.decode()
        assert tables_containing(secret[3:]) == []
