"""Failed dashboard logins are counted per username and per client address in Django's cache (Redis when
REDIS_URL is set, so every worker sees the same counts). Past PORTAL_LOGIN_MAX_FAILURES for a username, or
PORTAL_LOGIN_MAX_FAILURES_PER_IP from one address, within PORTAL_LOGIN_LOCKOUT_SECONDS, further attempts
are refused without checking the password until that window, which starts at the first failure, is over.

Cache keys hold a digest of the username, never the name itself; refused attempts are not counted, so
the lock ends on time whatever an attacker keeps sending."""

import hashlib
import math
import time

from django.conf import settings
from django.core.cache import cache


def _keys(kind: str, value: str) -> tuple[str, str]:
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    key = f"portal:login-fail:{kind}:{digest}"
    return key, f"{key}:until"


def _subjects(username: str, ip: str) -> list[tuple[str, str, int]]:
    subjects = [("user", username.strip().lower(), settings.PORTAL_LOGIN_MAX_FAILURES)]
    if ip:
        subjects.append(("ip", ip, settings.PORTAL_LOGIN_MAX_FAILURES_PER_IP))
    return [(kind, value, limit) for kind, value, limit in subjects if limit > 0]


def login_locked_for(*, username: str, ip: str) -> int:
    """Seconds until a login for this username from this address may be tried again; 0: it may now."""
    now = time.time()
    wait = 0.0
    for kind, value, limit in _subjects(username, ip):
        count_key, until_key = _keys(kind, value)
        found = cache.get_many([count_key, until_key])
        if found.get(count_key, 0) >= limit:
            wait = max(wait, found.get(until_key, now + 1) - now)
    return max(1, math.ceil(wait)) if wait > 0 else 0


def login_failure_record(*, username: str, ip: str) -> None:
    window = settings.PORTAL_LOGIN_LOCKOUT_SECONDS
    for kind, value, _ in _subjects(username, ip):
        count_key, until_key = _keys(kind, value)
        if cache.add(count_key, 1, timeout=window):
            cache.set(until_key, time.time() + window, timeout=window)
            continue
        try:
            cache.incr(count_key)
        except ValueError:  # expired between add and incr: this failure starts a new window
            cache.set(count_key, 1, timeout=window)
            cache.set(until_key, time.time() + window, timeout=window)


def login_success_record(*, username: str) -> None:
    """A right password clears its username's failures (not its address's: one account is not the others)."""
    cache.delete_many(_keys("user", username.strip().lower()))
