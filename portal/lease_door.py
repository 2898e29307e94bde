"""The client contract's two hot paths as bare ASGI apps in front of Django (portal.asgi):
GET /keys/provision/hf and POST /keys/report/hf, and /keys/provision and /keys/report for older copies
of hf_token_utils.

Every client of the portal calls them once or twice per Hugging Face call, and Django's request handling
(its middleware, and hops between the event loop and its threads) cost more than the lease itself: 5.5 ms
of CPU for a trivial Django view against 2.1 ms for a whole lease here (bench/lease.py). A request with a
key this worker saw in the last PORTAL_AUTH_CACHE_SECONDS goes straight to one trip to the database
threads for its lease or report. portal.bare_asgi does what Django's middleware would have (hosts, HTTPS,
security headers).

They answer as tokens.api's DRF views do, which stay for the OpenAPI schema and for in-process callers:
the same checks in the same order (key, role, rate limit, method, input, pool), the same services and the
same answers (tokens.serializers), errors included; tests/tokens/test_lease_door.py runs both.
"""

import functools
import logging

from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.http import QueryDict
from django.utils.http import parse_header_parameters
from rest_framework import exceptions
from rest_framework.metadata import SimpleMetadata

from accounts.roles import Perm
from portal.bare_asgi import AsgiExchange, ClientGone
from portal.db import on_loop_when_free
from portal.errors import DATABASE_DOWN, error_payload
from portal.parsers import load_json_bytes
from tokens import api, services
from tokens.callers import Caller, caller_pool, count_request, ensure_caller_may, known_caller, raw_key_from
from tokens.serializers import (
    PROVISION_HEADERS,
    ProvisionInput,
    ReportInput,
    provision_answer,
    report_answer,
    report_arguments,
)

logger = logging.getLogger(__name__)


async def provision(scope, receive, send):
    await _serve(AsgiExchange(scope, receive, send), "GET", _provision, api.ProvisionApi)


async def report(scope, receive, send):
    await _serve(AsgiExchange(scope, receive, send), "POST", _report, api.ReportApi)


@functools.cache
def _options_answer(view) -> dict:
    """What the DRF view answers to OPTIONS (its name, description, what it renders and parses)."""
    return SimpleMetadata().determine_metadata(None, view())


async def _serve(exchange: AsgiExchange, method: str, work, view) -> None:
    try:
        caller = await _leasing_caller(exchange)  # before the method, as DRF checks: a wrong method still counts
        if exchange.scope["method"] != method:
            allowed = f"{method}, OPTIONS"
            if exchange.scope["method"] == "OPTIONS":
                return await exchange.send_json(_options_answer(view), 200, {"Allow": allowed})
            return await exchange.send_method_not_allowed(allowed)
        payload, headers = await work(exchange, caller)
    except (exceptions.APIException, *DATABASE_DOWN) as exc:
        return await exchange.send_refusal(exc)
    except SuspiciousOperation as exc:  # e.g. more query fields than DATA_UPLOAD_MAX_NUMBER_FIELDS, as Django answers
        logger.warning("%s %s refused: %s", exchange.scope["method"], exchange.scope["path"], type(exc).__name__)
        return await exchange.send_json(error_payload("Bad request.", "bad_request"), 400)
    except ClientGone:
        return
    except Exception:
        logger.exception("%s %s failed", exchange.scope["method"], exchange.scope["path"])
        return await exchange.send_json(error_payload("Internal server error.", "server_error"), 500)
    await exchange.send_json(payload, 200, headers)


async def _leasing_caller(exchange: AsgiExchange) -> Caller:
    caller = await known_caller(raw_key_from(exchange.header("authorization")))
    ensure_caller_may(caller, Perm.LEASE_TOKENS, f"Your role does not allow this ({Perm.LEASE_TOKENS}).")
    await count_request(caller)
    return caller


async def _provision(exchange: AsgiExchange, caller: Caller) -> tuple[dict, dict]:
    query = ProvisionInput.validated(QueryDict(exchange.scope["query_string"].decode("utf-8", "replace")))
    pool = await caller_pool(caller, query["pool"])
    return await _lease(caller, pool, query["client_name"]), PROVISION_HEADERS


@on_loop_when_free
def _lease(caller: Caller, pool, client_name: str) -> dict:
    grant = services.lease_token(
        organization=caller.organization, pool=pool, user=caller.user, api_key=caller.api_key, client_name=client_name
    )
    return provision_answer(grant, pool)


async def _report(exchange: AsgiExchange, caller: Caller) -> tuple[dict, dict]:
    data = ReportInput.validated(_json_body(exchange.header("content-type"), await exchange.read_body(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)))
    return await _report_outcome(caller, data), {}


def _json_body(content_type: str, raw: bytes):
    """The body as DRF's JSONParser reads it: JSON only, in the declared charset (UTF-8 by default); an
    empty body is an empty object (so the answer names the missing fields)."""
    media_type, params = parse_header_parameters(content_type)
    if media_type != "application/json":
        raise exceptions.UnsupportedMediaType(content_type)
    if not raw:
        return {}
    return load_json_bytes(raw, params.get("charset"))


@on_loop_when_free
def _report_outcome(caller: Caller, data: dict) -> dict:
    result = services.report_outcome(
        organization=caller.organization, user=caller.user, api_key=caller.api_key, **report_arguments(data)
    )
    return report_answer(result)
