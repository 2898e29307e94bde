"""Database work from async code (the chat relay, the consumers) runs on threads of its own.

SQLite takes one writer at a time, so it gets one thread: writers queue in the process instead of
spinning on the file lock (at 200 concurrent streams that ended in "database is locked"). PostgreSQL
gets PORTAL_DB_THREADS. The threads live as long as the process and keep their connections, so no call
pays for opening one; a connection that failed is dropped and reopened on the next call.
"""

import asyncio
import contextlib
import functools
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections

_threads = 1 if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") else settings.PORTAL_DB_THREADS
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


_sqlite_writer = threading.Lock()


@contextlib.contextmanager
def one_writer_at_a_time():
    """Around a write transaction. SQLite lets one writer in at a time, and the others wait in its busy
    handler, which sleeps with a growing back-off: under 32 concurrent leases that turned a p50 of
    0.3 s into a p99 of seconds. This process's writers queue on a lock instead. PostgreSQL locks rows."""
    if connection.vendor != "sqlite":
        yield
        return
    with _sqlite_writer:
        yield


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


def this_thread_db():
    """This thread's DatabaseWrapper itself. `django.db.connection` is a proxy that looks the thread's
    connection up again on every attribute, and the fields' conversions read several attributes each."""
    return connections[DEFAULT_DB_ALIAS]


def quoted(name: str) -> str:
    return connection.ops.quote_name(name)


_FORMAT_PLACEHOLDER = re.compile(r"(?<!%)%s")  # the rewrite Django's SQLite cursor makes on every call


@functools.lru_cache(maxsize=512)
def _qmark(sql: str) -> str:
    """A statement in SQLite's own placeholders (`?`), with `%%` back to `%`."""
    return _FORMAT_PLACEHOLDER.sub("?", sql).replace("%%", "%")


@contextlib.contextmanager
def statement(sql: str, params):
    """Run one statement on this thread's connection and yield the cursor to read its rows from."""
    db = this_thread_db()
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
    db = this_thread_db()
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
    if not connection.features.has_select_for_update:
        return ""
    return f" FOR UPDATE OF {quoted(model._meta.db_table)}" + (" SKIP LOCKED" if skip_locked else "")


def db_value(model, field_name: str, value):
    """A Python value as the database stores it in this field (datetimes in UTC, and so on)."""
    return model._meta.get_field(field_name).get_db_prep_save(value, this_thread_db())


_statements: dict = {}  # (kind, model, fields, backend) -> (sql, fields): built once, run many times


def save_fields(instance, field_names) -> None:
    """instance.save(update_fields=field_names), minus the statement building (and the save signals)."""
    db = this_thread_db()
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
    db = this_thread_db()
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
