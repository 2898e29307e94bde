"""Every dashboard page for every role: who may see it, which controls they get, and which POSTs the server
refuses whatever the page showed."""

import re

import pytest

from accounts.roles import Role
from tests.dashboard.conftest import ROLES

SUPERUSER = "superuser"

# page -> the roles that may open it (the Perm matrix: docs/api.md "Roles").
PAGES = {
    "/": set(ROLES),
    "/tokens/": set(ROLES),
    "/tokens/{token}/": set(ROLES),
    "/pools/": set(ROLES),
    "/users/": {Role.ADMIN},
    "/api-keys/": {Role.ADMIN, Role.MANAGER, Role.USER},
    "/usage/": set(ROLES),
    "/usage/?group_by=token&format=csv": set(ROLES),
    "/audit/": {Role.ADMIN},
    "/chat/": {Role.ADMIN, Role.MANAGER, Role.USER},
    "/organizations/": set(),
    "/password/": set(ROLES),
}


def _browser(browser_for, role):
    if role == SUPERUSER:
        return browser_for(Role.ADMIN, is_superuser=True)
    return browser_for(role)


def post_forms(html: str) -> list[str]:
    """The actions of the page's POST forms, less the ones everyone has (log out, switch organization)."""
    tags = [tag for tag in re.findall(r"<form[^>]*>", html) if 'method="post"' in tag]
    actions = [(re.findall(r'action="([^"]*)"', tag) or [""])[0] for tag in tags]
    return [a for a in actions if a not in ("/logout/", "/organization/")]


@pytest.mark.django_db
@pytest.mark.parametrize("role", [*ROLES, SUPERUSER])
@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_answers_every_role_as_the_matrix_says(browser_for, token, page, role):
    browser = _browser(browser_for, role)
    allowed = role == SUPERUSER or role in PAGES[page]

    response = browser.get(page.format(token=token.pk))

    assert response.status_code == (200 if allowed else 403), response.content[:500]


@pytest.mark.django_db
@pytest.mark.parametrize("page", [p for p in PAGES if "csv" not in p])
def test_a_viewer_sees_no_control_that_changes_anything(browser_for, token, page):
    viewer = browser_for(Role.VIEWER)

    response = viewer.get(page.format(token=token.pk))

    if response.status_code == 200 and page != "/password/":
        assert post_forms(response.content.decode()) == []


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["/tokens/", "/pools/", "/usage/", "/password/", "/chat/"])
def test_strangers_are_sent_to_the_login_page(client, page):
    response = client.get(page)

    assert response.status_code == 302
    assert response["Location"].startswith(f"/login/?next={page}")


@pytest.mark.django_db
def test_the_front_page_is_the_login_form_for_strangers(client):
    response = client.get("/")

    assert response.status_code == 200
    assert b'name="password"' in response.content and b"csrfmiddlewaretoken" in response.content


@pytest.mark.django_db
def test_navigation_follows_the_role(browser_for):
    expected = {
        Role.ADMIN: {"Users", "API keys", "Audit log", "Chat"},
        Role.MANAGER: {"API keys", "Chat"},
        Role.USER: {"API keys", "Chat"},
        Role.VIEWER: set(),
    }
    optional = {"Users", "API keys", "Audit log", "Chat", "Organizations"}
    for role, links in expected.items():
        nav = browser_for(role).get("/").content.decode().split('<nav class="nav"', 1)[1].split("</nav>", 1)[0]
        shown = {name for name in optional if f">{name}</a>" in nav}
        assert shown == links, role
        assert {">Overview<", ">Tokens<", ">Pools<", ">Usage<"} <= {f">{n}<" for n in re.findall(r">([^<]+)</a>", nav)}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "role, add_token, token_actions, pool_settings",
    [
        (Role.ADMIN, True, True, True),
        (Role.MANAGER, True, True, True),
        (Role.USER, False, False, False),
        (Role.VIEWER, False, False, False),
    ],
)
def test_token_and_pool_controls_follow_the_role(browser_for, token, role, add_token, token_actions, pool_settings):
    browser = browser_for(role)

    tokens_page = browser.get("/tokens/").content.decode()
    detail_page = browser.get(f"/tokens/{token.pk}/").content.decode()
    pools_page = browser.get("/pools/").content.decode()

    assert ("Add a token" in tokens_page) is add_token
    assert ("Import many" in tokens_page) is add_token
    assert (f"/tokens/{token.pk}/disable/" in tokens_page) is token_actions
    assert (f"/tokens/{token.pk}/validate/" in detail_page) is token_actions
    assert ("New pool" in pools_page) is pool_settings
    assert "team-a-1" in tokens_page  # everyone reads the table


@pytest.mark.django_db
def test_an_admin_sees_every_key_and_a_user_only_their_own(browser_for):
    admin = browser_for(Role.ADMIN, username="alice")
    user = browser_for(Role.USER, username="bob")

    admin_page = admin.get("/api-keys/").content.decode()
    user_page = user.get("/api-keys/").content.decode()

    assert user.api_key[:8] in admin_page and admin.api_key[:8] in admin_page
    assert user.api_key[:8] in user_page and admin.api_key[:8] not in user_page
    assert 'name="owner"' in admin_page and 'name="owner"' not in user_page


# --- The server refuses what the role may not do, whatever the page showed ---------------------------

# (method path, form data) -> roles allowed
POSTS = [
    ("/tokens/add/", {"token": "hf_refused_0123456789abcd", "pool": "default", "weight": 1}, {Role.ADMIN, Role.MANAGER}),
    ("/tokens/import/", {"text": "hf_refused_0123456789abcd", "pool": "default"}, {Role.ADMIN, Role.MANAGER}),
    ("/tokens/{token}/", {"label": "renamed", "weight": 2}, {Role.ADMIN, Role.MANAGER}),
    ("/tokens/{token}/disable/", {}, {Role.ADMIN, Role.MANAGER}),
    ("/tokens/{token}/delete/", {}, {Role.ADMIN, Role.MANAGER}),
    ("/pools/", {"new-name": "extra", "new-strategy": "weighted_random", "new-lease_ttl_seconds": 60,
                 "new-credits_stages_seconds": "60", "new-rate_limit_base_seconds": 1, "new-rate_limit_max_seconds": 2,
                 "new-breaker_threshold": 1, "new-breaker_cooldown_seconds": 1}, {Role.ADMIN, Role.MANAGER}),
    ("/users/", {"username": "newbie", "role": "user"}, {Role.ADMIN}),
    ("/api-keys/", {"name": "mine"}, {Role.ADMIN, Role.MANAGER, Role.USER}),
    ("/audit/", {}, {Role.ADMIN}),
]


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("path, data, allowed", POSTS, ids=[p for p, _, _ in POSTS])
def test_posts_are_refused_to_roles_without_the_permission(browser_for, token, role, path, data, allowed):
    browser = browser_for(role)

    response = browser.post(path.format(token=token.pk), data)

    if role in allowed:
        assert response.status_code in (200, 302, 405), response.content[:300]
    else:
        assert response.status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize("role", [Role.USER, Role.VIEWER])
def test_refused_posts_change_nothing(browser_for, token, role, organization):
    from accounts.models import Membership
    from tokens.models import HFToken, TokenPool

    browser = browser_for(role)
    browser.post(f"/tokens/{token.pk}/disable/")
    browser.post(f"/tokens/{token.pk}/delete/")
    browser.post("/users/", {"username": "sneaky", "role": "admin"})
    pool = TokenPool.objects.get(organization=organization, name="default")
    browser.post(f"/pools/{pool.pk}/", {f"pool-{pool.pk}-strategy": "weighted_random"})

    assert HFToken.objects.get(pk=token.pk).status == "active"
    assert not Membership.objects.filter(user__username="sneaky").exists()
    assert TokenPool.objects.get(pk=pool.pk).strategy == "least_recently_leased"


@pytest.mark.django_db
def test_posts_without_a_csrf_token_are_refused(organization, make_member, token):
    from django.test import Client

    membership, _ = make_member(organization, Role.ADMIN)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(membership.user)

    response = browser.post(f"/tokens/{token.pk}/disable/")

    assert response.status_code == 403
    assert b"CSRF" in response.content


@pytest.mark.django_db
def test_every_form_carries_a_csrf_token(browser_for, token):
    admin = browser_for(Role.ADMIN, is_superuser=True)
    for page in PAGES:
        if "csv" in page:
            continue
        html = admin.get(page.format(token=token.pk)).content.decode()
        for form in re.findall(r'<form[^>]*method="post".*?</form>', html, flags=re.S):
            assert "csrfmiddlewaretoken" in form, (page, form[:200])
