"""The chat websocket, /ws/chat/: the dashboard's chat page and any program stream chat through it.

Client frames: {"type": "chat.request", "id", "model", "messages", "max_tokens"?, "temperature"?, "top_p"?,
"pool"?} and {"type": "chat.cancel", "id"}. Server frames: chat.start (id, token_id, token_label),
chat.delta (id, content) …, chat.end (id, finish_reason, usage), or chat.error (id, error, error_type).
A bad frame gets chat.error `validation` and the connection stays open; no frame carries a secret.

A socket is only as good as its caller's credentials now: every chat.request checks the caller again (the
cached check the HTTP doors use), and a key revoked or expired, a user deactivated or demoted, a session
logged out refuses it with chat.error `authentication` or `permission_denied` and closes the socket
(4401/4403). Such changes also reach open sockets at once (portal.live.access_changed): the socket checks
again, cancels its running streams (recorded `cancelled`) and closes if the caller may no longer chat.
"""

import asyncio
import contextlib
import logging
from urllib.parse import urlparse

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.http.request import validate_host
from rest_framework import exceptions

from accounts.authentication import bearer_key_from_header
from portal import cache, live
from portal.errors import DATABASE_DOWN, database_unavailable, describe_api_exception, validation_message
from portal.parsers import load_json
from portal.rate_limit import RateLimited
from tokens import relay
from tokens.callers import Caller, caller_pool, count_request, known_caller, known_session_caller
from tokens.chat import ensure_may_chat, parse_chat_request
from tokens.limits import stream_permit

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_RATE_LIMITED = 4429
CLOSE_TRY_AGAIN = 1013  # the database could not be asked: reconnect to be checked afresh
MAX_ID_LENGTH = 100


class ChatConsumer(AsyncJsonWebsocketConsumer):
    # The chat socket takes no channel-layer messages: without a layer it needs no Redis subscription per
    # connection, and keeps chatting when Redis is down.
    channel_layer_alias = None

    async def connect(self):
        self.streams: dict[str, asyncio.Task] = {}
        self.access = live.AccessWatch(self._access_changed)
        self.closing = False
        self.organization_id = None
        try:
            self.caller = await self._authenticate()
            await count_request(self.caller)
        except RateLimited:
            return await self.close(code=CLOSE_RATE_LIMITED)
        except exceptions.APIException as exc:
            return await self.close(code=_close_code(exc))
        except DATABASE_DOWN:
            return await self.close(code=CLOSE_TRY_AGAIN)
        self.organization_id = self.caller.organization.pk
        await self.access.start(
            live.access_groups(
                user_id=self.caller.user.pk, organization_id=self.caller.organization.pk,
                api_key_id=self.caller.api_key.pk if self.caller.api_key else None, session_key=self.session_key,
            )
        )
        await self.accept()

    async def _authenticate(self) -> Caller:
        """A program's Bearer key (no Origin needed), or the dashboard session from an allowed origin."""
        headers = dict(self.scope["headers"])
        self.raw_key = bearer_key_from_header(headers.get(b"authorization", b""))
        self.session_key = None
        if self.raw_key is None:
            user = self.scope.get("user")
            if user is None or not user.is_authenticated:
                raise exceptions.NotAuthenticated()
            # A session cookie rides along with any page's websocket: only our own pages may use it.
            if not _same_origin(headers):
                raise exceptions.PermissionDenied("Cross-origin websocket refused.")
            self.session_key = self.scope["session"].session_key
        return await self._current_caller()

    async def _current_caller(self) -> Caller:
        """Who the socket's credentials stand for now, and that they may chat; refused otherwise."""
        if self.raw_key is not None:
            caller = await known_caller(self.raw_key)
        else:
            caller = await known_session_caller(self.session_key, organization_id=self.organization_id)
        ensure_may_chat(caller)
        return caller

    async def _access_changed(self, message) -> None:
        """The caller's credentials changed somewhere (maybe on another worker): check them afresh."""
        cache.forget_now()
        try:
            if message.get("ended"):
                raise exceptions.NotAuthenticated("Your session has ended; log in again.")
            self.caller = await self._current_caller()
        except exceptions.APIException as exc:
            await self._refuse(None, exc)
        except DATABASE_DOWN as exc:  # a change that cannot be checked now: fail closed, the client reconnects
            await self._refuse(None, database_unavailable(exc))

    async def _refuse(self, request_id, exc: exceptions.APIException) -> None:
        """The caller may no longer chat here: its running streams end (recorded cancelled), it hears why,
        and the socket closes."""
        if self.closing:
            return
        self.closing = True
        await self._cancel_streams()
        payload, _ = describe_api_exception(exc)
        with contextlib.suppress(Exception):
            await self._error(request_id, payload["error"], payload["error_type"])
            await self.close(code=_close_code(exc))

    async def _cancel_streams(self) -> None:
        for task in list(self.streams.values()):
            task.cancel()
        if self.streams:
            await asyncio.gather(*self.streams.values(), return_exceptions=True)

    async def disconnect(self, code):
        self.closing = True
        await self._cancel_streams()
        await self.access.stop()

    async def receive(self, text_data=None, bytes_data=None):
        if self.closing:
            return
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
        try:
            self.caller = await self._current_caller()
        except exceptions.APIException as exc:
            return await self._refuse(request_id, exc)
        except DATABASE_DOWN as exc:  # this request cannot be checked; the socket stays for the next one
            payload, _ = describe_api_exception(database_unavailable(exc))
            return await self._error(request_id, payload["error"], payload["error_type"])
        if self.closing:  # refused while this request was being checked
            return
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


def _close_code(exc: exceptions.APIException) -> int:
    return {401: CLOSE_UNAUTHENTICATED, 403: CLOSE_FORBIDDEN}.get(exc.status_code, CLOSE_TRY_AGAIN)


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
