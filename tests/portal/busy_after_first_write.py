"""An ASGI app for tests/portal/test_worker_writes.py: it writes a first part (an HTTP body part, a websocket
frame), then keeps its worker busy for BUSY_SECONDS without yielding, as a relay forwarding a burst of
buffered chunks does, then writes the last part."""

import time

BUSY_SECONDS = 1.0


async def application(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        time.sleep(BUSY_SECONDS)
        await send({"type": "http.response.body", "body": b"last\n"})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "first"})
        time.sleep(BUSY_SECONDS)
        await send({"type": "websocket.send", "text": "last"})
        await send({"type": "websocket.close"})
