"""Requests per minute per caller: per API key (PORTAL_KEY_RATE_LIMIT_PER_MINUTE) and per member
(PORTAL_MEMBER_RATE_LIMIT_PER_MINUTE, by default the same number), the stricter wins; 0 turns either off.

Counting per member as well means a user who mints three keys does not get three times the rate, and a
dashboard session, which has no key, is counted too (its chat requests). A request is let through only
when every window that applies has room; it is then counted in all of them, so a refusal by one window
never uses up another.

A sliding window: a request is let through when fewer than the limit were let through in the last 60 s,
and a refused one learns exactly when a slot frees (Retry-After). Refused requests are not counted, so a
client that keeps knocking is not locked out for longer than the window.

With REDIS_URL the windows are sorted sets in Redis, shared by every worker, kept by one Lua script on
Redis's own clock (workers' clocks may disagree). If Redis cannot be reached the worker counts alone
(logged at most once a minute) and leaves Redis alone for a few seconds, so no request waits on a dead
server longer than one short socket timeout.

Callers: DRF views through CallerRateThrottle (REST_FRAMEWORK's DEFAULT_THROTTLE_CLASSES); the bare doors
and the chat websocket call acheck_caller_rate themselves.
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
    default_detail = "Too many requests."
    error_type = "rate_limited"

    def __init__(self, wait: float, limit: int, subject: str = "API key"):
        self.wait = max(1, math.ceil(wait))
        super().__init__(f"Too many requests for this {subject}: at most {limit} a minute. Retry in {self.wait} s.")


# KEYS: the windows' sorted sets of admitted requests (score: ms on Redis's clock); ARGV: window ms, a unique
# member, then one limit per key. Returns {0, 0} when admitted (and counted in every window), else the ms
# until the fullest window frees a slot and that window's place in KEYS (from 1).
_ADMIT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local wait, which = 0, 0
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= tonumber(ARGV[i + 2]) then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local w = math.max(1, tonumber(oldest[2]) + window - now)
    if w > wait then wait, which = w, i end
  end
end
if wait > 0 then return {wait, which} end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[2])
  redis.call('PEXPIRE', key, window + 1000)
end
return {0, 0}
"""


def _redis_key(window) -> str:
    kind, subject_id = window
    return f"portal:rate:{kind}:{subject_id}"


class _LocalWindows:
    """The same sliding window in this process (no Redis, or Redis unreachable)."""

    def __init__(self):
        self._admitted: dict[object, collections.deque] = {}
        self._lock = threading.Lock()

    def admit(self, windows: list, limits: list[int]) -> tuple[float, int]:
        """(0, -1) when admitted into every window, else (seconds until the fullest frees a slot, its index)."""
        now = time.monotonic()
        with self._lock:
            queues = [self._admitted.setdefault(window, collections.deque()) for window in windows]
            wait, which = 0.0, -1
            for index, (admitted, limit) in enumerate(zip(queues, limits, strict=True)):
                while admitted and admitted[0] <= now - WINDOW_SECONDS:
                    admitted.popleft()
                if len(admitted) >= limit and admitted[0] + WINDOW_SECONDS - now > wait:
                    wait, which = admitted[0] + WINDOW_SECONDS - now, index
            if which >= 0:
                return wait, which
            for admitted in queues:
                admitted.append(now)
            if len(self._admitted) > 10_000:  # forget idle windows now and then
                for key in [k for k, q in self._admitted.items() if not q or q[-1] <= now - WINDOW_SECONDS]:
                    del self._admitted[key]
            return 0.0, -1

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

    @staticmethod
    def _script_args(windows: list, limits: list[int]) -> tuple:
        return (_ADMIT_SCRIPT, len(windows), *map(_redis_key, windows), WINDOW_SECONDS * 1000, uuid.uuid4().hex, *limits)

    @staticmethod
    def _verdict(reply) -> tuple[float, int]:
        wait_ms, which = map(int, reply)
        return wait_ms / 1000, which - 1

    def admit(self, windows: list, limits: list[int]) -> tuple[float, int]:
        return self._verdict(self._sync_client().eval(*self._script_args(windows, limits)))

    async def aadmit(self, windows: list, limits: list[int]) -> tuple[float, int]:
        return self._verdict(await self._async_client().eval(*self._script_args(windows, limits)))


_local = _LocalWindows()
_shared = _SharedWindows(settings.REDIS_URL) if settings.REDIS_URL else None


def check_caller_rate(*, api_key_id, membership_id) -> None:
    """Count one request for this key and member, or raise RateLimited (429, with `wait` for Retry-After)."""
    if not (counted := _windows_for(api_key_id, membership_id)):
        return
    verdict = None
    if _shared is not None and _shared.available():
        try:
            verdict = _shared.admit(*counted)
        except Exception:
            _shared.failed()
    _admit_or_refuse(counted, verdict)


async def acheck_caller_rate(*, api_key_id, membership_id) -> None:
    """check_caller_rate for async code: never blocks the event loop."""
    if not (counted := _windows_for(api_key_id, membership_id)):
        return
    verdict = None
    if _shared is not None and _shared.available():
        try:
            verdict = await _shared.aadmit(*counted)
        except Exception:
            _shared.failed()
    _admit_or_refuse(counted, verdict)


def _windows_for(api_key_id, membership_id) -> tuple[list, list[int]] | None:
    """The windows that count this request and their limits, the key's first; None when none applies."""
    key_limit = settings.PORTAL_KEY_RATE_LIMIT_PER_MINUTE
    member_limit = settings.PORTAL_MEMBER_RATE_LIMIT_PER_MINUTE
    member_limit = key_limit if member_limit is None else member_limit
    windows, limits = [], []
    if api_key_id is not None and key_limit > 0:
        windows.append(("key", api_key_id))
        limits.append(key_limit)
    if membership_id is not None and member_limit > 0:
        windows.append(("member", membership_id))
        limits.append(member_limit)
    return (windows, limits) if windows else None


def _admit_or_refuse(counted: tuple[list, list[int]], shared_verdict: tuple[float, int] | None) -> None:
    """Redis's verdict when it gave one; else this worker counts alone."""
    windows, limits = counted
    wait, which = shared_verdict if shared_verdict is not None else _local.admit(windows, limits)
    if wait > 0:
        kind = windows[which][0]
        raise RateLimited(wait, limits[which], "API key" if kind == "key" else "member")


def reset_key_rates() -> None:
    """Forget every count (tests: key ids are reused from one test's database to the next)."""
    _local.clear()
    if _shared is not None and _shared.available():
        try:
            client = _shared._sync_client()
            keys = list(client.scan_iter(match="portal:rate:*", count=1000))
            if keys:
                client.delete(*keys)
        except Exception:
            _shared.failed()


class CallerRateThrottle(BaseThrottle):
    """Every DRF request made with an API key counts against that key and its member; the dashboard's own
    session requests (its pages' reads) do not."""

    def allow_request(self, request, view):
        api_key = request.auth
        if api_key is not None and hasattr(api_key, "membership_id"):
            # Raises RateLimited, which carries its own message and wait.
            check_caller_rate(api_key_id=api_key.pk, membership_id=api_key.membership_id)
        return True
