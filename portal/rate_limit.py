"""Requests per minute per API key (PORTAL_KEY_RATE_LIMIT_PER_MINUTE; 0 turns it off).

A sliding window: a request is let through when fewer than the limit were let through in the last 60 s,
and a refused one learns exactly when the oldest of those leaves the window (Retry-After). Refused requests
are not counted, so a client that keeps knocking is not locked out for longer than the window.

With REDIS_URL the window is one sorted set per key in Redis, shared by every worker, kept by a Lua script
on Redis's own clock (workers' clocks may disagree). If Redis cannot be reached the worker counts alone
(logged at most once a minute) and leaves Redis alone for a few seconds, so no request waits on a dead
server longer than one short socket timeout.

Callers: DRF views through ApiKeyRateThrottle (REST_FRAMEWORK's DEFAULT_THROTTLE_CLASSES); the bare chat
endpoint, /v1/models, /proxy/hf and the chat websocket call acheck_key_rate(api_key_id) themselves.
"""

import collections
import logging
import math
import threading
import time
import uuid

from django.conf import settings
from rest_framework.throttling import BaseThrottle

from portal.errors import PortalError

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
REDIS_TIMEOUT = 0.5  # seconds to connect or answer; a slower Redis counts as unreachable
REDIS_BACKOFF = 5.0  # seconds the worker counts alone after Redis failed
WARN_EVERY = 60.0


class RateLimited(PortalError):
    status_code = 429
    default_detail = "Too many requests for this API key."
    error_type = "rate_limited"

    def __init__(self, wait: float, limit: int):
        self.wait = max(1, math.ceil(wait))
        super().__init__(f"Too many requests for this API key: at most {limit} a minute. Retry in {self.wait} s.")


# KEYS[1]: the key's sorted set of admitted requests (score: ms on Redis's clock); ARGV: window ms, limit,
# member. Returns 0 when admitted, else the ms until the oldest admitted request leaves the window.
_ADMIT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window + 1000)
return 0
"""


def _redis_key(api_key_id) -> str:
    return f"portal:rate:key:{api_key_id}"


class _LocalWindows:
    """The same sliding window in this process (no Redis, or Redis unreachable)."""

    def __init__(self):
        self._admitted: dict[object, collections.deque] = {}
        self._lock = threading.Lock()

    def admit(self, api_key_id, limit: int) -> float:
        """0 when admitted, else the seconds until a slot frees."""
        now = time.monotonic()
        with self._lock:
            admitted = self._admitted.setdefault(api_key_id, collections.deque())
            while admitted and admitted[0] <= now - WINDOW_SECONDS:
                admitted.popleft()
            if len(admitted) >= limit:
                return admitted[0] + WINDOW_SECONDS - now
            admitted.append(now)
            if len(self._admitted) > 10_000:  # forget idle keys now and then
                for key in [k for k, q in self._admitted.items() if not q or q[-1] <= now - WINDOW_SECONDS]:
                    del self._admitted[key]
            return 0.0

    def clear(self) -> None:
        with self._lock:
            self._admitted.clear()


class _SharedWindows:
    """The window in Redis: a sync client for DRF's threads, one asyncio client per event loop."""

    def __init__(self, url: str):
        self.url = url
        self._sync = None
        self._async = {}
        self._skip_until = 0.0
        self._warned_at = -WARN_EVERY

    def available(self) -> bool:
        return time.monotonic() >= self._skip_until

    def failed(self) -> None:
        now = time.monotonic()
        self._skip_until = now + REDIS_BACKOFF
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            logger.warning("Redis unreachable: API key rate limits are counted in this worker only for now")

    def _sync_client(self):
        if self._sync is None:
            import redis

            self._sync = redis.Redis.from_url(self.url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)
        return self._sync

    def _async_client(self):
        import asyncio

        import redis.asyncio as aredis

        loop = asyncio.get_running_loop()
        if loop not in self._async:
            self._async = {
                loop: aredis.Redis.from_url(self.url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)
            }
        return self._async[loop]

    def admit(self, api_key_id, limit: int) -> float:
        wait_ms = self._sync_client().eval(_ADMIT_SCRIPT, 1, _redis_key(api_key_id), WINDOW_SECONDS * 1000, limit, uuid.uuid4().hex)
        return int(wait_ms) / 1000

    async def aadmit(self, api_key_id, limit: int) -> float:
        wait_ms = await self._async_client().eval(
            _ADMIT_SCRIPT, 1, _redis_key(api_key_id), WINDOW_SECONDS * 1000, limit, uuid.uuid4().hex
        )
        return int(wait_ms) / 1000


_local = _LocalWindows()
_shared = _SharedWindows(settings.REDIS_URL) if settings.REDIS_URL else None


def check_key_rate(api_key_id) -> None:
    """Count one request for this API key, or raise RateLimited (429, with `wait` for Retry-After)."""
    if (limit := _limit_for(api_key_id)) is None:
        return
    wait = None
    if _shared is not None and _shared.available():
        try:
            wait = _shared.admit(api_key_id, limit)
        except Exception:
            _shared.failed()
    _admit_or_refuse(api_key_id, limit, wait)


async def acheck_key_rate(api_key_id) -> None:
    """check_key_rate for async code: never blocks the event loop."""
    if (limit := _limit_for(api_key_id)) is None:
        return
    wait = None
    if _shared is not None and _shared.available():
        try:
            wait = await _shared.aadmit(api_key_id, limit)
        except Exception:
            _shared.failed()
    _admit_or_refuse(api_key_id, limit, wait)


def _limit_for(api_key_id) -> int | None:
    """The limit that applies, or None: counting is off, or the caller is a session without a key."""
    limit = settings.PORTAL_KEY_RATE_LIMIT_PER_MINUTE
    return limit if limit > 0 and api_key_id is not None else None


def _admit_or_refuse(api_key_id, limit: int, shared_wait: float | None) -> None:
    """Redis's verdict when it gave one; else this worker counts alone."""
    wait = shared_wait if shared_wait is not None else _local.admit(api_key_id, limit)
    if wait > 0:
        raise RateLimited(wait, limit)


def reset_key_rates() -> None:
    """Forget every count (tests: key ids are reused from one test's database to the next)."""
    _local.clear()
    if _shared is not None and _shared.available():
        try:
            client = _shared._sync_client()
            keys = list(client.scan_iter(match=_redis_key("*"), count=1000))
            if keys:
                client.delete(*keys)
        except Exception:
            _shared.failed()


class ApiKeyRateThrottle(BaseThrottle):
    """Every DRF request made with an API key counts against that key; session (dashboard) requests do not."""

    def allow_request(self, request, view):
        api_key = request.auth
        if api_key is not None and hasattr(api_key, "pk"):
            check_key_rate(api_key.pk)  # raises RateLimited, which carries its own message and wait
        return True
