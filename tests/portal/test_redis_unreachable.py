"""Redis configured but unreachable: the portal degrades (stream counts kept in the worker, dashboards miss
their live events) and says so in its log, but leasing and chat keep answering, quickly. Never a hang."""

import json
import os
import signal
import time
import uuid

import httpx
from websockets.sync.client import connect as ws_connect

from tests.conftest import prepared_portal_env, start_portal_worker

ADMIN_KEY = "pk_redis_down_admin_key_0123456789abcdefgh"
QUICK = 5.0  # seconds any answer may take with Redis gone


def test_with_redis_unreachable_leasing_and_chat_still_answer_quickly(standin_url, tmp_path):
    with socket_that_refuses() as dead_port:
        env = prepared_portal_env(
            tmp_path, standin_url, ADMIN_KEY,
            REDIS_URL=f"redis://127.0.0.1:{dead_port}/0",
            PORTAL_KEY_MAX_CONCURRENT_REQUESTS="4",
            DATABASE_URL="",  # its own SQLite: this test is about Redis
        )
        log_path = tmp_path / "daphne.log"
        worker = start_portal_worker(env, log_path)
        try:
            url = worker.url
            headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
            with httpx.Client(base_url=url, headers=headers, timeout=QUICK) as client:
                client.post("/admin/tokens", json={"token": f"hf_redis_ok_{uuid.uuid4().hex}"}).raise_for_status()

                lease = client.get("/keys/provision/hf")
                assert lease.status_code == 200, lease.text
                report = client.post(
                    "/keys/report/hf",
                    json={"token_id": lease.json()["token_id"], "lease_id": lease.json()["lease_id"], "status": "success"},
                )
                assert report.status_code == 200, report.text

                body = {"model": "standin/echo", "messages": [{"role": "user", "content": "still here"}], "max_tokens": 2}
                started = time.monotonic()
                chat = client.post("/v1/chat/completions", json={**body, "stream": False})
                assert chat.status_code == 200, chat.text
                assert chat.json()["choices"][0]["message"]["content"] == "Echo: still"
                assert time.monotonic() - started < QUICK

            with ws_connect(f"{url.replace('http', 'ws', 1)}/ws/chat/", additional_headers=headers, open_timeout=QUICK) as socket:
                socket.send(json.dumps({"type": "chat.request", "id": "r", **body}))
                kinds = []
                while not kinds or kinds[-1] not in ("chat.end", "chat.error"):
                    kinds.append(json.loads(socket.recv(timeout=QUICK))["type"])
                assert kinds[0] == "chat.start" and kinds[-1] == "chat.end", kinds
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=10)
        assert "Redis unreachable" in log_path.read_text(), "the degraded mode is logged"


class socket_that_refuses:
    """A loopback port nothing listens on (bound, never listening, so no one else takes it meanwhile)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()
