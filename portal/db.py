"""Database work from async code (the chat relay, the consumers) runs on threads of its own.

SQLite takes one writer at a time, so it gets one thread: writers queue in the process instead of
spinning on the file lock (at 200 concurrent streams that ended in "database is locked"). PostgreSQL
gets PORTAL_DB_THREADS. The threads live as long as the process and keep their connections, so no call
pays for opening one; a connection that failed is dropped and reopened on the next call.

On SQLite, the short writes of the hot paths (a lease, a report) run on the event loop itself when they
can do so without waiting: see "Short writes on the event loop" below.
"""

import asyncio
import contextlib
import functools
import logging
import re
import threading
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextvars import ContextVar

from django.conf import settings
from django.core.exceptions import SynchronousOnlyOperation
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction

logger = logging.getLogger(__name__)

_SQLITE = settings.DATABASES[DEFAULT_DB_ALIAS]["ENGINE"].endswith("sqlite3")
_threads = 1 if _SQLITE else settings.PORTAL_DB_THREADS
_executor = ThreadPoolExecutor(max_workers=_threads, thread_name_prefix="portal-db")


def _run_and_tidy(func, args, kwargs):
    try:
        return func(*args, **kwargs)
    finally:
        for open_connection in connections.all(initialized_only=True):
            if open_connection.errors_occurred and not open_connection.is_usable():
                open_connection.close()
            open_connection.errors_occurred = False


def on_db_threads(func):
    """An async version of `func` that runs on the database threads. A plain executor call, not asgiref's
    SyncToAsync: these functions need none of its context handling, and it sits on every lease's path."""

    @functools.wraps(func)
    async def on_a_database_thread(*args, **kwargs):
        return await asyncio.wrap_future(submit_to_db_threads(func, *args, **kwargs))

    return on_a_database_thread


def submit_to_db_threads(func, *args, **kwargs) -> Future:
    """Run `func` on the database threads without waiting for it: its future says when it is done."""
    return _executor.submit(_run_and_tidy, func, args, kwargs)


# SQLite lets one writer in at a time, and the others wait in its busy handler, which sleeps with a
# growing back-off: under 32 concurrent leases that turned a p50 of 0.3 s into a p99 of seconds. This
# process's writers queue on this lock instead. PostgreSQL locks rows.
_sqlite_writer = threading.Lock()


@contextlib.contextmanager
def write_transaction():
    """A write transaction (Django's atomic), this process's only SQLite writer while it lasts; on the
    event loop's own connection when the caller runs there (on_loop_when_free)."""
    loop_db = _on_loop.get()
    if loop_db is not None:
        with _loop_transaction(loop_db):
            yield
    elif current_db().vendor == "sqlite":
        with _sqlite_writer, transaction.atomic():
            yield
    else:
        with transaction.atomic():
            yield


def on_commit(func) -> None:
    """Call `func` once the current write transaction has committed (never if it rolls back). A failing
    `func` is logged: the transaction it follows has committed either way."""
    if _on_loop.get() is not None:
        _loop_after_commit.append(func)
    else:
        transaction.on_commit(func, robust=True)


def close_thread_connections() -> None:
    """Close every database thread's own connection (when a test database is about to be dropped). Each
    task holds its thread at a barrier until all have run, so each lands on a thread of its own."""
    barrier = threading.Barrier(_threads)

    def close_mine():
        connections.close_all()
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=5)

    for closing in [_executor.submit(close_mine) for _ in range(_threads)]:
        closing.result()
    _close_loop_db()


def unique_or_none(queryset):
    """The row a lookup by a unique key finds, or None: `.first()` without the ORDER BY it adds, whose
    compilation is a real share of a lease's cost."""
    return next(iter(queryset.order_by()[:1]), None)


# --- Statements without the ORM's statement building ----------------------------------------------
# On the lease and report paths, building each statement with the QuerySet API cost about ten times
# running it (profiled: ~5 ms of ORM work per lease + report pair against ~0.5 ms inside the database).
# These run the same SQL the ORM would, with the fields' own conversions in both directions.
#
# On SQLite they also skip Django's cursor wrapper, which cost three times what SQLite took to run a
# statement (35 µs against 9 µs per lookup by id): they run on the driver's own cursor, with Django's
# error translation kept, so a failing database still raises Django's exceptions. PostgreSQL, and a
# connection that records its queries (DEBUG, a test counting them) or has execute wrappers installed
# (instrumentation, tests injecting failures), go through Django's cursor.


MAX_ROW_ID = 2**63 - 1  # the largest id a row can have (a 64-bit integer); larger ones overflow the driver


def current_db():
    """The DatabaseWrapper to run on: the event loop's own when the caller runs there (on_loop_when_free),
    else this thread's. Itself, not `django.db.connection`, a proxy that looks the thread's connection up
    again on every attribute (the fields' conversions read several attributes each)."""
    return _on_loop.get() or connections[DEFAULT_DB_ALIAS]


def quoted(name: str) -> str:
    return current_db().ops.quote_name(name)


_FORMAT_PLACEHOLDER = re.compile(r"(?<!%)%s")  # the rewrite Django's SQLite cursor makes on every call


@functools.lru_cache(maxsize=512)
def _qmark(sql: str) -> str:
    """A statement in SQLite's own placeholders (`?`), with `%%` back to `%`."""
    return _FORMAT_PLACEHOLDER.sub("?", sql).replace("%%", "%")


@contextlib.contextmanager
def statement(sql: str, params):
    """Run one statement on the current connection and yield the cursor to read its rows from."""
    db = current_db()
    if db is not _on_loop.get():  # the loop's own connection is always open, and only ever used here
        if db.vendor != "sqlite" or db.queries_logged or db.execute_wrappers:
            with db.cursor() as cursor:
                cursor.execute(sql, params)
                yield cursor
            return
        db.ensure_connection()
        db.validate_no_broken_transaction()  # as Django's cursor does: no statement after a failed one in an atomic block
    with db.wrap_database_errors:
        cursor = db.connection.execute(_qmark(sql), params)
        try:
            yield cursor
        finally:
            cursor.close()


def first_row(model, where: str, params, *, order_by: str = "", lock: str = ""):
    """The first `model` instance `SELECT … WHERE {where} ORDER BY {order_by} LIMIT 1 {lock}` finds, or None;
    its values converted exactly as a QuerySet converts them."""
    db = current_db()
    select, converters = _row_reader(model, db)
    sql = f"{select} WHERE {where}"
    sql += (f" ORDER BY {order_by}" if order_by else "") + " LIMIT 1" + lock
    with statement(sql, params) as cursor:
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for index, field_converters in converters:
        for convert, expression in field_converters:
            values[index] = convert(values[index], expression, db)
    return model.from_db(db.alias, None, values)


_row_readers: dict = {}


def _row_reader(model, db) -> tuple[str, list]:
    """SELECT every column of `model`, and per column the converters the ORM would apply (cached per backend)."""
    key = (model, db.vendor)
    if key not in _row_readers:
        fields = model._meta.concrete_fields
        converters = []
        for index, field in enumerate(fields):
            column = field.get_col(model._meta.db_table)
            found = db.ops.get_db_converters(column) + field.get_db_converters(db)
            if found:
                converters.append((index, [(convert, column) for convert in found]))
        columns = ", ".join(quoted(field.column) for field in fields)
        _row_readers[key] = (f"SELECT {columns} FROM {quoted(model._meta.db_table)}", converters)
    return _row_readers[key]


def lock_rows_of(model, *, skip_locked: bool = False) -> str:
    """The FOR UPDATE clause that locks only `model`'s rows, where the database locks rows at all: SQLite's
    IMMEDIATE transactions already let a single writer in."""
    if not current_db().features.has_select_for_update:
        return ""
    return f" FOR UPDATE OF {quoted(model._meta.db_table)}" + (" SKIP LOCKED" if skip_locked else "")


def db_value(model, field_name: str, value):
    """A Python value as the database stores it in this field (datetimes in UTC, and so on)."""
    return model._meta.get_field(field_name).get_db_prep_save(value, current_db())


_statements: dict = {}  # (kind, model, fields, backend) -> (sql, fields): built once, run many times


def save_fields(instance, field_names) -> None:
    """instance.save(update_fields=field_names), minus the statement building (and the save signals)."""
    db = current_db()
    key = ("update", type(instance), tuple(field_names), db.vendor)
    if key not in _statements:
        meta = instance._meta
        fields = [meta.get_field(name) for name in field_names]
        assignments = ", ".join(f"{quoted(field.column)} = %s" for field in fields)
        sql = f"UPDATE {quoted(meta.db_table)} SET {assignments} WHERE {quoted(meta.pk.column)} = %s"
        _statements[key] = (sql, fields)
    sql, fields = _statements[key]
    params = [field.get_db_prep_save(getattr(instance, field.attname), db) for field in fields]
    with statement(sql, [*params, instance.pk]):
        pass


def insert_row(instance) -> None:
    """instance.save() of a new row, minus the statement building (and the save signals); sets its pk."""
    db = current_db()
    key = ("insert", type(instance), (), db.vendor)
    if key not in _statements:
        meta = instance._meta
        fields = [field for field in meta.concrete_fields if not field.primary_key]
        columns = ", ".join(quoted(field.column) for field in fields)
        placeholders = ", ".join(["%s"] * len(fields))
        sql = f"INSERT INTO {quoted(meta.db_table)} ({columns}) VALUES ({placeholders}) RETURNING {quoted(meta.pk.column)}"
        _statements[key] = (sql, fields)
    sql, fields = _statements[key]
    params = [field.get_db_prep_save(field.pre_save(instance, True), db) for field in fields]
    with statement(sql, params) as cursor:
        instance.pk = cursor.fetchone()[0]
    instance._state.adding, instance._state.db = False, db.alias


# --- Short writes on the event loop (SQLite) ------------------------------------------------------
# A lease or a report is about half a millisecond of work on SQLite, and handing it to the database
# thread and back cost more than the work: at one chat at a time, running the lease on the loop took
# 1.5 ms off the time to first chunk (bench/ab.py). So when this process's SQLite writer is free, they
# run right on the event loop, on a connection of the loop's own that never waits for a lock (busy
# timeout 0). Whatever would wait (another process writing, a busy database thread) or needs the ORM
# (NeedsDatabaseThread) is rolled back and run on a database thread as before: the loop never waits on
# the database. PostgreSQL, and DEBUG (which records every query), always use the database threads.


class NeedsDatabaseThread(Exception):
    """Raised by work running on the loop's connection that has to run on a database thread instead
    (the ORM, which refuses to run on an event loop)."""


def require_database_thread() -> None:
    """Called before the rare steps of a hot path that use the ORM: on the loop, start over on a thread."""
    if _on_loop.get() is not None:
        raise NeedsDatabaseThread


_on_loop: ContextVar = ContextVar("portal_db_on_loop", default=None)  # the loop's DatabaseWrapper, while in use
_loop_db = None  # the loop's own DatabaseWrapper, opened on a database thread the first time it is wanted
_loop_db_opening = threading.Lock()
_loop_after_commit: list = []  # on_commit callbacks of the loop's current transaction
_loop_committed = False  # whether the work now running on the loop has committed (it is never run twice)
_loop_commits = 0
# SQLite copies its write-ahead log into the database (a checkpoint, with an fsync) from whichever
# connection commits when the log has grown past 1000 pages. Not from the loop's: it hands that to a
# database thread every CHECKPOINT_EVERY commits of its own.
CHECKPOINT_EVERY = 500
_NOT_DONE = object()


def on_loop_when_free(func):
    """An async version of `func` (a short write on the hot path) that runs it at once on the event loop
    when SQLite's writer is free, and on the database threads otherwise."""
    on_a_thread = on_db_threads(func)

    @functools.wraps(func)
    async def run(*args, **kwargs):
        result = _run_on_loop(func, args, kwargs)
        if result is _NOT_DONE:
            return await on_a_thread(*args, **kwargs)
        return result

    return run


def submit_soon(func, *args, **kwargs) -> Future:
    """Run `func` without waiting for it, as soon as the loop's current step is over (on the loop when
    the writer is free, else on the database threads): its future says when it is done."""
    outcome = Future()
    asyncio.get_running_loop().call_soon(_run_soon, outcome, func, args, kwargs)
    return outcome


def _run_soon(outcome: Future, func, args, kwargs) -> None:
    if not outcome.set_running_or_notify_cancel():  # whoever waited for it gave up: not run at all
        return
    try:
        result = _run_on_loop(func, args, kwargs)
    except BaseException as exc:
        outcome.set_exception(exc)
        return
    if result is not _NOT_DONE:
        outcome.set_result(result)
        return
    queued = submit_to_db_threads(func, *args, **kwargs)
    queued.add_done_callback(lambda done: _pass_on(done, outcome))


def _pass_on(done: Future, outcome: Future) -> None:
    if done.cancelled():  # the threads shut down before running it
        outcome.set_exception(CancelledError())
    elif (failure := done.exception()) is not None:
        outcome.set_exception(failure)
    else:
        outcome.set_result(done.result())


def _run_on_loop(func, args, kwargs):
    """func's result, or _NOT_DONE when it has to run on a database thread (and nothing was written)."""
    global _loop_committed
    loop_db = _loop_db
    if loop_db is None:
        _open_loop_db_soon()
        return _NOT_DONE
    if not _sqlite_writer.acquire(blocking=False):
        return _NOT_DONE
    _loop_committed = False
    entered = _on_loop.set(loop_db)
    try:
        return func(*args, **kwargs)
    except (NeedsDatabaseThread, DatabaseError, SynchronousOnlyOperation):
        # Locked by another process, the ORM wanted, or a failing database (the thread's run reports it
        # as usual). Nothing was written, unless it was committed: then it must not run a second time.
        if _loop_committed:
            raise
        return _NOT_DONE
    finally:
        _on_loop.reset(entered)
        _sqlite_writer.release()


@contextlib.contextmanager
def _loop_transaction(loop_db):
    global _loop_committed, _loop_commits
    raw = loop_db.connection
    _loop_after_commit.clear()
    try:
        with loop_db.wrap_database_errors:
            raw.execute("BEGIN IMMEDIATE")
        yield
        with loop_db.wrap_database_errors:
            raw.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):  # the error that got us here is the one to report
            if raw.in_transaction:
                raw.rollback()
        _loop_after_commit.clear()
        raise
    _loop_committed = True
    _loop_commits += 1
    if _loop_commits % CHECKPOINT_EVERY == 0:
        submit_to_db_threads(_checkpoint)
    callbacks = list(_loop_after_commit)
    _loop_after_commit.clear()
    # Outside the loop connection's context: a task a callback starts must not inherit it.
    outside = _on_loop.set(None)
    try:
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("an on-commit callback failed")
    finally:
        _on_loop.reset(outside)


def _open_loop_db_soon() -> None:
    if _SQLITE and not settings.DEBUG and _loop_db_opening.acquire(blocking=False):  # once
        submit_to_db_threads(_open_loop_db)


def _open_loop_db() -> None:
    """On a database thread: Django opens connections only off the event loop."""
    global _loop_db
    try:
        loop_db = connections.create_connection(DEFAULT_DB_ALIAS)
        loop_db.connect()  # SQLite connections may be used from any thread (check_same_thread=False)
        (journal,) = loop_db.connection.execute("PRAGMA journal_mode").fetchone()
        if journal.lower() not in ("wal", "memory"):  # elsewhere every commit would fsync on the loop
            logger.info("SQLite's journal is %s, not WAL: writes stay on the database thread", journal)
            loop_db.connection.close()
            return
        loop_db.connection.execute("PRAGMA busy_timeout = 0")  # a lock held elsewhere: go to the thread, never wait
        loop_db.connection.execute("PRAGMA wal_autocheckpoint = 0")  # nor write the database file (_checkpoint)
        _loop_db = loop_db
    except Exception:
        logger.exception("could not open the event loop's SQLite connection; writes stay on the database thread")


def _checkpoint() -> None:
    """On a database thread: copy the write-ahead log into the database file, without waiting for anyone."""
    with statement("PRAGMA wal_checkpoint(PASSIVE)", []) as cursor:
        cursor.fetchall()


def _close_loop_db() -> None:
    global _loop_db
    loop_db, _loop_db = _loop_db, None
    if loop_db is not None:
        with _sqlite_writer:
            loop_db.connection.close()
        _loop_db_opening.release()
