"""What a person does on the dashboard, through the Django test client: each use case ends in the same
service the REST API calls, with its audit entry, and no secret is rendered after it was shown once."""

import csv
import io
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiKey, AuditEvent, Membership
from accounts.roles import Role
from tokens.models import HFToken, TokenPool
from tokens.policy import Status

SECRET = "hf_dashboard_secret_0123456789abcdef"
PAGES = ["/", "/tokens/", "/pools/", "/usage/", "/usage/?group_by=token", "/audit/", "/api-keys/", "/users/"]


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- Sessions ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_login_at_the_front_page_then_logout(organization):
    account_services.user_create(
        organization=organization, username="carol", password="a-long-password-1", role=Role.MANAGER, actor=None
    )
    browser = Client()

    refused = browser.post("/login/", {"username": "carol", "password": "wrong"})
    logged_in = browser.post("/login/", {"username": "carol", "password": "a-long-password-1", "next": "/"})
    overview = browser.get("/")
    logged_out = browser.post("/logout/")

    assert refused.status_code == 200 and b"Wrong username or password" in refused.content
    assert logged_in.status_code == 302 and logged_in["Location"] == "/"
    assert b"Overview" in overview.content and b"carol" in overview.content
    assert logged_out.status_code == 302
    assert browser.get("/tokens/").status_code == 302


@pytest.mark.django_db
def test_password_change(organization):
    account_services.user_create(
        organization=organization, username="dave", password="a-long-password-1", role=Role.USER, actor=None
    )
    browser = Client()
    browser.post("/login/", {"username": "dave", "password": "a-long-password-1"})

    response = browser.post(
        "/password/",
        {"old_password": "a-long-password-1", "new_password1": "another-long-pw-2", "new_password2": "another-long-pw-2"},
    )

    assert response.status_code == 302
    assert Client().login(username="dave", password="another-long-pw-2")


@pytest.mark.django_db
def test_people_in_several_organizations_switch_between_them(organization, make_organization, browser_for):
    other = make_organization("globex")
    browser = browser_for(Role.VIEWER, username="erin")
    Membership.objects.create(user=browser.membership.user, organization=other, role=Role.ADMIN)

    before = browser.get("/").content.decode()
    switched = browser.post("/organization/", {"organization": other.pk})
    after = browser.get("/")
    audit_after = browser.get("/audit/")

    assert "Globex" in before and 'name="organization"' in before
    assert switched.status_code == 302
    assert after.context["viewer"].organization == other
    assert audit_after.status_code == 200  # erin is admin there


@pytest.mark.django_db
def test_switching_to_an_organization_one_is_not_in_is_refused(organization, make_organization, browser_for):
    other = make_organization("initech")
    browser = browser_for(Role.ADMIN)

    response = browser.post("/organization/", {"organization": other.pk}, follow=True)

    assert response.context["viewer"].organization == organization
    assert any("not an active member" in m for m in messages_of(response))


@pytest.mark.django_db
def test_a_member_of_no_active_organization_sees_why(organization, browser_for):
    browser = browser_for(Role.ADMIN)
    Membership.objects.filter(pk=browser.membership.pk).update(is_active=False)

    response = browser.get("/")

    assert response.status_code == 403
    assert b"not an active member" in response.content


# --- Tokens --------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_adding_a_token_never_renders_its_secret_again(admin_browser, organization):
    response = admin_browser.post(
        "/tokens/add/", {"token": SECRET, "label": "team-a-1", "pool": "default", "weight": 2}, follow=True
    )

    token = HFToken.objects.get(organization=organization)
    assert (token.label, token.weight, token.last4) == ("team-a-1", 2, "cdef")
    assert any("Added" in m for m in messages_of(response))
    for page in [*PAGES, f"/tokens/{token.pk}/", "/usage/?format=csv"]:
        body = admin_browser.get(page).content.decode()
        assert SECRET not in body and SECRET[3:-4] not in body, page


@pytest.mark.django_db
def test_a_duplicate_token_is_refused_in_plain_words(admin_browser, token):
    response = admin_browser.post("/tokens/add/", {"token": SECRET, "pool": "default", "weight": 1}, follow=True)

    assert any("already in the organization" in m for m in messages_of(response))
    assert HFToken.objects.filter(organization=token.organization).count() == 1


@pytest.mark.django_db
def test_a_malformed_token_is_refused(admin_browser, organization):
    response = admin_browser.post("/tokens/add/", {"token": "has space", "pool": "default", "weight": 1}, follow=True)

    assert any("printable ASCII" in m for m in messages_of(response))
    assert not HFToken.objects.filter(organization=organization).exists()


@pytest.mark.django_db
def test_adding_with_validation_asks_hugging_face(admin_browser, organization, standin):
    admin_browser.post(
        "/tokens/add/", {"token": "hf_standin_invalid_0001", "pool": "default", "weight": 1, "validate": "on"}
    )

    assert HFToken.objects.get(organization=organization).status == Status.INVALID


@pytest.mark.django_db
def test_importing_many_tokens_reports_duplicates(admin_browser, organization, token):
    text = f"hf_import_one_000000001\n\n  hf_import_two_000000002  \n{SECRET}\n"

    response = admin_browser.post(
        "/tokens/import/", {"text": text, "pool": "default", "label_prefix": "bulk-"}, follow=True
    )

    labels = set(HFToken.objects.filter(organization=organization).values_list("label", flat=True))
    assert labels == {"team-a-1", "bulk-1", "bulk-2"}
    assert any("Imported 2" in m and "…cdef" in m for m in messages_of(response))


@pytest.mark.django_db
def test_token_actions_call_the_services_and_leave_history(admin_browser, token):
    admin_browser.post(f"/tokens/{token.pk}/disable/")
    assert HFToken.objects.get(pk=token.pk).status == Status.DISABLED
    admin_browser.post(f"/tokens/{token.pk}/enable/")
    assert HFToken.objects.get(pk=token.pk).status == Status.ACTIVE
    refused = admin_browser.post(f"/tokens/{token.pk}/release/", follow=True)
    assert any("Only cooling or quarantined" in m for m in messages_of(refused))

    HFToken.objects.filter(pk=token.pk).update(
        status=Status.QUARANTINED, available_at=timezone.now() + timedelta(hours=1)
    )
    page = admin_browser.get("/tokens/").content.decode()
    assert "data-until=" in page and "/release/" in page
    admin_browser.post(f"/tokens/{token.pk}/release/")
    assert HFToken.objects.get(pk=token.pk).status == Status.ACTIVE

    history = admin_browser.get(f"/tokens/{token.pk}/").content.decode()
    assert "disabled by a person" in history and "enabled by a person" in history and "released by a person" in history
    actions = set(AuditEvent.objects.filter(organization=token.organization).values_list("action", flat=True))
    assert {"token.disabled", "token.enabled", "token.released"} <= actions

    admin_browser.post(f"/tokens/{token.pk}/delete/")
    assert not HFToken.objects.filter(pk=token.pk).exists()


@pytest.mark.django_db
def test_token_settings_change(admin_browser, token):
    admin_browser.post(f"/tokens/{token.pk}/", {"label": "renamed", "weight": 5, "max_concurrent_leases": 2})

    token.refresh_from_db()
    assert (token.label, token.weight, token.max_concurrent_leases) == ("renamed", 5, 2)


@pytest.mark.django_db
def test_the_tokens_table_filters_by_pool_and_status(admin_browser, organization, make_token):
    make_token(organization, label="alpha")
    beta = make_token(organization, label="beta")
    HFToken.objects.filter(pk=beta.pk).update(status=Status.DISABLED)

    page = admin_browser.get("/tokens/?status=disabled").content.decode()

    assert ">beta<" in page and ">alpha<" not in page


@pytest.mark.django_db
def test_another_organizations_token_is_not_found(browser_for, make_organization, make_token):
    foreign = make_token(make_organization("umbrella"), label="theirs")
    admin = browser_for(Role.ADMIN)

    assert admin.get(f"/tokens/{foreign.pk}/").status_code == 404
    assert admin.post(f"/tokens/{foreign.pk}/disable/").status_code == 404
    assert HFToken.objects.get(pk=foreign.pk).status == Status.ACTIVE


# --- Pools ---------------------------------------------------------------------------------------------


def pool_form(prefix: str, **overrides) -> dict:
    fields = {
        "name": "batch", "description": "", "strategy": "weighted_random", "lease_ttl_seconds": 120,
        "credits_stages_seconds": "60, 120", "rate_limit_base_seconds": 10, "rate_limit_max_seconds": 100,
        "breaker_threshold": 2, "breaker_cooldown_seconds": 30, **overrides,
    }
    return {f"{prefix}-{name}": value for name, value in fields.items()}


@pytest.mark.django_db
def test_pools_are_created_changed_and_deleted(admin_browser, organization):
    admin_browser.post("/pools/", pool_form("new"))
    pool = TokenPool.objects.get(organization=organization, name="batch")
    assert (pool.strategy, pool.credits_stages_seconds, pool.breaker_threshold) == ("weighted_random", [60, 120], 2)

    admin_browser.post(f"/pools/{pool.pk}/", pool_form(f"pool-{pool.pk}", strategy="fewest_recent_errors", breaker_threshold=7))
    pool.refresh_from_db()
    assert (pool.strategy, pool.breaker_threshold) == ("fewest_recent_errors", 7)

    admin_browser.post(f"/pools/{pool.pk}/delete/")
    assert not TokenPool.objects.filter(pk=pool.pk).exists()


@pytest.mark.django_db
def test_bad_pool_settings_are_shown_with_their_errors(admin_browser, organization):
    response = admin_browser.post("/pools/", pool_form("new", credits_stages_seconds="soon"))

    assert response.status_code == 400
    assert b"Whole seconds separated by commas" in response.content
    assert not TokenPool.objects.filter(organization=organization, name="batch").exists()


@pytest.mark.django_db
def test_the_default_pool_keeps_its_name_and_cannot_be_deleted(admin_browser, organization):
    pool = TokenPool.objects.get(organization=organization, name="default")

    admin_browser.post(f"/pools/{pool.pk}/", pool_form(f"pool-{pool.pk}", name="renamed"))
    response = admin_browser.post(f"/pools/{pool.pk}/delete/", follow=True)

    pool.refresh_from_db()
    assert pool.name == "default" and pool.strategy == "weighted_random"
    assert any("cannot be deleted" in m for m in messages_of(response))


# --- Users and keys ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_new_users_key_is_shown_once_and_works(admin_browser, client_for):
    created = admin_browser.post("/users/", {"username": "frank", "role": "user", "email": "f@example.com"})
    again = admin_browser.get("/users/")

    html = created.content.decode()
    raw_key = html.split('id="new-secret" class="secret" aria-label="The new API key"', 1)[0].rsplit('value="', 1)[1].split('"')[0]
    assert created.status_code == 200 and created["Cache-Control"] == "no-store"
    assert raw_key.startswith("pk_") and "data-copy" in html
    assert raw_key not in again.content.decode()
    assert client_for(raw_key).get("/me").json()["username"] == "frank"


@pytest.mark.django_db
def test_roles_change_and_users_are_deactivated(admin_browser, browser_for, client_for):
    bob = browser_for(Role.USER, username="bob")
    user_id = bob.membership.user_id

    admin_browser.post(f"/users/{user_id}/role/", {"role": "manager"})
    assert Membership.objects.get(pk=bob.membership.pk).role == Role.MANAGER
    admin_browser.post(f"/users/{user_id}/deactivate/")
    assert client_for(bob.api_key).get("/me").status_code == 403
    admin_browser.post(f"/users/{user_id}/reactivate/")
    assert client_for(bob.api_key).get("/me").status_code == 200


@pytest.mark.django_db
def test_the_last_admin_cannot_demote_themself(admin_browser):
    response = admin_browser.post(f"/users/{admin_browser.membership.user_id}/role/", {"role": "viewer"}, follow=True)

    assert any("last active admin" in m for m in messages_of(response))
    assert Membership.objects.get(pk=admin_browser.membership.pk).role == Role.ADMIN


@pytest.mark.django_db
def test_a_user_creates_and_revokes_their_own_key(browser_for, client_for):
    user = browser_for(Role.USER)

    created = user.post("/api-keys/", {"name": "laptop"})
    raw_key = created.content.decode().split('class="secret" aria-label="The new API key"', 1)[0].rsplit('value="', 1)[1].split('"')[0]
    key = ApiKey.objects.get(name="laptop")
    assert client_for(raw_key).get("/me").status_code == 200
    assert created["Cache-Control"] == "no-store"

    user.post(f"/api-keys/{key.pk}/revoke/")
    assert client_for(raw_key).get("/me").status_code == 401


@pytest.mark.django_db
def test_a_user_cannot_revoke_someone_elses_key(browser_for):
    admin = browser_for(Role.ADMIN)
    user = browser_for(Role.USER)
    admin_key = ApiKey.objects.get(membership=admin.membership)

    response = user.post(f"/api-keys/{admin_key.pk}/revoke/")

    assert response.status_code == 404
    assert ApiKey.objects.get(pk=admin_key.pk).revoked_at is None


@pytest.mark.django_db
def test_an_admin_creates_a_key_for_another_user_pinned_to_a_pool(admin_browser, browser_for):
    bob = browser_for(Role.USER, username="bob")

    admin_browser.post("/api-keys/", {"name": "for-bob", "owner": bob.membership.user_id, "pool": "default"})

    key = ApiKey.objects.get(name="for-bob")
    assert key.membership == bob.membership and key.pool.name == "default"


@pytest.mark.django_db
def test_a_user_cannot_create_a_key_for_someone_else(browser_for):
    admin = browser_for(Role.ADMIN)
    user = browser_for(Role.USER)

    user.post("/api-keys/", {"name": "sneaky", "owner": admin.membership.user_id})

    assert ApiKey.objects.get(name="sneaky").membership == user.membership


# --- Usage and audit -----------------------------------------------------------------------------------


@pytest.fixture
def leases(organization, make_member, token, django_capture_on_commit_callbacks):
    """Three leases by a user: two successes and a credits error (their usage counted, as after commit)."""
    from tokens import services as token_services

    membership, _ = make_member(organization, Role.USER, username="leaser")
    with django_capture_on_commit_callbacks(execute=True):
        _lease_three_times(token_services, organization, membership, token)
    return membership


def _lease_three_times(token_services, organization, membership, token):
    for outcome in ("success", "success", "error"):
        grant = token_services.lease_token(
            organization=organization, pool=token.pool, user=membership.user, api_key=None, client_name="t"
        )
        token_services.report_outcome(
            organization=organization, token_id=str(token.pk), success=outcome == "success",
            error="402 Client Error: exceeded your monthly included credits" if outcome == "error" else "",
            error_type=None, client_name="t", lease_id=grant.lease.pk, user=membership.user, api_key=None,
        )
        HFToken.objects.filter(pk=token.pk).update(status=Status.ACTIVE, available_at=None)


@pytest.mark.django_db
@pytest.mark.parametrize("group_by", ["day", "token", "user", "pool"])
def test_usage_table_and_csv(admin_browser, leases, group_by):
    page = admin_browser.get(f"/usage/?group_by={group_by}")
    exported = admin_browser.get(f"/usage/?group_by={group_by}&format=csv")

    rows = page.context["report"]["rows"]
    assert [(r["leases"], r["successes"], r["errors"]) for r in rows] == [(3, 2, 1)]
    assert exported["Content-Type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(exported.content.decode())))
    assert table[0][:5] == [group_by, "key", "leases", "successes", "errors"]
    assert table[1][2:5] == ["3", "2", "1"]
    assert table[1][table[0].index("errors_credits_exceeded")] == "1"


@pytest.mark.django_db
def test_usage_of_a_plain_user_counts_only_their_own_leases(browser_for, leases):
    own = Client()
    own.force_login(leases.user)
    other = browser_for(Role.USER)

    assert own.get("/usage/?group_by=pool").context["report"]["rows"][0]["leases"] == 3
    assert other.get("/usage/?group_by=pool").context["report"]["rows"] == []


@pytest.mark.django_db
def test_usage_rejects_a_window_that_ends_before_it_starts(admin_browser, leases):
    response = admin_browser.get("/usage/?since=2025-02-01&until=2025-01-01")

    assert response.status_code == 200
    assert b"must not come before" in response.content


@pytest.mark.django_db
def test_csv_export_defuses_spreadsheet_formulas(admin_browser, organization, make_member, leases):
    from tokens.models import HFToken as Token

    Token.objects.filter(organization=organization).update(label="=HYPERLINK(1)")

    exported = admin_browser.get("/usage/?group_by=token&format=csv").content.decode()

    assert "'=HYPERLINK(1)" in exported


@pytest.mark.django_db
def test_overview_shows_counts_charts_and_the_soonest_return(admin_browser, organization, leases, token):
    until = timezone.now() + timedelta(minutes=30)
    HFToken.objects.filter(pk=token.pk).update(status=Status.QUARANTINED, available_at=until)

    response = admin_browser.get("/")

    pool = response.context["pools"][0]
    assert dict(pool["statuses"])["quarantined"] == 1
    assert pool["totals"] == {"leases": 3, "successes": 2, "errors": 1}
    assert pool["errors_by_type"] == {"credits_exceeded": 1}
    assert pool["top_users"] == [{"username": "leaser", "leases": 3}]
    assert pool["top_tokens"][0]["token"].pk == token.pk
    assert pool["soonest"].pk == token.pk
    assert len(pool["chart"]["hours"]) == 24 and sum(pool["chart"]["leases"]) == 3
    assert b'id="overview-charts"' in response.content and b"data-until" in response.content


@pytest.mark.django_db
def test_audit_log_filters_by_actor_and_action_and_pages(admin_browser, organization, token):
    for _ in range(30):
        admin_browser.post(f"/tokens/{token.pk}/disable/")
        admin_browser.post(f"/tokens/{token.pk}/enable/")
    username = admin_browser.membership.user.username

    everything = admin_browser.get("/audit/")
    disabled = admin_browser.get(f"/audit/?action=token.disabled&actor={username}")
    family = admin_browser.get("/audit/?action=token")
    nobody = admin_browser.get("/audit/?actor=nobody")
    page_two = admin_browser.get("/audit/?action=token&page=2")

    assert everything.context["page"].paginator.count >= 60
    assert disabled.context["page"].paginator.count == 30
    assert {e.action for e in family.context["page"]} <= {"token.created", "token.disabled", "token.enabled"}
    assert nobody.context["page"].paginator.count == 0
    assert page_two.context["page"].number == 2 and "action=token&amp;page=1" in page_two.content.decode()


# --- The API keeps its own answers -----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/admin/nothing-here", "/keys/nothing", "/v1/nothing", "/api/nothing", "/me/x"])
def test_api_paths_still_answer_json_errors(client, path):
    response = client.get(path)

    assert response.status_code in (401, 404)
    assert response["Content-Type"].startswith("application/json")
    assert "error_type" in response.json()


@pytest.mark.django_db
def test_unknown_dashboard_paths_get_an_html_404(admin_browser):
    response = admin_browser.get("/nothing-here/")

    assert response.status_code == 404
    assert b"Not found" in response.content


@pytest.mark.django_db
def test_chat_models_come_from_the_configuration(browser_for, settings):
    settings.PORTAL_MODELS = ["standin/echo", "standin/slow-echo"]

    response = browser_for(Role.USER).get("/chat/models/")

    assert response.json() == {"models": ["standin/echo", "standin/slow-echo"]}


# --- Superusers ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_superuser_steps_into_another_organization_and_switches_back(browser_for, make_organization, organization):
    other = make_organization("hooli")
    root = browser_for(Role.ADMIN, is_superuser=True, username="root")

    listed = root.get("/organizations/").content.decode()
    entered = root.post(f"/organizations/{other.pk}/enter/")
    overview = root.get("/")
    back = root.post("/organization/", {"organization": organization.pk})

    assert f"/organizations/{other.pk}/enter/" in listed
    assert entered.status_code == 302
    assert overview.context["viewer"].organization == other
    assert f'value="{organization.pk}"' in overview.content.decode()  # the switcher offers the way back
    assert back.status_code == 302 and root.get("/").context["viewer"].organization == organization
    joined = AuditEvent.objects.get(organization=other, action="user.superuser_joined")
    assert joined.actor_username == "root"
    assert Membership.objects.get(user__username="root", organization=other).role == Role.ADMIN


@pytest.mark.django_db
def test_only_superusers_step_into_other_organizations(browser_for, make_organization):
    other = make_organization("pied-piper")
    admin = browser_for(Role.ADMIN)

    response = admin.post(f"/organizations/{other.pk}/enter/")

    assert response.status_code == 403
    assert not Membership.objects.filter(organization=other, user=admin.membership.user).exists()


@pytest.mark.django_db
def test_a_superuser_creates_an_organization_and_its_first_admin(browser_for):
    root = browser_for(Role.ADMIN, is_superuser=True)

    root.post("/organizations/", {"form": "organization", "org-name": "Vandelay", "org-slug": "vandelay"})
    created = root.post(
        "/organizations/", {"form": "admin", "organization": "vandelay", "admin-username": "art", "admin-role": "admin"}
    )

    membership = Membership.objects.get(user__username="art")
    assert membership.organization.slug == "vandelay" and membership.role == Role.ADMIN
    assert b'id="new-secret"' in created.content and created["Cache-Control"] == "no-store"


@pytest.mark.django_db
def test_bad_token_settings_are_shown_with_their_errors(admin_browser, token):
    response = admin_browser.post(f"/tokens/{token.pk}/", {"label": "x", "weight": 0})

    assert response.status_code == 400
    assert b"greater than or equal to 1" in response.content
    token.refresh_from_db()
    assert token.weight == 1
