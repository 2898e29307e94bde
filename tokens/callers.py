"""Who is asking, for the bare front doors (the chat relay and the client contract's lease and report):
a portal API key's caller and the pool it draws from, remembered for PORTAL_AUTH_CACHE_SECONDS.

Most requests then never wait for the database before their own work. Every cache here is emptied in this
process whenever an account, membership, key, organization or pool is saved (portal.cache); what changes
without a save (a key's expiry, a last use due to be recorded again) is checked on every hit.
"""

from dataclasses import dataclass
from datetime import timedelta
from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.contrib.auth import get_user
from django.utils import timezone
from rest_framework import exceptions

from accounts import selectors as account_selectors
from accounts.authentication import authenticate_api_key, bearer_key_from_header
from accounts.keys import digest_api_key
from accounts.models import ApiKey, Membership
from accounts.permissions import SESSION_ORGANIZATION_KEY, membership_has
from portal import cache
from portal.db import on_db_threads
from portal.rate_limit import acheck_caller_rate
from tokens import services
from tokens.models import TokenPool


@dataclass(frozen=True)
class Caller:
    membership: Membership
    api_key: ApiKey | None  # None for a dashboard session (the chat websocket)

    @property
    def organization(self):
        return self.membership.organization

    @property
    def user(self):
        return self.membership.user


async def count_request(caller: Caller) -> None:
    """One request against the caller's rate limits, its key's and its member's, or RateLimited (429)."""
    await acheck_caller_rate(api_key_id=caller.api_key.pk if caller.api_key else None, membership_id=caller.membership.pk)


def raw_key_from(authorization: str) -> str:
    """The portal key in an Authorization header's value, or 401."""
    raw_key = bearer_key_from_header(authorization.encode("latin-1"))
    if raw_key is None:
        raise exceptions.NotAuthenticated("Send your portal API key as `Authorization: Bearer <key>`.")
    return raw_key


def ensure_caller_may(caller: Caller, perm: str, refusal: str) -> None:
    if not membership_has(caller.membership, perm):
        raise exceptions.PermissionDenied(refusal)


def _caller_from_key(raw_key: str) -> Caller:
    api_key = authenticate_api_key(raw_key)
    return Caller(api_key.membership, api_key)


caller_from_key = on_db_threads(_caller_from_key)
_recent_callers = cache.RecentCache(settings.PORTAL_AUTH_CACHE_SECONDS)


async def known_caller(raw_key: str) -> Caller:
    """caller_from_key, answered from what this worker learnt in the last PORTAL_AUTH_CACHE_SECONDS when it can."""
    cache_key = digest_api_key(raw_key)
    caller = _recent_callers.get(cache_key)
    if caller is not None and _still_good(caller.api_key):
        return caller
    read_at = cache.generation()
    caller = await caller_from_key(raw_key)
    _recent_callers.put(cache_key, caller, read_at)
    return caller


def _caller_from_session(session_key: str) -> Caller:
    """A dashboard session's caller, read afresh: a session logged out, a password changed since (Django's
    session hash) or a deactivated user is no caller any more."""
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = get_user(SimpleNamespace(session=session))
    if not user.is_authenticated:
        raise exceptions.NotAuthenticated("Your session has ended; log in again.")
    membership = account_selectors.membership_for_user(user, session.get(SESSION_ORGANIZATION_KEY))
    if membership is None:
        raise exceptions.PermissionDenied("You are not a member of any active organization.")
    return Caller(membership, None)


_caller_from_session_on_db = on_db_threads(_caller_from_session)


async def known_session_caller(session_key: str | None, *, organization_id=None) -> Caller:
    """_caller_from_session, remembered like known_caller (logging out empties the memory; accounts.apps).
    With `organization_id` (a socket's, from its connect) a session that now acts in another organization
    (its membership there ended, or it switched) is refused, never carried over to the other one."""
    if not session_key:
        raise exceptions.NotAuthenticated()
    cache_key = ("session", digest_api_key(session_key))
    caller = _recent_callers.get(cache_key)
    if caller is None:
        read_at = cache.generation()
        caller = await _caller_from_session_on_db(session_key)
        _recent_callers.put(cache_key, caller, read_at)
    if organization_id is not None and caller.organization.pk != organization_id:
        raise exceptions.PermissionDenied("You no longer work in this organization here; reload the page.")
    return caller


def _still_good(api_key: ApiKey) -> bool:
    """What can change without anyone saving a row: expiry, and a last use old enough to be recorded again."""
    now = timezone.now()
    touch_due = api_key.last_used_at is None or now - api_key.last_used_at >= timedelta(
        seconds=settings.PORTAL_KEY_TOUCH_INTERVAL
    )
    return not touch_due and not api_key.is_expired(now)


def _caller_pool(caller: Caller, pool_name: str) -> TokenPool:
    return services.lease_pool(caller.organization, api_key=caller.api_key, pool_name=pool_name)


_caller_pool_from_db = on_db_threads(_caller_pool)
_recent_pools = cache.RecentCache(settings.PORTAL_AUTH_CACHE_SECONDS)


async def caller_pool(caller: Caller, pool_name: str) -> TokenPool:
    """The pool the caller leases from (its key's pinned pool, the one named, or the default), remembered."""
    cache_key = (caller.membership.pk, caller.api_key.pk if caller.api_key else None, pool_name)
    pool = _recent_pools.get(cache_key)
    if pool is None:
        read_at = cache.generation()
        pool = await _caller_pool_from_db(caller, pool_name)
        _recent_pools.put(cache_key, pool, read_at)
    return pool
