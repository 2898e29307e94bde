"""The dashboard in a real browser: Playwright driving Debian's Chromium against a live daphne portal with
the stand-in Hugging Face (the live_portal fixture).

Skipped, with the reason, where /usr/bin/chromium or the playwright package is missing (`.ci/run` installs
Chromium with apt; Playwright cannot download its own browser here). With PORTAL_SCREENSHOTS=<dir> set,
test_screenshots_of_every_page saves a picture of each page there (docs/screenshots/, shown in docs/dashboard.md).
"""

import os
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from tests.conftest import LIVE_ADMIN_KEY, LIVE_ADMIN_PASSWORD

CHROMIUM = "/usr/bin/chromium"
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install -e '.[test]')"),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium` (as .ci/run does)"
    ),
]

TIMEOUT_MS = 10_000
PASSWORD = "browser-test-password-1"
CREDITS_402 = (  # what hf_token_utils reports after Hugging Face's 402 (tests/tokens/test_client_contract.py)
    "402 Client Error: Payment Required for url: https://router.huggingface.co/v1/chat/completions "
    "(Request ID: Root=1-abc)\n\nYou have exceeded your monthly included credits for Inference Providers. "
    "Subscribe to PRO to get 20x more monthly included credits."
)
_counter = iter(range(1, 10_000))


@pytest.fixture(scope="module")
def chromium():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def org(live_portal):
    """A fresh organization on the live portal with an admin who has a dashboard password."""
    slug = f"browser-{next(_counter)}-{os.getpid()}"
    root = httpx.Client(base_url=live_portal, headers={"Authorization": f"Bearer {LIVE_ADMIN_KEY}"}, timeout=10)
    root.post("/admin/organizations", json={"name": f"Browser {slug}", "slug": slug}).raise_for_status()
    admin = root.post(
        "/admin/users",
        json={"username": f"{slug}-admin", "role": "admin", "organization": slug, "password": PASSWORD},
    )
    admin.raise_for_status()
    root.close()
    api = httpx.Client(base_url=live_portal, headers={"Authorization": f"Bearer {admin.json()['api_key']}"}, timeout=10)
    yield SimpleNamespace(url=live_portal, slug=slug, username=f"{slug}-admin", api=api, api_key=admin.json()["api_key"])
    api.close()


@pytest.fixture
def page(chromium, org):
    context = chromium.new_context(base_url=org.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    context.close()


def log_in(page, username: str, password: str = PASSWORD) -> None:
    page.goto("/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def wait_until_live(page) -> None:
    """The dashboard's websocket is connected, so nothing that happens next is missed."""
    expect(page.locator("body[data-live='on']")).to_have_count(1)


def test_log_in_create_a_user_and_see_the_key_once(page, org):
    log_in(page, org.username)
    page.get_by_role("link", name="Users").click()
    page.get_by_text("New user").click()
    form = page.locator("#new-user")
    form.get_by_label("Username").fill("browser-made")
    form.get_by_label("Role").select_option("user")
    form.get_by_role("button", name="Create user").click()

    secret = page.locator("#new-secret")
    expect(secret).to_be_visible()
    raw_key = secret.input_value()
    assert raw_key.startswith("pk_")
    me = httpx.get(f"{org.url}/me", headers={"Authorization": f"Bearer {raw_key}"}, timeout=10)
    assert me.json()["username"] == "browser-made"

    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    page.get_by_role("link", name="Users").click()
    expect(page.locator("tr[data-user='browser-made']")).to_be_visible()
    expect(page.locator("#new-secret")).to_have_count(0)
    assert raw_key not in page.content()


def test_add_a_token_and_watch_its_quarantine_arrive_without_a_reload(page, org):
    log_in(page, org.username)
    page.get_by_role("link", name="Tokens").click()
    page.get_by_text("Add a token").click()
    form = page.locator("#add-token")
    form.get_by_label("Token").fill("hf_browser_spent_token_0001")
    form.get_by_label("Label").fill("browser-1")
    form.get_by_label("Validate with Hugging Face now").uncheck()
    form.get_by_role("button", name="Add token").click()
    row = page.locator("tr", has=page.get_by_role("link", name="browser-1"))
    expect(row.locator("[data-status]")).to_have_text("active")
    assert "hf_browser_spent_token_0001" not in page.content()
    wait_until_live(page)

    # A client leases the token and reports Hugging Face's 402, as hf_token_utils does.
    user_key = org.api.post("/admin/users", json={"username": f"{org.slug}-client", "role": "user"}).json()["api_key"]
    client = httpx.Client(base_url=org.url, headers={"Authorization": f"Bearer {user_key}"}, timeout=10)
    lease = client.get("/keys/provision/hf").json()
    report = client.post(
        "/keys/report/hf",
        json={"token_id": lease["token_id"], "status": "error", "error": CREDITS_402, "error_type": "credits_exceeded"},
    )
    client.close()
    assert report.json()["token_status"] == "quarantined"

    expect(row.locator("[data-status]")).to_have_text("quarantined")
    expect(row.locator("[data-back-in]")).to_contain_text("back in")
    expect(row.locator("[data-last-error]")).to_contain_text("credits_exceeded")
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # never reloaded

    # The chat page says in plain words why nothing can answer now.
    page.get_by_role("link", name="Chat").click()
    expect(page.locator("#chat-state")).to_have_text("ready")
    page.locator("#chat-model").fill("standin/echo")
    page.locator("#chat-text").fill("hello?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".bubble.error")).to_contain_text("No token of pool 'default' can be used right now")
    expect(page.locator(".bubble.error")).to_contain_text("comes back in")


def test_the_overview_counts_leases_as_they_happen(page, org):
    org.api.post("/admin/tokens", json={"token": "hf_browser_overview_0001", "label": "ov-1"}).raise_for_status()
    log_in(page, org.username)
    wait_until_live(page)
    totals = page.locator("section.pool .totals").first
    expect(totals).to_contain_text("0 leases")

    lease = httpx.get(f"{org.url}/keys/provision/hf", headers={"Authorization": f"Bearer {org.api_key}"}, timeout=10).json()
    httpx.post(
        f"{org.url}/keys/report/hf", headers={"Authorization": f"Bearer {org.api_key}"}, timeout=10,
        json={"token_id": lease["token_id"], "status": "success"},
    ).raise_for_status()

    expect(totals).to_contain_text("1 leases")
    expect(totals).to_contain_text("1 successes")
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1


def test_chat_streams_and_stops(page, org):
    org.api.post("/admin/tokens", json={"token": "hf_browser_chat_good_0001", "label": "chatty"}).raise_for_status()
    log_in(page, org.username)
    page.get_by_role("link", name="Chat").click()
    expect(page.locator("#chat-state")).to_have_text("ready")
    page.locator("#chat-model").fill("standin/slow-echo")
    # 60 words at 100 ms each: long enough to press Stop, short enough that the stand-in is done before teardown.
    page.locator("#chat-max-tokens").fill("60")
    page.locator("#chat-text").fill("one two three four five six seven eight")
    page.get_by_role("button", name="Send").click()

    reply = page.locator(".bubble.assistant").last
    expect(reply).to_contain_text("via token chatty")
    expect(reply).to_contain_text("Echo: one two three")  # deltas arrive while the stream goes on
    expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    page.get_by_role("button", name="Stop").click()

    expect(reply).to_contain_text("stopped")
    stopped_at = reply.inner_text()
    time.sleep(0.5)
    assert reply.inner_text() == stopped_at  # nothing streams after Stop
    assert stopped_at.count(" ") < 60  # short of the 60 words it would have streamed
    expect(page.get_by_role("button", name="Send")).to_be_enabled()

    # A second question on the same socket runs to its end.
    page.locator("#chat-max-tokens").fill("4")
    page.locator("#chat-text").fill("again")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".bubble.assistant").last).to_contain_text("length")


def test_a_phone_sees_the_navigation_behind_a_button(chromium, org):
    context = chromium.new_context(base_url=org.url, viewport={"width": 390, "height": 844}, is_mobile=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        log_in(page, org.username)
        expect(page.get_by_role("link", name="Tokens")).to_be_hidden()
        page.locator(".nav-burger").click()
        page.get_by_role("link", name="Tokens").click()
        expect(page.get_by_role("heading", name="Tokens")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # nothing wider than the phone
    finally:
        context.close()


SCREENSHOT_PAGES = [
    ("overview", "/"), ("tokens", "/tokens/"), ("token", None), ("pools", "/pools/"), ("users", "/users/"),
    ("api-keys", "/api-keys/"), ("usage", "/usage/?group_by=token"), ("audit", "/audit/"), ("chat", "/chat/"),
    ("organizations", "/organizations/"),
]


def test_screenshots_of_every_page(chromium, live_portal, org, tmp_path):
    """Every page renders in a real browser without a script error; PORTAL_SCREENSHOTS=<dir> keeps the pictures."""
    target = Path(os.environ.get("PORTAL_SCREENSHOTS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    # Some life in the organization: tokens in two pools, leases with outcomes, a quarantined token.
    org.api.post("/admin/pools", json={"name": "batch", "strategy": "weighted_random"}).raise_for_status()
    for i, (label, pool) in enumerate([("team-a-1", "default"), ("team-a-2", "default"), ("team-a-3", "default"),
                                       ("batch-1", "batch"), ("batch-2", "batch")]):
        org.api.post("/admin/tokens", json={"token": f"hf_screenshot_{label}_{i:04d}", "label": label, "pool": pool})
    headers = {"Authorization": f"Bearer {org.api_key}"}
    for n in range(24):
        pool = "batch" if n % 3 == 0 else "default"
        lease = httpx.get(f"{live_portal}/keys/provision/hf?pool={pool}", headers=headers, timeout=10).json()
        error = CREDITS_402 if n == 23 else ("Read timed out" if n % 7 == 0 else None)
        body = {"token_id": lease["token_id"], "status": "error" if error else "success"}
        if error:
            body |= {"error": error}
        httpx.post(f"{live_portal}/keys/report/hf", headers=headers, json=body, timeout=10).raise_for_status()

    errors = []
    context = chromium.new_context(base_url=live_portal, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        log_in(page, org.username)
        token_id = org.api.get("/admin/tokens").json()["results"][0]["id"]
        for name, path in SCREENSHOT_PAGES:
            if name == "organizations":  # the platform superuser's page
                page.locator("form[action='/logout/'] button").click()
                log_in(page, "admin", LIVE_ADMIN_PASSWORD)
            page.goto(path or f"/tokens/{token_id}/")
            if name == "chat":
                expect(page.locator("#chat-state")).to_have_text("ready")
                page.locator("#chat-model").fill("standin/echo")
                page.locator("#chat-max-tokens").fill("12")
                page.locator("#chat-text").fill("What does the portal do?")
                page.get_by_role("button", name="Send").click()
                expect(page.locator(".bubble.assistant").last).to_contain_text("length")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(target / f"{name}.png"), full_page=True)
        phone = chromium.new_context(base_url=live_portal, viewport={"width": 390, "height": 844}, is_mobile=True)
        phone_page = phone.new_page()
        phone_page.set_default_timeout(TIMEOUT_MS)
        log_in(phone_page, org.username)
        phone_page.screenshot(path=str(target / "phone-overview.png"), full_page=True)
        phone.close()
    finally:
        context.close()
    assert errors == []


def test_logging_out_in_another_tab_stops_the_live_updates_of_this_one(page, org):
    log_in(page, org.username)
    wait_until_live(page)
    other_tab = page.context.new_page()
    other_tab.goto("/")
    other_tab.get_by_role("button", name="Log out").click()
    expect(other_tab.get_by_role("button", name="Log in")).to_be_visible()

    # The first tab's socket is closed by the server for the session's sake and does not knock again.
    expect(page.locator("body[data-live='off']")).to_have_count(1)
    expect(page.locator("#live-status")).to_have_attribute("title", "Live updates: logged out: reload the page")
