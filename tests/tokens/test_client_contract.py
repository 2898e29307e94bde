"""The portal as hf_token_utils sees it, over real HTTP against a live server.

The two helper functions below re-implement hf_token_utils (shared/REFERENCE.md) in behaviour: the same
requests, headers, timeout, retries, classification and the same idea of success. `requests` is not in
the project's environment, so they speak through httpx; nothing else differs.
"""

import sys
import time
import uuid

import httpx
import pytest

from accounts.roles import Role
from tests.conftest import free_port
from tokens.models import HFToken, Lease, Outcome
from tokens.policy import Status

# --- hf_token_utils, re-implemented ----------------------------------------------------------------

PROXY_URL = ""  # hf_token_utils reads its proxy address from its configuration; the fixture sets it here
PROVISION_PATH = "/keys/provision/hf"  # older copies of the helper: /keys/provision
REPORT_PATH = "/keys/report/hf"  # older copies of the helper: /keys/report
TIMEOUT_SECONDS = 30
ATTEMPTS = 2
RETRY_DELAY_SECONDS = 1

SENT_REPORTS: list[dict] = []  # test instrumentation only: the JSON bodies the helper sent


def _classify_error(error: str) -> str | None:
    """hf_token_utils' classification, in its order; None means no error_type is sent."""
    if "401 Client Error" in error:
        return "invalid_credentials"
    if "402 Client Error" in error and "exceeded your monthly included credits" in error:
        return "credits_exceeded"
    lowered = error.lower()
    if "timeout" in lowered or "timed out" in lowered:
        return "timeout"
    if "connection" in error:
        return "connection_error"
    return None


def get_proxy_token(proxy_url: str, api_key: str) -> tuple[str, str]:
    """Lease a token: (token, token_id). Raises with the response text when no attempt got a 200."""
    last_error: Exception | None = None
    for attempt in range(ATTEMPTS):
        try:
            response = httpx.get(
                f"{proxy_url}{PROVISION_PATH}",
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=TIMEOUT_SECONDS,
            )
            if response.status_code == 200:
                data = response.json()
                return data["token"], data["token_id"]
            last_error = RuntimeError(f"Failed to get token from proxy: {response.status_code} {response.text}")
        except Exception as exc:  # the helper retries network errors as well
            last_error = exc
        if attempt < ATTEMPTS - 1:
            time.sleep(RETRY_DELAY_SECONDS)
    raise last_error


def report_token_status(
    token_id: str, status: str = "success", error: str | None = None, api_key: str | None = None,
    client_name: str | None = None,
) -> bool:
    """Report how the token did. True only when the proxy answered 200; never raises."""
    try:
        payload = {"token_id": token_id, "status": status}
        if error:
            payload["error"] = error
            error_type = _classify_error(error)
            if error_type:
                payload["error_type"] = error_type
        if client_name:
            payload["client_name"] = client_name
        SENT_REPORTS.append(payload)
        for attempt in range(ATTEMPTS):
            try:
                response = httpx.post(
                    f"{PROXY_URL}{REPORT_PATH}",
                    json=payload,
                    headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
                    timeout=TIMEOUT_SECONDS,
                )
                if response.status_code == 200:
                    return True
            except Exception:
                pass
            if attempt < ATTEMPTS - 1:
                time.sleep(RETRY_DELAY_SECONDS)
        return False
    except Exception:
        return False


# --- The errors exactly as huggingface_hub words them (str(HfHubHTTPError)) ------------------------

CREDITS_402 = (
    "402 Client Error: Payment Required for url: https://router.huggingface.co/v1/chat/completions "
    "(Request ID: Root=1-abc)\n\nYou have exceeded your monthly included credits for Inference Providers. "
    "Subscribe to PRO to get 20x more monthly included credits."
)
INVALID_401 = (
    "401 Client Error: Unauthorized for url: https://router.huggingface.co/v1/chat/completions "
    "(Request ID: Root=1-def)\n\nInvalid credentials in Authorization header"
)


# --- Fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def proxy(live_server, transactional_db, monkeypatch) -> str:
    monkeypatch.setattr(sys.modules[__name__], "PROXY_URL", live_server.url)
    SENT_REPORTS.clear()
    return live_server.url


@pytest.fixture
def legacy_paths(monkeypatch):
    """Behave like the older copies of hf_token_utils that omit the /hf suffix."""
    monkeypatch.setattr(sys.modules[__name__], "PROVISION_PATH", "/keys/provision")
    monkeypatch.setattr(sys.modules[__name__], "REPORT_PATH", "/keys/report")


@pytest.fixture
def api_key(proxy, organization, make_member) -> str:
    _, raw_key = make_member(organization, Role.USER)
    return raw_key


def lease_and_report(proxy: str, api_key: str, **report) -> tuple[str, str, bool]:
    token, token_id = get_proxy_token(proxy, api_key)
    return token, token_id, report_token_status(token_id, api_key=api_key, **report)


# --- The flows --------------------------------------------------------------------------------------


def test_lease_then_report_success(proxy, api_key, organization, make_token):
    hf = make_token(organization, secret="hf_liveServerSecret_0001")

    token, token_id, accepted = lease_and_report(proxy, api_key, status="success", client_name="contract-test")

    assert token == "hf_liveServerSecret_0001"
    assert token_id == str(hf.pk)
    assert accepted is True
    lease = Lease.objects.get(token=hf)
    assert (lease.outcome, lease.client_name) == (Outcome.SUCCESS, "contract-test")
    hf.refresh_from_db()
    assert (hf.status, hf.success_count, hf.active_leases) == (Status.ACTIVE, 1, 0)


def test_credits_exceeded_report_takes_the_token_out_of_rotation_for_good(proxy, api_key, organization, make_token):
    first = make_token(organization)
    second = make_token(organization)

    _, spent_id, accepted = lease_and_report(proxy, api_key, status="error", error=CREDITS_402)

    assert accepted is True
    assert spent_id == str(first.pk)  # least recently leased: the lower id goes first
    # The helper classified it before sending, as hf_token_utils does.
    assert SENT_REPORTS[-1] == {
        "token_id": spent_id, "status": "error", "error": CREDITS_402, "error_type": "credits_exceeded",
    }
    first.refresh_from_db()
    assert first.status == Status.QUARANTINED
    handed_out = [get_proxy_token(proxy, api_key)[1] for _ in range(10)]
    assert handed_out == [str(second.pk)] * 10


def test_invalid_credentials_report_makes_the_token_invalid(proxy, api_key, organization, make_token):
    bad = make_token(organization)
    good = make_token(organization)

    _, bad_id, accepted = lease_and_report(proxy, api_key, status="error", error=INVALID_401)

    assert accepted is True and bad_id == str(bad.pk)
    assert SENT_REPORTS[-1]["error_type"] == "invalid_credentials"
    assert HFToken.objects.get(pk=bad.pk).status == Status.INVALID
    assert {get_proxy_token(proxy, api_key)[1] for _ in range(5)} == {str(good.pk)}


def test_an_unclassified_error_is_sent_without_error_type_and_classified_by_the_server(
    proxy, api_key, organization, make_token
):
    hf = make_token(organization)
    error = "429 Client Error: Too Many Requests for url: https://router.huggingface.co/v1/chat/completions"

    _, _, accepted = lease_and_report(proxy, api_key, status="error", error=error)

    assert accepted is True
    assert "error_type" not in SENT_REPORTS[-1]
    assert Lease.objects.get(token=hf).error_type == "rate_limited"
    assert HFToken.objects.get(pk=hf.pk).status == Status.COOLING


def test_older_helper_paths_work_the_same(proxy, api_key, legacy_paths, organization, make_token):
    assert (PROVISION_PATH, REPORT_PATH) == ("/keys/provision", "/keys/report")
    first = make_token(organization)
    second = make_token(organization)

    _, token_id, accepted = lease_and_report(proxy, api_key, status="error", error=CREDITS_402)

    assert accepted is True and token_id == str(first.pk)
    assert HFToken.objects.get(pk=first.pk).status == Status.QUARANTINED
    assert {get_proxy_token(proxy, api_key)[1] for _ in range(4)} == {str(second.pk)}
    _, _, accepted = lease_and_report(proxy, api_key, status="success")
    assert accepted is True
    assert HFToken.objects.get(pk=second.pk).success_count == 1


@pytest.mark.parametrize("path", ["/keys/report/hf", "/keys/report"])
def test_report_answers_exactly_200(proxy, api_key, organization, make_token, path):
    make_token(organization)
    _, token_id = get_proxy_token(proxy, api_key)

    response = httpx.post(
        f"{proxy}{path}",
        json={"token_id": token_id, "status": "success"},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=TIMEOUT_SECONDS,
    )

    assert response.status_code == 200  # hf_token_utils counts 201 as a failed report
    assert response.json()["ok"] is True


def test_helper_raises_with_the_portal_error_when_no_token_is_available(proxy, api_key, organization, make_token):
    only = make_token(organization)
    lease_and_report(proxy, api_key, status="error", error=CREDITS_402)
    assert HFToken.objects.get(pk=only.pk).status == Status.QUARANTINED

    with pytest.raises(RuntimeError) as refused:
        get_proxy_token(proxy, api_key)

    assert "503" in str(refused.value)
    assert "no_token_available" in str(refused.value)


def test_helper_report_with_a_wrong_key_is_not_accepted_and_changes_nothing(proxy, api_key, organization, make_token):
    hf = make_token(organization)
    _, token_id = get_proxy_token(proxy, api_key)

    accepted = report_token_status(token_id, status="error", error=CREDITS_402, api_key="not-a-portal-key")

    assert accepted is False
    hf.refresh_from_db()
    assert (hf.status, hf.error_count, hf.active_leases) == (Status.ACTIVE, 0, 1)


# --- Today's clients: the error as each one words it, reported as it is -----------------------------
# The helper classifies only huggingface_hub < 1.0's wording; with today's clients it mostly sends no
# error_type, and the server must read the HTTP status from the text itself. Each error below is raised by
# the installed client against the stand-in upstream, whose token picks the failure.

MESSAGES = [{"role": "user", "content": "hello"}]


def _with_huggingface_hub(upstream: str, token: str, **options) -> None:
    from huggingface_hub import InferenceClient

    InferenceClient(base_url=f"{upstream}/v1", api_key=token, **options).chat.completions.create(
        model="standin/echo", messages=MESSAGES
    )


def _with_openai(upstream: str, token: str, **options) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{upstream}/v1", api_key=token, max_retries=0, **options)
    client.chat.completions.create(model="standin/echo", messages=MESSAGES)


def _with_httpx(upstream: str, token: str) -> None:
    body = {"model": "standin/echo", "messages": MESSAGES}
    httpx.post(f"{upstream}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}).raise_for_status()


def _with_requests(upstream: str, token: str) -> None:
    requests = pytest.importorskip("requests")  # huggingface_hub < 1.0's HTTP library; not a dependency of ours
    body = {"model": "standin/echo", "messages": MESSAGES}
    requests.post(f"{upstream}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10).raise_for_status()


CLIENTS = {"huggingface_hub": _with_huggingface_hub, "openai": _with_openai, "httpx": _with_httpx, "requests": _with_requests}


def error_raised_by(call, *args, **kwargs) -> str:
    """str() of what the client raised, as the helper's users report it."""
    with pytest.raises(Exception) as raised:  # noqa: B017 — each client has its own exception classes
        call(*args, **kwargs)
    return str(raised.value)


def report_error_of_a_leased_token(proxy: str, api_key: str, call, *args, **kwargs) -> tuple[str, str]:
    """Lease the token, call the client with it, report str(error) as the helper does: (token_id, error)."""
    token, token_id = get_proxy_token(proxy, api_key)
    error = error_raised_by(call, *args, token, **kwargs)
    assert report_token_status(token_id, status="error", error=error, api_key=api_key) is True
    return token_id, error


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    ("kind", "error_type", "status"),
    [
        ("invalid", "invalid_credentials", Status.INVALID),  # 401
        ("credits", "credits_exceeded", Status.QUARANTINED),  # 402 with the monthly-credits sentence
        ("status402", "credits_exceeded", Status.QUARANTINED),  # 402 without it: still payment trouble
        ("ratelimit", "rate_limited", Status.COOLING),  # 429
        ("error500", "server_error", Status.ACTIVE),  # one 5xx is the path's fault: the breaker counts it
        ("status503", "server_error", Status.ACTIVE),
        ("status404", "validation", Status.ACTIVE),  # the request's own fault, not the token's
        ("status400", "validation", Status.ACTIVE),  # huggingface_hub words it "Bad request:", no status
    ],
)
def test_todays_clients_errors_are_classified_by_their_http_status(
    proxy, api_key, organization, make_token, standin_url, client, kind, error_type, status
):
    hf = make_token(organization, secret=f"hf_standin_{kind}_{uuid.uuid4().hex}")

    token_id, error = report_error_of_a_leased_token(proxy, api_key, CLIENTS[client], standin_url)

    assert token_id == str(hf.pk)
    lease = Lease.objects.get(token=hf)
    assert (lease.outcome, lease.error_type) == (Outcome.ERROR, error_type), error
    hf.refresh_from_db()
    if error_type == "validation":  # the request's own fault: recorded on the lease, the token untouched
        assert (hf.status, hf.last_error_type, hf.error_count, hf.active_leases) == (status, "", 0, 0), error
    else:
        assert (hf.status, hf.last_error_type, hf.active_leases) == (status, error_type, 0), error


def _whoami_with_huggingface_hub(upstream: str, token: str) -> None:
    """A client that checks the token first, as `huggingface_hub.whoami` users do."""
    from huggingface_hub import HfApi

    HfApi(endpoint=upstream).whoami(token=token)


def _server_message_of_huggingface_hub(upstream: str, token: str) -> None:
    """A client that reports the server's own message (HfHubHTTPError.server_message), not str(exc)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        _with_huggingface_hub(upstream, token)
    except HfHubHTTPError as exc:
        raise RuntimeError(exc.server_message) from exc


@pytest.mark.parametrize("call", [_whoami_with_huggingface_hub, _server_message_of_huggingface_hub])
def test_a_revoked_token_is_invalid_in_huggingface_hubs_words_without_a_status(
    proxy, api_key, organization, make_token, standin_url, call
):
    # whoami's 401 is "Invalid user token."; the router's 401 body is its own sentence: neither names 401.
    hf = make_token(organization, secret=f"hf_standin_invalid_{uuid.uuid4().hex}")

    _, error = report_error_of_a_leased_token(proxy, api_key, call, standin_url)

    assert "401" not in error, error  # what this test is about: the wording alone must say it
    assert "error_type" not in SENT_REPORTS[-1]  # the helper's rules do not know these wordings either
    assert Lease.objects.get(token=hf).error_type == "invalid_credentials", error
    hf.refresh_from_db()
    assert (hf.status, hf.last_error_type) == (Status.INVALID, "invalid_credentials"), error


@pytest.mark.parametrize("client", ["huggingface_hub", "openai"])
def test_todays_clients_timeouts_and_refused_connections_are_classified(
    proxy, api_key, organization, make_token, standin_url, client
):
    slow = make_token(organization, secret=f"hf_standin_slow_{uuid.uuid4().hex}")  # answers after 1 s
    report_error_of_a_leased_token(proxy, api_key, CLIENTS[client], standin_url, timeout=0.3)
    nowhere = make_token(organization, secret=f"hf_standin_ok_{uuid.uuid4().hex}")
    report_error_of_a_leased_token(proxy, api_key, CLIENTS[client], f"http://127.0.0.1:{free_port()}")

    assert Lease.objects.get(token=slow).error_type == "timeout"
    assert Lease.objects.get(token=nowhere).error_type == "connection_error"
    for token in (slow, nowhere):  # one transient error leaves a token in rotation
        token.refresh_from_db()
        assert (token.status, token.error_count) == (Status.ACTIVE, 1)


def test_an_explicit_known_error_type_wins_over_the_wording(proxy, api_key, organization, make_token, standin_url):
    hf = make_token(organization, secret=f"hf_standin_invalid_{uuid.uuid4().hex}")
    token, token_id = get_proxy_token(proxy, api_key)
    error = error_raised_by(_with_huggingface_hub, standin_url, token)  # a 401

    response = httpx.post(
        f"{proxy}{REPORT_PATH}",
        json={"token_id": token_id, "status": "error", "error": error, "error_type": "rate_limited"},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=TIMEOUT_SECONDS,
    )

    assert response.status_code == 200
    assert Lease.objects.get(token=hf).error_type == "rate_limited"
    hf.refresh_from_db()
    assert (hf.status, hf.last_error_type) == (Status.COOLING, "rate_limited")
