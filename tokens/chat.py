"""What both chat front doors share: who is asking, and whether their chat request is well formed."""

import json
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework import exceptions, serializers

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


class ChatMessage(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant", "tool", "developer"])
    content = serializers.JSONField()  # a string, or OpenAI content parts

    def validate_content(self, value):
        if not isinstance(value, (str, list)):
            raise serializers.ValidationError("content must be a string or a list of parts.")
        return value


class ChatRequestInput(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    messages = ChatMessage(many=True, allow_empty=False, max_length=1000)
    max_tokens = serializers.IntegerField(min_value=1, max_value=1_000_000, required=False)
    temperature = serializers.FloatField(min_value=0, max_value=2, required=False)
    top_p = serializers.FloatField(min_value=0, max_value=1, required=False)
    stream = serializers.BooleanField(required=False, default=True)
    pool = serializers.SlugField(max_length=64, required=False, default="")


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
    checked = ChatRequestInput(data=data)
    checked.is_valid(raise_exception=True)
    body = {key: value for key, value in data.items() if key != "pool"}
    body["stream"] = checked.validated_data["stream"]
    return body, checked.validated_data["pool"]


def _caller_from_key(raw_key: str) -> ChatCaller:
    api_key = authenticate_api_key(raw_key)
    return ChatCaller(api_key.membership, api_key)


caller_from_key = on_db_threads(_caller_from_key)


def ensure_may_chat(caller: ChatCaller) -> None:
    if not membership_has(caller.membership, Perm.CHAT):
        raise exceptions.PermissionDenied("Your role does not allow chat.")


def _chat_pool(caller: ChatCaller, pool_name: str) -> TokenPool:
    return services.lease_pool(caller.organization, api_key=caller.api_key, pool_name=pool_name)


chat_pool = on_db_threads(_chat_pool)


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
