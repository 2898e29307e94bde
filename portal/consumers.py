"""The chat websocket, /ws/chat/: the dashboard's chat page and any program stream chat through it.

Client frames: {"type": "chat.request", "id", "model", "messages", "max_tokens"?, "temperature"?, "top_p"?,
"pool"?} and {"type": "chat.cancel", "id"}. Server frames: chat.start (id, token_id, token_label),
chat.delta (id, content) …, chat.end (id, finish_reason, usage), or chat.error (id, error, error_type).
A bad frame gets chat.error `validation` and the connection stays open; no frame carries a secret.
"""

import asyncio
import contextlib
import logging
from urllib.parse import urlparse

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.http.request import validate_host
from rest_framework import exceptions

from accounts import selectors as account_selectors
from accounts.authentication import bearer_key_from_header
from accounts.permissions import SESSION_ORGANIZATION_KEY
from portal.errors import describe_api_exception, validation_message
from portal.rate_limit import RateLimited
from tokens import relay
from tokens.callers import Caller, caller_pool, count_request, known_caller
from tokens.chat import ensure_may_chat, load_json, parse_chat_request
from tokens.limits import stream_permit

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_RATE_LIMITED = 4429
MAX_ID_LENGTH = 100


class ChatConsumer(AsyncJsonWebsocketConsumer):
    # The chat socket takes no channel-layer messages: without a layer it needs no Redis subscription per
    # connection, and keeps chatting when Redis is down.
    channel_layer_alias = None

    async def connect(self):
        self.streams: dict[str, asyncio.Task] = {}
        try:
            self.caller = await self._authenticate()
            await count_request(self.caller)
            ensure_may_chat(self.caller)
        except RateLimited:
            return await self.close(code=CLOSE_RATE_LIMITED)
        except exceptions.NotAuthenticated:
            return await self.close(code=CLOSE_UNAUTHENTICATED)
        except exceptions.APIException as exc:
            return await self.close(code=CLOSE_UNAUTHENTICATED if exc.status_code == 401 else CLOSE_FORBIDDEN)
        await self.accept()

    async def _authenticate(self) -> Caller:
        """A program's Bearer key (no Origin needed), or the dashboard session from an allowed origin."""
        headers = dict(self.scope["headers"])
        raw_key = bearer_key_from_header(headers.get(b"authorization", b""))
        if raw_key is not None:
            return await known_caller(raw_key)
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            raise exceptions.NotAuthenticated()
        # A session cookie rides along with any page's websocket: only our own pages may use it.
        if not _same_origin(headers):
            raise exceptions.PermissionDenied("Cross-origin websocket refused.")
        session = self.scope.get("session") or {}
        membership = await database_sync_to_async(account_selectors.membership_for_user)(
            user, session.get(SESSION_ORGANIZATION_KEY)
        )
        if membership is None:
            raise exceptions.PermissionDenied("You are not a member of any active organization.")
        return Caller(membership, None)

    async def disconnect(self, code):
        for task in list(self.streams.values()):
            task.cancel()
        if self.streams:
            await asyncio.gather(*self.streams.values(), return_exceptions=True)

    async def receive(self, text_data=None, bytes_data=None):
        frame = text_data if text_data is not None else bytes_data
        if len(frame or "") > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:  # characters or bytes: the same bound
            return await self._error(None, f"Frames are at most {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes.", "payload_too_large")
        try:
            content = load_json(frame)
        except exceptions.ValidationError:
            return await self._error(None, "Frames are JSON objects.", "validation")
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict):
            return await self._error(None, "Frames are JSON objects.", "validation")
        request_id = content.get("id")
        if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_ID_LENGTH:
            return await self._error(None, f"Every frame needs an `id`: a string of 1 to {MAX_ID_LENGTH} characters.", "validation")
        kind = content.get("type")
        if kind == "chat.cancel":
            task = self.streams.get(request_id)
            if task is not None:
                task.cancel()
            return
        if kind != "chat.request":
            return await self._error(request_id, "`type` is chat.request or chat.cancel.", "validation")
        if request_id in self.streams:
            return await self._error(request_id, "A request with this id is still streaming.", "validation")
        fields = {key: value for key, value in content.items() if key not in ("type", "id")}
        try:
            body, pool_name = parse_chat_request({**fields, "stream": True})
        except exceptions.ValidationError as exc:
            return await self._error(request_id, validation_message(exc.detail), "validation")
        self.streams[request_id] = asyncio.create_task(self._stream(request_id, body, pool_name))

    async def _stream(self, request_id: str, body: dict, pool_name: str) -> None:
        caller = self.caller
        try:
            await count_request(caller)
            pool = await caller_pool(caller, pool_name)
            async with contextlib.AsyncExitStack() as permit:  # held until the answer is complete
                await permit.enter_async_context(
                    stream_permit(organization_id=caller.organization.pk, api_key_id=caller.api_key.pk if caller.api_key else None)
                )
                events = relay.stream_chat(
                    organization=caller.organization, user=caller.membership.user, api_key=caller.api_key,
                    pool=pool, request=body,
                )
                async with contextlib.aclosing(events):
                    await self._forward(request_id, events, permit)
        except exceptions.APIException as exc:  # overloaded, unknown pool, …: the same kinds as over HTTP
            payload, _ = describe_api_exception(exc)
            await self._error(request_id, payload["error"], payload["error_type"])
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.send_json({"type": "chat.end", "id": request_id, "finish_reason": "cancelled", "usage": None})
        except Exception:  # a bug of ours: the client still hears that this request is over
            logger.exception("chat stream %s failed", request_id)
            with contextlib.suppress(Exception):
                await self._error(request_id, "The portal failed to relay this request.", "server_error")
        finally:
            if self.streams.get(request_id) is asyncio.current_task():
                del self.streams[request_id]

    async def _forward(self, request_id: str, events, permit: contextlib.AsyncExitStack) -> None:
        finish_reason, usage = None, None
        async for event in events:
            if isinstance(event, relay.Started):
                await self.send_json(
                    {"type": "chat.start", "id": request_id, "token_id": event.token_id, "token_label": event.token_label}
                )
            elif isinstance(event, relay.Chunks):
                for chunk in event.items:
                    finish_reason = chunk.finish_reason or finish_reason
                    usage = chunk.usage or usage
                if event.content:
                    await self.send_json({"type": "chat.delta", "id": request_id, "content": event.content})
                if event.last:
                    # The client has its answer now, and the id is free again, while the relay reads upstream
                    # to its end and reports the success (a stop or a hang-up after this cancels nothing).
                    await self.send_json({"type": "chat.end", "id": request_id, "finish_reason": finish_reason, "usage": usage})
                    self.streams.pop(request_id, None)
                    await permit.aclose()
                    async for _ in events:
                        pass
                    return
            elif isinstance(event, relay.Failed):
                frame = {"type": "chat.error", "id": request_id, "error": event.message, "error_type": event.error_type}
                if event.retry_after:
                    frame["retry_after"] = event.retry_after
                return await self.send_json(frame)
        await self.send_json({"type": "chat.end", "id": request_id, "finish_reason": finish_reason, "usage": usage})

    async def _error(self, request_id, message: str, error_type: str) -> None:
        await self.send_json({"type": "chat.error", "id": request_id, "error": message, "error_type": error_type})


def _same_origin(headers: dict) -> bool:
    """The page opening the socket is ours: its Origin is this very host (scheme and port included) or a
    trusted origin; without a Host header (in-process clients) its host must be an allowed one."""
    origin = headers.get(b"origin", b"").decode("latin-1")
    if not origin:
        return False
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    host = headers.get(b"host", b"").decode("latin-1")
    if host:
        return validate_host(host.rsplit(":", 1)[0], settings.ALLOWED_HOSTS) and origin in (
            f"http://{host}", f"https://{host}"
        )
    return validate_host(urlparse(origin).hostname or "", settings.ALLOWED_HOSTS)
