"""The client contract's front door on a real daphne worker (portal.lease_door, bare ASGI) and through
Django's DRF views (tokens.api) must answer alike: every test here runs against both.

"bare": the live daphne worker (live_portal), where /keys/provision and /keys/report never reach Django.
"django": pytest-django's live server, which serves the same paths through the DRF views.
Both are set up the same way, through the admin REST API, with a fresh organization per test.
"""

import uuid

import httpx
import pytest

from accounts.roles import Role

# The django door's live server thread must see the rows the test makes; pytest-django sets the test
# database up only for tests it knows to use one.
pytestmark = pytest.mark.django_db(transaction=True)

CREDITS_402 = (
    "402 Client Error: Payment Required for url: https://router.huggingface.co/v1/chat/completions\n\n"
    "You have exceeded your monthly included credits for Inference Providers."
)


class Door:
    """One organization on one front door: its admin's client, a user's and a viewer's keys."""

    def __init__(self, url: str, admin_key: str):
        self.url = url
        self.admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
        self.user_key = self.new_member(Role.USER)
        self.viewer_key = self.new_member(Role.VIEWER)
        self.secrets: list[str] = []

    def new_member(self, role: str) -> str:
        response = self.admin.post("/admin/users", json={"username": f"{role}-{uuid.uuid4().hex[:10]}", "role": role})
        assert response.status_code == 201, response.text
        return response.json()["api_key"]

    def add_token(self, pool: str | None = None) -> int:
        secret = f"hf_door_{uuid.uuid4().hex}"
        response = self.admin.post("/admin/tokens", json={"token": secret, **({"pool": pool} if pool else {})})
        assert response.status_code == 201, response.text
        self.secrets.append(secret)
        return response.json()["id"]

    def token_status(self, token_id: int) -> str:
        return self.admin.get(f"/admin/tokens/{token_id}").json()["status"]

    def call(self, method: str, path: str, key: str | None = "user", **kwargs) -> httpx.Response:
        raw_key = {"user": self.user_key, "viewer": self.viewer_key}.get(key, key)
        headers = {"Authorization": f"Bearer {raw_key}"} if raw_key else {}
        return httpx.request(method, self.url + path, headers={**headers, **kwargs.pop("headers", {})}, timeout=10, **kwargs)

    def lease(self, path: str = "/keys/provision/hf", key: str | None = "user", **params) -> dict:
        response = self.call("GET", path, key, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def report(self, lease: dict, path: str = "/keys/report/hf", key: str | None = "user", **fields) -> httpx.Response:
        body = {"token_id": lease["token_id"], "lease_id": lease["lease_id"], "status": "success", **fields}
        return self.call("POST", path, key, json=body)


@pytest.fixture
def bare_door(live_org):
    made = Door(live_org.url, live_org.admin_key)
    yield made
    made.admin.close()


@pytest.fixture
def django_door(live_server, make_organization, make_member):
    _, admin_key = make_member(make_organization(), Role.ADMIN)
    made = Door(live_server.url, admin_key)
    yield made
    made.admin.close()


@pytest.fixture(params=["bare_door", "django_door"])
def door(request) -> Door:
    return request.getfixturevalue(request.param)


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error_type"] == error_type and isinstance(body["error"], str) and body["error"]
    return body


# --- What hf_token_utils does --------------------------------------------------------------------


@pytest.mark.parametrize("paths", [("/keys/provision/hf", "/keys/report/hf"), ("/keys/provision", "/keys/report")])
def test_lease_then_report_success_then_the_same_report_again(door, paths):
    provision_path, report_path = paths
    token_id = door.add_token()
    response = door.call("GET", provision_path)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"  # the body holds a secret
    lease = response.json()
    assert set(lease) == {"token", "token_id", "lease_id", "pool", "expires_at"}
    assert (lease["token"], lease["token_id"], lease["pool"]) == (door.secrets[0], str(token_id), "default")

    first = door.report(lease, report_path)
    assert first.status_code == 200, first.text
    assert first.json() == {"ok": True, "token_status": "active", "lease_id": lease["lease_id"], "duplicate": False}
    again = door.report(lease, report_path)  # clients retry reports: a second one changes nothing
    assert again.json() == {"ok": True, "token_status": "active", "lease_id": lease["lease_id"], "duplicate": True}


def test_a_credits_report_takes_the_token_out_of_rotation(door):
    spent, fresh = door.add_token(), door.add_token()
    lease = door.lease()
    while lease["token_id"] != str(spent):  # lease until the token to spend comes up
        door.report(lease)
        lease = door.lease()
    answer = door.report(lease, status="error", error=CREDITS_402, error_type="credits_exceeded")
    assert answer.json()["token_status"] == "quarantined"
    assert door.token_status(spent) == "quarantined"
    for _ in range(4):
        lease = door.lease()
        assert lease["token_id"] == str(fresh)
        door.report(lease)


def test_a_lease_from_a_named_pool_then_503_with_retry_after_when_its_token_cools_down(door):
    assert door.admin.post("/admin/pools", json={"name": "batch"}).status_code == 201
    token_id = door.add_token(pool="batch")
    lease = door.lease(pool="batch", client_name="nightly-job")
    assert (lease["token_id"], lease["pool"]) == (str(token_id), "batch")
    door.report(lease, status="error", error="429 Client Error: Too Many Requests", error_type="rate_limited")
    response = door.call("GET", "/keys/provision/hf", params={"pool": "batch"})
    body = assert_error(response, 503, "no_token_available")  # its only token is cooling down
    assert "batch" in body["error"] and int(response.headers["retry-after"]) >= 1


def test_a_revoked_key_is_refused_at_once(door):
    door.add_token()
    door.report(door.lease())  # the worker has now seen (and may remember) this key
    keys = door.admin.get("/admin/api-keys").json()["results"]
    prefix_of_user_key = [key for key in keys if door.user_key.startswith(key["prefix"])]
    assert len(prefix_of_user_key) == 1
    assert door.admin.delete(f"/admin/api-keys/{prefix_of_user_key[0]['id']}").status_code == 200
    assert_error(door.call("GET", "/keys/provision/hf"), 401, "authentication")


# --- Refusals: the same status, error_type and headers on both doors -----------------------------


def test_no_key_or_a_wrong_key_is_401_with_a_bearer_challenge(door):
    for key in (None, "pk_not_a_real_key_0123456789"):
        response = door.call("GET", "/keys/provision/hf", key)
        assert_error(response, 401, "authentication")
        assert response.headers["www-authenticate"].startswith("Bearer")
    response = door.call("POST", "/keys/report/hf", None, json={"token_id": 1, "status": "success"})
    assert_error(response, 401, "authentication")


def test_a_viewer_may_not_lease_or_report(door):
    door.add_token()
    assert_error(door.call("GET", "/keys/provision/hf", "viewer"), 403, "permission_denied")
    assert_error(door.call("POST", "/keys/report/hf", "viewer", json={"token_id": 1, "status": "success"}), 403, "permission_denied")


def test_a_bad_or_unknown_pool_is_refused(door):
    door.add_token()
    assert_error(door.call("GET", "/keys/provision/hf", params={"pool": "not a pool!"}), 400, "validation")
    assert_error(door.call("GET", "/keys/provision/hf", params={"pool": "nowhere"}), 404, "not_found")


def test_too_many_query_fields_is_a_json_400(door):
    door.add_token()
    params = {f"field{n}": "1" for n in range(1001)}  # over DATA_UPLOAD_MAX_NUMBER_FIELDS
    assert_error(door.call("GET", "/keys/provision/hf", params=params), 400, "bad_request")


def test_a_body_without_fields_names_them_and_a_body_not_in_its_charset_is_400(door):
    door.add_token()
    empty = door.call("POST", "/keys/report/hf", content=b"", headers={"Content-Type": "application/json"})
    assert {"token_id", "status"} <= set(assert_error(empty, 400, "validation")["fields"])
    not_utf8 = '{"token_id": 1, "status": "é"}'.encode("latin-1")  # declared UTF-8 (the default), it is not
    latin = door.call("POST", "/keys/report/hf", content=not_utf8, headers={"Content-Type": "application/json"})
    assert_error(latin, 400, "validation")


def test_the_wrong_method_is_405(door):
    assert_error(door.call("POST", "/keys/provision/hf", json={}), 405, "method_not_allowed")
    assert_error(door.call("GET", "/keys/report/hf"), 405, "method_not_allowed")


def test_malformed_reports_are_400_and_change_nothing(door):
    door.add_token()
    lease = door.lease()
    json_headers = {"Content-Type": "application/json"}
    assert_error(door.call("POST", "/keys/report/hf", content=b'{"token_id": ', headers=json_headers), 400, "validation")
    assert_error(door.call("POST", "/keys/report/hf", content=b'{"token_id": NaN, "status": "success"}', headers=json_headers), 400, "validation")
    missing = assert_error(door.call("POST", "/keys/report/hf", json={"status": "success"}), 400, "validation")
    assert "token_id" in missing["fields"]
    assert_error(door.report(lease, status="maybe"), 400, "validation")
    plain = door.call("POST", "/keys/report/hf", content=b"token_id=1", headers={"Content-Type": "text/plain"})
    assert_error(plain, 415, "unsupported_media_type")
    assert door.report(lease).json()["duplicate"] is False  # the lease was still open: nothing above touched it


@pytest.mark.parametrize("body", [b"[" * 5000, b'{"token_id": 1, "status": "success", "error": ' + b"[" * 200 + b"]" * 200 + b"}"])
def test_a_report_nested_too_deep_is_the_same_400_at_both_doors(door, body):
    refused = door.call("POST", "/keys/report/hf", content=body, headers={"Content-Type": "application/json"})
    assert assert_error(refused, 400, "validation")["error"] == "The body is nested deeper than 128 levels."


def test_secrets_in_a_reported_error_are_masked_for_viewers_whatever_their_shape(door):
    token_id = door.add_token()
    other_token, other_key = "hf_" + "Zq3" * 12, "pk_" + "Kb7" * 14  # not the leased token: found by shape alone
    error = f"401 for url '/x?h=Bearer%20{other_token}' (token_{other_token}, api_key%3D{other_key})"

    assert door.report(door.lease(), status="error", error=error).status_code == 200

    listing = door.call("GET", "/admin/tokens", key="viewer")
    (token,) = listing.json()["results"]
    assert token["id"] == token_id and token["last_error"] == "401 for url '/x?h=Bearer ***' (token_hf_***, api_key=pk_***)"
    assert other_token[3:] not in listing.text and other_key[3:] not in listing.text


def test_only_the_lease_holder_reports(door):
    leased, unleased = door.add_token(), door.add_token()
    lease = door.lease()
    other = lease["token_id"] == str(leased) and unleased or leased
    assert_error(door.report({**lease, "token_id": other, "lease_id": None}), 404, "not_found")
    someone_else = door.new_member(Role.USER)
    assert_error(door.report(lease, key=someone_else, status="error", error=CREDITS_402), 404, "not_found")
    assert door.token_status(int(lease["token_id"])) == "active"


def test_no_answer_carries_a_secret_or_a_traceback(door):
    door.add_token()
    lease = door.lease()
    answers = [
        door.call("GET", "/keys/provision/hf", params={"pool": "x" * 500}),
        door.call("POST", "/keys/report/hf", json={**lease, "status": "error", "error": f"failed with {lease['token']}"}),
        door.call("POST", "/keys/report/hf", json=[1, 2, 3]),
        door.call("POST", "/keys/report/hf", json={"token_id": 2**70, "status": "success"}),
    ]
    for response in answers:
        assert response.status_code < 500, response.text
        assert lease["token"] not in response.text and "Traceback" not in response.text
        body = response.json()
        assert set(body) >= {"error", "error_type"} if response.status_code >= 400 else body["ok"] is True


def test_both_doors_say_which_methods_they_take(door):
    for path, method in (("/keys/provision/hf", "GET"), ("/keys/report/hf", "POST")):
        wrong = door.call("DELETE", path)
        assert wrong.status_code == 405 and wrong.headers["allow"] == f"{method}, OPTIONS"
        options = door.call("OPTIONS", path)
        assert options.status_code == 200 and options.headers["allow"] == f"{method}, OPTIONS"
        assert {"name", "renders", "parses"} <= set(options.json())
