"""No secret in any log line: HF token secrets, portal API keys and passwords, through a whole realistic
session, both in the live daphne's log file (everything the server process wrote, its stderr included) and
in everything logged in-process at DEBUG level (caplog).

The session: users and keys made over the API, HF tokens added (one twice, some imported, some validated),
leases and reports whose error text quotes the token and the key, chat over SSE and the websocket with
good and failing tokens, the proxy, failed and successful dashboard logins until the lockout, keys sent
where they must not be (the URL, a wrong scheme, unknown keys)."""

import json
import logging
import re
import time
import uuid

import httpx
from django.test import Client

from accounts.roles import Role
from tests.conftest import LIVE_ADMIN_KEY, LIVE_ADMIN_PASSWORD

TIMEOUT = 20


def daphne_log(tmp_path_factory) -> str:
    logs = sorted(tmp_path_factory.getbasetemp().glob("live-portal*/daphne.log"))
    assert logs, "the live portal writes var_dir/daphne.log"
    return "\n".join(path.read_text(errors="replace") for path in logs)


def leaked(text: str, secrets: list[str]) -> list[str]:
    """Secrets found in text, whole or by their random middle (a log that cut or wrapped one leaks it too)."""
    found = []
    for secret in secrets:
        core = secret[3:-4] if len(secret) > 20 else secret
        if secret in text or core in text:
            found.append(secret[:6] + "…")
    return found


def csrf_login(base_url: str, username: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=TIMEOUT) as browser:
        browser.get("/login/")
        return browser.post(
            "/login/",
            data={"username": username, "password": password, "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
            headers={"Referer": f"{base_url}/login/"},
        )


def test_a_full_live_session_writes_no_secret_to_the_server_log(live_org, tmp_path_factory):
    from websockets.sync.client import connect

    url, admin = live_org.url, live_org.admin
    run = uuid.uuid4().hex[:8]
    secrets = [LIVE_ADMIN_KEY, LIVE_ADMIN_PASSWORD, live_org.admin_key, live_org.user_key]
    password = f"Pw-{uuid.uuid4().hex}"
    wrong_password = f"Typo-{uuid.uuid4().hex}"
    secrets += [password, wrong_password]

    # users and keys
    created = admin.post("/admin/users", json={"username": f"sec-{run}", "role": "user", "password": password})
    assert created.status_code == 201, created.text
    user_key = created.json()["api_key"]
    second = admin.post(f"/admin/users/{created.json()['id']}/api-keys", json={"name": "second"})
    assert second.status_code == 201, second.text
    second_key = second.json()["api_key"]
    secrets += [user_key, second_key]
    weak = admin.post("/admin/users", json={"username": f"weak-{run}", "password": "short"})
    assert weak.status_code == 400

    # HF tokens: added, a duplicate, imported, validated
    kinds = ["ok", "credits", "invalid", "ratelimit", "error500"]
    tokens = {kind: f"hf_standin_{kind}_{uuid.uuid4().hex}_abcd" for kind in kinds}
    imported = [f"hf_standin_ok_{uuid.uuid4().hex}_efgh" for _ in range(2)]
    secrets += [*tokens.values(), *imported]
    ids = {}
    for kind, secret in tokens.items():
        response = admin.post("/admin/tokens", json={"token": secret, "label": f"{kind}-{run}"})
        assert response.status_code == 201, response.text
        ids[kind] = response.json()["id"]
    assert admin.post("/admin/tokens", json={"token": tokens["ok"]}).status_code == 409
    assert admin.post("/admin/tokens/import", json={"text": "\n".join(imported)}).status_code in (200, 201)
    assert admin.post(f"/admin/tokens/{ids['invalid']}/validate").status_code in (200, 201)
    assert admin.post(f"/admin/tokens/{ids['ok']}/validate").status_code in (200, 201)

    # leases and reports that quote the token and the key
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {user_key}"}, timeout=TIMEOUT)
    for _ in range(4):
        lease = client.get("/keys/provision/hf")
        if lease.status_code != 200:
            continue
        token = lease.json()["token"]
        report = client.post("/keys/report/hf", json={
            "token_id": int(lease.json()["token_id"]), "status": "error", "error_type": "credits_exceeded",
            "error": f"402 Client Error for token {token}: Authorization: Bearer {token}; key {user_key}",
        })
        assert report.status_code == 200, report.text
    bad_report = client.post("/keys/report/hf", json={"token_id": tokens["ok"], "status": "error", "error": tokens["ok"]})
    assert bad_report.status_code == 400

    # chat over SSE, streaming and not, through good and failing tokens
    body = {"model": "standin/echo", "messages": [{"role": "user", "content": f"hello {tokens['ok']}"}], "max_tokens": 4}
    for _ in range(3):
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            "".join(response.iter_text())
        client.post("/v1/chat/completions", json={**body, "stream": False})
    client.post("/v1/chat/completions", content=b"{not json")
    client.get("/v1/models")
    client.get("/proxy/hf/api/whoami-v2")

    # chat over the websocket
    ws_url = url.replace("http://", "ws://", 1) + "/ws/chat/"
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {second_key}"}, open_timeout=TIMEOUT) as websocket:
        websocket.send(json.dumps({"type": "chat.request", "id": "one", "model": "standin/echo", "max_tokens": 3,
                                   "messages": [{"role": "user", "content": f"hi {second_key}"}]}))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            frame = json.loads(websocket.recv(timeout=TIMEOUT))
            if frame["type"] in ("chat.end", "chat.error"):
                break
        websocket.send("not json " + user_key)

    # keys where they do not belong
    refused = httpx.get(f"{url}/keys/provision/hf", params={"api_key": user_key}, timeout=TIMEOUT)
    assert refused.status_code == 400
    assert httpx.get(f"{url}/admin/users/{user_key}", timeout=TIMEOUT).status_code == 400
    httpx.post(f"{url}/v1/chat/completions?api_key={user_key}", json=body, timeout=TIMEOUT)
    unknown = "pk_" + uuid.uuid4().hex + uuid.uuid4().hex[:11]
    secrets.append(unknown)
    assert httpx.get(f"{url}/me", headers={"Authorization": f"Bearer {unknown}"}, timeout=TIMEOUT).status_code == 401
    assert httpx.get(f"{url}/me", headers={"Authorization": f"Token {user_key}"}, timeout=TIMEOUT).status_code in (401, 403)
    assert httpx.get(f"{url}/me", headers={"Authorization": f"Bearer {user_key} extra"}, timeout=TIMEOUT).status_code == 401
    httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {unknown}"}, timeout=TIMEOUT)

    # dashboard logins: wrong, right, wrong until locked out
    assert csrf_login(url, f"sec-{run}", wrong_password).status_code == 200
    assert csrf_login(url, f"sec-{run}", password).status_code == 302
    statuses = [csrf_login(url, f"sec-{run}", f"{wrong_password}-{n}").status_code for n in range(6)]
    secrets += [f"{wrong_password}-{n}" for n in range(6)]
    assert statuses[-1] == 429
    client.close()

    time.sleep(1)  # background reports and their log lines
    log = daphne_log(tmp_path_factory)
    assert log.strip(), "the server wrote nothing at all: this test would prove nothing"
    assert "credentials in its URL" in log  # the refusals were logged, without the key
    assert leaked(log, secrets) == [], "secrets in the daphne log"
    assert not re.search(r"(?i)bearer\s+pk_[A-Za-z0-9_\-]{8}", log)


def test_an_in_process_session_logs_no_secret_at_debug_level(
    organization, make_member, client_for, standin, settings, caplog
):
    caplog.set_level(logging.DEBUG)
    settings.PORTAL_LOGIN_MAX_FAILURES = 2
    password = f"Pw-{uuid.uuid4().hex}"
    membership, admin_key = make_member(organization, Role.ADMIN)
    admin = client_for(admin_key)
    secrets = [admin_key, password]

    created = admin.post("/admin/users", {"username": "logged-user", "role": "user", "password": password}, format="json")
    assert created.status_code == 201
    user_key = created.json()["api_key"]
    secrets.append(user_key)
    hf_ok, hf_invalid = f"hf_standin_ok_{uuid.uuid4().hex}_abcd", f"hf_standin_invalid_{uuid.uuid4().hex}_abcd"
    secrets += [hf_ok, hf_invalid]
    for secret in (hf_ok, hf_invalid):
        assert admin.post("/admin/tokens?validate=1", {"token": secret}, format="json").status_code == 201
    assert admin.post("/admin/tokens", {"token": hf_ok}, format="json").status_code == 409

    user = client_for(user_key)
    lease = user.get("/keys/provision/hf")
    assert lease.status_code == 200
    user.post("/keys/report/hf", {"token_id": int(lease.json()["token_id"]), "status": "error",
                                  "error": f"401 for {hf_ok} Bearer {hf_ok} key {user_key}"}, format="json")
    user.get(f"/me?api_key={user_key}")
    user.get(f"/admin/users/{user_key}")
    client_for("pk_" + "x" * 43).get("/me")

    for attempt in ("wrong-1-" + password, "wrong-2-" + password, password):
        secrets.append(attempt)
        Client(REMOTE_ADDR="10.1.1.1").post("/login/", {"username": "logged-user", "password": attempt})

    assert caplog.records, "nothing was logged: this test would prove nothing"
    lines = [record.getMessage() for record in caplog.records] + [caplog.text]
    lines += [str(record.args) for record in caplog.records if record.args]
    assert leaked("\n".join(lines), secrets) == []
