"""How a worker (portal.serve, as `make run` starts it) writes to its connections: a streamed part leaves at
once, not when the worker is next idle; and request bodies are Django's to parse, not Twisted's."""

import os
import time

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


def test_a_streamed_body_part_reaches_the_client_while_the_worker_is_busy_with_the_next(busy_worker):
    arrived = {}
    with httpx.stream("GET", f"http://{busy_worker}/", timeout=10) as response:
        for line in response.iter_lines():
            arrived[line] = time.monotonic()
    assert list(arrived) == ["first", "last"]
    # Held until the worker was next idle, the first part would have arrived together with the last.
    assert arrived["last"] - arrived["first"] > BUSY_SECONDS * 0.7


def test_a_websocket_frame_reaches_the_client_while_the_worker_is_busy_with_the_next(busy_worker):
    arrived = {}
    with connect(f"ws://{busy_worker}/", open_timeout=10) as websocket:
        for _ in range(2):
            message = websocket.recv(timeout=10)
            arrived[message] = time.monotonic()
    assert list(arrived) == ["first", "last"]
    assert arrived["last"] - arrived["first"] > BUSY_SECONDS * 0.7


def test_a_malformed_multipart_body_gets_the_apis_json_error_on_a_connection_that_stays_open(live_org):
    body = b"--x\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\nhf_x\r\n--x--\r\n"
    with httpx.Client(base_url=live_org.url, headers={"Authorization": f"Bearer {live_org.admin_key}"}) as client:
        # No boundary parameter: Twisted used to answer its own bare 400 and close the connection.
        response = client.post("/admin/tokens", content=body, headers={"Content-Type": "multipart/form-data"})
        assert 400 <= response.status_code < 500
        assert set(response.json()) >= {"error", "error_type"}
        assert response.headers.get("connection", "").lower() != "close"
        assert client.get("/healthz").status_code == 200
