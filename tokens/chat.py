"""What both chat front doors share: whether a chat request is well formed, and who may chat."""

import json
import re

from rest_framework import exceptions

from accounts.roles import Perm
from tokens.callers import Caller, caller_pool, ensure_caller_may, known_caller
from tokens.models import TokenPool

ROLES = ("system", "user", "assistant", "tool", "developer")
_POOL_NAME = re.compile(r"[-a-zA-Z0-9_]{1,64}")


def _number(value, low: float, high: float, *, whole: bool = False) -> bool:
    kinds = int if whole else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and low <= value <= high


def _message_problem(message) -> str | None:
    if not isinstance(message, dict):
        return "each message is an object with a role and content."
    if message.get("role") not in ROLES:
        return f"role must be one of {', '.join(ROLES)}."
    if not isinstance(message.get("content"), (str, list)):
        return "content must be a string or a list of parts."
    return None


def chat_request_problems(data: dict) -> dict[str, list[str]]:
    """What is wrong with a chat request, field by field (empty when nothing is). Written out rather than as a
    DRF serializer: this runs on every relayed request, and the serializer cost more than the rest of the
    request's own work put together."""
    problems = {}
    model = data.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 200:
        problems["model"] = ["A model name (a string of up to 200 characters) is required."]
    messages = data.get("messages")
    if not isinstance(messages, list) or not 1 <= len(messages) <= 1000:
        problems["messages"] = ["A list of 1 to 1000 messages is required."]
    elif problem := next(filter(None, map(_message_problem, messages)), None):
        problems["messages"] = [problem]
    checks = {
        "max_tokens": (lambda v: _number(v, 1, 1_000_000, whole=True), "a whole number from 1 to 1000000"),
        "temperature": (lambda v: _number(v, 0, 2), "a number from 0 to 2"),
        "top_p": (lambda v: _number(v, 0, 1), "a number from 0 to 1"),
        "stream": (lambda v: isinstance(v, bool), "true or false"),
        "pool": (lambda v: isinstance(v, str) and bool(_POOL_NAME.fullmatch(v)), "a pool name (letters, digits, - and _)"),
    }
    for name, (valid, expected) in checks.items():
        if name in data and not valid(data[name]):
            problems[name] = [f"Must be {expected}."]
    return problems


def chat_body_bytes(body: dict) -> bytes:
    """The body as sent upstream; ValueError for what JSON cannot carry."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def parse_chat_request(data) -> tuple[dict, str]:
    """The body to send upstream (every other OpenAI field passes through untouched) and the pool asked for."""
    if not isinstance(data, dict):
        raise exceptions.ValidationError("The request must be a JSON object.")
    if problems := chat_request_problems(data):
        raise exceptions.ValidationError(problems)
    body = {key: value for key, value in data.items() if key != "pool"}
    # OpenAI's default: without "stream" the answer is one chat.completion (the openai SDK omits the field
    # unless it streams). Sent explicitly, so an upstream with another default answers the same way.
    body["stream"] = data.get("stream", False)
    try:
        chat_body_bytes(body)  # checked before a token is leased: upstream could only refuse it
    except ValueError:  # a number too large for JSON (1e999 reads as infinity), text that is not Unicode
        raise exceptions.ValidationError("The request holds a number or text that JSON cannot carry.") from None
    return body, data.get("pool", "")


def ensure_may_chat(caller: Caller) -> None:
    ensure_caller_may(caller, Perm.CHAT, "Your role does not allow chat.")


async def chat_context(raw_key: str, pool_name: str) -> tuple[Caller, TokenPool]:
    """Who is asking and from which pool; from this worker's memory of the last few seconds when it can."""
    caller = await known_caller(raw_key)
    ensure_may_chat(caller)
    return caller, await caller_pool(caller, pool_name)
