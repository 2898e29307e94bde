"""Leasing and reporting through the client endpoints: what a caller of /keys/provision and /keys/report sees.

Strategies, eligibility, lease caps and expiry, the 503 with its Retry-After, the quarantine effects of
reports, report validation, tenancy of token ids, duplicate reports and how a report finds its lease.
"""

from collections import Counter
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from accounts import services as account_services
from accounts.roles import Role
from tokens import services
from tokens.models import HFToken, Lease, Outcome, Strategy, TokenEvent, TokenPool
from tokens.policy import Status

pytestmark = pytest.mark.django_db

PROVISION = "/keys/provision/hf"
REPORT = "/keys/report/hf"

# huggingface_hub's str(HfHubHTTPError) for the two errors that matter most.
CREDITS_402 = (
    "402 Client Error: Payment Required for url: https://router.huggingface.co/v1/chat/completions "
    "(Request ID: Root=1-abc)\n\nYou have exceeded your monthly included credits for Inference Providers. "
    "Subscribe to PRO to get 20x more monthly included credits."
)
INVALID_401 = (
    "401 Client Error: Unauthorized for url: https://router.huggingface.co/v1/chat/completions "
    "(Request ID: Root=1-def)\n\nInvalid credentials in Authorization header"
)
TIMEOUT = "HTTPSConnectionPool(host='router.huggingface.co', port=443): Read timed out. (read timeout=60)"


# --- Fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture
def default_pool(organization) -> TokenPool:
    return TokenPool.objects.get(organization=organization, name=TokenPool.DEFAULT_NAME)


@pytest.fixture
def member(organization, make_member):
    """(membership, raw key) of a plain user: the role that runs hf_token_utils."""
    return make_member(organization, Role.USER)


@pytest.fixture
def user(member):
    return member[0].user


@pytest.fixture
def api(member, client_for):
    return client_for(member[1])


@pytest.fixture
def make_token_in(make_token):
    """make_token_in(organization, status, available_at=None, **fields): a token already in that state."""

    def make(organization, status: str, available_at=None, **fields) -> HFToken:
        token = make_token(organization, **fields)
        HFToken.objects.filter(pk=token.pk).update(status=status, available_at=available_at)
        token.refresh_from_db()
        return token

    return make


def set_pool(pool: TokenPool, **fields) -> TokenPool:
    for name, value in fields.items():
        setattr(pool, name, value)
    pool.save()
    return pool


def provision(client, path: str = PROVISION, **params) -> dict:
    response = client.get(path, params)
    assert response.status_code == 200, (response.status_code, response.content[:500])
    return response.json()


def leased_ids(client, times: int, **params) -> list[int]:
    return [int(provision(client, **params)["token_id"]) for _ in range(times)]


def report(client, token_id, status="success", path: str = REPORT, **fields):
    return client.post(path, {"token_id": str(token_id), "status": status, **fields}, format="json")


def report_ok(client, token_id, status="success", **fields) -> dict:
    response = report(client, token_id, status, **fields)
    assert response.status_code == 200, (response.status_code, response.content[:500])
    body = response.json()
    assert body["ok"] is True
    return body


def row(token: HFToken) -> dict:
    """Every column of the token as the database holds it now."""
    return HFToken.objects.filter(pk=token.pk).values().get()


def assert_no_token_available(response) -> dict:
    assert response.status_code == 503, (response.status_code, response.content[:500])
    body = response.json()
    assert body["error_type"] == "no_token_available"
    assert isinstance(body["error"], str) and body["error"]
    return body


# --- The provision answer -----------------------------------------------------------------------------


def test_provision_hands_out_the_secret_with_string_token_id_and_an_open_lease(organization, api, make_token):
    token = make_token(organization, secret="hf_provisionSecret_1234")

    before = timezone.now()
    response = api.get(PROVISION)

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token"] == "hf_provisionSecret_1234"
    assert body["token_id"] == str(token.pk) and isinstance(body["token_id"], str)
    assert body["pool"] == "default"
    lease = Lease.objects.get(pk=body["lease_id"])
    assert lease.token_id == token.pk and lease.reported_at is None and lease.outcome == ""
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert before + timedelta(seconds=595) <= expires_at <= timezone.now() + timedelta(seconds=605)
    token.refresh_from_db()
    assert (token.lease_count, token.active_leases) == (1, 1)


def test_legacy_provision_path_without_hf_suffix_leases_too(organization, api, make_token):
    token = make_token(organization)

    body = provision(api, path="/keys/provision")

    assert body["token_id"] == str(token.pk)
    assert Lease.objects.filter(token=token).count() == 1


def test_pool_query_parameter_leases_from_that_pool_only(organization, api, make_token):
    services.pool_create(organization=organization, name="batch", actor=None)
    in_default = make_token(organization)
    in_batch = make_token(organization, pool="batch")

    from_batch = leased_ids(api, 5, pool="batch")
    from_default = leased_ids(api, 5)

    assert set(from_batch) == {in_batch.pk}
    assert set(from_default) == {in_default.pk}


def test_unknown_pool_is_not_found(organization, api, make_token):
    make_token(organization)

    response = api.get(PROVISION, {"pool": "nope"})

    assert response.status_code == 404
    assert response.json()["error_type"] == "not_found"
    assert not Lease.objects.exists()


@pytest.mark.parametrize("role", [Role.USER, Role.MANAGER, Role.ADMIN])
def test_roles_that_may_lease_get_a_token(organization, make_member, client_for, make_token, role):
    make_token(organization)
    _, key = make_member(organization, role)

    body = provision(client_for(key))

    assert body["token"].startswith("hf_test_")


def test_viewer_may_neither_lease_nor_report(organization, make_member, client_for, make_token):
    token = make_token(organization)
    _, key = make_member(organization, Role.VIEWER)
    viewer = client_for(key)
    before = row(token)

    lease = viewer.get(PROVISION)
    reported = report(viewer, token.pk, "error", error=CREDITS_402)

    for response in (lease, reported):
        assert response.status_code == 403
        assert response.json()["error_type"] == "permission_denied"
        assert "hf_test_" not in response.content.decode()
    assert not Lease.objects.exists()
    assert row(token) == before


def test_provision_without_a_key_is_refused(organization, client_for, make_token):
    make_token(organization)

    response = client_for(None).get(PROVISION)

    assert response.status_code == 401
    assert not Lease.objects.exists()


# --- Strategies -----------------------------------------------------------------------------------------


def test_least_recently_leased_spreads_leases_evenly(organization, api, make_token):
    tokens = [make_token(organization) for _ in range(3)]

    ids = leased_ids(api, 30)

    assert Counter(ids) == {t.pk: 10 for t in tokens}
    # Strict rotation: no token comes twice before the others had their turn.
    for start in range(0, 30, 3):
        assert len(set(ids[start : start + 3])) == 3, ids


def test_weighted_random_favours_the_heavy_token(organization, default_pool, user, make_token):
    set_pool(default_pool, strategy=Strategy.WEIGHTED_RANDOM)
    light = make_token(organization, weight=1)
    heavy = make_token(organization, weight=9)

    counts = Counter(
        services.lease_token(organization=organization, pool=default_pool, user=user).token.pk
        for _ in range(400)
    )

    # Expected 360 vs 40 (sd 6): the bounds sit over 8 sd away, so this does not flake,
    # while an even or deterministic choice fails both of them.
    assert counts[heavy.pk] >= 300, counts
    assert counts[light.pk] >= 5, counts
    assert counts[heavy.pk] + counts[light.pk] == 400


def test_weighted_random_through_http_never_hands_out_an_ineligible_token(
    organization, default_pool, api, make_token, make_token_in
):
    set_pool(default_pool, strategy=Strategy.WEIGHTED_RANDOM)
    usable = make_token(organization, weight=1)
    make_token_in(organization, Status.DISABLED, weight=1000)

    assert set(leased_ids(api, 10)) == {usable.pk}


@pytest.mark.parametrize(
    ("strategy", "errored_token_comes_back_in_turn"),
    [(Strategy.FEWEST_RECENT_ERRORS, False), (Strategy.LEAST_RECENTLY_LEASED, True)],
)
def test_fewest_recent_errors_picks_tokens_without_errors_first(
    organization, default_pool, api, make_token, strategy, errored_token_comes_back_in_turn
):
    set_pool(default_pool, strategy=strategy)
    flaky, steady_a, steady_b = (make_token(organization) for _ in range(3))
    # Only the flaky token has an error lease in the last hour; it stays active (one transient error).
    first = provision(api)
    assert first["token_id"] == str(flaky.pk)
    answer = report_ok(api, flaky.pk, "error", error="500 Server Error: Internal Server Error")
    assert answer["token_status"] == "active"

    ids = leased_ids(api, 6)

    if errored_token_comes_back_in_turn:
        assert flaky.pk in ids  # the contrast: least-recently-leased ignores errors
    else:
        assert set(ids) == {steady_a.pk, steady_b.pk}
        assert Counter(ids) == {steady_a.pk: 3, steady_b.pk: 3}


def test_fewest_recent_errors_still_leases_the_errored_token_when_it_is_the_only_one_left(
    organization, default_pool, api, make_token
):
    set_pool(default_pool, strategy=Strategy.FEWEST_RECENT_ERRORS)
    flaky = make_token(organization)
    other = make_token(organization, max_concurrent_leases=1)
    provision(api)  # flaky first (never leased, lowest id)
    report_ok(api, flaky.pk, "error", error="boom")

    assert provision(api)["token_id"] == str(other.pk)  # other is now at its cap
    assert provision(api)["token_id"] == str(flaky.pk)


# --- Eligibility ----------------------------------------------------------------------------------------


def test_only_active_or_due_tokens_are_leased(organization, api, make_token, make_token_in):
    later = timezone.now() + timedelta(hours=1)
    active = make_token(organization)
    make_token_in(organization, Status.DISABLED)
    make_token_in(organization, Status.INVALID)
    make_token_in(organization, Status.COOLING, later)
    make_token_in(organization, Status.QUARANTINED, later)

    assert set(leased_ids(api, 8)) == {active.pk}


@pytest.mark.parametrize("timed_status", [Status.QUARANTINED, Status.COOLING])
def test_a_timed_token_whose_time_is_up_is_leased_and_becomes_active_with_an_event(
    organization, api, make_token, timed_status
):
    token = make_token(organization)
    HFToken.objects.filter(pk=token.pk).update(
        status=timed_status, available_at=timezone.now() - timedelta(seconds=1), quarantine_stage=1
    )

    body = provision(api)

    assert body["token_id"] == str(token.pk)
    token.refresh_from_db()
    assert token.status == Status.ACTIVE and token.available_at is None
    event = TokenEvent.objects.filter(token=token).order_by("-id").first()
    assert (event.from_status, event.to_status) == (timed_status, Status.ACTIVE)


def test_tokens_of_another_organization_are_never_leased(organization, make_organization, api, make_token):
    other_org = make_organization("globex")
    make_token(other_org)

    assert_no_token_available(api.get(PROVISION))


# --- Concurrent-lease caps and lease expiry ---------------------------------------------------------------


def test_max_concurrent_leases_caps_open_leases_until_one_is_reported(organization, api, make_token):
    capped = make_token(organization, max_concurrent_leases=2)

    assert leased_ids(api, 2) == [capped.pk, capped.pk]
    full = api.get(PROVISION)
    assert_no_token_available(full)
    # Freed by the leases' expiry at the latest: the default TTL is 600 s.
    assert 590 <= int(full["Retry-After"]) <= 600

    report_ok(api, capped.pk)

    assert provision(api)["token_id"] == str(capped.pk)
    capped.refresh_from_db()
    assert capped.active_leases == 2


def test_a_capped_token_at_its_limit_is_skipped_for_a_free_one(organization, api, make_token):
    capped = make_token(organization, max_concurrent_leases=1)
    free = make_token(organization)

    ids = leased_ids(api, 5)

    assert ids.count(capped.pk) == 1
    assert ids.count(free.pk) == 4


def test_unreported_leases_expire_after_the_pool_ttl_and_free_their_slot(
    organization, default_pool, user, make_token
):
    set_pool(default_pool, lease_ttl_seconds=60)
    token = make_token(organization, max_concurrent_leases=1)
    t0 = timezone.now()
    grant = services.lease_token(organization=organization, pool=default_pool, user=user, now=t0)
    assert grant.lease.expires_at == t0 + timedelta(seconds=60)

    with pytest.raises(services.NoTokenAvailable) as refused:
        services.lease_token(organization=organization, pool=default_pool, user=user, now=t0 + timedelta(seconds=30))
    assert refused.value.wait == 30

    assert services.leases_expire_overdue(now=t0 + timedelta(seconds=59), force=True) == 0
    assert services.leases_expire_overdue(now=t0 + timedelta(seconds=61), force=True) == 1

    lease = Lease.objects.get(pk=grant.lease.pk)
    assert lease.outcome == Outcome.EXPIRED and lease.reported_at == t0 + timedelta(seconds=61)
    token.refresh_from_db()
    assert token.active_leases == 0
    # An expiry is nobody's verdict on the token.
    assert (token.status, token.success_count, token.error_count) == (Status.ACTIVE, 0, 0)
    again = services.lease_token(
        organization=organization, pool=default_pool, user=user, now=t0 + timedelta(seconds=62)
    )
    assert again.token.pk == token.pk


def test_provision_over_http_frees_slots_of_leases_past_their_ttl(organization, default_pool, api, user, make_token):
    token = make_token(organization, max_concurrent_leases=1)
    stale = services.lease_token(
        organization=organization, pool=default_pool, user=user, now=timezone.now() - timedelta(seconds=601)
    )
    services.leases_expire_overdue(now=timezone.now(), force=True)

    body = provision(api)

    assert body["token_id"] == str(token.pk)
    assert Lease.objects.get(pk=stale.lease.pk).outcome == Outcome.EXPIRED


# --- 503 and Retry-After -------------------------------------------------------------------------------


def test_quarantined_pool_answers_503_with_retry_after_of_about_an_hour(organization, api, make_token):
    token = make_token(organization)
    provision(api)
    assert report_ok(api, token.pk, "error", error=CREDITS_402)["token_status"] == "quarantined"

    response = api.get(PROVISION)

    assert_no_token_available(response)
    assert 3590 <= int(response["Retry-After"]) <= 3600


def test_retry_after_names_the_soonest_returning_token(organization, api, make_token):
    quarantined = make_token(organization)
    cooling = make_token(organization)
    quarantined_lease = provision(api)
    assert quarantined_lease["token_id"] == str(quarantined.pk)
    report_ok(api, quarantined.pk, "error", error=CREDITS_402)
    for _ in range(3):  # only `cooling` is left to lease
        assert provision(api)["token_id"] == str(cooling.pk)
        report_ok(api, cooling.pk, "error", error=TIMEOUT)

    response = api.get(PROVISION)

    assert_no_token_available(response)
    # The breaker's 5 min cooldown ends long before the 1 h quarantine.
    assert 290 <= int(response["Retry-After"]) <= 300


@pytest.mark.parametrize("status", [Status.INVALID, Status.DISABLED])
def test_pool_of_tokens_that_never_return_by_themselves_has_no_retry_after(
    organization, api, make_token_in, status
):
    make_token_in(organization, status)
    make_token_in(organization, status)

    response = api.get(PROVISION)

    assert_no_token_available(response)
    assert "Retry-After" not in response


def test_retry_after_counts_the_lease_end_of_a_due_token_at_its_cap(
    organization, make_member, client_for, api, make_token
):
    token = make_token(organization, max_concurrent_leases=1)
    provision(api)  # the one slot, open for the next 600 s
    # Rate limited meanwhile (say, by a colleague's earlier lease), and its 60 s of cooling are already over.
    HFToken.objects.filter(pk=token.pk).update(
        status=Status.COOLING, available_at=timezone.now() - timedelta(seconds=1)
    )

    response = api.get(PROVISION)

    assert_no_token_available(response)
    assert 590 <= int(response.get("Retry-After", 0)) <= 600


def test_empty_pool_answers_503_without_retry_after(organization, api):
    response = api.get(PROVISION)

    assert_no_token_available(response)
    assert "Retry-After" not in response


# --- Quarantine effects of reports ----------------------------------------------------------------------


def test_credits_exceeded_report_takes_the_token_out_until_its_hour_is_over(organization, api, make_token):
    spent = make_token(organization)
    others = [make_token(organization), make_token(organization)]
    assert provision(api)["token_id"] == str(spent.pk)

    body = report_ok(api, spent.pk, "error", error=CREDITS_402)

    assert body["token_status"] == "quarantined" and body["duplicate"] is False
    assert spent.pk not in leased_ids(api, 20)
    spent.refresh_from_db()
    hour = spent.available_at - timezone.now()
    assert timedelta(minutes=59) < hour <= timedelta(hours=1)
    assert spent.last_error_type == "credits_exceeded"

    HFToken.objects.filter(pk=spent.pk).update(available_at=timezone.now() - timedelta(seconds=1))

    assert spent.pk in leased_ids(api, 3)
    spent.refresh_from_db()
    assert spent.status == Status.ACTIVE
    assert TokenEvent.objects.filter(token=spent, from_status=Status.QUARANTINED, to_status=Status.ACTIVE).exists()
    assert {o.pk for o in others} <= set(leased_ids(api, 3))


def test_three_consecutive_timeouts_put_the_token_to_cooling(organization, api, make_token):
    token = make_token(organization)

    statuses = []
    for _ in range(3):
        provision(api)
        statuses.append(report_ok(api, token.pk, "error", error=TIMEOUT)["token_status"])

    assert statuses == ["active", "active", "cooling"]
    assert_no_token_available(api.get(PROVISION))


def test_a_success_between_timeouts_resets_the_count(organization, api, make_token):
    token = make_token(organization)

    statuses = []
    for outcome in ("error", "error", "success", "error", "error"):
        provision(api)
        error = TIMEOUT if outcome == "error" else None
        statuses.append(report_ok(api, token.pk, outcome, error=error)["token_status"])

    assert statuses == ["active"] * 5
    assert provision(api)["token_id"] == str(token.pk)


def test_invalid_credentials_report_makes_the_token_invalid_for_good(organization, api, make_token):
    token = make_token(organization)
    provision(api)

    assert report_ok(api, token.pk, "error", error=INVALID_401)["token_status"] == "invalid"

    response = api.get(PROVISION)
    assert_no_token_available(response)
    assert "Retry-After" not in response
    token.refresh_from_db()
    assert token.status == Status.INVALID and token.last_error_type == "invalid_credentials"


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (INVALID_401, "invalid_credentials"),
        (CREDITS_402, "credits_exceeded"),
        ("402 Client Error: Payment Required for url: https://router.huggingface.co/v1/x", "credits_exceeded"),
        (TIMEOUT, "timeout"),
        ("The read operation TIMED OUT", "timeout"),
        ("('connection aborted.', RemoteDisconnected('Remote end closed connection'))", "connection_error"),
        ("429 Client Error: Too Many Requests for url: https://router.huggingface.co/v1/x", "rate_limited"),
        ("Rate limit reached, slow down", "rate_limited"),
        ("something odd happened", "unknown"),
        ("", "unknown"),
    ],
)
def test_server_classifies_errors_sent_without_error_type(organization, api, make_token, error, error_type):
    token = make_token(organization)
    lease_id = provision(api)["lease_id"]

    report_ok(api, token.pk, "error", error=error)

    lease = Lease.objects.get(pk=lease_id)
    assert (lease.outcome, lease.error_type) == (Outcome.ERROR, error_type)
    token.refresh_from_db()
    assert token.last_error_type == error_type and token.error_count == 1


def test_error_type_sent_by_the_client_wins_over_the_server_classification(organization, api, make_token):
    token = make_token(organization)
    lease_id = provision(api)["lease_id"]

    body = report_ok(api, token.pk, "error", error="upstream said no", error_type="credits_exceeded")

    assert body["token_status"] == "quarantined"
    assert Lease.objects.get(pk=lease_id).error_type == "credits_exceeded"


def test_success_report_closes_the_lease_and_counts(organization, api, make_token):
    token = make_token(organization)
    lease_id = provision(api)["lease_id"]

    response = report(api, token.pk, "success", client_name="nightly-batch")

    assert response.status_code == 200  # exactly 200: hf_token_utils counts 201 as a failure
    assert response.json() == {"ok": True, "token_status": "active", "lease_id": lease_id, "duplicate": False}
    lease = Lease.objects.get(pk=lease_id)
    assert lease.outcome == Outcome.SUCCESS and lease.reported_at is not None
    assert lease.client_name == "nightly-batch"
    token.refresh_from_db()
    assert (token.success_count, token.error_count, token.active_leases) == (1, 0, 0)


def test_legacy_report_path_without_hf_suffix_works(organization, api, make_token):
    token = make_token(organization)
    provision(api)

    response = report(api, token.pk, "error", path="/keys/report", error=CREDITS_402)

    assert response.status_code == 200
    assert response.json()["token_status"] == "quarantined"


def test_report_accepts_token_id_as_a_number_too(organization, api, make_token):
    token = make_token(organization)
    provision(api)

    response = api.post(REPORT, {"token_id": token.pk, "status": "success"}, format="json")

    assert response.status_code == 200 and response.json()["ok"] is True


def test_report_with_null_optional_fields_is_accepted(organization, api, make_token):
    token = make_token(organization)
    provision(api)

    response = api.post(
        REPORT,
        {"token_id": str(token.pk), "status": "success", "error": None, "error_type": None, "client_name": None},
        format="json",
    )

    assert response.status_code == 200


# --- Report validation, tenancy and duplicates --------------------------------------------------------------


def _bad_bodies(token_pk: int) -> dict:
    return {
        "status maybe": ({"token_id": str(token_pk), "status": "maybe"}, "json"),
        "missing token_id": ({"status": "error", "error": CREDITS_402}, "json"),
        "token_id abc": ({"token_id": "abc", "status": "error", "error": CREDITS_402}, "json"),
        "missing status": ({"token_id": str(token_pk), "error": CREDITS_402}, "json"),
        "body a list": ([{"token_id": str(token_pk), "status": "error", "error": CREDITS_402}], "json"),
        "malformed json": ('{"token_id": "%d", "status": "error",' % token_pk, "raw"),
    }


@pytest.mark.parametrize(
    "case", ["status maybe", "missing token_id", "token_id abc", "missing status", "body a list", "malformed json"]
)
def test_bad_reports_are_400_and_change_nothing(organization, api, make_token, case):
    token = make_token(organization)
    lease_id = provision(api)["lease_id"]
    before = row(token)
    body, kind = _bad_bodies(token.pk)[case]

    if kind == "raw":
        response = api.generic("POST", REPORT, body, content_type="application/json")
    else:
        response = api.post(REPORT, body, format="json")

    assert response.status_code == 400, response.content[:300]
    assert response.json()["error_type"] == "validation"
    assert row(token) == before
    assert Lease.objects.get(pk=lease_id).reported_at is None


def test_report_of_another_organizations_token_is_404_and_leaves_it_untouched(
    organization, make_organization, make_member, client_for, api, make_token
):
    other_org = make_organization("globex")
    foreign = make_token(other_org)
    _, foreign_key = make_member(other_org, Role.USER)
    foreign_lease = provision(client_for(foreign_key))["lease_id"]
    before = row(foreign)

    responses = [
        report(api, foreign.pk, "error", error=CREDITS_402),
        report(api, foreign.pk, "error", error=INVALID_401, lease_id=foreign_lease),
        report(api, foreign.pk, "success"),
    ]

    for response in responses:
        assert response.status_code == 404
        assert response.json()["error_type"] == "not_found"
    after = row(foreign)
    for field, value in before.items():
        assert after[field] == value, field
    lease = Lease.objects.get(pk=foreign_lease)
    assert lease.reported_at is None and lease.outcome == ""
    assert not TokenEvent.objects.filter(token=foreign).exclude(reason="added").exists()


def test_report_of_an_unknown_token_id_is_404(organization, api, make_token):
    make_token(organization)

    response = report(api, 987654, "error", error=CREDITS_402)

    assert response.status_code == 404
    assert response.json()["error_type"] == "not_found"


def test_reporting_the_same_lease_twice_changes_nothing_the_second_time(organization, api, make_token):
    token = make_token(organization)
    lease_id = provision(api)["lease_id"]
    first = report_ok(api, token.pk, "success", lease_id=lease_id)
    after_first = row(token)

    second = report_ok(api, token.pk, "error", error=CREDITS_402, lease_id=lease_id)

    assert first["duplicate"] is False
    assert second["duplicate"] is True and second["token_status"] == "active"
    assert row(token) == after_first
    lease = Lease.objects.get(pk=lease_id)
    assert lease.outcome == Outcome.SUCCESS and lease.error == ""
    assert provision(api)["token_id"] == str(token.pk)


def test_lease_id_of_another_token_is_400_and_changes_nothing(organization, api, make_token):
    first, second = make_token(organization), make_token(organization)
    lease_of_first = provision(api)["lease_id"]
    provision(api)
    before = (row(first), row(second))

    response = report(api, second.pk, "error", error=CREDITS_402, lease_id=lease_of_first)

    assert response.status_code == 400
    assert response.json()["error_type"] == "validation"
    assert (row(first), row(second)) == before
    assert Lease.objects.get(pk=lease_of_first).reported_at is None


def test_report_without_lease_id_closes_the_oldest_open_lease_of_the_same_key(
    organization, member, client_for, make_token
):
    membership, first_key = member
    _, second_key = account_services.api_key_create(membership=membership, name="second", actor=None)
    first_api, second_api = client_for(first_key), client_for(second_key)
    token = make_token(organization)
    older = provision(first_api)["lease_id"]
    newer = provision(first_api)["lease_id"]
    other_key_lease = provision(second_api)["lease_id"]

    by_second_key = report_ok(second_api, token.pk, "success")
    by_first_key = report_ok(first_api, token.pk, "success")

    assert by_second_key["lease_id"] == other_key_lease
    assert by_first_key["lease_id"] == older
    assert Lease.objects.get(pk=newer).reported_at is None
    token.refresh_from_db()
    assert token.active_leases == 1


def test_a_report_from_someone_holding_no_lease_changes_nothing(organization, api, make_member, client_for, make_token):
    # Otherwise any key of the organization could take every token out of rotation with made-up reports.
    token = make_token(organization)
    provision(api)  # someone else's lease
    _, bystander_key = make_member(organization, Role.USER)
    before = row(token)

    response = client_for(bystander_key).post(REPORT, {"token_id": token.pk, "status": "error", "error": CREDITS_402}, format="json")

    assert response.status_code == 404 and response.json()["error_type"] == "not_found"
    assert row(token) == before


def test_cancelled_report_closes_the_lease_without_judging_the_token(organization, default_pool, user, make_token):
    token = make_token(organization, max_concurrent_leases=1)
    for _ in range(2):  # two earlier timeouts: one more real error would open the breaker
        earlier = services.lease_token(organization=organization, pool=default_pool, user=user)
        services.report_outcome(
            organization=organization, token_id=token.pk, success=False, error=TIMEOUT, user=user,
            lease_id=earlier.lease.pk,
        )
    grant = services.lease_token(organization=organization, pool=default_pool, user=user)
    before = row(token)
    assert (before["consecutive_failures"], before["active_leases"]) == (2, 1)

    result = services.report_outcome(
        organization=organization, token_id=token.pk, success=False, error=TIMEOUT, user=user,
        lease_id=grant.lease.pk, cancelled=True,
    )

    assert result.lease.outcome == Outcome.CANCELLED
    after = row(token)
    assert after["active_leases"] == 0
    for field in ("status", "consecutive_failures", "error_count", "success_count", "last_error_type"):
        assert after[field] == before[field], field
    assert services.lease_token(organization=organization, pool=default_pool, user=user).token.pk == token.pk


def test_a_late_error_report_on_an_expired_lease_still_quarantines_the_token(organization, make_member, make_token):
    member, _ = make_member(organization, Role.USER)
    token = make_token(organization)
    pool = TokenPool.objects.get(organization=organization, name=TokenPool.DEFAULT_NAME)
    leased_at = timezone.now() - timedelta(hours=1)
    grant = services.lease_token(organization=organization, pool=pool, user=member.user, now=leased_at)
    services.leases_expire_overdue(now=timezone.now(), force=True)

    result = services.report_outcome(
        organization=organization, token_id=token.pk, lease_id=grant.lease.pk, user=member.user, success=False,
        error_type="credits_exceeded",
    )

    assert result.duplicate is False
    assert result.token.status == "quarantined"
    grant.lease.refresh_from_db()
    assert grant.lease.outcome == "error"  # reported late, but reported


def test_a_key_created_pinned_to_a_pool_leases_only_from_it(organization, admin_client, make_token):
    services.pool_create(organization=organization, name="batch", actor=None)
    make_token(organization)  # in default
    batch_token = make_token(organization, pool="batch")
    me = admin_client.get("/me").json()

    created = admin_client.post(f"/admin/users/{me['id']}/api-keys", {"name": "batch job", "pool": "batch"}, format="json")
    assert created.status_code == 201 and created.json()["pool"] == "batch"
    pinned = admin_client.__class__()
    pinned.credentials(HTTP_AUTHORIZATION=f"Bearer {created.json()['api_key']}")

    assert provision(pinned)["token_id"] == str(batch_token.pk)
    assert pinned.get(PROVISION, {"pool": "default"}).status_code == 403
    unknown = admin_client.post(f"/admin/users/{me['id']}/api-keys", {"pool": "nope"}, format="json")
    assert unknown.status_code == 400 and "pool" in unknown.json()["fields"]
