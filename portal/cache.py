"""Answers this process remembers for a few seconds, so the hot paths (the chat relay above all) do not ask
the database who a key belongs to on every request.

Every cache is emptied in this process whenever an account, membership, API key, organization or pool is
saved or deleted here (see accounts.apps), so a revocation takes effect at once on the worker that made it;
other workers notice within PORTAL_AUTH_CACHE_SECONDS, which is the bound on how stale an answer can be.
"""

import time
import weakref

_caches: "weakref.WeakSet[RecentCache]" = weakref.WeakSet()


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

    def put(self, key, value) -> None:
        if self.seconds <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # simpler than LRU, and refilling costs one query per key
        self._entries[key] = (time.monotonic() + self.seconds, value)

    def clear(self) -> None:
        self._entries.clear()


def forget_everything(*args, **kwargs) -> None:
    """Empty every cache (a signal receiver: who may do what has just changed)."""
    for cache in list(_caches):
        cache.clear()
