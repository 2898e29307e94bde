"""Live events for dashboards: what happened to an organization's tokens and leases, pushed to the
Channels group `live.group_name(organization_id)` (across workers when REDIS_URL is set).

The services call notify() from whatever thread they run on (request threads, the database threads). It
only appends to a queue: the lease path never waits for a dashboard. The worker's event loop sends what
queued up every FLUSH_SECONDS as one message per organization:

    {"type": "live.events", "events": [{"kind": "token.status", ...}, {"kind": "lease", ...}, ...]}

Event kinds (never a secret in them):
    token.status  token_id, pool_id, label, from_status, status, available_at (ISO or null), reason
    lease         token_id, pool_id
    report        token_id, pool_id, outcome (success|error|cancelled|expired), error_type

A process without a running ASGI server (a management command, a cron job) sends each event at once.
"""

import asyncio
import logging
import threading
from collections import defaultdict, deque

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25

_queue: deque = deque()  # (organization_id, event); deque appends and pops are thread-safe
_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def group_name(organization_id: int) -> str:
    return f"live.org.{organization_id}"


def notify(organization_id: int, kind: str, **data) -> None:
    event = {"kind": kind, **data}
    if _loop is None or _loop.is_closed():
        _send_now(organization_id, event)
    else:
        _queue.append((organization_id, event))


def start(loop: asyncio.AbstractEventLoop) -> None:
    """Called from the ASGI app on its loop: from now on events queue up and leave in batches."""
    global _loop
    if _loop is loop:
        return
    with _lock:
        if _loop is loop:
            return
        _loop = loop
    loop.create_task(_flush_forever())


async def _flush_forever() -> None:
    layer = get_channel_layer()
    this_task = asyncio.current_task()
    # Stop on the cancellation request itself, not only on its CancelledError: channels-redis swallows the
    # error when it arrives while it resets a connection, and a loop shutting down (a worker's, or a test
    # module's) would then wait for this task forever.
    while not this_task.cancelling():
        await asyncio.sleep(FLUSH_SECONDS)
        if not _queue or layer is None:
            continue
        batches = defaultdict(list)
        while _queue:
            organization_id, event = _queue.popleft()
            batches[organization_id].append(event)
        for organization_id, events in batches.items():
            if this_task.cancelling():
                return
            try:
                await layer.group_send(group_name(organization_id), {"type": "live.events", "events": events})
            except Exception:  # a dashboard missing an update must never break anything else
                logger.warning("could not send live events to dashboards", exc_info=True)


def _send_now(organization_id: int, event: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    group, message = group_name(organization_id), {"type": "live.events", "events": [event]}
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:  # the usual case: a thread of a process without a server
        running = None
    try:
        if running is None:
            async_to_sync(layer.group_send)(group, message)
        else:  # work done right on an event loop (portal.db.on_loop_when_free) outside the server's loop
            _sending.add(task := running.create_task(layer.group_send(group, message)))
            task.add_done_callback(_sent)
    except Exception:
        logger.warning("could not send a live event to dashboards", exc_info=True)


_sending: set = set()  # sends started on an event loop, held until done


def _sent(task: asyncio.Task) -> None:
    _sending.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("could not send a live event to dashboards", exc_info=task.exception())
