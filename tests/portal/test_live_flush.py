"""The task that sends dashboards their live events must end when it is cancelled, even when the channel
layer swallows the CancelledError (channels-redis can, while it resets a connection): otherwise a worker's
or a test's event loop waits for it forever on shutdown."""

import asyncio
from collections import deque

from portal import live


class SwallowingLayer:
    """A channel layer whose group_send eats the CancelledError meant for its caller."""

    def __init__(self):
        self.sends = 0

    async def group_send(self, group, message):
        self.sends += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass


async def test_the_flush_task_ends_when_cancelled_even_if_the_layer_swallows_the_cancellation(monkeypatch):
    layer = SwallowingLayer()
    monkeypatch.setattr(live, "get_channel_layer", lambda: layer)
    monkeypatch.setattr(live, "FLUSH_SECONDS", 0.01)
    # Events for several organizations: the task must not go on to the next one's send once cancelled.
    monkeypatch.setattr(live, "_queue", deque((organization_id, {"kind": "lease"}) for organization_id in (1, 2, 3)))
    task = asyncio.create_task(live._flush_forever())
    while not layer.sends:  # wait until it is inside group_send
        await asyncio.sleep(0.005)
    task.cancel()
    await asyncio.wait_for(asyncio.shield(task), timeout=2)  # it ends by itself; before the fix it never did
    assert task.done() and layer.sends == 1
