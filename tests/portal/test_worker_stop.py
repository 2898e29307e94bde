"""A worker stopped with SIGTERM (a deploy, a scale-down) while relaying: the successes it had queued for
writing in the background are written before it exits, and a stream still running is recorded as
cancelled (not the token's fault), so no relayed lease is left open to expire."""

import os
import signal
import threading
import uuid

import httpx

from tests.conftest import prepared_portal_env, start_portal_worker
from tests.portal.test_worker_crash import hold_stream

ADMIN_KEY = "pk_stop_test_admin_key_0123456789abcdefghij"
CHATS = 12


def test_a_worker_stopped_right_after_relaying_still_records_every_success(standin_url, tmp_path):
    env = prepared_portal_env(tmp_path, standin_url, ADMIN_KEY, PORTAL_LEASE_TTL="3600")
    worker = start_portal_worker(env, tmp_path / "worker-a.log")
    replacement = None
    try:
        slug = f"stop-{uuid.uuid4().hex[:8]}"
        with httpx.Client(base_url=worker.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10) as admin:
            admin.post("/admin/organizations", json={"name": slug, "slug": slug}).raise_for_status()
            org_admin = admin.post("/admin/users", json={"username": f"{slug}-admin", "role": "admin", "organization": slug}).json()
        key = org_admin["api_key"]
        with httpx.Client(base_url=worker.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as org:
            for n in range(3):
                org.post("/admin/tokens", json={"token": f"hf_stop_ok_{n}_{uuid.uuid4().hex}"}).raise_for_status()
            chat = {"model": "standin/echo", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
            for n in range(CHATS):
                answer = org.post("/v1/chat/completions", json={**chat, "stream": n % 2 == 0})
                assert answer.status_code == 200, answer.text
                assert "[DONE]" in answer.text or answer.json()["choices"]
            streaming = threading.Event()
            threading.Thread(target=hold_stream, args=(worker.url, key, streaming), daemon=True).start()
            assert streaming.wait(10)
        # At once: the last successes may still be queued for the database when the signal arrives.
        os.killpg(worker.pid, signal.SIGTERM)
        assert worker.wait(timeout=20) is not None

        replacement = start_portal_worker(env, tmp_path / "worker-b.log")
        with httpx.Client(base_url=replacement.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as org:
            rows = org.get("/admin/usage", params={"group_by": "pool"}).json()["rows"]
            tokens = org.get("/admin/tokens").json()
        metrics = ("leases", "successes", "cancelled", "expired", "errors")
        totals = {metric: sum(row.get(metric, 0) for row in rows) for metric in metrics}
        assert totals == {"leases": CHATS + 1, "successes": CHATS, "cancelled": 1, "expired": 0, "errors": 0}, rows
        token_rows = tokens["results"] if isinstance(tokens, dict) else tokens
        assert sum(token["success_count"] for token in token_rows) == CHATS
        assert sum(token["active_leases"] for token in token_rows) == 0
    finally:
        for process in (worker, replacement):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
