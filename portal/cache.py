"""Answers this process remembers for a few seconds, so the hot paths (the chat relay above all) do not ask
the database who a key belongs to on every request.

Every cache is emptied in this process whenever an account, membership, API key, organization or pool is
saved or deleted here (see accounts.apps), so a revocation takes effect at once on the worker that made it;
other workers notice within PORTAL_AUTH_CACHE_SECONDS, which is the bound on how stale an answer can be.
"""

import time
import weakref

from django.db import transaction

_caches: "weakref.WeakSet[RecentCache]" = weakref.WeakSet()
_generation = 0  # how many times every cache was emptied; an answer read before the last emptying is stale


def generation() -> int:
    """Take it before reading the answer from the database, and give it to `put`."""
    return _generation


class RecentCache:
    def __init__(self, seconds: float, max_entries: int = 10_000):
        self.seconds, self.max_entries = seconds, max_entries
        self._entries: dict = {}
        _caches.add(self)

    def get(self, key):
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key, value, read_at_generation: int) -> None:
        """Remember `value`, unless the caches were emptied since it was read (it may predate the change)."""
        if self.seconds <= 0 or read_at_generation != _generation:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # simpler than LRU, and refilling costs one query per key
        self._entries[key] = (time.monotonic() + self.seconds, value)

    def clear(self) -> None:
        self._entries.clear()


def forget_everything(*args, **kwargs) -> None:
    """Empty every cache (a signal receiver: who may do what has just changed). Again once the change
    commits: a request that read the old row between the save and the commit must not keep it."""
    _empty_all()
    transaction.on_commit(_empty_all)


def forget_now() -> None:
    """Empty every cache in this process at once (a change made on another worker was announced)."""
    _empty_all()


def _empty_all() -> None:
    global _generation
    _generation += 1
    for cache in list(_caches):
        cache.clear()
