"""/proxy/hf/<path>: any Hugging Face call, through a live portal, with a pooled token swapped in."""

import http.client
import json
import time
import uuid

import httpx
import pytest


def add_token(live_org, marker: str) -> str:
    secret = f"hf_standin_{marker}_{uuid.uuid4().hex}"
    response = live_org.admin.post("/admin/tokens", json={"token": secret, "label": marker})
    assert response.status_code == 201, response.text
    return secret


def test_a_hub_call_goes_out_with_a_pooled_token_instead_of_the_portal_key(live_org):
    secret = add_token(live_org, "good")

    response = httpx.get(f"{live_org.url}/proxy/hf/api/whoami-v2", headers={"Authorization": f"Bearer {live_org.user_key}"})

    assert response.status_code == 200
    assert response.json()["name"] == f"standin-{secret[-4:]}"  # the stand-in saw the HF token, not our key
    assert secret not in response.text


def test_a_streamed_call_is_passed_on_and_a_spent_token_is_skipped(live_org):
    add_token(live_org, "credits")
    add_token(live_org, "good")
    body = {"model": "standin/echo", "messages": [{"role": "user", "content": "via proxy"}], "max_tokens": 3, "stream": True}

    with httpx.stream(
        "POST", f"{live_org.url}/proxy/hf/v1/chat/completions", json=body,
        headers={"Authorization": f"Bearer {live_org.user_key}"},
    ) as response:
        lines = [line for line in response.iter_lines() if line]

    assert response.status_code == 200
    assert lines[-1] == "data: [DONE]"
    tokens = tokens_once_reported(live_org)
    assert tokens["credits"]["status"] == "quarantined"
    assert tokens["good"]["success_count"] == 1


def tokens_once_reported(live_org, timeout: float = 3.0) -> dict[str, dict]:
    """The tokens by label once no lease is open: a success is written just after the answer ends."""
    deadline = time.monotonic() + timeout
    while True:
        tokens = {t["label"]: t for t in live_org.admin.get("/admin/tokens").json()["results"]}
        if all(t["active_leases"] == 0 for t in tokens.values()) or time.monotonic() > deadline:
            return tokens
        time.sleep(0.05)


def test_the_proxy_needs_a_portal_key(live_org):
    response = httpx.get(f"{live_org.url}/proxy/hf/api/whoami-v2")

    assert response.status_code == 401 and response.json()["error_type"] == "authentication"


HOSTILE_PATHS = [
    "/proxy/hf/api%00/whoami-v2",  # NUL: no URL can carry it upstream
    "/proxy/hf/api/whoami-v2%0d%0aX-Injected:%201",  # CR LF
    "/proxy/hf/api/whoami-v2%7f",  # DEL
    "/proxy/hf/api/../api/whoami-v2",
    "/proxy/hf/api/%2e%2e/api/whoami-v2",
    "/proxy/hf/api/%2E%2E/api/whoami-v2",
    "/proxy/hf/api/..%2fapi/whoami-v2",
    "/proxy/hf/api/%252e%252e/api/whoami-v2",  # upstream would decode it to `..`
    "/proxy/hf/api/.%5c..%5capi/whoami-v2",  # a backslash, which some servers read as a slash
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_a_path_with_a_control_character_or_a_dot_segment_is_a_400_before_any_lease(live_org, path):
    add_token(live_org, "untouched")
    host, port = live_org.url.removeprefix("http://").split(":")
    # http.client sends the path byte for byte; httpx would resolve the dot-segments before sending.
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {live_org.user_key}"})
        response = connection.getresponse()
        status, content_type, body = response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()

    assert status == 400, body
    assert content_type == "application/json" and json.loads(body)["error_type"] == "validation"
    (token,) = live_org.admin.get("/admin/tokens").json()["results"]
    assert token["lease_count"] == 0


def test_a_path_with_dots_inside_a_segment_is_relayed(live_org):
    add_token(live_org, "good")

    response = httpx.get(f"{live_org.url}/proxy/hf/api/whoami-v2..", headers={"Authorization": f"Bearer {live_org.user_key}"})

    # `whoami-v2..` is a name, not a dot-segment: it reaches upstream, where the stand-in knows no such path.
    assert response.status_code == 404 and response.json() == {"error": "Not found: /api/whoami-v2.."}
