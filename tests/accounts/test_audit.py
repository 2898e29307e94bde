"""The audit log: an event for every change, with who and from where; read back filtered and paginated."""

import pytest

from accounts import services
from accounts.models import ApiKey, AuditEvent
from accounts.roles import Role
from tests.accounts.helpers import assert_error

pytestmark = pytest.mark.django_db

CLIENT_IP = "203.0.113.7"


def audit(client, **params) -> dict:
    response = client.get("/admin/audit", params)
    assert response.status_code == 200, response.content
    return response.json()


def actions(body: dict) -> list[str]:
    return [event["action"] for event in body["results"]]


# --- Events written ----------------------------------------------------------------------------------


def test_user_created_event_names_actor_target_and_client_ip(admin_api):
    created = admin_api.post(
        "/admin/users", {"username": "carol", "role": "viewer"}, format="json", REMOTE_ADDR=CLIENT_IP
    ).json()

    event = AuditEvent.objects.get(action="user.created", target_id=str(created["id"]))
    assert event.actor_username == "alice"
    assert event.actor.username == "alice"
    assert event.ip == CLIENT_IP
    assert event.target_repr == "carol"
    assert event.data == {"role": "viewer"}
    assert event.organization.slug == "acme"


def test_creating_a_user_also_records_its_first_key(admin_api):
    created = admin_api.post("/admin/users", {"username": "carol"}, format="json", REMOTE_ADDR=CLIENT_IP).json()
    key = ApiKey.objects.get(membership__user_id=created["id"])
    event = AuditEvent.objects.get(action="api_key.created", target_id=str(key.pk))
    assert (event.actor_username, event.ip, event.data["owner"]) == ("alice", CLIENT_IP, "carol")


def test_role_changed_event(admin_api, user_member):
    membership, _ = user_member
    admin_api.patch(f"/admin/users/{membership.user_id}", {"role": "viewer"}, format="json", REMOTE_ADDR=CLIENT_IP)

    event = AuditEvent.objects.get(action="user.role_changed")
    assert (event.actor_username, event.ip) == ("alice", CLIENT_IP)
    assert event.target_id == str(membership.user_id)
    assert event.data == {"from": "user", "to": "viewer"}


def test_key_created_event(admin_api, user_member):
    membership, _ = user_member
    created = admin_api.post(
        f"/admin/users/{membership.user_id}/api-keys", {"name": "ci"}, format="json", REMOTE_ADDR=CLIENT_IP
    ).json()

    event = AuditEvent.objects.get(action="api_key.created", target_id=str(created["id"]))
    assert (event.actor_username, event.ip) == ("alice", CLIENT_IP)
    assert event.data == {"owner": "bob"}
    assert created["api_key"] not in str(event.data) + event.target_repr


def test_key_revoked_event(admin_api, user_member):
    membership, raw_key = user_member
    key = ApiKey.objects.get(membership=membership)
    admin_api.delete(f"/admin/api-keys/{key.pk}", REMOTE_ADDR=CLIENT_IP)

    event = AuditEvent.objects.get(action="api_key.revoked")
    assert (event.actor_username, event.ip) == ("alice", CLIENT_IP)
    assert event.target_id == str(key.pk)
    assert raw_key not in event.target_repr


def test_revoking_twice_records_one_event(admin_api, user_member):
    membership, _ = user_member
    key = ApiKey.objects.get(membership=membership)
    admin_api.delete(f"/admin/api-keys/{key.pk}")
    admin_api.delete(f"/admin/api-keys/{key.pk}")
    assert AuditEvent.objects.filter(action="api_key.revoked").count() == 1


def test_user_revoking_own_key_is_the_actor(client_for, user_member):
    membership, raw_key = user_member
    client = client_for(raw_key)
    spare = client.post(f"/admin/users/{membership.user_id}/api-keys", {}, format="json").json()
    client.delete(f"/admin/api-keys/{spare['id']}", REMOTE_ADDR=CLIENT_IP)
    event = AuditEvent.objects.get(action="api_key.revoked")
    assert (event.actor_username, event.ip) == ("bob", CLIENT_IP)


def test_the_api_shows_actor_and_ip(admin_api):
    admin_api.post("/admin/users", {"username": "carol"}, format="json", REMOTE_ADDR=CLIENT_IP)
    [event] = audit(admin_api, action="user.created", actor="alice")["results"]
    assert event["actor"] == "alice"
    assert event["ip"] == CLIENT_IP
    assert event["target_repr"] == "carol"
    assert set(event) >= {"id", "created_at", "actor", "action", "target_type", "target_id", "data", "ip"}


def test_newest_event_first(admin_api, user_member):
    membership, _ = user_member
    admin_api.patch(f"/admin/users/{membership.user_id}", {"role": "viewer"}, format="json")
    admin_api.delete(f"/admin/users/{membership.user_id}")
    assert actions(audit(admin_api))[:2] == ["user.deactivated", "user.role_changed"]


# --- Filters -----------------------------------------------------------------------------------------


@pytest.fixture
def history(admin_member, organization, make_member, client_for):
    """alice creates carol, changes her role, creates and revokes a key; dave (another admin) creates erin."""
    alice = client_for(admin_member[1])
    dave_membership, dave_key = make_member(organization, Role.ADMIN, username="dave")
    carol = alice.post("/admin/users", {"username": "carol"}, format="json").json()
    alice.patch(f"/admin/users/{carol['id']}", {"role": "manager"}, format="json")
    key = alice.post(f"/admin/users/{carol['id']}/api-keys", {}, format="json").json()
    alice.delete(f"/admin/api-keys/{key['id']}")
    client_for(dave_key).post("/admin/users", {"username": "erin"}, format="json")
    return {"alice": admin_member[0].user, "dave": dave_membership.user}


def test_filter_by_exact_action(admin_api, history):
    body = audit(admin_api, action="user.created")
    # alice and dave were created by the fixtures (no actor), carol and erin through the API.
    assert sorted(event["target_repr"] for event in body["results"]) == ["alice", "carol", "dave", "erin"]
    assert set(actions(body)) == {"user.created"}


def test_filter_by_action_family(admin_api, history):
    user_actions = actions(audit(admin_api, action="user"))
    key_actions = actions(audit(admin_api, action="api_key"))
    assert sorted(set(user_actions)) == ["user.created", "user.role_changed"]
    assert user_actions.count("user.created") >= 2  # carol, erin (plus the fixtures' members)
    assert sorted(set(key_actions)) == ["api_key.created", "api_key.revoked"]


def test_action_family_is_a_whole_word_not_a_text_prefix(admin_api, history):
    assert audit(admin_api, action="use")["results"] == []
    assert audit(admin_api, action="api")["results"] == []


def test_unknown_action_finds_nothing(admin_api, history):
    assert audit(admin_api, action="user.exploded")["count"] == 0


def test_filter_by_actor_username(admin_api, history):
    body = audit(admin_api, actor="dave")
    assert body["count"] >= 1
    assert {event["actor"] for event in body["results"]} == {"dave"}
    assert "erin" in {event["target_repr"] for event in body["results"]}


def test_filter_by_actor_id(admin_api, history):
    by_id = audit(admin_api, actor=str(history["alice"].id))
    by_name = audit(admin_api, actor="alice")
    assert by_id["count"] == by_name["count"] >= 4
    assert {event["actor"] for event in by_id["results"]} == {"alice"}
    assert [event["id"] for event in by_id["results"]] == [event["id"] for event in by_name["results"]]


def test_filters_combine(admin_api, history):
    body = audit(admin_api, actor="alice", action="user.created")
    assert [event["target_repr"] for event in body["results"]] == ["carol"]


def test_pagination_with_limit_gives_a_next_link(admin_api, history):
    first = audit(admin_api, limit=2)
    assert len(first["results"]) == 2
    assert first["count"] > 2
    assert first["previous"] is None
    assert "limit=2" in first["next"] and "offset=2" in first["next"]

    second = admin_api.get(first["next"]).json()
    assert len(second["results"]) == 2
    assert not {e["id"] for e in first["results"]} & {e["id"] for e in second["results"]}
    assert second["previous"] is not None


def test_pagination_keeps_the_filter_in_next(admin_api, history):
    first = audit(admin_api, action="user", limit=1)
    assert "action=user" in first["next"]
    second = admin_api.get(first["next"]).json()
    assert all(event["action"].startswith("user.") for event in second["results"])


@pytest.mark.parametrize(
    "actor",
    [
        pytest.param(
            "²",
            id="superscript-digit",
        ),
        pytest.param(
            "9" * 25,
            id="id-beyond-64-bits",
        ),
        pytest.param("nobody-by-that-name", id="unknown-username"),
        pytest.param("0", id="id-zero"),
    ],
)
def test_odd_actor_filter_is_not_a_server_error(admin_api, history, actor):
    admin_api.raise_request_exception = False
    response = admin_api.get("/admin/audit", {"actor": actor})
    assert response.status_code in (200, 400), response.content
    if response.status_code == 200:
        assert response.json()["results"] == []


# --- Who may read it ---------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.MANAGER, Role.USER, Role.VIEWER])
def test_non_admins_get_403(organization, make_member, client_for, role):
    _, raw_key = make_member(organization, role)
    assert_error(client_for(raw_key).get("/admin/audit"), 403, "permission_denied")


def test_anonymous_gets_401(client_for):
    assert_error(client_for(None).get("/admin/audit"), 401, "authentication")


def test_events_from_services_without_a_request_have_no_actor(organization, make_member, admin_api):
    membership, _ = make_member(organization, Role.USER, username="quiet")
    services.user_update(membership=membership, role=Role.VIEWER, actor=None)
    [event] = audit(admin_api, action="user.role_changed")["results"]
    assert event["actor"] == "" and event["ip"] is None
