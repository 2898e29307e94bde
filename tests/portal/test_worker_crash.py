"""A worker killed with SIGKILL in the middle of streams: its leases end by their TTL, its stream counts
stop counting (in Redis, after three missed heartbeats), and a new worker on the same database serves as
if nothing had happened. Nothing stays stuck."""

import os
import signal
import threading
import time
import uuid

import httpx

from tests.conftest import new_organization_admin_key, prepared_portal_env, start_portal_worker, stop_portal_workers

ADMIN_KEY = "pk_crash_test_admin_key_0123456789abcdefgh"
LEASE_TTL = 8  # the dead worker's leases hold the pool this long; the test waits it out
HEARTBEAT = 1.0  # so shared counts go stale 3 s after their worker died
PATIENCE_SECONDS = 60  # the longest the streams may take to start: only against a hang


def hold_stream(url: str, key: str, started: threading.Event) -> None:
    """A slow stream that is still running when its worker dies."""
    body = {"model": "standin/slow-echo", "messages": [{"role": "user", "content": "a long story"}], "max_tokens": 100, "stream": True}
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    started.set()
    except httpx.HTTPError:
        pass  # the worker died under it: expected


def test_a_worker_killed_mid_stream_leaves_nothing_stuck(standin_url, tmp_path):
    env = prepared_portal_env(
        tmp_path, standin_url, ADMIN_KEY,
        PORTAL_LEASE_TTL=str(LEASE_TTL),
        PORTAL_KEY_MAX_CONCURRENT_REQUESTS="2",
        PORTAL_STREAM_HEARTBEAT_SECONDS=str(HEARTBEAT),
    )
    worker = start_portal_worker(env, tmp_path / "worker-a.log")
    # Started before A dies, so that no worker start (seconds on a busy machine) comes between the kill and
    # the question whether the dead worker's leases still hold.
    replacement = start_portal_worker(env, tmp_path / "worker-b.log")
    try:
        key = new_organization_admin_key(worker.url, ADMIN_KEY, "crash")
        org = httpx.Client(base_url=worker.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        for n in range(2):  # one lease each at most: two held streams take the whole pool
            org.post("/admin/tokens", json={"token": f"hf_crash_ok_{n}_{uuid.uuid4().hex}", "max_concurrent_leases": 1}).raise_for_status()

        started = [threading.Event(), threading.Event()]
        streams = [threading.Thread(target=hold_stream, args=(worker.url, key, event), daemon=True) for event in started]
        leased_after = time.monotonic()  # the streams' leases are granted after this, so they hold until
        for thread in streams:  # leased_after + LEASE_TTL at the earliest
            thread.start()
        assert all(event.wait(PATIENCE_SECONDS) for event in started), "both streams were relaying when the worker died"
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        killed_at = time.monotonic()

        org = httpx.Client(base_url=replacement.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        chat = {"model": "standin/echo", "messages": [{"role": "user", "content": "hello again"}], "max_tokens": 2}

        # The dead worker's leases still hold both tokens, and the answer says when one comes back …
        first = org.post("/v1/chat/completions", json={**chat, "stream": False})
        # … if that answer came before they can have expired. (Counting the TTL from the kill with 0.5 s to
        # spare assumed they were granted at most 0.5 s before it, and a worker start came in between.)
        if time.monotonic() - leased_after < LEASE_TTL:
            if os.environ.get("REDIS_URL"):
                # … or its two streams still count against this key's limit of 2, until they go stale.
                assert first.status_code in (429, 503), first.text
            else:
                assert first.status_code == 503, first.text
                assert first.json()["error_type"] == "no_token_available"
                assert 1 <= int(first.headers["Retry-After"]) <= LEASE_TTL

        # … and once the TTL and the stale heartbeats are past, the pool and the key are free again.
        time.sleep(max(0.0, max(LEASE_TTL, 3 * HEARTBEAT) + 0.5 - (time.monotonic() - killed_at)))
        answers = [org.post("/v1/chat/completions", json={**chat, "stream": False}) for _ in range(2)]
        assert [answer.status_code for answer in answers] == [200, 200], [answer.text for answer in answers]

        usage = org.get("/admin/usage", params={"group_by": "pool"}).json()["rows"]
        [pool] = usage
        assert pool["open"] == 0
        assert pool["expired"] == 2  # the dead worker's two streams
        assert pool["successes"] == 2
        tokens = org.get("/admin/tokens").json()["results"]
        assert [token["status"] for token in tokens] == ["active", "active"]  # an expiry is not the token's fault
    finally:
        stop_portal_workers(worker, replacement)
