"""One error shape everywhere: {"error": "<message>", "error_type": "<kind>"} (TGI's shape).

REST views raise DRF exceptions (or the ones below, which carry their own
error_type); the handler turns every one of them into that shape. Plain Django
404/500 under API paths get the same JSON instead of an HTML page.
"""

import logging
from http import HTTPStatus

from django import db
from django.core.exceptions import BadRequest, RequestDataTooBig
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpResponse, JsonResponse
from django.views.csrf import csrf_failure as django_csrf_failure
from django.views.defaults import bad_request, page_not_found, permission_denied, server_error
from rest_framework import exceptions, status
from rest_framework.response import Response

logger = logging.getLogger(__name__)

API_PATH_PREFIXES = ("/admin/", "/keys/", "/me", "/v1/", "/api/", "/proxy/", "/healthz", "/readyz", "/metrics")


class PortalError(exceptions.APIException):
    """Base for the portal's own errors: each subclass names its error_type."""

    error_type = "error"


class Conflict(PortalError):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state."
    error_type = "conflict"


class DatabaseUnavailable(PortalError):
    """The database cannot be reached (restarting, failing over): a clear, quick 503, never a 500."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The database is unavailable; try again in a moment."
    error_type = "database_unavailable"
    wait = 1  # Retry-After


class DatabaseBusy(DatabaseUnavailable):
    """The database is up but refused this transaction for contention (a lock wait, a deadlock, a
    serialization failure): as retryable as an outage, but not one, so it is not labelled as one."""

    default_detail = "The database is busy; try again in a moment."
    error_type = "database_busy"


# The database is down, restarting or failing over, or refused the transaction for contention: Django
# reports both as OperationalError.
DATABASE_DOWN = (db.OperationalError, db.InterfaceError)

# PostgreSQL's SQLSTATEs for contention: serialization_failure, deadlock_detected, lock_not_available.
_CONTENTION_SQLSTATES = {"40001", "40P01", "55P03"}
_CONTENTION_MESSAGES = ("database is locked", "database table is locked")  # SQLite, past its busy timeout


def _is_contention(exc: Exception) -> bool:
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) in _CONTENTION_SQLSTATES:
        return True
    return any(message in str(exc).lower() for message in _CONTENTION_MESSAGES)


def database_unavailable(exc: Exception) -> DatabaseUnavailable:
    if _is_contention(exc):
        logger.warning("database busy: %s", type(exc.__cause__ or exc).__name__)
        return DatabaseBusy()
    logger.warning("database unavailable: %s", type(exc).__name__)
    return DatabaseUnavailable()


_ERROR_TYPES = [
    (exceptions.ValidationError, "validation"),
    (exceptions.ParseError, "validation"),
    (exceptions.UnsupportedMediaType, "unsupported_media_type"),
    (exceptions.NotAuthenticated, "authentication"),
    (exceptions.AuthenticationFailed, "authentication"),
    (exceptions.PermissionDenied, "permission_denied"),
    (exceptions.NotFound, "not_found"),
    (exceptions.MethodNotAllowed, "method_not_allowed"),
    (exceptions.NotAcceptable, "not_acceptable"),
    (exceptions.Throttled, "rate_limited"),
]


def error_payload(message: str, error_type: str, **extra) -> dict:
    return {"error": message, "error_type": error_type, **extra}


def error_response(message: str, error_type: str, status_code: int, headers: dict | None = None, **extra):
    return JsonResponse(error_payload(message, error_type, **extra), status=status_code, headers=headers)


def _error_type_of(exc: exceptions.APIException) -> str:
    if isinstance(exc, PortalError):
        return exc.error_type
    for exc_class, error_type in _ERROR_TYPES:
        if isinstance(exc, exc_class):
            return error_type
    return "error"


def validation_message(detail) -> str:
    """A sentence naming the first problem, so a human reading only `error` knows what to fix."""
    if isinstance(detail, dict):
        for field, problems in detail.items():
            inner = validation_message(problems)
            return inner if field == "non_field_errors" else f"{field}: {inner}"
    if isinstance(detail, list) and detail:
        return validation_message(detail[0])
    return str(detail)


def api_exception_handler(exc, context):
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, DjangoValidationError):  # a model's full_clean() in a service
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    elif isinstance(exc, DATABASE_DOWN):
        exc = database_unavailable(exc)
    if not isinstance(exc, exceptions.APIException):
        return None  # unexpected: Django logs it and handler500 answers in JSON
    payload, headers = describe_api_exception(exc)
    return Response(payload, status=exc.status_code, headers=headers)


def api_exception_response(exc: exceptions.APIException) -> JsonResponse:
    """The same answer outside DRF views (the async SSE endpoint)."""
    payload, headers = describe_api_exception(exc)
    return JsonResponse(payload, status=exc.status_code, headers=headers)


def describe_api_exception(exc: exceptions.APIException) -> tuple[dict, dict]:
    """The error payload and headers (WWW-Authenticate, Retry-After) for an API exception."""
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))

    error_type = _error_type_of(exc)
    if isinstance(exc, exceptions.ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        payload = error_payload(validation_message(exc.detail), error_type, fields=fields)
    elif isinstance(exc, exceptions.ParseError):
        payload = error_payload(str(exc.detail), error_type, fields={"non_field_errors": [str(exc.detail)]})
    else:
        payload = error_payload(str(exc.detail), error_type)
    return payload, headers


def is_api_path(path: str) -> bool:
    return path.startswith(API_PATH_PREFIXES)


def _page(view, request, exception, status_code: int):
    """Django's page for the status. Those pages take a CSRF token, and on a POST the token check reads the
    body again: a body Django refused (a form not in UTF-8) would raise again and become a bare 500."""
    try:
        return view(request) if view is server_error else view(request, exception)
    except BadRequest:
        title = f"{status_code} {HTTPStatus(status_code).phrase}"
        return HttpResponse(f"<h1>{title}</h1><p>The request could not be read.</p>", status=status_code)


def csrf_failure(request, reason=""):
    """CSRF_FAILURE_VIEW: API callers get the one error shape, never Django's HTML page. Programs send
    their key as a Bearer header and are not asked for a CSRF token where a view takes one (DRF, the
    proxy); this answers what a cookie-carrying POST to any other API path gets."""
    if is_api_path(request.path):
        return error_response(f"CSRF check failed: {reason}", "permission_denied", 403)
    return django_csrf_failure(request, reason)


def handler400(request, exception=None):
    if isinstance(exception, RequestDataTooBig):  # a body over DATA_UPLOAD_MAX_MEMORY_SIZE
        if is_api_path(request.path):
            return error_response("Request body too large.", "payload_too_large", 413)
        response = _page(bad_request, request, exception, 413)
        response.status_code = 413
        return response
    if is_api_path(request.path):
        return error_response("Bad request.", "bad_request", 400)
    return _page(bad_request, request, exception, 400)


def handler403(request, exception=None):
    if is_api_path(request.path):
        return error_response("Forbidden.", "permission_denied", 403)
    return permission_denied(request, exception)


def handler404(request, exception=None):
    if is_api_path(request.path):
        return error_response("Not found.", "not_found", 404)
    return _page(page_not_found, request, exception, 404)


def handler500(request):
    if is_api_path(request.path):
        return error_response("Internal server error.", "server_error", 500)
    return _page(server_error, request, None, 500)
