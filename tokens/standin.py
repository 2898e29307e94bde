"""A stand-in for Hugging Face, for tests and offline demos: the only fake part of the system.

It speaks the real wire formats: `GET /api/whoami-v2` like huggingface.co, and
`POST /v1/chat/completions` (streaming SSE and plain JSON) like the HF router and
TGI. What goes wrong is chosen by the token, so a pool can hold good and bad ones:

    token contains   answer
    "invalid"        401 Invalid credentials in Authorization header
    "credits"        402 with Hugging Face's monthly-credits wording
    "ratelimit"      429
    "error500"       500
    "status<NNN>"    NNN (any 4xx or 5xx) with its reason phrase as the error
    "drop"           the connection closes after a few chunks, mid-stream
    "slow"           the first byte comes after STANDIN_SLOW_SECONDS (default 3)
    "linger"         the body ends LINGER_SECONDS after `data: [DONE]`, not with it
    "cutafterdone"   the connection closes after `data: [DONE]`, before the body's end

A model name containing "slow" streams one chunk every 100 ms (long enough to
press Stop). Run it with `python manage.py standin_upstream`.
"""

import asyncio
import json
import os
import re
import sys
import time
import uuid
from http import HTTPStatus

HF_ERRORS = {
    "invalid": (401, "Invalid credentials in Authorization header"),
    "credits": (
        402,
        "You have exceeded your monthly included credits for Inference Providers. "
        "Subscribe to PRO to get 20x more monthly included credits.",
    ),
    "ratelimit": (429, "Rate limit reached. Please retry later."),
    "error500": (500, "Internal Server Error"),
}
LINGER_SECONDS = 1.0
MODELS = ["standin/echo", "standin/slow-echo", "meta-llama/Llama-3.1-8B-Instruct"]


def standin_command(host: str, port: int) -> list[str]:
    """How to serve the stand-in: plain ASGI under uvicorn, which (unlike daphne) really drops the
    connection of a response that never finishes, as the "drop" tokens need."""
    return [
        sys.executable, "-m", "uvicorn", "tokens.standin:application", "--host", host, "--port", str(port),
        "--no-access-log", "--log-level", "warning",
    ]


def _token_of(scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.decode("latin-1").removeprefix("Bearer ").strip()
    return ""


async def _read_body(receive) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


async def _send_json(send, status: int, payload, headers=()) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


_ANY_STATUS = re.compile(r"status([45]\d\d)")


def _failure_for(token: str):
    if found := _ANY_STATUS.search(token):
        status = int(found.group(1))
        return status, next((known.phrase for known in HTTPStatus if known.value == status), "Error")
    return next((HF_ERRORS[marker] for marker in HF_ERRORS if marker in token), None)


def _reply_words(request: dict) -> list[str]:
    """A deterministic reply: the last user message echoed back, word by word, up to max_tokens."""
    messages = request.get("messages") or []
    last = next((m.get("content") for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), "")
    if isinstance(last, list):  # content parts
        last = " ".join(part.get("text", "") for part in last if isinstance(part, dict))
    words = ["Echo:", *str(last or "hello").split()]
    max_tokens = request.get("max_tokens") or 64
    repeated = (words * (max_tokens // len(words) + 1))[:max_tokens]
    return [word if i == 0 else f" {word}" for i, word in enumerate(repeated)]


def _chunk(completion_id: str, model: str, created: int, content: str, finish_reason=None, usage=None) -> bytes:
    payload = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "3.3.6-standin",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": content}, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage,
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _chat(scope, receive, send) -> None:
    token = _token_of(scope)
    body = await _read_body(receive)
    if not token:
        return await _send_json(send, 401, {"error": "Invalid credentials in Authorization header"})
    if "slow" in token:
        await asyncio.sleep(float(os.environ.get("STANDIN_SLOW_SECONDS", "3")))
    failure = _failure_for(token)
    if failure:
        return await _send_json(send, failure[0], {"error": failure[1]})
    try:
        request = json.loads(body)
        assert isinstance(request, dict) and isinstance(request.get("messages"), list)
    except (ValueError, AssertionError):
        return await _send_json(send, 422, {"error": "Input validation error: `messages` must be a list", "error_type": "validation"})

    model = str(request.get("model") or MODELS[0])
    words = _reply_words(request)
    usage = {"prompt_tokens": 10, "completion_tokens": len(words), "total_tokens": 10 + len(words)}
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if not request.get("stream"):
        return await _send_json(
            send,
            200,
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "3.3.6-standin",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "logprobs": None, "finish_reason": "length" if len(words) >= (request.get("max_tokens") or 64) else "stop"}
                ],
                "usage": usage,
            },
        )

    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    delay = 0.1 if "slow" in model else 0.0
    for index, word in enumerate(words):
        if "drop" in token and index == 3:
            # Vanish mid-stream, as a dropped connection does: end without finishing the response,
            # which makes the server close the connection with the body incomplete.
            return
        await send({"type": "http.response.body", "body": _chunk(completion_id, model, created, word), "more_body": True})
        if delay:
            await asyncio.sleep(delay)
    last = _chunk(completion_id, model, created, "", finish_reason="length", usage=usage) + b"data: [DONE]\n\n"
    if "linger" in token or "cutafterdone" in token:
        await send({"type": "http.response.body", "body": last, "more_body": True})
        if "cutafterdone" in token:
            return  # as "drop" does, later: the response never finishes and the connection closes
        await asyncio.sleep(LINGER_SECONDS)
        last = b""
    await send({"type": "http.response.body", "body": last, "more_body": False})


async def _whoami(scope, receive, send) -> None:
    token = _token_of(scope)
    if not token or "invalid" in token:
        return await _send_json(send, 401, {"error": "Invalid credentials in Authorization header"})
    await _send_json(
        send,
        200,
        {
            "type": "user",
            "name": f"standin-{token[-4:]}",
            "fullname": "Stand-in User",
            "auth": {"type": "access_token", "accessToken": {"displayName": f"token-{token[-4:]}", "role": "read"}},
        },
    )


async def application(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        return await send({"type": "lifespan.shutdown.complete"})
    path, method = scope["path"], scope["method"]
    if path == "/api/whoami-v2" and method == "GET":
        return await _whoami(scope, receive, send)
    if path in ("/v1/chat/completions", "/chat/completions") and method == "POST":
        return await _chat(scope, receive, send)
    if path in ("/v1/models", "/models") and method == "GET":
        return await _send_json(send, 200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "standin"} for m in MODELS]})
    await _send_json(send, 404, {"error": f"Not found: {path}"})
