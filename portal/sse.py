"""The OpenAI-compatible front door: POST /v1/chat/completions (SSE or JSON) and GET /v1/models.

huggingface_hub's InferenceClient(base_url=…/v1) and the openai SDK speak to it unchanged. Errors use
TGI's shape {"error", "error_type"}: as the HTTP status before streaming, as a `data:` event after.
"""

import contextlib
import json
import re
from urllib.parse import unquote

from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions

from portal.bare_asgi import AsgiExchange, ClientGone
from portal.errors import DATABASE_DOWN, api_exception_response, error_payload, error_response
from portal.parsers import load_json
from tokens import relay
from tokens.callers import count_request, known_caller, raw_key_from
from tokens.chat import chat_context, ensure_may_chat, parse_chat_request
from tokens.limits import stream_permit

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _method_not_allowed(request, allowed: str) -> HttpResponse | None:
    if request.method == allowed:
        return None
    response = error_response(f"Use {allowed}.", "method_not_allowed", 405)
    response["Allow"] = allowed
    return response


async def _stream_permit_for(caller) -> contextlib.AsyncExitStack:
    """A permit held until the returned stack is closed (when the stream ends), or 429 overloaded at once."""
    permit = contextlib.AsyncExitStack()
    await permit.enter_async_context(stream_permit(organization_id=caller.organization.pk, api_key_id=caller.api_key.pk))
    return permit


async def chat_completions(scope, receive, send):
    """POST /v1/chat/completions as a bare ASGI app in front of Django (portal.asgi): it is the hot path,
    and Django's request handling (sync middleware hops, a new thread per request for its signals) cost
    more than the relay itself. It answers exactly as a view would, errors included."""
    exchange = AsgiExchange(scope, receive, send)
    if scope["method"] != "POST":
        return await exchange.send_method_not_allowed("POST")
    try:
        raw_body = await exchange.read_body(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        raw_key = raw_key_from(exchange.header("authorization"))
        body, pool_name = parse_chat_request(load_json(raw_body))
        caller, pool = await chat_context(raw_key, pool_name or exchange.header("x-portal-pool"))
        await count_request(caller)
        permit = await _stream_permit_for(caller)
    except (exceptions.APIException, *DATABASE_DOWN) as exc:
        return await exchange.send_refusal(exc)
    except ClientGone:
        return
    events = relay.stream_chat(
        organization=caller.organization, user=caller.membership.user, api_key=caller.api_key, pool=pool, request=body
    )
    # A client that hangs up cancels the relay (and so the upstream stream and the lease) at once.
    await exchange.until_disconnected(_answer(exchange, events, permit))


async def _answer(exchange: "AsgiExchange", events, permit: contextlib.AsyncExitStack) -> None:
    try:
        first = await anext(events, None)  # the first event decides the HTTP status
        if isinstance(first, relay.Failed):
            return await exchange.send_json(*_failure(first))
        if isinstance(first, relay.Started):
            first = await anext(events, None)
        if isinstance(first, relay.Completed):
            async for _ in events:  # run the relay to its end, where it reports the success
                pass
            return await exchange.send_bytes(first.body, "application/json")
        await exchange.start(200, "text/event-stream", SSE_HEADERS)
        event = first
        while event is not None:
            if isinstance(event, relay.Chunks):
                data = b"".join(b"data: " + chunk.data + b"\n\n" for chunk in event.items)
                if event.last:  # the client has its answer now, while the relay reads upstream to its end and reports
                    await exchange.body(data + b"data: [DONE]\n\n", more=False)
                    await permit.aclose()  # the stream is over for the limits too: the client may send the next
                    async for _ in events:
                        pass
                    return
                await exchange.body(data)
            elif isinstance(event, relay.Failed):
                failed = json.dumps({"error": event.message, "error_type": event.error_type}).encode()
                return await exchange.body(b"data: " + failed + b"\n\n", more=False)
            event = await anext(events, None)
        await exchange.body(b"data: [DONE]\n\n", more=False)
    finally:
        try:
            await events.aclose()
        finally:
            await permit.aclose()  # closing it again does nothing


def _failure(failed: relay.Failed) -> tuple[dict, int, dict]:
    headers = {"Retry-After": str(failed.retry_after)} if failed.retry_after else {}
    return error_payload(failed.message, failed.error_type), failed.status, headers


async def models(request):
    if refused := _method_not_allowed(request, "GET"):
        return refused
    try:
        caller = await known_caller(raw_key_from(request.headers.get("Authorization", "")))
        await count_request(caller)
        ensure_may_chat(caller)
    except exceptions.APIException as exc:
        return api_exception_response(exc)
    names = settings.PORTAL_MODELS or await relay.upstream_models()
    return JsonResponse({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "portal"} for name in names]})


# Control characters (C0, DEL, C1): no URL may carry them, and httpx refuses to build one that would.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def ensure_proxyable_path(path: str) -> None:
    """Refuse (400 `validation`) a path that must not reach upstream: a control character, or a dot-segment
    that would climb out of the path asked for. `path` arrives percent-decoded once; it is checked decoded
    once more as well, as upstream decodes what it receives (`%252e%252e` is `..` there)."""
    for candidate in (path, unquote(path)):
        if _CONTROL_CHARACTER.search(candidate):
            raise exceptions.ValidationError("The path holds a control character.")
        if any(segment in {".", ".."} for segment in re.split(r"[/\\]", candidate)):
            raise exceptions.ValidationError("The path holds a dot-segment (. or ..).")


@csrf_exempt
async def proxy(request, path: str):
    """/proxy/hf/<path>: any Hugging Face call, relayed as it is, with a pooled token as its credentials."""
    try:
        ensure_proxyable_path(path)  # before anything else: like a URL that matches no route, it needs no caller
        caller, pool = await chat_context(
            raw_key_from(request.headers.get("Authorization", "")), request.headers.get("X-Portal-Pool", "")
        )
        await count_request(caller)
        permit = await _stream_permit_for(caller)
    except exceptions.APIException as exc:
        return api_exception_response(exc)
    events = relay.proxy_stream(
        organization=caller.organization, user=caller.membership.user, api_key=caller.api_key, pool=pool,
        method=request.method, path=path, query=request.META.get("QUERY_STRING", ""),
        headers=dict(request.headers), body=request.body,
    )
    try:
        head = await anext(events)
    except BaseException:
        await events.aclose()
        await permit.aclose()
        raise
    if isinstance(head, relay.Failed):
        await permit.aclose()
        payload, status, headers = _failure(head)
        return JsonResponse(payload, status=status, headers=headers)
    response = StreamingHttpResponse(_passthrough(events, permit), status=head.status)
    for name, value in head.headers:
        response[name] = value
    return response


async def _passthrough(events, permit):
    try:
        async for piece in events:
            if isinstance(piece, bytes):
                yield piece
    finally:
        await events.aclose()
        await permit.aclose()
