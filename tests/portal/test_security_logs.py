"""No secret in any log line: HF token secrets, portal API keys and passwords, through a whole realistic
session, both in the live daphne's log file (everything the server process wrote, its stderr included) and
in everything logged in-process at DEBUG level (caplog).

The session: users and keys made over the API, HF tokens added (one twice, some imported, some validated),
leases and reports whose error text quotes the token and the key, chat over SSE and the websocket with
good and failing tokens, the proxy, failed and successful dashboard logins until the lockout, keys sent
where they must not be (the URL, a wrong scheme, unknown keys)."""

import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

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


# --- A secret in the URL path: Django logs the path of every 4xx and 5xx (django.request) --------------------


def secret_paths(run: str) -> tuple[list[str], list[str]]:
    """Paths that carry an HF token where a caller might paste one, and the secrets in them."""
    secrets = [f"hf_SecretLeak{kind}{run}{uuid.uuid4().hex}" for kind in ("Admin", "Proxy", "Encoded", "Plain")]
    paths = [
        f"/admin/{secrets[0]}",
        f"/proxy/hf/{secrets[1]}",
        f"/x/Bearer%20{secrets[2]}",  # Django logs the path decoded: "/x/Bearer hf_…"
        f"/token_{secrets[3]}",
    ]
    return paths, secrets


def test_a_secret_in_the_url_path_is_not_in_the_live_workers_log(live_org, tmp_path_factory):
    paths, secrets = secret_paths(uuid.uuid4().hex[:8])
    anonymous = httpx.Client(base_url=live_org.url, timeout=TIMEOUT)
    member = httpx.Client(base_url=live_org.url, headers={"Authorization": f"Bearer {live_org.user_key}"}, timeout=TIMEOUT)
    marker = f"/after-the-secrets-{uuid.uuid4().hex}"  # no secret: its access line ends what this test wrote
    with anonymous, member:
        statuses = [client.get(path).status_code for path in paths for client in (anonymous, member)]
        assert anonymous.get(marker).status_code == 404
    assert all(status >= 400 for status in statuses), statuses

    # Requests were sent one after the other, and daphne writes an access line once the response is sent.
    deadline = time.monotonic() + TIMEOUT
    while f'"GET {marker}' not in (log := daphne_log(tmp_path_factory)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f'"GET {marker}' in log
    assert "django.request Not Found: /admin/hf_***" in log  # Django logged the requests, scrubbed
    assert "django.request Not Found: /x/Bearer ***" in log
    assert leaked(log, secrets) == [], "secrets in the daphne log"


def test_a_secret_in_the_url_path_is_not_in_any_captured_log_record(
    transactional_db, organization, make_member, client_for, caplog
):
    caplog.set_level(logging.DEBUG)
    paths, secrets = secret_paths(uuid.uuid4().hex[:8])
    _, user_key = make_member(organization, Role.USER)

    for client in (Client(), client_for(user_key)):
        for path in paths:
            assert client.get(path).status_code >= 400

    logged = [record.getMessage() for record in caplog.records if record.name == "django.request"]
    assert len(logged) == 2 * len(paths), logged
    assert leaked("\n".join(logged) + caplog.text, secrets) == []


# A worker's logging tree, as `python -m portal.serve` builds it: daphne's CLI calls logging.basicConfig, then
# imports the application, which sets Django up with settings.LOGGING.
WORKER_HANDLERS = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
import portal.serve, portal.asgi
loggers = [logging.getLogger(), *(l for l in logging.Logger.manager.loggerDict.values() if isinstance(l, logging.Logger))]
handlers = [(l.name, h) for l in loggers for h in l.handlers if not isinstance(h, logging.NullHandler)]
json.dump({"handlers": len(handlers), "unscrubbed": [f"{name}: {h!r}" for name, h in handlers
          if not any(f"{type(f).__module__}.{type(f).__name__}" == "portal.redact.SecretsFilter" for f in h.filters)]},
          sys.stdout)
"""


def test_every_handler_of_a_worker_scrubs_secrets():
    """Handlers run down the logger tree, each on the record as it came: one without the filter (Django's
    defaults give `django` and `django.server` their own) would write the secret before the root's handler
    scrubs it. Checked in a fresh process: this one has pytest's handlers, and the clients' own (importing
    huggingface_hub adds one to its logger), which a worker never imports."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings"}
    worker = subprocess.run([sys.executable, "-c", WORKER_HANDLERS], env=env, cwd=Path(__file__).parents[2],
                            capture_output=True, text=True, timeout=60)
    assert worker.returncode == 0, worker.stderr
    found = json.loads(worker.stdout)

    assert found["handlers"], "no handler at all: this test would prove nothing"
    assert found["unscrubbed"] == []


def _record(msg, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("django.request", logging.WARNING, __file__, 1, msg, args or None, exc_info)


def test_the_filter_scrubs_the_rendered_message_and_keeps_the_exception():
    from portal.redact import SecretsFilter

    secret = f"hf_{uuid.uuid4().hex}"
    try:
        raise ValueError(f"upstream refused {secret}")
    except ValueError:
        exc_info = sys.exc_info()
    record = _record("Not Found: %s (%d)", f"/x/Bearer {secret}", 404, exc_info=exc_info)

    assert SecretsFilter().filter(record) is True  # it scrubs, it never drops a line

    assert (record.getMessage(), record.args) == ("Not Found: /x/Bearer *** (404)", ())
    assert record.exc_info is exc_info  # kept for handlers that want the exception itself
    formatted = logging.Formatter("%(message)s").format(record)
    assert "ValueError: upstream refused hf_***" in formatted and "Traceback" in formatted
    assert secret not in formatted


def test_the_filter_leaves_a_clean_record_as_it_was():
    from portal.redact import SecretsFilter

    args = ("/v1/chat/completions", 200)
    record = _record("%s answered %d", *args)
    SecretsFilter().filter(record)
    assert (record.msg, record.args) == ("%s answered %d", args)

    broken = _record("%s and %s", "one")  # a broken call stays broken: logging reports it, as it would
    assert SecretsFilter().filter(broken) is True
    assert (broken.msg, broken.args) == ("%s and %s", ("one",))

    secret = f"pk_{uuid.uuid4().hex}"
    not_text = _record(KeyError(secret))  # any object may be logged; its str() is what is written
    SecretsFilter().filter(not_text)
    assert not_text.getMessage() == "'pk_***'"
