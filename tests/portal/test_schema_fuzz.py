"""Schemathesis against /api/schema/: every operation, generated inputs, a bounded number of examples each.
No answer may be a 5xx, and every answer (errors included) must have a status and a body the schema
documents. (Driven through Hypothesis directly: schemathesis' pytest plugin does not run under pytest 9.)"""

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from accounts.roles import Role

EXAMPLES_PER_OPERATION = 15

# Loading the schema needs no database: it is drf-spectacular reading the views.
SCHEMA = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
OPERATIONS = {operation.label: operation for operation in (result.ok() for result in SCHEMA.get_all_operations())}


@pytest.fixture(autouse=True)
def keep_the_test_connection():
    """What Django's test client does around each request: the app's request signals would otherwise close
    the test's database connection, and its transaction with it (CONN_MAX_AGE is 0 on PostgreSQL)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def admin_key(organization, make_member, make_token, standin_url, settings):
    settings.HF_API_BASE = standin_url  # token validation asks the stand-in's whoami-v2
    make_token(organization)  # something to lease, list and report on
    _, key = make_member(organization, Role.ADMIN)
    return key


@pytest.mark.django_db
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_operation_answers_5xx_or_off_schema(label, admin_key):
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=OPERATIONS[label].as_strategy())
    def run(case):
        case.call_and_validate(
            headers={"Authorization": f"Bearer {admin_key}"},
            checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
        )

    run()
