"""portal.db's statements: on SQLite they skip Django's cursor wrapper, and must still behave like it."""

import django.db
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from portal.db import first_row, statement
from tokens.models import HFToken

pytestmark = pytest.mark.django_db


def test_a_failing_statement_raises_djangos_own_error():
    # The 503 database_unavailable answers catch Django's exceptions, not the driver's (which Django's
    # classes do not inherit from). SQLite calls a missing table an OperationalError, PostgreSQL a
    # ProgrammingError.
    with pytest.raises(django.db.DatabaseError):
        with statement("SELECT * FROM no_such_table WHERE id = %s", [1]):
            pass


def test_after_a_failed_statement_an_atomic_block_refuses_the_next_one():
    with transaction.atomic():
        with pytest.raises(django.db.DatabaseError):
            with transaction.atomic(savepoint=False):  # no savepoint: the failure spoils the whole block
                with statement("SELECT * FROM no_such_table", []):
                    pass
        with pytest.raises(transaction.TransactionManagementError):
            with statement("SELECT 1", []):
                pass


def test_percent_signs_and_placeholders_mean_what_they_mean_to_django():
    with statement("SELECT 'a%%b', %s", ["c%d"]) as cursor:
        assert cursor.fetchone() == ("a%b", "c%d")


def test_queries_are_recorded_where_django_records_them(settings):
    with CaptureQueriesContext(connection) as captured:
        assert first_row(HFToken, "id = %s", [123456]) is None
    assert len(captured) == 1
    assert "tokens_hftoken" in captured[0]["sql"]


def test_execute_wrappers_see_every_statement():
    seen = []

    def wrapper(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        with statement("SELECT %s", [1]) as cursor:
            assert cursor.fetchone() == (1,)
    assert seen == ["SELECT %s"]
