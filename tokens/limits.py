"""Refuse load the portal cannot carry, the way TGI does: a permit is tried without waiting, and a stream
over a limit is refused at once with 429 `overloaded`, never queued. A stream holds its permit until it ends.

Limits: streams per worker (PORTAL_MAX_CONCURRENT_REQUESTS, counted in this process), and optionally per
organization and per API key (PORTAL_ORG_MAX_CONCURRENT_REQUESTS, PORTAL_KEY_MAX_CONCURRENT_REQUESTS).
With REDIS_URL the organization and key counts are shared by all workers: each stream is a member of a
Redis sorted set scored by its last heartbeat, so the streams of a worker that crashed stop counting
once their heartbeat is STALE_AFTER seconds old. If Redis cannot be reached, the counts fall back to
this process (logged), rather than refusing every stream.
"""

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter

from django.conf import settings

from portal.errors import PortalError

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = settings.PORTAL_STREAM_HEARTBEAT_SECONDS
STALE_AFTER = 3 * HEARTBEAT_SECONDS  # three missed beats: the worker holding the stream is gone
_SET_TTL = max(1, math.ceil(STALE_AFTER * 4))  # whole seconds, as EXPIRE takes them


class Overloaded(PortalError):
    status_code = 429
    default_detail = "Model is overloaded"
    error_type = "overloaded"


_local = Counter()

# KEYS[1]: the sorted set; ARGV: now, stale_before, limit, member, ttl
_ACQUIRE_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class _SharedCounts:
    """Stream counts in Redis, one sorted set per organization or key; one redis client per event loop."""

    def __init__(self, url: str):
        self.url = url
        self._clients = {}
        self._held: dict[str, set[str]] = {}
        self._heartbeat_task = None

    def _client(self):
        import redis.asyncio as redis

        loop = asyncio.get_running_loop()
        if loop not in self._clients:
            self._clients = {loop: redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)}
        return self._clients[loop]

    async def try_acquire(self, key: str, member: str, limit: int) -> bool:
        now = time.time()
        acquired = await self._client().eval(_ACQUIRE_SCRIPT, 1, key, now, now - STALE_AFTER, limit, member, _SET_TTL)
        if acquired:
            self._held.setdefault(key, set()).add(member)
            self._ensure_heartbeat()
        return bool(acquired)

    async def release(self, key: str, member: str) -> None:
        self._held.get(key, set()).discard(member)
        await self._client().zrem(key, member)

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat_task is None or self._heartbeat_task.done():
            self._heartbeat_task = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        while any(self._held.values()):
            await asyncio.sleep(HEARTBEAT_SECONDS)
            now = time.time()
            try:
                async with self._client().pipeline(transaction=False) as pipe:
                    for key, members in self._held.items():
                        for member in members:
                            pipe.zadd(key, {member: now}, xx=True)
                        if members:
                            pipe.expire(key, _SET_TTL)
                    await pipe.execute()
            except Exception:  # a missed beat only makes counts expire early; the next one retries
                logger.warning("stream count heartbeat to Redis failed", exc_info=True)


_shared = _SharedCounts(settings.REDIS_URL) if settings.REDIS_URL else None


def _limits(organization_id: int, api_key_id: int | None) -> list[tuple[str, int]]:
    limits = [(f"portal:streams:org:{organization_id}", settings.PORTAL_ORG_MAX_CONCURRENT_REQUESTS)]
    if api_key_id is not None:
        limits.append((f"portal:streams:key:{api_key_id}", settings.PORTAL_KEY_MAX_CONCURRENT_REQUESTS))
    return [(key, limit) for key, limit in limits if limit > 0]


def worker_streams() -> int:
    """Streams this worker carries now."""
    return _local["worker"]


@contextlib.asynccontextmanager
async def stream_permit(*, organization_id: int, api_key_id: int | None = None):
    """Hold a permit for one stream, or raise Overloaded at once."""
    if _local["worker"] >= settings.PORTAL_MAX_CONCURRENT_REQUESTS:
        raise Overloaded()
    _local["worker"] += 1
    member = uuid.uuid4().hex
    taken: list[tuple[str, bool]] = []  # (key, counted in Redis)
    try:
        for key, limit in _limits(organization_id, api_key_id):
            taken.append((key, await _try_acquire(key, member, limit)))
        yield
    finally:
        _local["worker"] -= 1
        for key, shared in taken:
            await _release(key, member, shared)


async def _try_acquire(key: str, member: str, limit: int) -> bool:
    """Returns whether the count lives in Redis; raises Overloaded when over the limit."""
    if _shared is not None:
        try:
            if await _shared.try_acquire(key, member, limit):
                return True
            raise Overloaded()
        except Overloaded:
            raise
        except Exception:
            logger.warning("Redis unreachable: counting %s in this worker only", key.rsplit(":", 2)[-2])
    if _local[key] >= limit:
        raise Overloaded()
    _local[key] += 1
    return False


async def _release(key: str, member: str, shared: bool) -> None:
    if not shared:
        _local[key] -= 1
        return
    try:
        await _shared.release(key, member)
    except Exception:  # the member goes stale and stops counting by itself
        logger.warning("could not release a stream count in Redis; it expires in %s s", STALE_AFTER)
