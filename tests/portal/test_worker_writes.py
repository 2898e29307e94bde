"""How a worker (portal.serve, as `make run` starts it) writes to its connections: a streamed part leaves at
once, not when the worker is next idle; and request bodies are Django's to parse, not Twisted's."""

import os
from urllib.parse import urlencode

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import start_portal_worker, stop_portal_workers
from tests.portal.busy_after_first_write import BUSY_SECONDS

BUSY_APP = "tests.portal.busy_after_first_write:application"


@pytest.fixture(scope="module")
def busy_worker(tmp_path_factory):
    log = tmp_path_factory.mktemp("busy-worker") / "daphne.log"
    worker = start_portal_worker(dict(os.environ), log, app=BUSY_APP)
    try:
        yield worker.url.removeprefix("http://")
    finally:
        stop_portal_workers(worker)


def test_a_streamed_body_part_reaches_the_client_while_the_worker_is_busy_with_the_next(busy_worker, tmp_path):
    ack = tmp_path / "first-arrived"
    lines = []
    with httpx.stream("GET", f"http://{busy_worker}/", params={"ack": str(ack)}, timeout=BUSY_SECONDS + 20) as response:
        for line in response.iter_lines():
            lines.append(line)
            if line == "first":
                ack.touch()
    # Held until the worker was next idle, the first part would have come only after the busy spell.
    assert lines == ["first", "last: seen"]


def test_a_websocket_frame_reaches_the_client_while_the_worker_is_busy_with_the_next(busy_worker, tmp_path):
    ack = tmp_path / "first-arrived"
    messages = []
    with connect(f"ws://{busy_worker}/?{urlencode({'ack': str(ack)})}", open_timeout=10) as websocket:
        for _ in range(2):
            messages.append(websocket.recv(timeout=BUSY_SECONDS + 20))
            if messages[-1] == "first":
                ack.touch()
    assert messages == ["first", "last: seen"]


def test_a_malformed_multipart_body_gets_the_apis_json_error_on_a_connection_that_stays_open(live_org):
    body = b"--x\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\nhf_x\r\n--x--\r\n"
    with httpx.Client(base_url=live_org.url, headers={"Authorization": f"Bearer {live_org.admin_key}"}) as client:
        # No boundary parameter: Twisted used to answer its own bare 400 and close the connection.
        response = client.post("/admin/tokens", content=body, headers={"Content-Type": "multipart/form-data"})
        assert 400 <= response.status_code < 500
        assert set(response.json()) >= {"error", "error_type"}
        assert response.headers.get("connection", "").lower() != "close"
        assert client.get("/healthz").status_code == 200
