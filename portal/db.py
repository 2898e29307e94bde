"""Database work from async code (the chat relay, the consumers) runs on threads of its own.

SQLite takes one writer at a time, so it gets one thread: writers queue in the process instead of
spinning on the file lock (at 200 concurrent streams that ended in "database is locked"). PostgreSQL
gets PORTAL_DB_THREADS. The threads live as long as the process and keep their connections, so no call
pays for opening one; a connection that failed is dropped and reopened on the next call.
"""

from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import connections

_threads = 1 if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") else settings.PORTAL_DB_THREADS
_executor = ThreadPoolExecutor(max_workers=_threads, thread_name_prefix="portal-db")


class _OnDatabaseThreads(SyncToAsync):
    def thread_handler(self, loop, *args, **kwargs):
        try:
            return super().thread_handler(loop, *args, **kwargs)
        finally:
            for connection in connections.all(initialized_only=True):
                if connection.errors_occurred and not connection.is_usable():
                    connection.close()
                connection.errors_occurred = False


def on_db_threads(func):
    """An async version of `func` that runs on the database threads."""
    return _OnDatabaseThreads(func, thread_sensitive=False, executor=_executor)


def unique_or_none(queryset):
    """The row a lookup by a unique key finds, or None: `.first()` without the ORDER BY it adds, whose
    compilation is a real share of a lease's cost."""
    return next(iter(queryset.order_by()[:1]), None)
