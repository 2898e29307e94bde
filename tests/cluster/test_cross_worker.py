"""What must hold across workers, on the real thing: `scripts/cluster.py`'s two daphne workers on
PostgreSQL + Redis with nginx in front (one cluster for the whole module, started once).

Worker A and worker B are addressed directly where the point is that one worker acts and the other must
know; the same requests also go through nginx, as clients send them.
"""

import contextlib
import json
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.cluster.conftest import KEY_LIMIT, ORG_LIMIT

pytestmark = pytest.mark.cluster

CREDITS_402 = (
    "402 Client Error: Payment Required for url: https://router.huggingface.co/v1/chat/completions "
    "(Request ID: Root=1-abc)\n\nYou have exceeded your monthly included credits for Inference Providers. "
    "Subscribe to PRO to get 20x more monthly included credits."
)
CLIENTS = 64
# The longest a test waits for something that should happen (a lease, an event, a freed place): only what
# never happens comes near it, however busy the machine is.
PATIENCE_SECONDS = 60


def until(condition, timeout: float = PATIENCE_SECONDS) -> bool:
    """Poll condition() until it holds or the time is up; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def bearer(base_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def add_tokens(org, count: int, **fields) -> list[int]:
    ids = []
    for _ in range(count):
        answer = org.admin.post("/admin/tokens", json={"token": f"hf_cluster_{secrets.token_hex(8)}", **fields})
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    return ids


def tokens_of(org) -> dict[int, dict]:
    answer = org.admin.get("/admin/tokens", params={"page_size": 500})
    answer.raise_for_status()
    body = answer.json()
    rows = body["results"] if isinstance(body, dict) else body
    return {row["id"]: row for row in rows}


def lease(client: httpx.Client) -> httpx.Response:
    return client.get("/keys/provision/hf")


def report(client: httpx.Client, grant: dict, *, error: str | None = None) -> httpx.Response:
    body = {"token_id": int(grant["token_id"]), "lease_id": grant["lease_id"], "status": "error" if error else "success"}
    if error:
        body |= {"error": error, "error_type": "credits_exceeded"}
    answer = client.post("/keys/report/hf", json=body)
    assert answer.status_code == 200, answer.text
    return answer


def run_together(task, count: int) -> list:
    """task(i) in `count` threads released at once."""
    start = threading.Barrier(count)

    def worker(i):
        start.wait(timeout=30)
        return task(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(worker, range(count)))


# --- (a) a token reported spent on one worker is out of rotation on all of them ------------------------


def test_token_reported_402_to_worker_a_is_never_leased_by_worker_b_afterwards(cluster, cluster_org):
    spent_id, *_ = add_tokens(cluster_org, 3)
    worker_a, worker_b = cluster.worker_urls
    with bearer(worker_a, cluster_org.user_key) as a, bearer(worker_b, cluster_org.user_key) as b, \
            bearer(cluster.url, cluster_org.user_key) as front:
        # Take the doomed lease on A: least recently leased comes round to every token within three leases.
        for _ in range(3):
            grant = lease(a).json()
            if int(grant["token_id"]) == spent_id:
                doomed = grant
            else:
                report(a, grant)
        # B and nginx keep leasing and reporting while A hears the 402.
        leases: list[tuple[float, int, str]] = []  # (when the lease request started, token id, via)
        stop = threading.Event()

        def keep_leasing(client, via):
            while not stop.is_set():
                started = time.monotonic()
                answer = lease(client)
                assert answer.status_code == 200, answer.text  # two tokens stay free throughout
                grant = answer.json()
                leases.append((started, int(grant["token_id"]), via))
                report(client, grant)

        with ThreadPoolExecutor(max_workers=2) as pool:
            running = [pool.submit(keep_leasing, b, "worker B"), pool.submit(keep_leasing, front, "nginx")]

            def leasing_until(enough) -> None:  # or until one of them stopped on a failed assert
                until(lambda: enough() or any(future.done() for future in running))

            # A hears the 402 once both are leasing, and they go on until ten leases have started after it,
            # however long that takes: fixed sleeps (0.5 s, then 1.5 s) assumed a machine fast enough.
            leasing_until(lambda: {via for _, _, via in leases} == {"worker B", "nginx"})
            answer = report(a, doomed, error=CREDITS_402)
            reported_at = time.monotonic()
            assert answer.json()["token_status"] == "quarantined"
            leasing_until(lambda: sum(1 for started, _, _ in leases if started > reported_at) >= 10)
            stop.set()
            for future in running:
                future.result()

        late = [(via, token) for started, token, via in leases if token == spent_id and started > reported_at]
        assert late == []
        assert sum(1 for started, _, _ in leases if started > reported_at) >= 10  # they did keep leasing
        # And afterwards, from either side, never again.
        for client in (b, front, a):
            for _ in range(6):
                grant = lease(client).json()
                assert int(grant["token_id"]) != spent_id
                report(client, grant)
    with bearer(worker_b, cluster_org.admin_key) as b_admin:
        assert b_admin.get(f"/admin/tokens/{spent_id}").json()["status"] == "quarantined"


# --- (b) concurrency limits are counted once, across workers ------------------------------------------


class Stream:
    """A chat completion streamed from the stand-in's slow model, held open until close()."""

    def __init__(self, base_url: str, key: str):
        self.client = bearer(base_url, key)
        self.response = self.client.send(
            self.client.build_request(
                "POST", "/v1/chat/completions",
                json={"model": "standin/slow-echo", "messages": [{"role": "user", "content": "hold on"}], "stream": True,
                      "max_tokens": 300},  # 100 ms a word: half a minute, far longer than the test
            ),
            stream=True,
        )
        self.status = self.response.status_code
        if self.status == 200:
            # The permit is held once content flows. Keep the iterator: dropping it closes the response.
            self.chunks = self.response.iter_raw()
            self.first = next(self.chunks)
        else:
            self.body = json.loads(self.response.read())

    def close(self):
        self.response.close()
        self.client.close()


def open_stream(base_url, key, streams):
    stream = Stream(base_url, key)
    streams.append(stream)
    return stream


def assert_overloaded(stream: Stream) -> None:
    assert stream.status == 429, f"expected 429 overloaded, got {stream.status}"
    assert stream.body["error_type"] == "overloaded"


def test_per_key_and_per_organization_stream_limits_hold_across_workers(cluster, cluster_org):
    add_tokens(cluster_org, 2)
    keys = [cluster_org.user_key] + [
        cluster_org.admin.post(f"/admin/users/{cluster_org.user_id}/api-keys", json={"name": f"k{n}"}).json()["api_key"]
        for n in (2, 3)
    ]
    worker_a, worker_b = cluster.worker_urls
    streams: list[Stream] = []
    try:
        # The first key's limit is taken on worker A ...
        for _ in range(KEY_LIMIT):
            assert open_stream(worker_a, keys[0], streams).status == 200
        # ... and counted on worker B and behind nginx.
        assert_overloaded(open_stream(worker_b, keys[0], streams))
        assert_overloaded(open_stream(cluster.url, keys[0], streams))
        # The organization's last stream on B, with another key; then it is full everywhere.
        for _ in range(ORG_LIMIT - KEY_LIMIT):
            assert open_stream(worker_b, keys[1], streams).status == 200
        assert_overloaded(open_stream(worker_b, keys[2], streams))
        assert_overloaded(open_stream(worker_a, keys[2], streams))
        assert_overloaded(open_stream(cluster.url, keys[2], streams))

        # A stream ending on A frees its place for B.
        streams[0].close()
        deadline = time.monotonic() + PATIENCE_SECONDS
        while True:
            again = open_stream(worker_b, keys[2], streams)
            if again.status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert again.status == 200, again.body
    finally:
        for stream in streams:
            stream.close()


# --- (c) a dashboard on one worker hears what happens on another --------------------------------------


def dashboard_login(base_url: str, password: str) -> str:
    """Log the bootstrap admin in with the login form; returns the Cookie header for the session."""
    with httpx.Client(base_url=base_url, timeout=20) as browser:
        form = browser.get("/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        answer = browser.post("/login/", data={"username": "admin", "password": password, "csrfmiddlewaretoken": csrf})
        assert answer.status_code == 302, answer.text[:500]
        return "; ".join(f"{name}={value}" for name, value in browser.cookies.items())


@contextlib.contextmanager
def open_dashboard(base_url: str, cookie: str):
    ws_url = base_url.replace("http://", "ws://") + "/ws/dashboard/"
    with ws_connect(ws_url, additional_headers={"Cookie": cookie, "Origin": base_url}, open_timeout=10) as socket:
        hello = json.loads(socket.recv(timeout=10))
        assert hello["type"] == "live.hello"
        yield socket


def events_until(socket, wanted, timeout: float = PATIENCE_SECONDS) -> list[dict]:
    """Collect live events until wanted(events) holds or the time is up."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while not wanted(events) and time.monotonic() < deadline:
        try:
            frame = json.loads(socket.recv(timeout=max(0.05, deadline - time.monotonic())))
        except TimeoutError:
            break
        if frame.get("type") == "live.events":
            events.extend(frame["events"])
    return events


def test_dashboard_on_worker_a_sees_live_events_caused_on_worker_b(cluster):
    worker_a, worker_b = cluster.worker_urls
    cookie = dashboard_login(cluster.url, cluster.admin_password)  # the admin works in the default organization
    with open_dashboard(worker_a, cookie) as on_a, open_dashboard(cluster.url, cookie) as via_nginx:
        with bearer(worker_b, cluster.admin_key) as b:
            added = b.post("/admin/tokens", json={"token": f"hf_cluster_{secrets.token_hex(8)}", "label": "watched"})
            assert added.status_code == 201, added.text
            watched = added.json()["id"]
            b.post(f"/admin/tokens/{watched}/disable").raise_for_status()
            for token in tokens_of_default(b):  # only the watched token may be leased
                if token["id"] != watched and token["status"] == "active":
                    b.post(f"/admin/tokens/{token['id']}/disable").raise_for_status()
            b.post(f"/admin/tokens/{watched}/enable").raise_for_status()
            grant = lease(b).json()
            assert int(grant["token_id"]) == watched
            report(b, grant, error=CREDITS_402)

        def saw_everything(events):
            mine = [e for e in events if e.get("token_id") == watched]
            kinds = {(e["kind"], e.get("status") or e.get("outcome")) for e in mine}
            return {("lease", None), ("report", "error"), ("token.status", "quarantined")} <= kinds

        for socket in (on_a, via_nginx):
            events = events_until(socket, saw_everything)
            assert saw_everything(events), events


def tokens_of_default(client: httpx.Client) -> list[dict]:
    body = client.get("/admin/tokens", params={"page_size": 500}).json()
    return body["results"] if isinstance(body, dict) else body


# --- (d) 64 clients at once, spread over the workers ---------------------------------------------------


def spread(cluster, key: str) -> list[httpx.Client]:
    """One client per thread: worker A, worker B and nginx in turn."""
    bases = [*cluster.worker_urls, cluster.url]
    return [bearer(bases[i % len(bases)], key) for i in range(CLIENTS)]


def test_lease_cap_of_one_is_never_exceeded_by_64_clients_on_two_workers(cluster, cluster_org):
    capped = add_tokens(cluster_org, 8, max_concurrent_leases=1)
    clients = spread(cluster, cluster_org.user_key)
    try:
        answers = run_together(lambda i: lease(clients[i]), CLIENTS)
    finally:
        for client in clients:
            client.close()

    grants = [a.json() for a in answers if a.status_code == 200]
    refusals = [a for a in answers if a.status_code != 200]
    assert {(a.status_code, a.json()["error_type"]) for a in refusals} <= {(503, "no_token_available")}
    # Every token leased exactly once: none twice, and no client refused while a token was free.
    assert sorted(int(g["token_id"]) for g in grants) == sorted(capped)
    assert len(refusals) == CLIENTS - len(capped)
    rows = tokens_of(cluster_org)
    assert {t: (rows[t]["active_leases"], rows[t]["lease_count"]) for t in capped} == {t: (1, 1) for t in capped}


def test_busy_pool_never_refuses_and_counts_every_lease_from_64_clients_on_two_workers(cluster, cluster_org):
    tokens = add_tokens(cluster_org, 4)
    clients = spread(cluster, cluster_org.user_key)
    rounds = 2

    def lease_and_report(i):
        refused = []
        for _ in range(rounds):
            answer = lease(clients[i])
            if answer.status_code != 200:
                refused.append(answer.text)
                continue
            report(clients[i], answer.json())
        return refused

    try:
        refusals = [r for batch in run_together(lease_and_report, CLIENTS) for r in batch]
    finally:
        for client in clients:
            client.close()

    assert refusals == []
    rows = tokens_of(cluster_org)
    assert set(rows) == set(tokens)
    total = CLIENTS * rounds
    assert sum(row["lease_count"] for row in rows.values()) == total
    assert sum(row["success_count"] for row in rows.values()) == total
    assert all(row["active_leases"] == 0 for row in rows.values()), rows
    # Spread, not piled on one token.
    assert min(row["lease_count"] for row in rows.values()) >= total // len(tokens) // 4


# --- (f) credentials changed on one worker close sockets open on another ---------------------------------


def test_a_key_revoked_on_worker_b_cancels_and_closes_its_chat_socket_on_worker_a(cluster, cluster_org):
    from websockets.exceptions import ConnectionClosed

    add_tokens(cluster_org, 1)
    worker_a, worker_b = cluster.worker_urls
    user_key = cluster_org.admin.post(f"/admin/users/{cluster_org.user_id}/api-keys", json={"name": "socket"}).json()
    ws_url = worker_a.replace("http://", "ws://") + "/ws/chat/"
    with ws_connect(ws_url, additional_headers={"Authorization": f"Bearer {user_key['api_key']}"}, open_timeout=10) as socket:
        socket.send(json.dumps({
            "type": "chat.request", "id": "long", "model": "standin/slow-echo", "max_tokens": 300,
            "messages": [{"role": "user", "content": "hold on"}],
        }))
        assert json.loads(socket.recv(timeout=10))["type"] == "chat.start"

        with bearer(worker_b, cluster_org.admin_key) as b:
            b.delete(f"/admin/api-keys/{user_key['id']}").raise_for_status()

        frames = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frames.append(json.loads(socket.recv(timeout=10)))
    assert closed.value.rcvd.code == 4401
    ends = [frame for frame in frames if frame["type"] != "chat.delta"]
    assert [(frame["type"], frame.get("finish_reason") or frame.get("error_type")) for frame in ends] == [
        ("chat.end", "cancelled"), ("chat.error", "authentication")
    ]
