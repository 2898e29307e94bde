"""What both chat front doors share: who is asking, and whether their chat request is well formed."""

import json
import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework import exceptions

from accounts.authentication import authenticate_api_key
from accounts.keys import digest_api_key
from accounts.models import ApiKey, Membership
from accounts.permissions import membership_has
from accounts.roles import Perm
from portal.cache import RecentCache
from portal.db import on_db_threads
from tokens import services
from tokens.models import TokenPool


@dataclass(frozen=True)
class ChatCaller:
    membership: Membership
    api_key: ApiKey | None

    @property
    def organization(self):
        return self.membership.organization


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


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def load_json(text) -> object:
    """Strict JSON: Python's parser takes NaN and Infinity, which no upstream would."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (TypeError, ValueError):
        raise exceptions.ValidationError("The body is not valid JSON.") from None


def parse_chat_request(data) -> tuple[dict, str]:
    """The body to send upstream (every other OpenAI field passes through untouched) and the pool asked for."""
    if not isinstance(data, dict):
        raise exceptions.ValidationError("The request must be a JSON object.")
    if problems := chat_request_problems(data):
        raise exceptions.ValidationError(problems)
    body = {key: value for key, value in data.items() if key != "pool"}
    body["stream"] = data.get("stream", True)
    return body, data.get("pool", "")


def _caller_from_key(raw_key: str) -> ChatCaller:
    api_key = authenticate_api_key(raw_key)
    return ChatCaller(api_key.membership, api_key)


caller_from_key = on_db_threads(_caller_from_key)


def ensure_may_chat(caller: ChatCaller) -> None:
    if not membership_has(caller.membership, Perm.CHAT):
        raise exceptions.PermissionDenied("Your role does not allow chat.")


def _chat_pool(caller: ChatCaller, pool_name: str) -> TokenPool:
    return services.lease_pool(caller.organization, api_key=caller.api_key, pool_name=pool_name)


_chat_pool_from_db = on_db_threads(_chat_pool)
_recent_pools = RecentCache(settings.PORTAL_AUTH_CACHE_SECONDS)


async def chat_pool(caller: ChatCaller, pool_name: str) -> TokenPool:
    """_chat_pool, remembered like chat_context (a websocket asks once per chat request)."""
    cache_key = (caller.membership.pk, caller.api_key.pk if caller.api_key else None, pool_name)
    pool = _recent_pools.get(cache_key)
    if pool is None:
        pool = await _chat_pool_from_db(caller, pool_name)
        _recent_pools.put(cache_key, pool)
    return pool


def _chat_context(raw_key: str, pool_name: str) -> tuple[ChatCaller, TokenPool]:
    """Who is asking and from which pool, in one trip to the database threads."""
    caller = _caller_from_key(raw_key)
    ensure_may_chat(caller)
    return caller, _chat_pool(caller, pool_name)


_chat_context_from_db = on_db_threads(_chat_context)
_recent_contexts = RecentCache(settings.PORTAL_AUTH_CACHE_SECONDS)


async def chat_context(raw_key: str, pool_name: str) -> tuple[ChatCaller, TokenPool]:
    """_chat_context, answered from what this worker learnt in the last PORTAL_AUTH_CACHE_SECONDS when it
    can (portal.cache): most chat requests then never wait for the database before their lease."""
    cache_key = (digest_api_key(raw_key), pool_name)
    context = _recent_contexts.get(cache_key)
    if context is not None and _still_good(context[0].api_key):
        return context
    context = await _chat_context_from_db(raw_key, pool_name)
    _recent_contexts.put(cache_key, context)
    return context


def _still_good(api_key: ApiKey) -> bool:
    """What can change without anyone saving a row: expiry, and a last use old enough to be recorded again."""
    now = timezone.now()
    touch_due = api_key.last_used_at is None or now - api_key.last_used_at >= timedelta(
        seconds=settings.PORTAL_KEY_TOUCH_INTERVAL
    )
    return not touch_due and not api_key.is_expired(now)
