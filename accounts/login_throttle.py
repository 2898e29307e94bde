"""Login throttling for every way to log in: the dashboard's form, Django's admin login and any other
`django.contrib.auth.authenticate()` call (DRF's basic auth, were it turned on).

Failed logins are counted per username and per client address in Django's cache (Redis when REDIS_URL is
set, so every worker sees the same counts). Past PORTAL_LOGIN_MAX_FAILURES for a username, or
PORTAL_LOGIN_MAX_FAILURES_PER_IP from one address, within PORTAL_LOGIN_LOCKOUT_SECONDS, further attempts
are refused without checking the password until that window, which starts at the first failure, is over.

It hooks into authentication itself, not into a view: LoginThrottleBackend, first in
AUTHENTICATION_BACKENDS, refuses a locked login before any backend checks a password (a PermissionDenied
stops authenticate()), and receivers of Django's `user_login_failed` and `user_logged_in` signals count
the failures and clear them. A username is counted as Django's login forms look it up (NFKC, as
AbstractBaseUser.normalize_username), and case folded, as usernames are unique regardless of case: its
look-alikes (`ｔ5`, `𝐭5`, `T5`) share one count.

Cache keys hold a digest of the username, never the name itself; refused attempts are not counted, so
the lock ends on time whatever an attacker keeps sending."""

import hashlib
import math
import time
import unicodedata

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import checks
from django.core.cache import cache
from django.core.exceptions import PermissionDenied

BACKEND = "accounts.login_throttle.LoginThrottleBackend"


def login_name(username: str) -> str:
    """The name a login for `username` is counted under: what Django's login forms look up (stripped,
    NFKC), case folded, and normalized again (case folding can undo NFKC)."""
    folded = unicodedata.normalize("NFKC", username.strip()).casefold()
    return unicodedata.normalize("NFKC", folded).strip()


def client_address(request) -> str:
    """The address a login came from ('' when there is no request): REMOTE_ADDR, which daphne's
    --proxy-headers sets from the proxy's X-Forwarded-For."""
    return "" if request is None else request.META.get("REMOTE_ADDR") or ""


def _keys(kind: str, value: str) -> tuple[str, str]:
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    key = f"portal:login-fail:{kind}:{digest}"
    return key, f"{key}:until"


def _subjects(username: str, ip: str) -> list[tuple[str, str, int]]:
    subjects = [("user", login_name(username), settings.PORTAL_LOGIN_MAX_FAILURES)]
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
    cache.delete_many(_keys("user", login_name(username)))


def _username_in(credentials: dict):
    username = credentials.get(get_user_model().USERNAME_FIELD)
    return username if isinstance(username, str) else None


class LoginThrottleBackend:
    """An authentication backend that authenticates no one: first in AUTHENTICATION_BACKENDS, it refuses a
    locked login before the backends after it check the password. Without get_user() on purpose, so no
    session ever names it (Django's test client's force_login picks the first backend that has one)."""

    def authenticate(self, request, username=None, password=None, **credentials):
        if username is None:
            username = credentials.get(get_user_model().USERNAME_FIELD)
        if not isinstance(username, str):
            return None  # not a login by name and password: not ours to throttle
        if login_locked_for(username=username, ip=client_address(request)):
            raise PermissionDenied  # authenticate() tries no other backend and sends user_login_failed
        return None

    async def aauthenticate(self, request, username=None, password=None, **credentials):
        return await sync_to_async(self.authenticate)(request, username, password, **credentials)


def count_failed_login(sender, credentials, request=None, **kwargs) -> None:
    """user_login_failed: a wrong password (or an inactive account) counts, unless the attempt was refused
    for a lock, when no password was checked."""
    username = _username_in(credentials)
    if username is None:
        return
    ip = client_address(request)
    if login_locked_for(username=username, ip=ip):
        return
    login_failure_record(username=username, ip=ip)


def clear_failures_on_login(sender, request, user, **kwargs) -> None:
    """user_logged_in."""
    login_success_record(username=user.get_username())


def check_backend_first(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """The throttle holds only if it is asked before every backend that checks a password."""
    backends = list(getattr(settings, "AUTHENTICATION_BACKENDS", []))
    if backends[:1] == [BACKEND]:
        return []
    return [
        checks.Error(
            f"AUTHENTICATION_BACKENDS must start with {BACKEND!r}: otherwise a locked login is still checked.",
            id="accounts.E001",
        )
    ]
