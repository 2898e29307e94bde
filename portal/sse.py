"""The OpenAI-compatible front door: POST /v1/chat/completions (SSE or JSON) and GET /v1/models.

huggingface_hub's InferenceClient(base_url=…/v1) and the openai SDK speak to it unchanged. Errors use
TGI's shape {"error", "error_type"}: as the HTTP status before streaming, as a `data:` event after.
"""

import contextlib
import json

from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions

from accounts.authentication import bearer_key_from_header
from portal.errors import api_exception_response, error_response
from tokens import relay
from tokens.chat import caller_from_key, chat_context, ensure_may_chat, load_json, parse_chat_request
from tokens.limits import stream_permit

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _raw_key(request) -> str:
    raw_key = bearer_key_from_header(request.headers.get("Authorization", "").encode("latin-1"))
    if raw_key is None:
        raise exceptions.NotAuthenticated("Send your portal API key as `Authorization: Bearer <key>`.")
    return raw_key


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


@csrf_exempt
async def chat_completions(request):
    if refused := _method_not_allowed(request, "POST"):
        return refused
    try:
        raw_key = _raw_key(request)
        body, pool_name = parse_chat_request(load_json(request.body))
        caller, pool = await chat_context(raw_key, pool_name or request.headers.get("X-Portal-Pool", ""))
        permit = await _stream_permit_for(caller)
    except exceptions.APIException as exc:
        return api_exception_response(exc)

    events = relay.stream_chat(
        organization=caller.organization, user=caller.membership.user, api_key=caller.api_key, pool=pool, request=body
    )
    try:
        started = await anext(events)  # the first event decides the HTTP status
        if isinstance(started, relay.Failed):
            await permit.aclose()
            return _failed_response(started)
        first = await anext(events)
    except StopAsyncIteration:  # upstream answered an empty stream
        await permit.aclose()
        return HttpResponse(b"data: [DONE]\n\n", content_type="text/event-stream", headers=SSE_HEADERS)
    except BaseException:
        await events.aclose()
        await permit.aclose()
        raise
    if isinstance(first, relay.Completed):
        async for _ in events:  # run the relay to its end, where it reports the success
            pass
        await permit.aclose()
        return HttpResponse(first.body, content_type="application/json")
    return StreamingHttpResponse(
        _sse_stream(first, events, permit), content_type="text/event-stream", headers=SSE_HEADERS
    )


def _failed_response(failed: relay.Failed) -> HttpResponse:
    headers = {"Retry-After": str(failed.retry_after)} if failed.retry_after else None
    return error_response(failed.message, failed.error_type, failed.status, headers=headers)


async def _sse_stream(first, events, permit):
    """Pass each upstream chunk on as it arrives, as the bytes upstream sent."""
    try:
        event = first
        while True:
            if isinstance(event, relay.Chunk):
                yield b"data: " + event.data + b"\n\n"
            elif isinstance(event, relay.Failed):
                yield b"data: " + json.dumps({"error": event.message, "error_type": event.error_type}).encode() + b"\n\n"
                return
            try:
                event = await anext(events)
            except StopAsyncIteration:
                break
        yield b"data: [DONE]\n\n"
    finally:
        await events.aclose()
        await permit.aclose()


async def models(request):
    if refused := _method_not_allowed(request, "GET"):
        return refused
    try:
        caller = await caller_from_key(_raw_key(request))
        ensure_may_chat(caller)
    except exceptions.APIException as exc:
        return api_exception_response(exc)
    names = settings.PORTAL_MODELS or await relay.upstream_models()
    return JsonResponse({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "portal"} for name in names]})


@csrf_exempt
async def proxy(request, path: str):
    """/proxy/hf/<path>: any Hugging Face call, relayed as it is, with a pooled token as its credentials."""
    try:
        caller, pool = await chat_context(_raw_key(request), request.headers.get("X-Portal-Pool", ""))
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
        return _failed_response(head)
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
