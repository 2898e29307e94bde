"""An ASGI app for tests/portal/test_worker_writes.py: it writes a first part (an HTTP body part, a websocket
frame), then keeps its worker busy without yielding, as a relay forwarding a burst of buffered chunks does,
until the client says it has that first part (by creating the file named by the query's `ack`) or
BUSY_SECONDS pass. Then it writes the last part, which says which came first: `last: seen`, the client had
the first part while the worker was still busy; `last: not seen`, it did not.

Waiting for the client rather than for a fixed time makes the answer independent of how busy the machine is:
a test that slept a second and wanted the parts 0.7 s apart at the client failed when the client itself
was kept off the CPU."""

import os
import time
from urllib.parse import parse_qs

BUSY_SECONDS = 10.0


def _busy_until_acknowledged(scope) -> str:
    ack = parse_qs(scope.get("query_string", b"").decode()).get("ack", [""])[0]
    deadline = time.monotonic() + BUSY_SECONDS
    while time.monotonic() < deadline:
        if ack and os.path.exists(ack):
            return "last: seen"
        time.sleep(0.005)  # blocks the event loop, as a burst of work does
    return "last: not seen"


async def application(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        last = _busy_until_acknowledged(scope)
        await send({"type": "http.response.body", "body": f"{last}\n".encode()})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "first"})
        last = _busy_until_acknowledged(scope)
        await send({"type": "websocket.send", "text": last})
        await send({"type": "websocket.close"})
