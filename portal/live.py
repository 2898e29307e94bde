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

Open sockets also listen for changes to their caller's credentials (access_groups): a key revoked, a user
deactivated or given another role, an organization switched off, a session logged out. access_changed()
sends {"type": "access.changed", "ended": bool} to those groups at once (every worker, with REDIS_URL), and
each socket checks its caller again, closing if the caller may no longer use it.
"""

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
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
    _send_to_group(group_name(organization_id), {"type": "live.events", "events": [event]})


def _send_to_group(group: str, message: dict) -> None:
    """From any thread: on the server's loop when there is one (the in-memory layer lives there), else at once."""
    layer = get_channel_layer()
    if layer is None:
        return
    loop = _loop if _loop is not None and not _loop.is_closed() and _loop.is_running() else None
    if loop is not None and not _on_loop(loop):
        asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop).add_done_callback(_sent)
        return
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


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _sent(task) -> None:
    _sending.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("could not send a live event to dashboards", exc_info=task.exception())


# --- Credentials of open sockets ---------------------------------------------------------------------

ACCESS_JOIN_SECONDS = 1.0  # a socket that cannot join its groups in this time works without them
ACCESS_BACKOFF_SECONDS = 5.0  # after a failed join, new sockets do not try for this long


def access_groups(*, user_id: int, organization_id: int, api_key_id=None, session_key: str | None = None) -> list[str]:
    """The groups a socket joins to hear that its caller's credentials changed."""
    groups = [f"access.user.{user_id}", f"access.org.{organization_id}"]
    if api_key_id is not None:
        groups.append(f"access.key.{api_key_id}")
    if session_key:
        groups.append(_session_group(session_key))
    return groups


def _session_group(session_key: str) -> str:
    # A digest: the session key is a credential, and group names travel through Redis.
    return f"access.session.{hashlib.sha256(session_key.encode()).hexdigest()[:32]}"


def access_changed(*, user_id=None, organization_id=None, api_key_id=None, session_key=None, ended=False) -> None:
    """Tell the sockets of this user, organization, key or session to check their caller again; `ended`:
    the credentials are gone for good (a logout), close without asking."""
    groups = []
    if user_id is not None:
        groups.append(f"access.user.{user_id}")
    if organization_id is not None:
        groups.append(f"access.org.{organization_id}")
    if api_key_id is not None:
        groups.append(f"access.key.{api_key_id}")
    if session_key:
        groups.append(_session_group(session_key))
    for group in groups:
        _send_to_group(group, {"type": "access.changed", "ended": ended})


class AccessWatch:
    """For a socket without a channel layer of its own (the chat socket, which must keep working when Redis
    is down): joins its access groups on a channel of its own and calls `on_change(message)` for each
    message. If the layer cannot be reached the socket goes on without it; its check on every request is
    then what holds."""

    _skip_until = 0.0  # shared by every socket of the process: a layer that just failed is left alone a while
    _warned_at = -60.0

    def __init__(self, on_change):
        self.on_change = on_change
        self.layer, self.channel, self.groups, self.task = None, None, [], None

    async def start(self, groups: list[str]) -> None:
        layer = get_channel_layer()
        if layer is None or time.monotonic() < AccessWatch._skip_until:
            return
        try:
            async with asyncio.timeout(ACCESS_JOIN_SECONDS):
                self.channel = await layer.new_channel()
                for group in groups:
                    await layer.group_add(group, self.channel)
                    self.groups.append(group)
        except Exception:
            self._failed()
            await self.stop()
            return
        self.layer = layer
        self.task = asyncio.create_task(self._listen(layer))

    @classmethod
    def _failed(cls) -> None:
        now = time.monotonic()
        cls._skip_until = now + ACCESS_BACKOFF_SECONDS
        if now - cls._warned_at >= 60:
            cls._warned_at = now
            logger.warning("channel layer unreachable: new sockets are checked on each request only for now")

    async def _listen(self, layer) -> None:
        while True:
            message = await layer.receive(self.channel)
            try:
                await self.on_change(message)
            except Exception:  # the socket must keep hearing later changes whatever one of them did
                logger.exception("a socket failed to act on a change of its credentials")

    async def stop(self) -> None:
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        layer = self.layer or get_channel_layer()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(ACCESS_JOIN_SECONDS):
                for group in self.groups:
                    await layer.group_discard(group, self.channel)
        self.groups = []
